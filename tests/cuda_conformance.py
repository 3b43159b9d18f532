"""edgecnn's CUDA runtime calls against the REAL cuda-python of the CUDA each TensorRT release ships with.

The TensorRT runner and edgecnn/trt/cudart.py talk to the GPU through cuda-python. Its wheels (12-26 MB) import on any
x86-64 Linux; without an NVIDIA driver every call still converts all of its arguments (a wrong count, type or enum
raises TypeError/AttributeError there) and then fails for want of libcuda.so.1: 12.x raises RuntimeError ("Failed to
dlopen libcuda.so.1", then 'Function "cuInit" not found'), 13.x returns cudaErrorInsufficientDriver. So each call
edgecnn makes goes first to the real function, which checks it, and is then answered as a GPU would answer
(tests/trt_conformance_world.cuda_answers, built of the real types). A function cuda-python lacks is an
AttributeError, as on a device.

The pairs are the CUDA of each TensorRT release as deploy bundles pin it (JetPack 6.0: CUDA 12.2 with TensorRT 8.6;
6.1/6.2: 12.6 with 10.3; JetPack 7: 13.0). 12.2 has only the old `cuda.cudart` module, 13 only
`cuda.bindings.runtime`: both of edgecnn's import paths are exercised.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import types
import zipfile
from pathlib import Path

from trt_conformance_bindings import CACHE, Unavailable, fetch_wheel
from trt_conformance_doubles import ConformanceError

# TensorRT release -> (the module edgecnn must end up importing, the wheels of that CUDA's cuda-python)
CUDA_PYTHON = {
    "8.6.1": ("cuda.cudart", ("cuda-python==12.2.1",)),
    "10.3.0": ("cuda.bindings.runtime", ("cuda-python==12.6.2.post1",)),
    "10.13.0.35": ("cuda.bindings.runtime", ("cuda-python==12.6.2.post1",)),
    "11.4.0.106": ("cuda.bindings.runtime", ("cuda-bindings==13.0.3", "cuda-pathfinder==1.9.1")),
}
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def prepare_cuda(trt_version: str) -> tuple[str, Path]:
    """(module name, site folder) of the cuda-python paired with `trt_version`; raises Unavailable with the reason."""
    module, requirements = CUDA_PYTHON[trt_version]
    key = "+".join(r.replace("==", "-") for r in requirements)
    site = CACHE / f"cuda-site-{key}"
    if (site / ".complete").is_file():
        return module, site
    wheels = [fetch_wheel(r, PLATFORMS) for r in requirements]
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".unpack-cuda-"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
    if not (tmp / Path(*module.split(".")[:-1])).is_dir():
        shutil.rmtree(tmp)
        raise Unavailable(f"{', '.join(w.name for w in wheels)} hold no {module}")
    (tmp / ".complete").write_text("\n".join(requirements) + "\n")
    shutil.rmtree(site, ignore_errors=True)
    os.replace(tmp, site)
    return module, site


def _driver_absent(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("libcuda" in text or text.startswith('Function "cu'))


def checked_runtime(real: types.ModuleType, answers: types.ModuleType) -> types.ModuleType:
    """A module whose functions call the real one first (its argument checks), then return the GPU's answer.

    The real call, made without a driver, must get as far as the driver: a RuntimeError about libcuda (12.x) or a
    result tuple starting with a cudaError_t (13.x, whose tuple length the answer must also have). Anything else
    (TypeError, AttributeError, ValueError) is edgecnn calling cuda-python wrongly: ConformanceError."""

    class Checked(types.ModuleType):
        def __getattr__(self, name):
            value = getattr(real, name)  # AttributeError where cuda-python has no such name, as on a device
            if not callable(value) or isinstance(value, type):
                return value
            answer = getattr(answers, name, None)
            if answer is None:
                raise ConformanceError(f"edgecnn calls {name}, which cuda_answers does not simulate: add it")

            def call(*args, **kwargs):
                try:
                    got = value(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - which exception is the verdict
                    if not _driver_absent(exc):
                        raise ConformanceError(
                            f"{real.__name__}.{name}{_shown(args, kwargs)} refused by cuda-python: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                    got = None
                result = answer(*args, **kwargs)
                if got is not None:
                    if not (isinstance(got, tuple) and got and isinstance(got[0], real.cudaError_t)):
                        raise ConformanceError(f"{real.__name__}.{name} returned {got!r}, not (cudaError_t, ...)")
                    if len(got) != len(result):
                        raise ConformanceError(
                            f"{real.__name__}.{name} returns {len(got)} values; the simulated answer has {len(result)}"
                        )
                return result

            return call

    return Checked(real.__name__)


def _shown(args, kwargs) -> str:
    parts = [type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"
