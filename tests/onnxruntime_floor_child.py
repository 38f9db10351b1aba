"""Run under another onnxruntime (its package first on PYTHONPATH) by test_onnxruntime_floor.py:
an export, then each artifact's parity with the transformers logits the parent computed (whole
prompt, token by token through the cache, a ragged batch against each prompt alone), and a serve
smoke test. Prints one JSON line: what ran and the largest relative difference per artifact."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_export.verify.compare import fp32_failures
from parity import prompt, stepwise_logits
from test_server import LiveServer

FP16_RELATIVE_TOLERANCE = 1e-2  # ort-cuda's fp16 on the CPU provider, as the conformance suite takes it


def check(model, ref: dict[str, np.ndarray], fp16: bool) -> float:
    whole = model.logits(prompt(1, 40))
    stepwise = stepwise_logits(model, prompt(2, 30), prefill=5)
    worst = 0.0
    for ours, expected in ((whole, ref["whole"]), (stepwise, ref["stepwise"])):
        relative = float(np.abs(ours - expected).max() / np.abs(expected).max())
        worst = max(worst, relative)
        if fp16:
            assert relative <= FP16_RELATIVE_TOLERANCE, relative
        else:
            failures = fp32_failures(ours, expected)
            assert not failures, "; ".join(failures)
    short, long = prompt(3, 7), prompt(4, 19)
    alone = [model.generate(p, max_new_tokens=8).token_ids for p in (short, long)]
    assert [r.token_ids for r in model.generate([short, long], max_new_tokens=8)] == alone
    return worst


def main(version: str, plan_file: str) -> None:
    assert onnxruntime.__version__ == version, f"onnxruntime {onnxruntime.__version__} found, {version} expected"
    plan = json.loads(Path(plan_file).read_text())
    export(Path(plan["checkpoint"]), Path(plan["export_to"]), ExportOptions(target="ort-cpu", max_seq_len=64))
    artifacts = {**plan["artifacts"], "exported here": [plan["export_to"], plan["checkpoint_name"]]}
    worst = {}
    for label, (folder, reference) in artifacts.items():
        model = gemma_runtime.load(folder, threads=1, device="cpu")
        ref = dict(np.load(Path(plan["references"]) / f"{reference}.npz"))
        worst[label] = check(model, ref, fp16=model.manifest.dtype == "fp16")
    server = LiveServer(plan["export_to"], max_batch=2)
    try:
        status, body = server.post("/v1/completions", {"prompt": prompt(5, 6), "max_tokens": 4, "temperature": 0})
    finally:
        server.close()
    assert status == 200 and body["usage"]["completion_tokens"] == 4, (status, body)
    print(json.dumps({"onnxruntime": onnxruntime.__version__, "worst_relative": worst, "serve": status}))


if __name__ == "__main__":
    main(*sys.argv[1:])
