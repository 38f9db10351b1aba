"""The default target's fallbacks: config variants of every family exported with the defaults
(ExportOptions(): ort-cpu, fp32, no quantization), each against transformers at fp32 tolerance on
the whole prompt and token by token through the in-place cache, and each with the attention layers
that fused into GroupQueryAttention and those that kept the standard form, with the reason the
report gives.

One table: a row names a tiny.py config, its overrides, what it exercises and the layers expected
to fall back (layer -> words of the report's reason); every other layer must fuse."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import pytest

import gemma_runtime
from gemma_export.export import export
from gemma_export.frontend.onnx_ops import DOMAIN
from gemma_export.targets import ExportOptions
from parity import assert_fp32_parity, hf_logits, prompt, stepwise_logits
from tiny import hf_model

PROMPT = 12  # longer than most windows below; the last 4 tokens are also decoded one at a time
PREFILL = 8
S, F = "sliding_attention", "full_attention"


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    config: str  # a tiny.py config
    overrides: dict
    exercises: str
    unfused: dict[int, str] = dataclasses.field(default_factory=dict)  # layer -> words of its reason

    def __str__(self) -> str:
        return self.id


def _head_dim(n: int) -> str:
    return f"head_dim {n} is not a multiple of 16"


KV_SHARED = "KV-shared"

ROWS = [
    # Gemma 1: every layer full, no soft-capping. GroupQueryAttention rotates head dims that are
    # multiples of 16 only: 8, 24 and 40 fall back, 16 to 256 fuse.
    Row("gemma-hd8-mha-one-layer", "gemma-mha", dict(head_dim=8, num_hidden_layers=1),
        "head_dim 8 falls back; MHA; a one-layer model", {0: _head_dim(8)}),
    Row("gemma-hd24-gqa", "gemma-mqa", dict(head_dim=24, num_key_value_heads=2, num_hidden_layers=2),
        "head_dim 24 falls back; GQA", {0: _head_dim(24), 1: _head_dim(24)}),
    Row("gemma-hd40-mqa", "gemma-mqa", dict(head_dim=40, num_hidden_layers=2),
        "head_dim 40 falls back; MQA", {0: _head_dim(40), 1: _head_dim(40)}),
    Row("gemma-hd16-mqa-one-layer", "gemma-mqa", dict(head_dim=16, num_hidden_layers=1),
        "head_dim 16 fuses; MQA; a one-layer model"),
    Row("gemma-hd64-gqa", "gemma-mqa", dict(head_dim=64, num_key_value_heads=2, num_hidden_layers=2),
        "head_dim 64 fuses; GQA"),
    Row("gemma-hd128-mha", "gemma-mha", dict(head_dim=128, num_hidden_layers=1), "head_dim 128 fuses; MHA"),
    Row("gemma-hd256-mqa", "gemma-mqa", dict(head_dim=256, num_hidden_layers=1), "head_dim 256 (7B's) fuses; MQA"),
    # Gemma 2: layer 0 sliding, layer 1 full; 2 KV heads; query_pre_attn_scalar 20 against head_dim 32.
    Row("gemma2-window1-softcaps-one-layer", "gemma2", dict(sliding_window=1, num_hidden_layers=1),
        "window 1 (a query sees itself alone); attention and final softcaps; a one-layer model"),
    Row("gemma2-window2-no-softcaps", "gemma2",
        dict(sliding_window=2, num_hidden_layers=2, attn_logit_softcapping=None, final_logit_softcapping=None),
        "window 2; neither softcap"),
    Row("gemma2-window-beyond-prompt-mha", "gemma2",
        dict(sliding_window=32, num_hidden_layers=2, num_key_value_heads=4, attn_logit_softcapping=None,
             query_pre_attn_scalar=64),
        "a window longer than the prompt; final softcap alone; MHA; query_pre_attn_scalar 64"),
    Row("gemma2-hd24-window2-attn-softcap", "gemma2",
        dict(head_dim=24, sliding_window=2, num_hidden_layers=2, final_logit_softcapping=None),
        "head_dim 24 falls back with window 2 and the attention softcap alone", {0: _head_dim(24), 1: _head_dim(24)}),
    # Gemma 3: QK-norm, local and global RoPE bases, linear RoPE scaling (x2) on full layers; MQA.
    Row("gemma3-rope-scaling", "gemma3", dict(num_hidden_layers=2, layer_types=[S, F]),
        "linear RoPE scaling on the full layer (two cos/sin caches); window 6"),
    Row("gemma3-one-full-layer", "gemma3", dict(num_hidden_layers=1, layer_types=[F]),
        "every layer full: one full-attention layer (the trace reads the batch size off attention_mask)"),
    Row("gemma3-all-sliding-gqa", "gemma3",
        dict(num_hidden_layers=2, layer_types=[S, S], sliding_window=3, num_key_value_heads=2),
        "every layer sliding (window 3); GQA"),
    Row("gemma3-hd24-window2", "gemma3",
        dict(head_dim=24, query_pre_attn_scalar=24, sliding_window=2, num_hidden_layers=2, layer_types=[S, F]),
        "head_dim 24 falls back with QK-norm, window 2, both RoPEs; query_pre_attn_scalar = head_dim",
        {0: _head_dim(24), 1: _head_dim(24)}),
    # Gemma 4: sliding head_dim 32, global 64 with proportional RoPE, 2 KV heads, window 6, final softcap 30.
    Row("gemma4-kv-sharing-global-hd40", "gemma4-shared",
        dict(global_head_dim=40, num_hidden_layers=3, layer_types=[S, F, F], num_kv_shared_layers=1),
        "KV sharing: layer 2 reads the cache of layer 1, whose global head_dim 40 falls back; "
        "per-layer inputs; double-wide MLP", {1: _head_dim(40), 2: KV_SHARED}),
    Row("gemma4-k-eq-v-hd24", "gemma4-k-eq-v", dict(head_dim=24, num_hidden_layers=2, layer_types=[S, F]),
        "sliding head_dim 24 falls back beside a fused global layer (head_dim 64, K = V, one KV head)",
        {0: _head_dim(24)}),
    Row("gemma4-moe-one-layer", "gemma4-moe", dict(num_hidden_layers=1, layer_types=[F]),
        "routed experts; a one-layer model, all full; K = V"),
]


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_exports_with_the_defaults_and_matches_transformers(row, tmp_path):
    reference = hf_model(row.config, **row.overrides)
    reference.save_pretrained(tmp_path / "checkpoint", safe_serialization=True)
    manifest = export(tmp_path / "checkpoint", tmp_path / "out", ExportOptions())
    assert (manifest.target, manifest.dtype, manifest.quant["method"]) == ("ort-cpu", "fp32", "none")

    layers = manifest.config["num_layers"]
    report = manifest.report["attention"]
    assert sorted(map(int, report["unfused"])) == sorted(row.unfused)
    for layer, words in row.unfused.items():
        assert words in report["unfused"][str(layer)]
    assert report["GroupQueryAttention"] == layers - len(row.unfused)
    graph = onnx.load(tmp_path / "out" / "model.onnx", load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    assert (ops["GroupQueryAttention"], ops["Attention"]) == (layers - len(row.unfused), len(row.unfused))
    assert not [n.op_type for n in graph.node if n.domain == DOMAIN]  # every project op lowered

    model = gemma_runtime.load(tmp_path / "out", threads=1)
    ids = prompt(7, PROMPT)
    expected = hf_logits(reference, ids)
    whole = model.logits(ids)
    stepwise = stepwise_logits(model, ids, prefill=PREFILL)
    print(f"\n{row.id} ({row.exercises}): {layers - len(row.unfused)} fused, {len(row.unfused)} standard; max |diff| "
          f"whole prompt {np.abs(whole - expected).max():.2e}, "
          f"token by token {np.abs(stepwise - expected[PREFILL - 1:]).max():.2e} "
          f"(max |logit| {np.abs(expected).max():.2f})")
    assert_fp32_parity(whole, expected)
    assert_fp32_parity(stepwise, expected[PREFILL - 1:])
