"""Run under another onnxruntime (its package first on PYTHONPATH) by test_onnxruntime_floor.py:
an export to ort-cpu and onnx, then each artifact's parity with the transformers logits the parent computed (whole
prompt, token by token through the cache, a ragged batch against each prompt alone), a serve smoke
test, and the tokenizers and server on them: the SentencePiece artifact served (a completion whose
text is the parent's, streamed and not, a chat turn held to a JSON schema, the metrics) and a
tokenizer.json read (the ids the parent's tokenizers gave). Prints one JSON line: the versions
found (those the plan names, checked), the largest relative difference per artifact."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime

import gemma_runtime
from gemma_export.export import export
from gemma_export.targets import ExportOptions
from gemma_export.verify.compare import fp32_failures
from gemma_runtime.tokenizer import Tokenizer
from parity import prompt, stepwise_logits
from test_server import LiveServer

EXPORTED_TARGETS = ("ort-cpu", "onnx")  # the compiler's contrib-op and standard-op lowerings, with its floors
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


def check_tokenizers_and_server(plan: dict) -> None:
    tokenizer_json = plan["tokenizer_json"]
    tokenizer = Tokenizer("tokenizer.json", Path(tokenizer_json["path"]).read_bytes(), bos_id=2)
    assert tokenizer.encode(tokenizer_json["text"], add_bos=False) == tokenizer_json["ids"], tokenizer_json
    server = LiveServer(plan["server_artifact"], max_batch=2)
    try:
        request = {"prompt": "abc", "max_tokens": 6, "temperature": 0}
        status, body = server.post("/v1/completions", request)
        assert status == 200 and body["choices"][0]["text"] == plan["server_completion"], (status, body)
        streamed = server.client.completions.create(model="tiny", stream=True, **request)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == plan["server_completion"]
        point = {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}},
                 "required": ["x"], "additionalProperties": False}
        status, body = server.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "ab"}], "max_tokens": 40, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "point", "schema": point}}})
        assert status == 200 and body["choices"][0]["finish_reason"] == "stop", (status, body)
        assert isinstance(json.loads(body["choices"][0]["message"]["content"])["x"], int), body
        status, text, _ = server.get("/metrics")
        assert status == 200 and "gemma" in text, text[:200]
    finally:
        server.close()


def main(version: str, plan_file: str) -> None:
    assert onnxruntime.__version__ == version, f"onnxruntime {onnxruntime.__version__} found, {version} expected"
    plan = json.loads(Path(plan_file).read_text())
    versions = {package: importlib.metadata.version(package) for package in plan["versions"]}
    assert versions == plan["versions"], versions
    artifacts = dict(plan["artifacts"])
    for target in EXPORTED_TARGETS:
        folder = Path(plan["export_to"]) / target
        export(Path(plan["checkpoint"]), folder, ExportOptions(target=target, max_seq_len=64))
        artifacts[f"{target} exported here"] = [str(folder), plan["checkpoint_name"]]
    worst = {}
    for label, (folder, reference) in artifacts.items():
        model = gemma_runtime.load(folder, threads=1, device="cpu")
        ref = dict(np.load(Path(plan["references"]) / f"{reference}.npz"))
        worst[label] = check(model, ref, fp16=model.manifest.dtype == "fp16")
    server = LiveServer(Path(plan["export_to"]) / EXPORTED_TARGETS[0], max_batch=2)
    try:
        status, body = server.post("/v1/completions", {"prompt": prompt(5, 6), "max_tokens": 4, "temperature": 0})
    finally:
        server.close()
    assert status == 200 and body["usage"]["completion_tokens"] == 4, (status, body)
    check_tokenizers_and_server(plan)
    print(json.dumps({"versions": versions, "worst_relative": worst, "serve": status}))


if __name__ == "__main__":
    main(*sys.argv[1:])
