"""Each precision end to end on a tiny checkpoint (tests/precision_models.py): exported for ort-cpu
and onnx, run by gemma_runtime, validated against the fp32 torch reference with validate's default
threshold for that precision; weight sizes; fp16 with a residual stream beyond fp16's range."""

import numpy as np
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.describe import describe
from gemma_export.targets import DEFAULT_BUDGET, ExportOptions
from gemma_export.texts import PROMPTS
from gemma_export.verify.validate import validate

MAX_SEQ_LEN = 64
TEXTS = PROMPTS[:5]  # no tokenizer: 5 random sequences of 24 to 52 ids
# name -> (target, dtype, quant, calibrate)
EXPORTS = {
    "fp32": ("ort-cpu", "fp32", "none", False),
    "fp16": ("ort-cpu", "fp16", "none", False),
    "bf16": ("ort-cpu", "bf16", "none", False),
    "int8": ("ort-cpu", "fp32", "int8", False),
    "int4": ("ort-cpu", "fp32", "int4", False),
    "int4-calibrated": ("ort-cpu", "fp32", "int4", True),
    "onnx-fp16": ("onnx", "fp16", "none", False),
    "onnx-int4": ("onnx", "fp32", "int4", False),
}


def options(name: str) -> ExportOptions:
    target, dtype, quant, calibrate = EXPORTS[name]
    return ExportOptions(target=target, dtype=dtype, quant=quant, calibrate=calibrate, max_seq_len=MAX_SEQ_LEN)


@pytest.fixture(scope="module")
def artifacts(precision_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    for name in EXPORTS:
        export(precision_checkpoints["peaked"], root / name, options(name))
    return {name: root / name for name in EXPORTS}


@pytest.fixture(scope="module")
def reports(artifacts, precision_checkpoints):
    return {name: validate(artifacts[name], precision_checkpoints["peaked"], TEXTS, greedy_tokens=4)
            for name in EXPORTS if name != "fp32"}


@pytest.mark.parametrize("name", [n for n in EXPORTS if n != "fp32"])
def test_agreement_meets_the_default_threshold(name, reports):
    report = reports[name]
    assert report["passed"], report["failures"]
    assert report["thresholds"]["max_rel_diff"] is None  # the per-precision top-1 threshold applied


def test_calibrated_int4_is_closer_to_fp32_than_round_to_nearest(reports, artifacts):
    assert reports["int4-calibrated"]["kl_divergence"] < reports["int4"]["kl_divergence"]
    text = describe(artifacts["int4-calibrated"])
    assert "calibrated" in text and "calibration: activation-aware scaling" in text and "scales chosen: " in text


def weight_bytes(folder) -> int:
    return (folder / "model.onnx.data").stat().st_size


@pytest.mark.parametrize("name,limit", [("int4", DEFAULT_BUDGET["int4"]), ("int8", 0.55), ("fp16", 0.55),
                                        ("onnx-int4", DEFAULT_BUDGET["int4"])])
def test_weights_shrink(name, limit, artifacts):
    assert weight_bytes(artifacts[name]) <= limit * weight_bytes(artifacts["fp32"])


def test_fp16_keeps_a_residual_beyond_its_range_in_fp32(precision_checkpoints, tmp_path):
    out = tmp_path / "huge"
    manifest = export(precision_checkpoints["huge_residual"], out, options("fp16"))
    kept = manifest.report["precision"]["kept_fp32"]
    assert max(kept.values()) > 65504 and {b.dtype for b in manifest.kv_cache.buffers} == {"fp16"}
    model = gemma_runtime.load(out)
    assert np.isfinite(model.logits(list(range(2, 2 + MAX_SEQ_LEN)))).all()
    report = validate(out, precision_checkpoints["huge_residual"], TEXTS, greedy_tokens=4)
    assert report["passed"], report["failures"]
    assert "kept in fp32" in describe(out)
