"""Build a TensorRT engine from an edgecnn ONNX: check, plan, apply the plan to the TensorRT API, write atomically.

Everything decidable without TensorRT happens first (the ONNX and its contract, the options, the plan), so bad input
fails fast with a clear message. The code that touches TensorRT (`_apply_plan`) only does what the plan says; the
version range of each call is noted next to it. `tensorrt` is imported inside functions only.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgecnn.artifacts import atomic_write_bytes, ensure_distinct, read_onnx_contract
from edgecnn.errors import ArtifactError, EdgeCNNError, UserInputError
from edgecnn.trt.devices import DEVICES, DevicePreset, get_device
from edgecnn.trt.manifest import file_record, manifest_path, write_manifest
from edgecnn.trt.plan import BuildOptions, BuildPlan, inspect_onnx, make_plan

# progress(phase, done, total): total None when unknown
ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass
class BuildReport:
    engine: Path
    manifest: Path
    plan: BuildPlan
    seconds: float
    built_with: dict
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "engine": str(self.engine),
            "manifest": str(self.manifest),
            "plan": self.plan.to_dict(),
            "build_seconds": round(self.seconds, 3),
            "built_with": self.built_with,
            "warnings": self.warnings,
        }


def resolve_device(name: str | None, jetson: dict | None) -> DevicePreset:
    """The preset for `--device` (None: the Jetson this runs on, else desktop)."""
    if name:
        return get_device(name)
    if jetson and jetson.get("preset"):
        return DEVICES[jetson["preset"]]
    return DEVICES["desktop"]


def check_device_matches(device: DevicePreset, here: dict) -> None:
    """A build targets the GPU it runs on: refuse a preset that is not this machine (engines do not travel)."""
    on_jetson = bool(here.get("jetson"))
    if device.jetson and not on_jetson:
        raise UserInputError(
            f"--device {device.name}: this machine is not a {device.title}, and engines only run on the GPU that "
            "built them; build on the device (or print the command with --print-trtexec)"
        )
    if not device.jetson and on_jetson:
        raise UserInputError(f"--device desktop on a Jetson: use --device {here['jetson'].get('preset') or 'PRESET'}")
    if device.compute_capability and device.compute_capability != here.get("compute_capability"):
        raise UserInputError(
            f"--device {device.name} has compute capability {device.compute_capability}, this GPU "
            f"({here.get('gpu')}) has {here.get('compute_capability')}: pick the preset of this board"
        )


def rebuild_command(onnx: Path, out: Path, options: BuildOptions) -> str:
    """The `edgecnn build-engine` line that rebuilds this engine (stored in the manifest, shown on mismatch)."""
    argv = ["edgecnn", "build-engine", str(onnx), "--out", str(out), "--precision", options.precision]
    if options.device:
        argv += ["--device", options.device]
    if options.dla_core is not None:
        argv += ["--dla", str(options.dla_core)] + (["--gpu-fallback"] if options.gpu_fallback else [])
    if options.batch:
        argv += ["--batch", f"{options.batch.min}:{options.batch.opt}:{options.batch.max}"]
    if options.workspace:
        argv += ["--workspace", f"{options.workspace >> 20}M"]
    if options.calib_cache:
        argv += ["--calib-cache", str(options.calib_cache)]
    if options.timing_cache:
        argv += ["--timing-cache", str(options.timing_cache)]
    if options.version_compatible:
        argv.append("--version-compatible")
    if options.hardware_compat:
        argv += ["--hardware-compat", options.hardware_compat]
    return shlex.join(argv)


def check_inputs(onnx_path: Path, out: Path, options: BuildOptions):
    """Everything about the inputs that can fail without TensorRT: files exist, outputs never overwrite inputs, the
    ONNX carries the edgecnn contract. Returns (contract, OnnxFacts)."""
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise UserInputError(f"{onnx_path} does not exist")
    inputs = [onnx_path] + [Path(p) for p in (options.calib_cache, options.timing_cache) if p]
    ensure_distinct(inputs, out)  # never write the engine over the ONNX, the calibration or the timing cache
    ensure_distinct(inputs + [out], manifest_path(out))
    if options.calib_cache and not Path(options.calib_cache).is_file():
        raise UserInputError(f"--calib-cache {options.calib_cache} does not exist")
    contract = read_onnx_contract(onnx_path)  # an ONNX without labels/preprocessing fails here, before TensorRT
    return contract, inspect_onnx(onnx_path)


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    options: BuildOptions | None = None,
    progress: ProgressFn | None = None,
    here: dict | None = None,
) -> BuildReport:
    """Build `out` (+ its `.json` manifest) from an edgecnn ONNX on this machine's GPU.

    `here` is `env.runtime_facts()` when the caller already has it (the CLI checks TensorRT before showing progress).
    """
    from edgecnn.trt.env import runtime_facts

    options = options or BuildOptions()
    onnx_path, out = Path(onnx_path), Path(out)
    contract, facts = check_inputs(onnx_path, out, options)

    trt_start = time.perf_counter()
    here = here or runtime_facts()  # imports tensorrt + cuda-python, finds the GPU (MissingDependencyError otherwise)
    device = resolve_device(options.device, here.get("jetson"))
    check_device_matches(device, here)
    plan = make_plan(options, facts, here["tensorrt"], device, here["compute_capability"])

    with tempfile.TemporaryDirectory(prefix=".edgecnn-build-", dir=out.parent if out.parent.exists() else None) as tmp:
        parse_path = onnx_path
        if plan.convert_fp16:
            from edgecnn.trt.fp16 import convert_fp16

            if progress:
                progress("converting the ONNX to FP16", 0, None)
            parse_path = convert_fp16(onnx_path, Path(tmp) / (onnx_path.stem + ".fp16.onnx"))
        serialized, io = _apply_plan(plan, parse_path, progress)
    seconds = time.perf_counter() - trt_start

    atomic_write_bytes(out, serialized)
    engine_precision = plan.engine_precision
    manifest = {
        "engine": file_record(out),
        "onnx": file_record(onnx_path),
        "calib_cache": file_record(plan.calib_cache) if plan.calib_cache else None,
        "built_with": {k: here[k] for k in ("tensorrt", "cuda", "gpu", "compute_capability", "jetson")},
        "compatibility": {"version_compatible": plan.version_compatible, "hardware": plan.hardware_compat},
        "precision": engine_precision,
        "dla_core": plan.dla_core,
        "gpu_fallback": plan.gpu_fallback,
        "io": io,
        "contract": _engine_contract(contract, engine_precision, onnx_path, here).to_dict(),
        "options": options.to_dict(),
        "plan": plan.to_dict(),
        "build_seconds": round(seconds, 3),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rebuild_command": rebuild_command(onnx_path, out, options),
    }
    mpath = write_manifest(out, manifest)
    return BuildReport(out, mpath, plan, seconds, manifest["built_with"], list(plan.notes))


def _engine_contract(contract, precision: str, onnx_path: Path, here: dict):
    from dataclasses import replace

    return replace(contract, precision=precision).with_provenance(
        engine_from=onnx_path.name, tensorrt=here["tensorrt"], gpu=here["gpu"]
    )


# ---------------------------------------------------------------- the thin TensorRT layer


def make_logger(trt):
    """An ILogger that keeps warnings and errors (for the error message) instead of printing them."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(str(msg))

        def last(self, n: int = 3) -> str:
            return " | ".join(m.strip() for m in self.messages[-n:]) or "no message from TensorRT"

    return _Logger()


