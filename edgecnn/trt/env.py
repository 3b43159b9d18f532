"""What this machine has for TensorRT: the tensorrt module, cuda-python, a GPU, and on a Jetson its L4T / JetPack.

Missing pieces become ONE line naming the fix (MissingDependencyError, exit code 3). On a Jetson TensorRT is a
JetPack system package (python3-libnvinfer); pip cannot install it there, and a virtualenv only sees it when created
with --system-site-packages. On a desktop it is the `tensorrt` wheel (the 'edgecnn[tensorrt]' extra).
"""

from __future__ import annotations

from edgecnn.errors import MissingDependencyError
from edgecnn.platform import jetpack_for_l4t, jetson_model, jetson_release
from edgecnn.trt import cudart
from edgecnn.trt.devices import preset_for_model_string


def jetson_info() -> dict | None:
    """{'model', 'preset', 'l4t', 'jetpack'} on a Jetson, else None."""
    l4t = jetson_release()
    if not l4t:
        return None
    model = jetson_model() or "Jetson"
    jp = jetpack_for_l4t(l4t)
    return {"model": model, "preset": preset_for_model_string(model), "l4t": l4t, "jetpack": jp.jetpack if jp else None}


def tensorrt_hint() -> str:
    if jetson_release():
        return (
            "On Jetson TensorRT ships with JetPack as a system package and pip cannot install it: "
            "sudo apt install nvidia-jetpack (or python3-libnvinfer), and create the virtualenv with "
            "--system-site-packages"
        )
    return "On a desktop: pip install 'edgecnn[tensorrt]'"


def require_tensorrt():
    """The tensorrt module, or MissingDependencyError (one line: what is missing and how to get it)."""
    import importlib

    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise MissingDependencyError(
            f"TensorRT is not installed ({exc.__class__.__name__}: {exc}). {tensorrt_hint()}"
        ) from exc


def tensorrt_version() -> str | None:
    """The installed TensorRT version without failing (None when absent or broken)."""
    try:
        return str(require_tensorrt().__version__)
    except MissingDependencyError:
        return None


def runtime_facts(device: int = 0) -> dict:
    """What an engine must match here: TensorRT version, GPU name + compute capability, CUDA, L4T/JetPack.

    Imports tensorrt and cuda-python (raises MissingDependencyError without them, or without a GPU).
    """
    trt = require_tensorrt()
    gpu = cudart.gpu_properties(device)
    jetson = jetson_info()
    return {
        "tensorrt": str(trt.__version__),
        "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "cuda": gpu["cuda_runtime"],
        "jetson": jetson,
    }


def describe() -> dict:
    """A summary for `edgecnn doctor`: each piece present or the line saying how to get it. Never raises."""
    out: dict = {"jetson": jetson_info()}
    try:
        out["tensorrt"] = str(require_tensorrt().__version__)
    except MissingDependencyError as exc:
        out["tensorrt"] = None
        out["tensorrt_missing"] = str(exc)
    try:
        out["gpu"] = cudart.gpu_properties(0)
    except MissingDependencyError as exc:
        out["gpu"] = None
        out["gpu_missing"] = str(exc)
    except Exception as exc:  # a broken driver: report, do not crash doctor
        out["gpu"] = None
        out["gpu_missing"] = f"{exc.__class__.__name__}: {exc}"
    return out
