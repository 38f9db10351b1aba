"""An artifact's encoder graphs run by onnxruntime: the processor's arrays in, one [tokens, hidden]
array of soft tokens per item out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gemma_runtime.backends.ort_session import create_session
from gemma_runtime.errors import RuntimeInputError
from gemma_runtime.interface import SOFT_TOKEN_MASK, SOFT_TOKENS
from gemma_runtime.manifest import Manifest

_NUMPY = {"float": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_, "int32": np.int32}


class Encoders:
    """The encoder graphs of an artifact by role, each opened on first use."""

    def __init__(self, folder: Path, manifest: Manifest, threads: int | None, device: str):
        self.folder, self.threads, self.device = folder, threads, device
        self.graphs = {g.role: g for g in manifest.graphs.values() if g.role != manifest.decoder.role}
        self._sessions: dict = {}

    def has(self, role: str) -> bool:
        return role in self.graphs

    def encode(self, role: str, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Per item, its soft tokens [tokens, hidden] (float32)."""
        graph = self.graphs.get(role)
        if graph is None:
            raise RuntimeInputError(f"this artifact has no {role.replace('_', ' ')} (exported with --text-only, or "
                                    "its checkpoint has none)")
        session = self._sessions.get(role)
        if session is None:
            session = self._sessions[role] = create_session(self.folder / graph.file, self.threads, self.device)
        feeds = {}
        for name, spec in graph.inputs.items():
            if name not in arrays:
                raise RuntimeInputError(f"the {role.replace('_', ' ')} takes {', '.join(graph.inputs)}; {name} is "
                                        "missing")
            feeds[name] = np.ascontiguousarray(arrays[name], _NUMPY.get(spec.dtype, None))
        outputs = [SOFT_TOKENS] + ([SOFT_TOKEN_MASK] if SOFT_TOKEN_MASK in graph.outputs else [])
        results = session.run(outputs, feeds)
        tokens = results[0].astype(np.float32, copy=False)
        if len(results) == 1:
            return list(tokens)
        return [item[mask.astype(bool)] for item, mask in zip(tokens, results[1])]
