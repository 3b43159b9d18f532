"""What the numbers were measured on: CPU, threads, library versions, GPU and clocks, Jetson power mode.

Latency without its environment is not reproducible, so every profile records this next to the numbers. Everything is
read defensively: a missing file, a command that is absent, needs root or hangs gives `None`, never an error.
Versions come from package metadata, so recording them never imports PyTorch or TensorRT.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from edgecnn import platform as edge_platform

PACKAGES = (
    "edgecnn",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "opencv-python-headless",
    "opencv-python",
    "torch",
    "openvino",
    "tensorrt",
    "cuda-python",
)


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a command, or None when it is missing, fails or takes too long."""
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def package_versions(names=PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:  # the OpenCV actually imported (JetPack's system build has no pip metadata)
        import cv2

        versions["cv2"] = cv2.__version__
    except ImportError:
        pass
    return versions


def cpu_info(root: str | Path | None = None) -> dict:
    """CPU model, logical cores, cores this process may use, and the frequency governor."""
    model = edge_platform.cpu_model(root) or platform.processor() or platform.machine()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "governor": edge_platform.cpu_governor(root),
    }


def parse_nvidia_smi(csv_text: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit
    --format=csv,noheader`."""
    gpus = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 6:
            continue
        gpus.append(
            {
                "name": parts[0],
                "driver": parts[1],
                "sm_clock": parts[2],
                "sm_clock_max": parts[3],
                "mem_clock": parts[4],
                "power_limit": parts[5],
            }
        )
    return gpus


def gpu_info() -> list[dict]:
    out = _run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit",
            "--format=csv,noheader",
        ]
    )
    return parse_nvidia_smi(out) if out else []


def jetson_info(root: str | Path | None = None) -> dict | None:
    """L4T release line, model, nvpmodel power mode and clock locking on a Jetson; None elsewhere."""
    if not edge_platform.is_jetson(root):
        return None
    return {
        "model": edge_platform.jetson_model(root),
        "l4t": edge_platform.nv_tegra_release_line(root),
        "power_mode": edge_platform.parse_nvpmodel(_run(["nvpmodel", "-q"]) or ""),
        "clocks_locked": edge_platform.clocks_locked(root),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def capture_environment(threads: int | None = None) -> dict:
    """Everything needed to reproduce (or distrust) a latency number."""
    env = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "threads": threads if threads else "backend default",
        "load_average": _load_average(),  # other work on the machine while measuring (1, 5, 15 min)
        "packages": package_versions(),
        "gpus": gpu_info(),
        "jetson": jetson_info(),
    }
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return env
