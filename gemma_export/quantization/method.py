"""`--quant` parsed once: what every weight starts at, and how the recipe may change that."""

from __future__ import annotations

import dataclasses

from gemma_export.errors import GemmaExportError

WIDTHS = ("int4", "int8", "float")  # the block widths, narrowest first
SOURCE = "source"  # a quantized GGUF's own blocks; its wider width is "float"
FLOAT = "float"
UNIFORM_SUFFIX = "-uniform"
KINDS = ("none", "recipe", "uniform", "source", "source-uniform")


@dataclasses.dataclass(frozen=True)
class QuantMethod:
    """kind: none (float weights), recipe (start at `width`, widen the most sensitive units within a
    budget), uniform (every unit at `width`), source (a GGUF's own blocks, float where their kernel
    input rounding hurts most), source-uniform (every unit its own blocks)."""

    kind: str
    bits: int | None = None  # 4 or 8 for recipe and uniform

    @classmethod
    def parse(cls, text: str) -> QuantMethod:
        """The one reading of a --quant string ("int4", "int8-uniform", "source", ...)."""
        uniform = text.endswith(UNIFORM_SUFFIX)
        base = text.removesuffix(UNIFORM_SUFFIX)
        if text == "none":
            return cls("none")
        if base == SOURCE:
            return cls("source-uniform" if uniform else "source")
        if base in ("int4", "int8"):
            return cls("uniform" if uniform else "recipe", int(base.removeprefix("int")))
        raise GemmaExportError(f"--quant {text}: not a quantization method (none, int8, int4, their -uniform "
                               "forms, source, source-uniform)")

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        base = SOURCE if self.keeps_source_blocks else f"int{self.bits}"
        return base + (UNIFORM_SUFFIX if self.uniform else "")

    @property
    def quantizes(self) -> bool:
        return self.kind != "none"

    @property
    def keeps_source_blocks(self) -> bool:
        """Units start at the source's own blocks ("source" width)."""
        return self.kind in ("source", "source-uniform")

    @property
    def measured(self) -> bool:
        """The recipe measures which units to widen within a budget (--max-size applies)."""
        return self.kind in ("recipe", "source")

    @property
    def uniform(self) -> bool:
        """Every unit keeps its start width: nothing is measured."""
        return self.kind in ("uniform", "source-uniform")

    @property
    def width(self) -> str | None:
        """The width every unit starts at: "int4", "int8", "source" (None without quantization)."""
        if self.keeps_source_blocks:
            return SOURCE
        return None if self.bits is None else f"int{self.bits}"

    @property
    def widths(self) -> tuple[str, ...]:
        """The widths a unit may take, narrowest (the start) first."""
        if self.keeps_source_blocks:
            return (SOURCE, FLOAT)
        return WIDTHS[WIDTHS.index(self.width):] if self.bits else ()

    @property
    def precision(self) -> str:
        """The precision the quantized graph is judged at (validate's and bisect's thresholds)."""
        return self.width or "none"
