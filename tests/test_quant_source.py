"""`--quant source`: a quantized GGUF exports with its own blocks (nothing rounded a second time).

With fp32 activations (accuracy level 0) the source-block export must give the fp32 export's logits
(both compute with the same dequantized values), for a file mixing every kept type: packed
products whose parts differ in type (Q5_0 / Q8_0, Q4_1 / Q5_1), 16-wide blocks (Q6_K), float
offsets (Q4_K, Q5_K, Q4_1, Q5_1, Q2_K), 3- and 2-bit K-quants (Q3_K, Q2_K), 4-bit (Q4_0) and the
tied Q8_0 table."""

import json

import numpy as np
import pytest

import gemma_runtime
from gemma_export.errors import GemmaExportError
from gemma_export.export import export
from gemma_export.passes import quantize_matmuls
from gemma_export.targets import SOURCE_HEADROOM, ExportOptions
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
        if parts[2] == "ffn_down" and layer >= 3:
            return {3: Q.Q2_K, 4: Q.Q3_K, 5: Q.Q5_K}[layer]
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
    # one-stage lm_head: the two-stage head's tail is an int4 scan (tests/test_pass_two_stage_lm_head.py)
    source = export(mixed_gguf, tmp_path / "source", ExportOptions(quant="source-uniform", max_seq_len=64,
                                                                   lm_head_candidates=0))
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
    assert manifest["quant"]["method"] == "source-uniform"


def test_source_spends_its_headroom_on_float_where_int8_activations_hurt_most(mixed_gguf, tmp_path):
    """`--quant source` measures each block unit's KL under the kernel's int8 activations and buys
    float for the most KL per byte within its blocks' size + SOURCE_HEADROOM; its logits move less
    from fp32 than source-uniform's."""
    uniform = export(mixed_gguf, tmp_path / "uniform", ExportOptions(quant="source-uniform", max_seq_len=64))
    mixed = export(mixed_gguf, tmp_path / "mixed", ExportOptions(quant="source", max_seq_len=64))
    report = mixed.report["quantization"]
    kl, choices = report["sensitivity"]["kl"], report["choices"]
    assert set(kl) == set(choices) - set(report["requantized"])
    assert all(k["source"] > 0 and k["float"] == 0 for k in kl.values())
    assert set(choices.values()) == {"source", "float"}
    least = max(report["all_narrowest_mib"], report["all_narrowest_streamed_mib"])  # the files', the stream's
    assert report["budget_mib"] == pytest.approx(least * (1 + SOURCE_HEADROOM), abs=0.01)
    assert max(report["estimated_mib"], report["estimated_streamed_mib"]) <= report["budget_mib"]
    weights = lambda out: (tmp_path / out / "model.onnx.data").stat().st_size  # noqa: E731
    assert weights("uniform") < weights("mixed") <= report["budget_mib"] * 2 ** 20 * 1.02
    fp32 = export(mixed_gguf, tmp_path / "fp32", ExportOptions(max_seq_len=64))
    models = {m: gemma_runtime.load(tmp_path / m) for m in ("fp32", "uniform", "mixed")}
    rng = np.random.default_rng(0)
    kl = {"uniform": 0.0, "mixed": 0.0}
    for _ in range(3):  # the random weights make one sequence a noisy judge
        ids = [2, *rng.integers(4, 290, size=40).tolist()]
        ref = _log_softmax(models["fp32"].logits(ids))
        for m in kl:
            kl[m] += float((np.exp(ref) * (ref - _log_softmax(models[m].logits(ids)))).sum(-1).mean())
    assert kl["mixed"] < kl["uniform"]
    assert fp32.quant["method"] == "none" and uniform.report["quantization"]["recipe"] == "source-uniform"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_source_measures_nothing_where_the_kernels_keep_fp32_activations(mixed_gguf, tmp_path):
    """ort-cuda's MatMulNBits keeps fp32 activations: a kept block moves nothing, so `source` is
    `source-uniform` there (no sensitivity run)."""
    manifest = export(mixed_gguf, tmp_path / "cuda", ExportOptions(target="ort-cuda", quant="source", max_seq_len=64))
    report = manifest.report["quantization"]
    assert "sensitivity" not in report and set(report["choices"].values()) == {"source"}


def test_types_without_a_decoder_are_requantized_and_listed(tmp_path):
    path = tmp_path / "iq4.gguf"
    write_gguf(path, "gemma3", type_of=lambda n: None if "norm" in n else Q.IQ4_NL if "ffn_down" in n else Q.Q8_0)
    manifest = export(path, tmp_path / "out", ExportOptions(quant="source-uniform", max_seq_len=64))
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
