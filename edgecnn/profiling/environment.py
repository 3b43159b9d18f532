"""What the numbers were measured on: CPU, threads, library versions, GPU and clocks, Jetson power mode.

Latency without its environment is not reproducible, so every profile records this next to the numbers. Everything is
read defensively: a missing file, a command that is absent, needs root or hangs gives `None`, never an error.
Versions come from package metadata, so recording them never imports PyTorch or TensorRT.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

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


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


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


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """CPU model, logical cores, cores this process may use, and the frequency governor."""
    model = None
    text = _read(cpuinfo_path) or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):  # x86, Raspberry/ARM, Jetson variants
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            model = m.group(1).strip()
            break
    if not model:
        model = platform.processor() or platform.machine()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
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


def parse_nvpmodel(text: str) -> str | None:
    """The power mode from `nvpmodel -q` output ('NV Power Mode: MAXN' + mode id line)."""
    m = re.search(r"NV Power Mode:\s*(\S.*)", text or "")
    if not m:
        return None
    mode = m.group(1).strip()
    rest = (text or "")[m.end() :].strip().splitlines()
    if rest and rest[0].strip().isdigit():
        mode += f" (id {rest[0].strip()})"
    return mode


def clocks_locked(sys_root: str | Path = "/") -> bool | None:
    """Whether CPU and GPU clocks are pinned (min == max, as `jetson_clocks` leaves them), None if unreadable."""
    root = Path(sys_root)
    pairs = []
    cpu = root / "sys/devices/system/cpu/cpu0/cpufreq"
    pairs.append((cpu / "scaling_min_freq", cpu / "scaling_max_freq"))
    for devfreq in sorted((root / "sys/class/devfreq").glob("*")) if (root / "sys/class/devfreq").is_dir() else []:
        name = devfreq.name.lower()
        if "gpu" in name or "gv11b" in name or "ga10b" in name or "gp10b" in name or "17000000" in name:
            pairs.append((devfreq / "min_freq", devfreq / "max_freq"))
    seen = False
    for lo, hi in pairs:
        a, b = _read(lo), _read(hi)
        if a is None or b is None:
            continue
        seen = True
        if a != b:
            return False
    return True if seen else None


def jetson_info(sys_root: str | Path = "/") -> dict | None:
    """L4T release, model, nvpmodel power mode and clock locking on a Jetson; None elsewhere."""
    root = Path(sys_root)
    release = _read(root / "etc/nv_tegra_release")
    model = _read(root / "proc/device-tree/model")
    if not release and not (model and "jetson" in model.lower()):
        return None
    return {
        "model": model.rstrip("\x00") if model else None,
        "l4t": release.splitlines()[0] if release else None,
        "power_mode": parse_nvpmodel(_run(["nvpmodel", "-q"]) or ""),
        "clocks_locked": clocks_locked(root),
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
