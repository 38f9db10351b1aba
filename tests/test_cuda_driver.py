"""The trt backend's ctypes CUDA calls, on a real GPU (skipped where there is none)."""

import numpy as np
import pytest

from gemma_runtime.backends import cuda_driver

gpu = pytest.mark.skipif(cuda_driver.device_count() == 0, reason="no CUDA GPU on this machine")


@gpu
def test_compute_capability_reads_as_major_dot_minor():
    major, minor = cuda_driver.compute_capability(0).split(".")
    assert int(major) >= 5 and 0 <= int(minor) <= 9


@gpu
def test_buffer_round_trip_and_zeroing():
    cuda_driver.use_primary_context(0)
    data = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    buffer = cuda_driver.Buffer(data.nbytes + 4096)
    zeros = buffer.download(np.ones(1024, np.float32))
    assert not zeros.any()
    buffer.upload(data)
    cuda_driver.Stream().synchronize()
    assert np.array_equal(buffer.download(np.empty_like(data)), data)
    with pytest.raises(ValueError, match="do not fit"):
        buffer.upload(np.zeros(2 * data.size, np.float32))


def test_no_gpu_means_no_device_and_no_crash():
    if cuda_driver.device_count() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA driver"):
        cuda_driver.compute_capability(0)
