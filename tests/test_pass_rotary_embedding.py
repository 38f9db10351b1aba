import numpy as np
import onnx_ir as ir
import torch

from gemma_export.frontend.onnx_ops import ROPE
from gemma_export.passes import rotary_embedding, set_opset
from gemma_export.passes.context import LEFT_ALONE
from gemma_export.targets import ExportOptions
from pass_harness import apply, feeds, op_types, run, traced
from tiny import hf_model

MAX = 32


def test_rope_becomes_rotary_embedding_with_transformers_caches(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma3"], ExportOptions(max_seq_len=MAX))
    cfg = ctx.config
    after, (_, count) = apply(model, ctx, set_opset, rotary_embedding)
    assert count == 2 * cfg.num_layers and ROPE not in op_types(after)
    assert op_types(after).count("RotaryEmbedding") == count
    assert all(n.attributes.get_int("interleaved") == 0 for n in after.graph if n.op_type == "RotaryEmbedding")
    caches = sorted(name for name in after.graph.initializers if name.startswith("rotary."))
    assert caches == ["rotary.theta_10000.scale_1.cos", "rotary.theta_10000.scale_1.sin",
                      "rotary.theta_1e+06.scale_2.cos", "rotary.theta_1e+06.scale_2.sin"]
    rotary = hf_model("gemma3").model.rotary_emb
    positions = torch.arange(MAX)[None]
    for layer_type, theta in (("sliding_attention", "10000.scale_1"), ("full_attention", "1e+06.scale_2")):
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions, layer_type)
        # ours are cos/sin rounded once from float64 (the same on every host); transformers' come
        # from this host's fp32 pow, cos and sin: within a unit in the last place of them
        for ours, ref in ((f"rotary.theta_{theta}.cos", cos), (f"rotary.theta_{theta}.sin", sin)):
            np.testing.assert_allclose(after.graph.initializers[ours].const_value.numpy(),
                                       ref[0, :, : cfg.head_dim // 2].numpy(), rtol=0, atol=2.0 ** -23)
    f = feeds(cfg, past=3, seq=9)
    np.testing.assert_allclose(run(after, f)["logits"], run(model, f)["logits"], rtol=1e-5, atol=1e-5)


def test_a_rope_over_symbolic_heads_is_left_alone_with_the_reason(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"], ExportOptions(target="onnx", max_seq_len=MAX))
    rope = next(n for n in model.graph if n.op_type == ROPE)
    rope.inputs[0].shape = ir.Shape(["batch", "seq", "heads", rope.inputs[0].shape[3]])
    after, (_, count) = apply(model, ctx, set_opset, rotary_embedding)
    assert count == op_types(model).count(ROPE) - 1 and op_types(after).count(ROPE) == 1
    assert ctx.report[rotary_embedding.NAME][LEFT_ALONE] == {
        "its heads and head_dim are not static": {"count": 1, "examples": [rope.name]}}
