"""The few CUDA calls the trt backend needs, made through ctypes on the driver library that every
NVIDIA install has (no CUDA toolkit, no extra package): whether there is a GPU at all (asked
before any TensorRT runtime is touched: they crash on engine load without one), its compute
capability, device buffers, copies and a stream. Everything runs in the device's primary context, the
one the TensorRT runtimes use."""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache

import numpy as np

_COMPUTE_CAPABILITY_MAJOR, _COMPUTE_CAPABILITY_MINOR = 75, 76  # CUdevice_attribute


@lru_cache(maxsize=None)
def _driver() -> ctypes.CDLL | None:
    """libcuda, initialised; None where there is no driver or it finds no usable device."""
    try:
        lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return None
    return lib if lib.cuInit(0) == 0 else None


def device_count() -> int:
    lib = _driver()
    count = ctypes.c_int(0)
    if lib is None or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def compute_capability(device: int = 0) -> str:
    """"8.9" for an RTX 4090, "9.0" for an H100."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_lib().cuDeviceGetAttribute(ctypes.byref(major), _COMPUTE_CAPABILITY_MAJOR, device), "cuDeviceGetAttribute")
    _check(_lib().cuDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_CAPABILITY_MINOR, device), "cuDeviceGetAttribute")
    return f"{major.value}.{minor.value}"


def use_primary_context(device: int = 0) -> None:
    context = ctypes.c_void_p()
    _check(_lib().cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    _check(_lib().cuCtxSetCurrent(context), "cuCtxSetCurrent")


class Buffer:
    """nbytes of device memory, zeroed."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        ptr = ctypes.c_uint64()
        _check(_lib().cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), f"cuMemAlloc ({nbytes} bytes)")
        self.ptr = ptr.value
        _check(_lib().cuMemsetD8_v2(ctypes.c_uint64(self.ptr), ctypes.c_ubyte(0), ctypes.c_size_t(nbytes)),
               "cuMemsetD8")

    def upload(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.nbytes > self.nbytes:
            raise ValueError(f"{array.nbytes} bytes do not fit a {self.nbytes}-byte buffer")
        _check(_lib().cuMemcpyHtoD_v2(ctypes.c_uint64(self.ptr), array.ctypes.data_as(ctypes.c_void_p),
                                      ctypes.c_size_t(array.nbytes)), "cuMemcpyHtoD")

    def download(self, out: np.ndarray) -> np.ndarray:
        """Fills the C-contiguous array `out` from the start of the buffer; returns it."""
        _check(_lib().cuMemcpyDtoH_v2(out.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(self.ptr),
                                      ctypes.c_size_t(out.nbytes)), "cuMemcpyDtoH")
        return out

    def __del__(self):
        lib = _driver()
        if lib is not None and getattr(self, "ptr", None):
            lib.cuMemFree_v2(ctypes.c_uint64(self.ptr))


def copy_device(target: int, source: int, nbytes: int) -> None:
    """nbytes from device address source to device address target (synchronous)."""
    _check(_lib().cuMemcpyDtoD_v2(ctypes.c_uint64(target), ctypes.c_uint64(source), ctypes.c_size_t(nbytes)),
           "cuMemcpyDtoD")


class Stream:
    """A blocking stream: it waits for the synchronous copies above, made on the default stream."""

    def __init__(self):
        handle = ctypes.c_void_p()
        _check(_lib().cuStreamCreate(ctypes.byref(handle), 0), "cuStreamCreate")
        self.handle = handle.value or 0

    def synchronize(self) -> None:
        _check(_lib().cuStreamSynchronize(ctypes.c_void_p(self.handle)), "cuStreamSynchronize")


def _lib() -> ctypes.CDLL:
    lib = _driver()
    if lib is None:
        raise RuntimeError("no CUDA driver")
    return lib


def _check(status: int, call: str) -> None:
    if status != 0:
        name = ctypes.c_char_p()
        _lib().cuGetErrorName(status, ctypes.byref(name))
        raise RuntimeError(f"{call} failed: {(name.value or b'CUDA error').decode()} ({status})")
