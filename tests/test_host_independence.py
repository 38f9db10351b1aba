"""Exports whose choices rest on a measurement (--calibrate's scales, the --quant recipes'
sensitivities) are the same bytes whatever instruction set the host's numeric kernels use, the
rotary cos/sin tables included (torch's fp32 pow, cos and sin differ between those kernels).

The same export is made twice, each in a fresh process: as this host runs it (AVX2 or AVX-512
kernels, whichever it has), and with every numeric library that the export measures with held to
its SSE4.2 kernels through the switches they read at load (torch's ATen dispatch, MKL and oneDNN
under it, numpy's dispatched loops). OpenBLAS (numpy's float64 products here) keeps the host's
OPENBLAS_CORETYPE, which some hosts set to avoid broken kernels. onnxruntime has no such switch (its
MLAS kernels choose by cpuid alone): no measuring decision runs in it any more
(gemma_export/quantization/float64_reference.py).
On an AVX-512 host this compares AVX-512 kernels with SSE4.2 ones, on an AVX2 host AVX2 with SSE4.2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gemma_export.quantization.float64_reference import SSE42_KERNELS
from golden_exports import fingerprint

SSE42_ONLY = SSE42_KERNELS
HOST_KERNELS = {name: None for name in SSE42_ONLY}
PROBE = "import torch, numpy._core._multiarray_umath as m; print(torch.backends.cpu.get_cpu_capability(), m.__cpu_features__['X86_V3'])"


def child(env_changes: dict[str, str | None], *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_switches_change_the_kernels():
    """Without this the comparison below would prove nothing: the held-back process runs other code."""
    assert child(SSE42_ONLY, "-c", PROBE).split() == ["DEFAULT", "False"]
    assert child(HOST_KERNELS, "-c", PROBE).split()[0] != "DEFAULT"


@pytest.mark.parametrize("quant", ["int4"])  # int8 takes the same path (one recipe, one calibration)
def test_calibrated_recipes_are_the_same_bytes_on_other_kernels(tiny_checkpoints, tmp_path, quant):
    exports = []
    for name, env in (("host", HOST_KERNELS), ("sse42", SSE42_ONLY)):
        out = tmp_path / name
        child(env, "-c", "import sys; from gemma_export.cli import main; sys.argv[0] = 'gemma-export'; main()",
              "export", str(tiny_checkpoints["gemma3"]), "-o", str(out), "--quant", quant, "--calibrate",
              "--max-seq-len", "256")  # every position: the rotary tables are compared too
        report = json.loads((out / "manifest.json").read_text())["report"]
        exports.append((fingerprint(out), report["quantization"], report["calibration"]))
    (host, host_recipe, host_scales), (sse, sse_recipe, sse_scales) = exports
    assert set(host_recipe["choices"].values()) != {quant}  # the recipe chose: something to compare
    assert host_recipe == sse_recipe  # choices and every sensitivity, to its 3 digits
    assert host_scales == sse_scales
    assert host == sse  # ops, inputs, outputs and every initializer's bytes