def calibrator_kind(cache: bytes) -> str:
    """Which IInt8Calibrator reads a calibration cache: its first line is 'TRT-<version>-<Algorithm>'.

    TensorRT refuses a cache whose algorithm differs from the calibrator's, so the class follows the header.
    """
    header = cache.split(b"\n", 1)[0].decode("ascii", errors="replace").strip()
    algo = header.rsplit("-", 1)[-1] if header.startswith("TRT-") else ""
    kinds = {
        "EntropyCalibration2": "IInt8EntropyCalibrator2",
        "EntropyCalibration": "IInt8EntropyCalibrator",
        "MinMaxCalibration": "IInt8MinMaxCalibrator",
    }
    if algo not in kinds:
        raise UserInputError(
            f"Calibration cache header {header[:60]!r} is not a TensorRT cache this build can use "
            "(expected TRT-<version>-EntropyCalibration2/EntropyCalibration/MinMaxCalibration)"
        )
    return kinds[algo]


def _cache_calibrator(trt, cache: bytes, batch: int):
    """An implicit-INT8 calibrator that only replays a cache (TensorRT <= 10; removed in 11)."""
    base = getattr(trt, calibrator_kind(cache))

    class _CacheCalibrator(base):
        def __init__(self):
            base.__init__(self)

        def get_batch_size(self):
            return batch

        def get_batch(self, names):  # never called while the cache is valid; None = "no more data"
            return None

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data):
            return None

    return _CacheCalibrator()


