"""The `gemma4` GGUF architecture: tiny files written with gguf.GGUFWriter as llama.cpp's converter
writes them (its metadata keys, tensor names, expert layout, rope_freqs, norms stored as w), read
back to the config and weights of the HF checkpoint they were made from, and exported with fp32
parity against transformers. (transformers' own gemma4 GGUF loader reads only the basic sizes of
such a file, so the HF checkpoint is the reference here.)"""

import json

import gguf
import numpy as np
import pytest

import gemma_runtime
from gemma_export.checkpoints import open_source
from gemma_export.errors import ConfigError
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from parity import assert_fp32_parity, hf_logits, prompt
from test_gguf import _add_value as add_value
from tiny import hf_model, write_checkpoint

LAYER = {  # HF name after model.layers.N. -> llama.cpp's blk.N. name
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight", "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight", "post_per_layer_input_norm.weight": "post_norm.weight",
    "layer_scalar": "layer_output_scale.weight", "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale", "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight", "experts.down_proj": "ffn_down_exps.weight",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
}
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
          "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
          "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight"}


def write_gemma4_gguf(hf_folder, path, meta_override: dict | None = None) -> None:
    """What llama.cpp's converter writes for a Gemma4ForCausalLM folder (float32 tensors)."""
    from safetensors.numpy import load_file

    c = json.loads((hf_folder / "config.json").read_text())
    layers, types = c["num_hidden_layers"], c["layer_types"]
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    global_dim = c["per_layer_config"][str(full[0])]["head_dim"]
    global_kv = c["per_layer_config"][str(full[0])].get("num_key_value_heads", c["num_key_value_heads"])
    shared = c["num_kv_shared_layers"]
    w = gguf.GGUFWriter(str(path), "gemma4")
    meta = {
        "block_count": layers, "context_length": c["max_position_embeddings"], "embedding_length": c["hidden_size"],
        "attention.head_count": c["num_attention_heads"],
        "attention.head_count_kv": [global_kv if t == "full_attention" else c["num_key_value_heads"] for t in types],
        "feed_forward_length": [c["intermediate_size"] * (2 if c["use_double_wide_mlp"] and i >= layers - shared else 1)
                                for i in range(layers)],
        "attention.key_length": global_dim, "attention.value_length": global_dim,
        "attention.key_length_swa": c["head_dim"], "attention.value_length_swa": c["head_dim"],
        "attention.layer_norm_rms_epsilon": c["rms_norm_eps"], "attention.sliding_window": c["sliding_window"],
        "attention.sliding_window_pattern": [t == "sliding_attention" for t in types],
        "attention.shared_kv_layers": shared, "embedding_length_per_layer_input": c["hidden_size_per_layer_input"],
        "final_logit_softcapping": c["final_logit_softcapping"], "rope.freq_base": 1e6, "rope.freq_base_swa": 1e4,
        "rope.dimension_count": global_dim, "rope.dimension_count_swa": c["head_dim"],
    }
    if c["enable_moe_block"]:
        meta.update({"expert_count": c["num_experts"], "expert_used_count": c["top_k_experts"],
                     "expert_feed_forward_length": c["moe_intermediate_size"]})
    meta.update(meta_override or {})
    for key, value in meta.items():
        add_value(w, "gemma4." + key, value)
    for name, array in load_file(str(hf_folder / "model.safetensors")).items():
        if name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            gguf_name = f"blk.{layer}.{LAYER[rest]}"
        else:
            gguf_name = GLOBAL[name]
        w.add_tensor(gguf_name, np.ascontiguousarray(array, np.float32))
    rotated = int(c["rope_parameters"]["full_attention"]["partial_rotary_factor"] * global_dim // 2)
    w.add_tensor("rope_freqs.weight", np.asarray([1.0] * rotated + [1e30] * (global_dim // 2 - rotated), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_gemma4")
    out = {}
    for name in ("gemma4-shared", "gemma4-moe"):
        folder = write_checkpoint(name, root / name)
        write_gemma4_gguf(folder, root / f"{name}.gguf")
        out[name] = (folder, root / f"{name}.gguf")
    return out


@pytest.mark.parametrize("name", ["gemma4-shared", "gemma4-moe"])
def test_gguf_reads_back_the_checkpoint_it_was_made_from(name, files):
    folder, path = files[name]
    hf, gg = open_source(folder), open_source(path)
    assert gg.config == hf.config
    assert sorted(gg.weights.names()) == sorted(hf.weights.names())
    for tensor in hf.weights.names():
        rows = hf.weights.shape(tensor)[0]
        np.testing.assert_array_equal(gg.weights.read_rows(tensor, 0, rows), hf.weights.read_rows(tensor, 0, rows))


def test_export_of_the_gguf_matches_transformers(files, tmp_path):
    _, path = files["gemma4-moe"]
    export(path, tmp_path / "out", ExportOptions(target="onnx", max_seq_len=64))
    ids = prompt(1, 30)
    assert_fp32_parity(gemma_runtime.load(tmp_path / "out", threads=1).logits(ids), hf_logits(hf_model("gemma4-moe"), ids))


@pytest.mark.parametrize("override, message", [
    ({"attention.sliding_window_pattern": [True, False]}, "one boolean per layer"),
    ({"feed_forward_length": [96, 192, 96, 96, 192, 96]}, "double-wide"),
    ({"rope.dimension_count": 48}, "rope.dimension_count"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_metadata_we_cannot_read_is_an_error(override, message, files, tmp_path):
    folder, _ = files["gemma4-shared"]
    path = tmp_path / "bad.gguf"
    write_gemma4_gguf(folder, path, override)
    with pytest.raises(ConfigError, match=message):
        open_source(path)
