"""fp16 / bf16 encoder graphs (gemma_export/export_media.py with passes/precision.lower()): computed in
the low dtype with fp32 inputs and outputs, their overflow measured over the built-in calibration
media (gemma_export/calibrate_media.py) and kept in fp32. End-to-end parity of fp16 towers with the
decoder: tests/test_multimodal.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file

from gemma_export import calibrate_media, export_media
from gemma_export.checkpoints import open_source
from gemma_export.checkpoints.safetensors_dir import TEXT_PREFIXES
from gemma_export.export import resolve_options, with_media
from gemma_export.passes import precision
from gemma_export.targets import ExportOptions
from tiny import write_multimodal_checkpoint


def write_encoder(checkpoint, folder, target: str, dtype: str) -> tuple[str, dict, dict]:
    """The image encoder written as an export writes it; returns (its file, its precision report,
    the manifest's multimodal section)."""
    options = resolve_options(ExportOptions(target=target, dtype=dtype))
    source = with_media(open_source(checkpoint), options)
    chosen = export_media.encoders(source, options)
    stored = export_media.check_weights(source, chosen, TEXT_PREFIXES[source.multimodal.model_type])
    section = export_media.multimodal_section(source, chosen, source.config.media_blocks)
    folder.mkdir()
    graphs, _, reports = export_media.write_encoders(source, chosen, stored, section, options, folder,
                                                     lambda *_: None)
    return str(folder / graphs["image_encoder"].file), reports.get("image_encoder", {}).get("precision"), section


def soft_tokens(path: str, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["soft_tokens"], feed)[0]


@pytest.fixture(scope="module")
def hot_checkpoint(tmp_path_factory):
    """Gemma 3's tiny checkpoint with its patch embedding scaled up: the tower's residual stream
    reaches ~1e5, beyond fp16's 65504."""
    folder = write_multimodal_checkpoint("gemma3", tmp_path_factory.mktemp("hot-tower"))
    weights = load_file(folder / "model.safetensors")
    name = next(n for n in weights if n.endswith("patch_embedding.weight"))
    weights[name] = weights[name] * np.float32(2e4)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_fp16_encoder_computes_in_fp16_between_fp32_inputs_and_outputs(tmp_path):
    checkpoint = write_multimodal_checkpoint("gemma4", tmp_path / "ckpt")
    path, report, section = write_encoder(checkpoint, tmp_path / "fp16", "ort-cuda", "fp16")
    reference, _, _ = write_encoder(checkpoint, tmp_path / "fp32", "ort-cpu", "fp32")
    graph = onnx.load(path, load_external_data=False).graph
    assert {i.type.tensor_type.elem_type for i in graph.input} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    products = [n for n in graph.node if n.op_type == "MatMul"]
    assert report["compute"] == "fp16" and report["low_precision_nodes"] > len(products) > 0
    assert "norm statistics (stash_type=1)" not in report["fp32_by_rule"]  # Gemma 4's RMSNorms are plain ops
    feed = calibrate_media.encoder_inputs("image", section["image"])[3]  # the noise image
    ours, expected = soft_tokens(path, feed), soft_tokens(reference, feed)
    assert np.abs(ours - expected).max() <= 2e-2 * np.abs(expected).max()


def test_fp16_keeps_an_overflowing_tower_value_in_fp32(hot_checkpoint, tmp_path, monkeypatch):
    path, report, _ = write_encoder(hot_checkpoint, tmp_path / "kept", "ort-cuda", "fp16")
    assert report["kept_fp32"] and max(report["kept_fp32"].values()) > 65504  # measured, beyond fp16's range
    reference, _, _ = write_encoder(hot_checkpoint, tmp_path / "fp32", "ort-cpu", "fp32")
    feed = {"pixel_values": np.random.default_rng(0).uniform(-1, 1, (2, 3, 28, 28)).astype(np.float32)}
    ours, expected = soft_tokens(path, feed), soft_tokens(reference, feed)
    assert np.isfinite(ours).all()
    assert np.abs(ours - expected).max() <= 2e-2 * np.abs(expected).max()
    monkeypatch.setattr(precision, "FP16_LIMIT", float("inf"))  # keep nothing: the same tower overflows
    plain, _, _ = write_encoder(hot_checkpoint, tmp_path / "plain", "ort-cuda", "fp16")
    assert not np.isfinite(soft_tokens(plain, feed)).all()


def test_bf16_on_the_cpu_stores_bf16_and_computes_fp32(tmp_path):
    checkpoint = write_multimodal_checkpoint("gemma3", tmp_path / "ckpt")
    path, report, _ = write_encoder(checkpoint, tmp_path / "bf16", "ort-cpu", "bf16")
    assert report["compute"] == "fp32" and report["kept_fp32"] == {}
    weights = [t for t in onnx.load(path).graph.initializer if t.data_type == onnx.TensorProto.BFLOAT16]
    assert weights
