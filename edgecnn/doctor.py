"""`edgecnn doctor`: what this machine has for running models, each item ✓ / ✗ with the fix, or – when it does not
apply.

Everything it reads is injectable (`DoctorPaths`, and `run` for commands such as `nvpmodel -q` and `nvidia-smi`), so
the Jetson paths are tested on any machine with fake /etc/nv_tegra_release and /proc/device-tree/model texts.
Optional packages (tensorrt, onnxruntime, cv2) are probed, never required.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgecnn.camera.sinks import display_available
from edgecnn.platform import (
    is_jetson,
    jetpack_for_l4t,
    jetson_model,
    nv_tegra_release_path,
    parse_nv_tegra_release,
    parse_nvpmodel,
    read_text,
    x86_without_vnni,
)
from edgecnn.trt.devices import get_device, preset_for_model_string

OK, FAIL, SKIP = "ok", "fail", "skip"
SYMBOLS = {OK: "✓", FAIL: "✗", SKIP: "–"}


@dataclass
class Check:
    name: str
    status: str  # ok | fail | skip
    value: str
    fix: str | None = None


@dataclass
class DoctorPaths:
    root: Path | None = None  # edgecnn.platform's root (None: the real "/"): etc/nv_tegra_release, proc/device-tree
    dev_dir: Path = Path("/dev")
    cuda_root: Path = Path("/usr/local/cuda")
    include_dirs: tuple[Path, ...] = (Path("/usr/include"), Path("/usr/local/cuda/include"))


@dataclass
class DoctorReport:
    platform: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def to_dict(self) -> dict:
        counts = {s: sum(c.status == s for c in self.checks) for s in (OK, FAIL, SKIP)}
        return {"platform": self.platform, "checks": [asdict(c) for c in self.checks], "summary": counts}


Runner = Callable[[list], Optional[str]]


def run_command(argv: list, timeout: float = 10) -> str | None:
    """stdout of `argv`, or None when the program is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


# ---------------------------------------------------------------- parsers (pure)


def opencv_video_io(build_info: str) -> dict[str, bool]:
    """Which video back ends an OpenCV build has, from cv2.getBuildInformation()."""
    found = {"gstreamer": False, "v4l2": False, "ffmpeg": False}
    keys = {"gstreamer": "gstreamer", "v4l/v4l2": "v4l2", "ffmpeg": "ffmpeg"}
    for line in build_info.splitlines():
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        name = keys.get(key.strip().lower())
        if name:
            found[name] = value.strip().upper().startswith("YES")
    return found


