"""The few CUDA runtime calls the TensorRT runner needs, through cuda-python (no PyTorch, no PyCUDA).

cuda-python moved its runtime bindings from `cuda.cudart` (<= 12.5) to `cuda.bindings.runtime` (12.6+, the old path
kept as a deprecated alias, dropped in 13): both are tried. Every call returns `(cudaError_t, *results)`; `call()`
turns an error into an EdgeCNNError. Pinned host buffers + cudaMemcpyAsync on one stream, as NVIDIA's TensorRT
Python samples (samples/python/common_runtime.py) do.
"""

from __future__ import annotations

import ctypes

import numpy as np

from edgecnn.errors import EdgeCNNError, MissingDependencyError
from edgecnn.platform import jetson_release

# cuda-python needs the driver's libcuda.so.1 at the first call; a container gets it only when started for the GPU
NO_DRIVER_FIX = (
    "check the driver with nvidia-smi (libcuda.so.1); in a container, start it with --gpus all (desktop) or "
    "--runtime nvidia (Jetson)"
)


def cuda_hint() -> str:
    if jetson_release():
        return (
            "install cuda-python matching the JetPack's CUDA "
            "(e.g. pip install 'cuda-python==12.6.*' on JetPack 6.1/6.2)"
        )
    return "pip install 'edgecnn[tensorrt]' (installs cuda-python)"


def load():
    """The cuda-python runtime module, or MissingDependencyError naming how to get it."""
    import importlib

    errors = []
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise MissingDependencyError(f"cuda-python is not available ({'; '.join(errors)}): {cuda_hint()}")


def call(result, what: str = "CUDA call"):
    """Unpack a cuda-python result tuple, raising on error."""
    rt = load()
    err, rest = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        raise EdgeCNNError(f"{what} failed: {text.decode() if isinstance(text, bytes) else text}")
    return rest[0] if len(rest) == 1 else (rest or None)


def gpu_properties(device: int = 0) -> dict:
    """Name, compute capability and memory of GPU `device`; MissingDependencyError when no GPU is visible."""
    rt = load()
    try:
        err, count = rt.cudaGetDeviceCount()
    except RuntimeError as exc:  # cuda-python 12.x without the driver: "Failed to dlopen libcuda.so.1"
        raise MissingDependencyError(f"the NVIDIA driver cannot be loaded ({exc}): {NO_DRIVER_FIX}") from exc
    if err != rt.cudaError_t.cudaSuccess or count == 0:
        raise MissingDependencyError(
            "No NVIDIA GPU is visible to CUDA (cudaGetDeviceCount: "
            f"{'0 devices' if err == rt.cudaError_t.cudaSuccess else err}): TensorRT needs one; {NO_DRIVER_FIX}"
        )
    if device >= count:
        raise MissingDependencyError(f"GPU {device} does not exist ({count} visible)")
    prop = call(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    runtime_version = call(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    return {
        "name": name,
        "compute_capability": f"{prop.major}.{prop.minor}",
        "memory_bytes": int(prop.totalGlobalMem),
        "cuda_runtime": f"{runtime_version // 1000}.{(runtime_version % 1000) // 10}",
    }


class Buffer:
    """A pinned host array and a device allocation of the same size."""

    def __init__(self, shape, dtype):
        rt = load()
        self.dtype = np.dtype(dtype)
        self.capacity = int(np.prod(shape))
        self.nbytes = self.capacity * self.dtype.itemsize
        self._host_ptr = call(rt.cudaMallocHost(self.nbytes), "cudaMallocHost")
        ctype = ctypes.POINTER(np.ctypeslib.as_ctypes_type(self.dtype))
        self.host = np.ctypeslib.as_array(ctypes.cast(self._host_ptr, ctype), (self.capacity,))
        self.device = call(rt.cudaMalloc(self.nbytes), "cudaMalloc")

    def free(self) -> None:
        rt = load()
        if self.device is not None:
            rt.cudaFree(self.device)
            rt.cudaFreeHost(self._host_ptr)
            self.device = None
