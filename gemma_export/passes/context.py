"""What a pass may read: the config, the target's facts, the user's options, the model's cache
slots, and a report it may add to (gemma_export/targets.py holds the target and option types)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from gemma_export.targets import ExportOptions, Target
from gemma_graphs.config import GemmaConfig

if TYPE_CHECKING:
    import numpy as np

    from gemma_export.checkpoints.base import WeightSource
    from gemma_runtime.interface import CacheTensor
    from gemma_runtime.tokenizer import Tokenizer

LEFT_ALONE = "left_alone"  # a pass report's candidates not rewritten, by reason
LEFT_ALONE_EXAMPLES = 3  # candidates named per reason


@dataclasses.dataclass
class PassContext:
    config: GemmaConfig
    target: Target
    options: ExportOptions
    caches: tuple[CacheTensor, ...]  # the model's KV-cache tensors, growing and fp32 as traced
    report: dict[str, Any] = dataclasses.field(default_factory=dict)  # goes into the manifest
    tokenizer: Tokenizer | None = None  # the source's: calibration text -> ids
    # weight (initializer) name -> "int4" | "int8" | "float" | "source": the quantization recipe's choices
    quant_plan: dict[str, str] = dataclasses.field(default_factory=dict)
    # the checkpoint's tensors by HF name: what the float64 reference measures with (gemma_export/quantization/float64_reference.py)
    weights: WeightSource | None = None
    # weight (initializer) name -> its activation-aware scale s (--calibrate): the graph holds W s, its products read x / s
    input_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # bytes of the files the export copies beside the weights (the tokenizer): a recipe's default budget covers them
    copied_bytes: int = 0

    def left_alone(self, pass_name: str, candidate: str, reason: str) -> None:
        """Records a candidate the pass did not rewrite and why, as onnxscript's rewriter reports a
        failed match: report[pass_name]["left_alone"][reason] counts them and names the first few."""
        reasons = self.report.setdefault(pass_name, {}).setdefault(LEFT_ALONE, {})
        entry = reasons.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < LEFT_ALONE_EXAMPLES:
            entry["examples"].append(candidate)