def parse_cudnn_header(text: str) -> str | None:
    parts = [re.search(rf"#define CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
    return ".".join(p.group(1) for p in parts) if all(parts) else None


# ---------------------------------------------------------------- checks


def _platform(paths: DoctorPaths) -> dict:
    model = jetson_model(paths.root)
    jetson = is_jetson(paths.root)
    preset = None
    if jetson and model:
        preset = preset_for_model_string(model)
    return {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "jetson": jetson,
        "model": model if jetson else None,
        "preset": preset,
    }


def _check_platform(info: dict) -> Check:
    if info["jetson"]:
        preset = f" (build-engine --device {info['preset']})" if info["preset"] else ""
        return Check("platform", OK, f"{info['model'] or 'NVIDIA Jetson'}{preset}, {info['machine']}")
    return Check("platform", OK, f"{info['machine']} {info['system']} (not a Jetson)")


def _check_l4t(info: dict, paths: DoctorPaths) -> Check:
    if not info["jetson"]:
        return Check("jetpack", SKIP, "not a Jetson (L4T / JetPack apply to Jetson devices only)")
    release_file = nv_tegra_release_path(paths.root)
    text = read_text(release_file)
    if text is None:
        return Check(
            "jetpack",
            FAIL,
            f"{release_file} not found",
            "Flash or update the Jetson with JetPack (SDK Manager) so Jetson Linux (L4T) is installed",
        )
    l4t = parse_nv_tegra_release(text)
    if l4t is None:
        return Check(
            "jetpack",
            FAIL,
            f"cannot parse {release_file}: {text[:60]!r}",
            "Reinstall the nvidia-l4t-core package (sudo apt install --reinstall nvidia-l4t-core)",
        )
    rel = jetpack_for_l4t(l4t)
    if rel is None:
        return Check(
            "jetpack",
            FAIL,
            f"L4T {l4t}: a JetPack edgecnn does not know",
            "edgecnn runs on JetPack 6.x (L4T 36) and 7.x (L4T 38); upgrade with SDK Manager",
        )
    value = f"L4T {l4t} = JetPack {rel.jetpack} (TensorRT {rel.tensorrt}, CUDA {rel.cuda})"
    if l4t.split(".")[0] == "35":
        return Check(
            "jetpack", FAIL, value + "; its Python 3.8 is older than edgecnn's 3.9", _jetpack5_fix(info["preset"])
        )
    return Check("jetpack", OK, value)


def _jetpack5_fix(preset_name: str | None) -> str:
    """The way out of JetPack 5 for this board: Orin boards can move to JetPack 6, Xavier boards cannot (their last
    JetPack is 5.1.x, so a JetPack 6 upgrade or container is no answer there)."""
    upgrade = "upgrade to JetPack 6 (L4T 36), or run the ONNX model in a JetPack 6 container"
    stuck = (
        "run the ONNX model on ONNX Runtime (CPU) from a Python >= 3.9 (e.g. Miniforge), or build an engine for "
        "DeepStream/Triton with JetPack's trtexec (`edgecnn build-engine model.onnx --device {device} "
        "--print-trtexec` prints the command)"
    )
    if preset_name is None:  # board unknown: both answers
        return f"Orin boards: {upgrade}. Xavier boards stop at JetPack 5.1.x: " + stuck.format(device="xavier-nx")
    preset = get_device(preset_name)
    if any(r.l4t.split(".")[0] != "35" for r in preset.jetpack):
        return upgrade[0].upper() + upgrade[1:]
    return f"The {preset.title} stops at JetPack 5.1.x (no JetPack 6 for it): " + stuck.format(device=preset.name)


def _check_tensorrt(info: dict) -> Check:
    fix = (
        "TensorRT ships with JetPack: sudo apt install nvidia-tensorrt python3-libnvinfer"
        if info["jetson"]
        else "pip install 'edgecnn[tensorrt]' (needs an NVIDIA GPU and driver); without it edgecnn uses ONNX Runtime"
    )
    if importlib.util.find_spec("tensorrt") is None:
        return Check("tensorrt", FAIL, "not installed", fix)
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # broken installs raise all sorts
        return Check("tensorrt", FAIL, f"installed but fails to import ({exc.__class__.__name__}: {exc})", fix)
    return Check("tensorrt", OK, str(getattr(trt, "__version__", "unknown version")))


def _check_cuda(info: dict, paths: DoctorPaths, run: Runner) -> Check:
    version = None
    vj = read_text(paths.cuda_root / "version.json")
    if vj:
        try:
            version = json.loads(vj)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            version = None
    if version is None:
        vt = read_text(paths.cuda_root / "version.txt")
        m = re.search(r"CUDA Version\s+([\d.]+)", vt or "")
        version = m.group(1) if m else None
    if version is None:
        out = run([str(paths.cuda_root / "bin" / "nvcc"), "--version"]) or run(["nvcc", "--version"])
        m = re.search(r"release\s+([\d.]+)", out or "")
        version = m.group(1) if m else None
    if version:
        return Check("cuda", OK, version)
    fix = (
        "CUDA ships with JetPack: sudo apt install nvidia-jetpack (or cuda-toolkit-12-6 on JetPack 6)"
        if info["jetson"]
        else "Install the NVIDIA driver + CUDA toolkit (or the pip CUDA runtime that comes with `edgecnn[tensorrt]`); "
        "not needed for ONNX Runtime on CPU"
    )
    return Check("cuda", FAIL, f"no CUDA toolkit found (looked in {paths.cuda_root})", fix)


def _check_cudnn(info: dict, paths: DoctorPaths) -> Check:
    for inc in paths.include_dirs:
        candidates = (
            [inc / "cudnn_version.h", *sorted(inc.glob("*-linux-gnu/cudnn_version*.h"))] if inc.is_dir() else []
        )
        for header in candidates:
            version = parse_cudnn_header(read_text(header) or "")
            if version:
                return Check("cudnn", OK, version)
    from importlib import metadata

    for dist in ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", "nvidia-cudnn-cu11"):
        try:
            return Check("cudnn", OK, f"{metadata.version(dist)} ({dist} wheel)")
        except metadata.PackageNotFoundError:
            continue
    fix = (
        "cuDNN ships with JetPack: sudo apt install nvidia-cudnn"
        if info["jetson"]
        else "Install cuDNN for your CUDA (apt libcudnn9-cuda-12, or pip nvidia-cudnn-cu12); TensorRT 10 needs it only "
        "for some layers, ONNX Runtime on CPU not at all"
    )
    return Check("cudnn", FAIL, "not found", fix)


def _check_gpu(info: dict, run: Runner) -> Check:
    if info["jetson"]:
        if info["preset"]:
            dev = get_device(info["preset"])
            return Check("gpu", OK, f"integrated {dev.arch} GPU, compute capability {dev.compute_capability}")
        return Check("gpu", OK, "integrated Jetson GPU (model not recognised: compute capability unknown)")
    out = run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"])
    if out and out.strip():
        gpus = []
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 3:
                gpus.append(f"{parts[0]} (compute capability {parts[1]}, driver {parts[2]})")
        if gpus:
            return Check("gpu", OK, "; ".join(gpus))
    return Check(
        "gpu",
        FAIL,
        "no NVIDIA GPU found (nvidia-smi missing or sees none)",
        "Install the NVIDIA driver on a machine with an NVIDIA GPU; until then edgecnn runs on the CPU "
        "with ONNX Runtime",
    )


def _check_onnxruntime(info: dict, gpu_ok: bool) -> Check:
    try:
        ort = importlib.import_module("onnxruntime")
    except Exception as exc:
        return Check(
            "onnxruntime",
            FAIL,
            f"not importable ({exc.__class__.__name__})",
            "pip install onnxruntime (on Jetson, the onnxruntime-gpu wheel from the Jetson AI Lab index)",
        )
    providers = ort.get_available_providers()
    value = f"{ort.__version__}: {', '.join(p.replace('ExecutionProvider', '') for p in providers)}"
    if x86_without_vnni():  # worth knowing before choosing INT8 weights (see `quantize --reduce-range/--full-range`)
        value += "; CPU without VNNI: full-range INT8 weights run slow here, 7-bit ones (quantize --target cpu) fast"
    if gpu_ok and not any(p in providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        fix = (
            "for ONNX on the GPU install the onnxruntime-gpu wheel built for your JetPack (Jetson AI Lab pip "
            "index) in place of onnxruntime; TensorRT engines do not need it"
            if info["jetson"]
            else "pip uninstall onnxruntime && pip install onnxruntime-gpu to run ONNX on the GPU (TensorRT engines "
            "do not need it)"
        )
        return Check("onnxruntime", FAIL, value + " (CPU only on a GPU machine)", fix)
    return Check("onnxruntime", OK, value)


def _check_opencv(info: dict) -> list[Check]:
    try:
        cv2 = importlib.import_module("cv2")
    except Exception as exc:
        fix = (
            "Use JetPack's OpenCV: sudo apt install python3-opencv (never pip opencv-python on Jetson)"
            if info["jetson"]
            else "pip install opencv-python-headless"
        )
        return [Check("opencv", FAIL, f"not importable ({exc.__class__.__name__})", fix)]
    io = opencv_video_io(cv2.getBuildInformation())
    checks = [Check("opencv", OK, f"{cv2.__version__} ({cv2.__file__})")]
    gst_fix = (
        "CSI cameras and gst: pipelines need OpenCV with GStreamer: pip uninstall opencv-python "
        "opencv-python-headless so JetPack's python3-opencv is used"
        if info["jetson"]
        else "Only CSI cameras / gst: pipelines need it: use a distro OpenCV (apt install python3-opencv) or build "
        "with -D WITH_GSTREAMER=ON; USB cameras, files and RTSP work without"
    )
    checks.append(
        Check(
            "opencv.gstreamer",
            OK if io["gstreamer"] else FAIL,
            "yes" if io["gstreamer"] else "no",
            None if io["gstreamer"] else gst_fix,
        )
    )
    checks.append(
        Check(
            "opencv.v4l2",
            OK if io["v4l2"] else FAIL,
            "yes" if io["v4l2"] else "no",
            None
            if io["v4l2"]
            else "USB cameras need V4L2: install an OpenCV built with V4L "
            "(pip opencv-python-headless or apt python3-opencv)",
        )
    )
    checks.append(
        Check(
            "opencv.ffmpeg",
            OK if io["ffmpeg"] else FAIL,
            "yes" if io["ffmpeg"] else "no",
            None
            if io["ffmpeg"]
            else "Video files and RTSP need FFmpeg in OpenCV: pip install "
            "opencv-python-headless (has FFmpeg) or apt install python3-opencv",
        )
    )

    window, why = display_available()  # `edgecnn live` without --headless: its answer is the live command's own
    checks.append(
        Check(
            "opencv.window",
            OK if window else SKIP,
            "yes" if window else "no",
            None if window else f"{why}; or run live with --headless (--json, --record)",
        )
    )
    checks.append(_check_outputs())
    return checks


def _check_outputs() -> Check:
    """Which `edgecnn live --output` streams this machine can send (udp:// MPEG-TS, rtp:// H.264, rtsp:// server)."""
    from edgecnn.camera.netout import INSTALL_HINT, output_support

    support = output_support()
    value = "; ".join(f"{scheme}://: {backend or 'no'}" for scheme, backend in support.items())
    missing = [scheme for scheme, backend in support.items() if backend is None]
    fix = " | ".join(INSTALL_HINT[scheme] for scheme in missing) or None
    return Check("live.outputs", OK if len(missing) < len(support) else FAIL, value, fix)


def _check_cameras(paths: DoctorPaths, info: dict) -> Check:
    devices = (
        sorted(paths.dev_dir.glob("video*"), key=lambda p: (len(p.name), p.name)) if paths.dev_dir.is_dir() else []
    )
    if not devices:
        fix = "Connect a USB camera (check with `v4l2-ctl --list-devices`)"
        if info["jetson"]:
            fix += (
                "; CSI cameras also appear as /dev/videoN once the sensor driver is loaded "
                "(sudo /opt/nvidia/jetson-io/jetson-io.py)"
            )
        fix += "; video files, image folders and rtsp:// sources need no camera"
        return Check("cameras", FAIL, f"no {paths.dev_dir}/video* devices", fix)
    import os

    unreadable = [d.name for d in devices if not os.access(d, os.R_OK | os.W_OK)]
    value = ", ".join(str(d) for d in devices)
    if unreadable:
        return Check(
            "cameras",
            FAIL,
            f"{value} (no access to {', '.join(unreadable)})",
            "sudo usermod -aG video $USER, then log in again",
        )
    return Check("cameras", OK, value)


def _check_power(info: dict, run: Runner) -> Check:
    if not info["jetson"]:
        return Check("power_mode", SKIP, "not a Jetson (nvpmodel applies to Jetson devices only)")
    out = run(["nvpmodel", "-q"])
    if out is None:
        return Check(
            "power_mode",
            FAIL,
            "nvpmodel not found or failed",
            "sudo apt install nvidia-l4t-nvpmodel; then `sudo nvpmodel -q`",
        )
    mode = parse_nvpmodel(out)
    if mode is None:
        return Check(
            "power_mode",
            FAIL,
            f"cannot read `nvpmodel -q` output: {out.strip()[:60]!r}",
            "Run `sudo nvpmodel -q` by hand",
        )
    note = (
        ""
        if mode.upper().startswith("MAXN")
        else " (for full speed and stable benchmarks: sudo nvpmodel -m 0 && sudo jetson_clocks)"
    )
    return Check("power_mode", OK, mode + note)


def run_doctor(paths: DoctorPaths | None = None, run: Runner | None = None) -> DoctorReport:
    """Probe this machine; never raises for something missing (that is what the checks report)."""
    paths = paths or DoctorPaths()
    run = run or run_command
    info = _platform(paths)
    report = DoctorReport(platform=info)
    report.checks.append(_check_platform(info))
    report.checks.append(_check_l4t(info, paths))
    gpu = _check_gpu(info, run)
    report.checks.append(gpu)
    report.checks.append(_check_cuda(info, paths, run))
    report.checks.append(_check_cudnn(info, paths))
    report.checks.append(_check_tensorrt(info))
    report.checks.append(_check_onnxruntime(info, gpu.status == OK))
    report.checks.extend(_check_opencv(info))
    report.checks.append(_check_cameras(paths, info))
    report.checks.append(_check_power(info, run))
    report.checks.append(Check("python", OK, f"{sys.version.split()[0]} ({sys.executable})"))
    return report
