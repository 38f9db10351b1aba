"""gemma_runtime (the folder `runtime/`): load a gemma-export artifact and generate with it, and
the compiler-runtime contract (interface.py) both sides import. Never imports torch or gemma_export."""

from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.model import GenerationResult, Model, load

__all__ = ["load", "Model", "GenerationResult", "RuntimeInputError"]
