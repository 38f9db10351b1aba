"""`--quant source`: a quantized GGUF exports with its own blocks (nothing rounded a second time).

With fp32 activations (accuracy level 0) the source-block export must give the fp32 export's logits
(both compute with the same dequantized values), for a file mixing every kept type: packed
products whose parts differ in type (Q5_0 / Q8_0, Q4_1 / Q5_1), 16-wide blocks (Q6_K), float
offsets (Q4_K, Q5_K, Q4_1, Q5_1), 4-bit (Q4_0) and the tied Q8_0 table."""

import json

import numpy as np
import pytest

import gemma_runtime
from gemma_export.errors import GemmaExportError
from gemma_export.export import export
from gemma_export.passes import quantize_matmuls
from gemma_export.passes.context import ExportOptions
from test_gguf import Q, write_gguf

TYPES = {  # GGUF tensor name part -> type by layer parity
    "attn_q": (Q.Q5_0, Q.Q4_0), "attn_k": (Q.Q5_0, Q.Q4_0), "attn_v": (Q.Q8_0, Q.Q4_0),
    "attn_output": (Q.Q4_1, Q.Q8_0), "ffn_gate": (Q.Q4_1, Q.Q5_1), "ffn_up": (Q.Q5_1, Q.Q5_0),
    "ffn_down": (Q.Q4_K, Q.Q6_K),
}


def type_of(name: str):
    parts = name.split(".")
    if parts[0] == "blk" and parts[2] in TYPES:
        layer = int(parts[1])
        if parts[2] == "ffn_down" and layer == 5:
            return Q.Q5_K
        return TYPES[parts[2]][layer % 2]
    return None


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "mixed.gguf"
    write_gguf(path, "gemma3", type_of=type_of)
    return path


def test_source_blocks_give_the_fp32_exports_logits(mixed_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_matmuls, "ACCURACY_LEVEL", 0)  # fp32 activations: exact products
    fp32 = export(mixed_gguf, tmp_path / "fp32", ExportOptions(max_seq_len=64))
    source = export(mixed_gguf, tmp_path / "source", ExportOptions(quant="source", max_seq_len=64))
    report = source.report["quantization"]
    assert set(report["choices"].values()) == {"source"} and not report["requantized"]
    assert report["source_types"]["model.layers.0.self_attn.q_proj+k_proj+v_proj"] == "Q5_0+Q8_0"
    assert report["source_types"]["model.embed_tokens.weight"] == "Q8_0"
    assert source.quant["embeddings_quantized"]
    ids = [2, 40, 41, 200, 7, 290, 12, 33, 280, 45]
    ref = gemma_runtime.load(tmp_path / "fp32").logits(ids)
    ours = gemma_runtime.load(tmp_path / "source").logits(ids)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    size = lambda out: sum(f.stat().st_size for f in out.iterdir())  # noqa: E731
    assert size(tmp_path / "source") < 0.45 * size(tmp_path / "fp32")
    manifest = json.loads((tmp_path / "source" / "manifest.json").read_text())
    assert manifest["quant"]["method"] == "source"


def test_types_without_a_decoder_are_requantized_and_listed(tmp_path):
    path = tmp_path / "q3k.gguf"
    write_gguf(path, "gemma3", type_of=lambda n: None if "norm" in n else Q.Q3_K if "ffn_down" in n else Q.Q8_0)
    manifest = export(path, tmp_path / "out", ExportOptions(quant="source", max_seq_len=64))
    report = manifest.report["quantization"]
    assert report["requantized"] == [f"model.layers.{i}.mlp.down_proj.weight.T" for i in range(6)]
    assert {report["choices"][n] for n in report["requantized"]} == {"int8"}


def test_source_needs_a_quantized_source(tiny_checkpoints, tmp_path):
    with pytest.raises(GemmaExportError, match="--quant source keeps a quantized GGUF's own blocks"):
        export(tiny_checkpoints["gemma3"], tmp_path / "out", ExportOptions(quant="source", max_seq_len=64))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["tensorrt", "onnx", "generic"])
def test_source_is_refused_where_the_blocks_cannot_be_held(mixed_gguf, tmp_path, target):
    with pytest.raises(GemmaExportError, match=f"target '{target}' exports .* quantization, not source"):
        export(mixed_gguf, tmp_path / "out", ExportOptions(target=target, quant="source", max_seq_len=64))
    assert not (tmp_path / "out").exists()
