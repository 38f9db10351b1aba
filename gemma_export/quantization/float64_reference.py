"""The model in float64, run by its torch definition (gemma_graphs.gemma), for the export's
decisions that rest on a measurement: the activation-aware scales of `--calibrate`
(activation_scales.py) and the recipes' sensitivities (sensitivity.py).

Why not the graph in onnxruntime, as these measured before: onnxruntime's fp32 kernels take other
paths on other instruction sets (AVX2, AVX-512 and NEON sum in other orders and approximate
exp and tanh differently), so every measured activation differs in its last bits from host to host.
Scales computed from them differed in every byte (a fresh clone's golden fixture failed on
AVX-512 hosts), and a sensitivity, the KL of a small perturbation, moved by about 1e-3 relative for
an int8 unit when the fed weights moved by one ulp, which is enough to move a recipe's choice.
In float64 the kernels' differences are near 1e-16 relative, far below the rounding of everything
decided from them (scales to powers of two, sensitivities to 3 significant digits); the module
computes its norms, RoPE, attention and router in float64 too (gemma_graphs.ops.compute_dtype).

The graph's units (units.Unit) map back to the module's parameters by name: a
product's weight `<module>.weight.T`, packed products `<prefix>.<a>+<b>` (their rows stacked in
that order), a table by its own name. Each unit's rows in the graph must equal those parameters
times its scale, to fp32's rounding of W s (checked on its first rows: a pass that folded anything
else into a weight would make the measurement wrong, so it is refused). A measurement swaps a
unit's parameters for the values the export will store, Q(W s) / s, and rounds its products' input
as the kernel does, Qa(x / s) s, so that the module computes what the quantized graph computes,
in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Collection, Iterator

import numpy as np
import torch

from gemma_export.errors import GemmaExportError
from gemma_export.passes.context import PassContext
from gemma_export.quantization.units import Unit
from gemma_graphs.roles import roles

DTYPE = torch.float64
LM_HEAD_INPUT = "lm_head_input"  # the module's hook point in front of the tied lm_head
CHECKED_ROWS = 4  # rows of each unit compared with its parameters
SCALED_ROUNDING = 1e-6  # relative: W s as the graph holds it is rounded to fp32 (2^-24)
CHUNK_BYTES = 64 * 2 ** 20  # float64 rows of a swapped table built at a time
# Environment variables that hold the libraries this measurement runs on to their SSE4.2 kernels,
# read when each loads (so for a new process): torch's ATen dispatch, MKL and oneDNN under it, and
# numpy's dispatched loops. The tests and benchmarks/host_independence.py export with and without
# them to show that the export does not depend on the host's instruction set.
SSE42_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}


@dataclasses.dataclass
class Prefill:
    """One sequence run from empty caches, kept so that a measurement can start at any layer."""
    ids: torch.Tensor  # [1, n]
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    past: list[torch.Tensor]  # the empty caches, in cache_tensors() order
    presents: list[torch.Tensor]  # every cache after the whole run
    per_layer: torch.Tensor | None  # Gemma 4's per-layer inputs
    layer_inputs: list[torch.Tensor]  # the residual stream entering each layer


class Float64Reference:
    """The source's model in float64 (8 bytes a parameter in memory) and its units' parameters."""

    def __init__(self, ctx: PassContext, units: list[Unit]):
        from gemma_graphs.gemma import load_reference

        if ctx.weights is None:
            raise GemmaExportError("measuring needs the checkpoint's weights (PassContext.weights)")
        self.ctx = ctx
        self.module = load_reference(ctx.config, ctx.weights, DTYPE)
        self.parameters = dict(self.module.named_parameters())
        self.roles = roles(ctx.config)
        self.parts = {u.name: self._parts(u) for u in units}

    def _parts(self, unit: Unit) -> list[str]:
        names = parameter_names(unit.name, self.parameters)
        missing = [n for n in names if n not in self.parameters]
        rows = sum(self.parameters[n].numel() // self.parameters[n].shape[-1] for n in names if n not in missing)
        if missing or rows != unit.shape[0]:
            raise GemmaExportError(f"internal: weight {unit.name} matches no parameter of the model "
                                   f"(looked for {', '.join(names)})")
        first = self.parameters[names[0]].detach().reshape(-1, unit.shape[1])[:CHECKED_ROWS].numpy()
        graph = np.asarray(unit.rows().rows(0, len(first)), np.float64)
        if not np.allclose(graph / self.scale(unit)[None], first, rtol=SCALED_ROUNDING, atol=0):
            raise GemmaExportError(f"internal: weight {unit.name} in the graph is not its parameters "
                                   f"({', '.join(names)}) times its input scale")
        return names

    def scale(self, unit: Unit) -> np.ndarray:
        """The unit's activation-aware scale s (--calibrate; ones without): the graph holds W s."""
        s = self.ctx.input_scales.get(unit.name)
        return np.ones(unit.shape[1]) if s is None else s.astype(np.float64)

    def prefill(self, ids: list[int]) -> Prefill:
        from gemma_graphs.gemma import cache_tensors

        n = len(ids)
        past = [torch.zeros(1, s.kv_heads, 0, s.head_dim, dtype=DTYPE) for s in cache_tensors(self.ctx.config)]
        run = Prefill(torch.tensor([ids]), torch.arange(n)[None], torch.ones(1, n, dtype=torch.int64), past,
                      presents=list(past), per_layer=None, layer_inputs=[])
        with torch.no_grad():
            x, run.per_layer = self.module.embed(run.ids)
            outputs: list[torch.Tensor] = []
            self.module.layers_from(0, x, run.position_ids, run.attention_mask, run.past, run.presents,
                                    run.per_layer, outputs)
        run.layer_inputs = [x, *outputs]
        return run

    def inputs(self, units: list[Unit], runs: list[Prefill]) -> dict[str, np.ndarray]:
        """Each product unit's activation as the graph sees it, x / s, [tokens, in], over the runs."""
        products = [u for u in units if u.products]
        seen: dict[str, list[np.ndarray]] = {u.name: [] for u in products}

        def recorder(unit: Unit):
            s = torch.from_numpy(self.scale(unit))
            return lambda module, args: seen[unit.name].append((args[0] / s).reshape(-1, len(s)).numpy())

        hooks = [self._product_module(u).register_forward_pre_hook(recorder(u)) for u in products]
        try:
            for run in runs:
                self._logits(run, 0)
        finally:
            for hook in hooks:
                hook.remove()
        return {name: np.concatenate(arrays) for name, arrays in seen.items()}

    def log_probs(self, run: Prefill, start: int, positions: slice) -> torch.Tensor:
        """Log-probabilities at the given positions [p, vocab], the layers run again from `start`."""
        return torch.log_softmax(self._logits(run, start, positions), dim=-1)

    def _logits(self, run: Prefill, start: int, positions: slice = slice(None)) -> torch.Tensor:
        with torch.no_grad():
            presents = list(run.presents)
            if start == 0:  # a table read before the layers may be the one swapped
                x, per_layer = self.module.embed(run.ids)
            else:
                x, per_layer = run.layer_inputs[start], run.per_layer
            x = self.module.layers_from(start, x, run.position_ids, run.attention_mask, run.past, presents, per_layer)
            return self.module.head(x[:, positions])[0]

    def first_layer(self, unit: Unit) -> int:
        """The first layer whose output the unit changes (0 for what is read before the layers)."""
        layer = self.roles.layer_of(self.parts[unit.name][0])
        return 0 if layer is None else layer

    @contextlib.contextmanager
    def quantized(self, unit: Unit, stored: Callable[[int, int], np.ndarray] | None,
                  rounding: Callable[[np.ndarray], np.ndarray] | None) -> Iterator[None]:
        """The module with the unit's weights as the export stores them (stored(a, b): rows a..b of
        its [out, in] rows as the graph holds them, W s, quantized and dequantized; None keeps
        them) and its products' input rounded by `rounding` (applied to x / s; None: not rounded).
        A table is replaced in chunks of rows, never copied whole in fp32."""
        s = self.scale(unit)
        saved = {}
        hook = None
        try:
            if stored is not None:
                offset = 0
                for name in self.parts[unit.name]:
                    p = self.parameters[name]
                    n, k = p.numel() // p.shape[-1], p.shape[-1]
                    values = torch.empty((n, k), dtype=DTYPE)
                    step = max(1, CHUNK_BYTES // (DTYPE.itemsize * k))
                    for a in range(0, n, step):
                        b = min(n, a + step)
                        values[a:b] = torch.from_numpy(stored(offset + a, offset + b).astype(np.float64) / s[None])
                    saved[name] = p.data
                    p.data = values.reshape(p.shape)
                    offset += n
            if rounding is not None:
                st = torch.from_numpy(s)

                def round_input(module, args):
                    x = args[0]
                    flat = (x / st).reshape(-1, x.shape[-1]).numpy()
                    return (torch.from_numpy(rounding(flat)).to(x.dtype).reshape(x.shape) * st,)

                hook = self._product_module(unit).register_forward_pre_hook(round_input)
            yield
        finally:
            for name, data in saved.items():
                self.parameters[name].data = data
            if hook is not None:
                hook.remove()

    def _product_module(self, unit: Unit) -> torch.nn.Module:
        """The module whose input every product of the unit reads."""
        if unit.name == self.roles.embedding:
            return getattr(self.module, LM_HEAD_INPUT)
        return self.module.get_submodule(self.parts[unit.name][0].removesuffix(".weight"))


def parameter_names(unit_name: str, parameters: Collection[str]) -> list[str]:
    """The module parameters (of `parameters`) a graph weight holds, in row order."""
    if unit_name.endswith(".weight.T"):
        return [unit_name.removesuffix(".T")]
    if "+" in unit_name:
        # packed (passes/pack_matmuls.py): the common prefix, then each module's path below it, which
        # may hold dots (self_attn.q_proj+laurel.linear_left): the longest prefix naming parameters
        first, *rest = unit_name.split("+")
        candidates = [[f"{first[:cut]}.{part}.weight" for part in (first[cut + 1:], *rest)]
                      for cut in reversed([i for i, c in enumerate(first) if c == "."])]
        return next((names for names in candidates if all(n in parameters for n in names)),
                    candidates[0] if candidates else [unit_name])
    return [unit_name]

