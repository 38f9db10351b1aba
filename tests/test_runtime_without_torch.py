"""The runtime loads and generates in a process where importing torch fails, and the grammar
library of its structured outputs imports there too."""

import subprocess
import sys

SCRIPT = r"""
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("gemma_export"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, NoTorch())
import gemma_runtime
model = gemma_runtime.load(sys.argv[1])
result = model.generate([2, 17, 33, 41], max_new_tokens=5)
assert len(result.token_ids) > 0, result
import gemma_runtime.engine, llguidance  # structured outputs' grammars
assert "torch" not in sys.modules
try:
    import torch
except ImportError:
    print("ok", result.token_ids)
"""


def test_runtime_generates_without_torch(generic_artifacts):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(generic_artifacts["gemma-mqa"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok [")
