"""gemma_runtime: load a gemma-export artifact and generate with it. Never imports torch."""

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.model import GenerationResult, Model, load

__all__ = ["load", "Model", "GenerationResult", "RuntimeInputError"]