def _progress_monitor(trt, progress: ProgressFn):
    """IProgressMonitor (TensorRT 10.0+) -> progress(phase, done, total). Never raises into TensorRT."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.totals: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                self.totals[phase_name] = num_steps
                progress(phase_name, 0, num_steps)
            except Exception:
                pass

        def step_complete(self, phase_name, step):
            try:
                progress(phase_name, step + 1, self.totals.get(phase_name))
            except Exception:
                pass
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            try:
                total = self.totals.get(phase_name)
                progress(phase_name, total or 0, total)
            except Exception:
                pass

    return _Monitor()


def _apply_plan(plan: BuildPlan, onnx_file: Path, progress: ProgressFn | None) -> tuple[bytes, dict]:
    from edgecnn.trt.env import require_tensorrt

    trt = require_tensorrt()
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:  # EXPLICIT_BATCH on 8.x only (ignored/deprecated in 10.0)
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):  # parse_from_file: 7.1+
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or logger.last()
        raise ArtifactError(f"TensorRT {plan.tensorrt} cannot parse {onnx_file.name}: {errors[:500]}")

    config = builder.create_builder_config()
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)  # 8.4+
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # 8.2+: layer types for the per-layer profile
    for flag in plan.builder_flags:  # FP16/INT8 (< 11), GPU_FALLBACK, VERSION_COMPATIBLE (8.6+)
        config.set_flag(getattr(trt.BuilderFlag, flag))

    profile = None
    if plan.dynamic_batch:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, *[tuple(plan.profile[k]) for k in ("min", "opt", "max")])
        config.add_optimization_profile(profile)

    # Python callbacks (calibrator, progress monitor) are held in locals so they outlive the build.
    calibrator = monitor = None
    if plan.int8_source == "calib_cache":
        calibrator = _cache_calibrator(trt, Path(plan.calib_cache).read_bytes(), plan.profile["opt"][0])
        config.int8_calibrator = calibrator  # < 11 (deprecated 10.1)
        if profile is not None:
            config.set_calibration_profile(profile)  # < 11

    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise UserInputError(f"--dla {plan.dla_core}: this board has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    if plan.hardware_compat != "NONE":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, plan.hardware_compat)  # 8.6+

    cache_path = Path(plan.timing_cache) if plan.timing_cache else None
    if cache_path:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        timing_cache = config.create_timing_cache(blob)  # 8.0+
        if not config.set_timing_cache(timing_cache, False):  # rejected: built by another TensorRT/GPU
            config.set_timing_cache(config.create_timing_cache(b""), False)

    if progress is not None:
        if plan.progress_monitor:
            monitor = _progress_monitor(trt, progress)
            config.progress_monitor = monitor  # IProgressMonitor: 10.0+
        else:
            progress(f"building with TensorRT {plan.tensorrt} (no progress reports before 10.0)", 0, None)

    serialized = builder.build_serialized_network(network, config)  # 8.0+; None on failure
    del calibrator, monitor
    if serialized is None:
        raise EdgeCNNError(f"TensorRT {plan.tensorrt} could not build the engine: {logger.last()}")

    if cache_path:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))  # saved back for the next build

    def tensor(t):
        import numpy as np

        return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": np.dtype(trt.nptype(t.dtype)).name}

    inputs = [tensor(network.get_input(i)) for i in range(network.num_inputs)]
    for item in inputs:
        item["profile"] = plan.profile if item["name"] == plan.input_name else None
    outputs = [tensor(network.get_output(i)) for i in range(network.num_outputs)]
    return bytes(serialized), {"inputs": inputs, "outputs": outputs}
