"""What a pass may read: the config, the target's facts, the user's options, the model's cache
slots, and a report it may add to."""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from gemma_graphs.config import GemmaConfig

if TYPE_CHECKING:
    import numpy as np

    from gemma_export.checkpoints.base import WeightSource
    from gemma_runtime.interface import CacheTensor
    from gemma_runtime.tokenizer import Tokenizer

DTYPES = ("fp32", "fp16", "bf16")
# int8 / int4: a recipe (passes/quant_recipe.py) that picks each weight's width by measured
# sensitivity under a size budget, starting from that width; -uniform: every weight at that width;
# source: a quantized GGUF's own blocks, float where their int8 activations hurt most within a budget;
# source-uniform: every unit its own blocks.
QUANTS = ("none", "int8", "int4", "int8-uniform", "int4-uniform", "source", "source-uniform")
# The recipes' default budgets, as a fraction of the fp32 size of every weight (--max-size overrides
# them); chosen on the real Gemma 3 270M, where they meet the README's fidelity goals.
DEFAULT_BUDGET = {"int4": 0.30, "int8": 0.45}
# --quant source's default budget: the all-source size plus this fraction, spent on float for the
# units whose kernel input rounding (int8 activations) moves the output most.
SOURCE_HEADROOM = 0.15


@dataclasses.dataclass(frozen=True)
class Target:
    """One export target: its ordered passes and the facts they act on (gemma_export/targets.py
    holds the table). Fields that change a graph default to off."""

    name: str
    graph: str  # for people: what the graph is made of
    kv_cache: str  # for people: the cache's form
    runs_on: str  # for people
    passes: tuple[str, ...]  # module names in gemma_export/passes/, in order
    # the passes in runnable groups: the graph runs in onnxruntime after each group's last pass
    # (targets.py derives them; gemma_export/bisect.py checks the graph there)
    groups: tuple[tuple[str, ...], ...] = ()
    dtypes: tuple[str, ...] = DTYPES  # precisions it exports, the default first
    quants: tuple[str, ...] = QUANTS
    quantized_matmul: str | None = None  # a quantized product: "MatMulNBits" (com.microsoft) or "DequantizeLinear"
    int4_zero_points: bool = True  # int4 blocks carry zero points
    int8_activations: bool = False  # the CPU kernel rounds a quantized product's input to int8 (calibrate for it)
    ring_caches: bool = False  # sliding-window layers keep a window-sized ring cache
    bf16_compute: bool = False  # bf16 computed in bf16; else bf16 storage with fp32 compute (CPU kernels)
    backends: tuple[str, ...] = ("ort",)  # runtime backends that run it, the default first
    devices: tuple[str, ...] = ("cpu",)  # onnxruntime devices, the default first

    def pass_modules(self) -> list[ModuleType]:
        return [importlib.import_module(f"gemma_export.passes.{name}") for name in self.passes]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    target: str | None = None  # None: the default target (the first of gemma_export/targets.py)
    dtype: str | None = None  # None: the target's default
    quant: str = "none"
    block_size: int = 32
    calibrate: bool = False
    keep_embeddings_fp: bool = False
    max_seq_len: int = 4096
    max_size_mib: float | None = None  # the int8 / int4 / source recipes' budget; None: the recipe's default

    @property
    def quant_bits(self) -> int | None:
        """The width --quant starts every weight at (None: no quantization, or the source's own)."""
        return {"int8": 8, "int8-uniform": 8, "int4": 4, "int4-uniform": 4}.get(self.quant)


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
    # the checkpoint's tensors by HF name: what the float64 reference measures with (gemma_export/float64_reference.py)
    weights: WeightSource | None = None
    # weight (initializer) name -> its activation-aware scale s (--calibrate): the graph holds W s, its products read x / s
    input_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
