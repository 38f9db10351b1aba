import numpy as np
import onnx_ir as ir

from gemma_export.passes import fold_weight_transposes, attention_gqa, inplace_cache_io, pack_matmuls
from gemma_export.passes.context import LEFT_ALONE
from gemma_export.passes.ir_utils import add_initializer
from gemma_export.targets import ExportOptions
from pass_harness import apply, feeds, inplace_feeds, op_types, run, traced


def test_sibling_projections_share_one_matmul(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma3"])
    cfg = ctx.config
    folded, _ = apply(model, ctx, fold_weight_transposes)
    packed, (count,) = apply(folded, ctx, pack_matmuls)
    assert count == 2 * cfg.num_layers  # q/k/v and gate/up
    assert op_types(packed).count("MatMul") == op_types(folded).count("MatMul") - 3 * cfg.num_layers
    qkv = packed.graph.initializers["model.layers.0.self_attn.q_proj+k_proj+v_proj"].const_value.numpy()
    parts = [folded.graph.initializers[f"model.layers.0.self_attn.{p}_proj.weight.T"].const_value.numpy() for p in "qkv"]
    np.testing.assert_array_equal(qkv, np.concatenate(parts, axis=1))
    f = feeds(cfg, past=2)
    np.testing.assert_allclose(run(packed, f)["logits"], run(model, f)["logits"], rtol=1e-5, atol=1e-5)


def test_attention_gqa_reads_packed_qkv(tiny_checkpoints):
    model, ctx = traced(tiny_checkpoints["gemma-mqa"], ExportOptions(max_seq_len=24))
    fused, _ = apply(model, ctx, fold_weight_transposes, inplace_cache_io, attention_gqa)
    packed, (count,) = apply(fused, ctx, pack_matmuls)
    assert count == 2 * ctx.config.num_layers
    for node in (n for n in packed.graph if n.op_type == "GroupQueryAttention"):
        assert node.inputs[1] is None and node.inputs[2] is None
        assert node.inputs[0].producer().op_type == "MatMul"
    assert op_types(packed).count("Split") == ctx.config.num_layers  # gate/up only
    f = inplace_feeds(feeds(ctx.config, batch=1, past=4, seq=3), 24)
    np.testing.assert_allclose(run(packed, f)["logits"], run(fused, f)["logits"], rtol=1e-5, atol=1e-5)



def test_matmuls_sharing_an_input_with_weights_of_different_ranks_are_left_alone(tiny_checkpoints):
    """x [2, 4] read by a MatMul with a [4, 3] weight and by one with a batched [5, 4, 3] weight:
    nothing to pack, and the report says why for each."""
    _, ctx = traced(tiny_checkpoints["gemma-mqa"])
    x = ir.Value(name="x", shape=ir.Shape([2, 4]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 20}, name="siblings")
    flat = add_initializer(graph, "flat", np.ones((4, 3), np.float32))
    batched = add_initializer(graph, "batched", np.ones((5, 4, 3), np.float32))
    nodes = [ir.Node("", "MatMul", [x, w], name=w.name) for w in (flat, batched)]
    for node in nodes:
        graph.append(node)
        graph.outputs.append(node.outputs[0])
    model = ir.Model(graph, ir_version=10)
    assert pack_matmuls.run(model, ctx) == 0
    assert [n.name for n in model.graph] == ["flat", "batched"]
    assert ctx.report[pack_matmuls.NAME][LEFT_ALONE] == {
        "its second input is not a 2-D weight": {"count": 1, "examples": ["batched"]},
        "no other MatMul with a 2-D weight reads its input": {"count": 1, "examples": ["flat"]}}
