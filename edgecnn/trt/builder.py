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

from edgecnn.contract import read_onnx_contract
from edgecnn.errors import ArtifactError, EdgeCNNError, UserInputError
from edgecnn.files import atomic_write_bytes, check_output_file, ensure_distinct
from edgecnn.onnx_io import onnx_external_data
from edgecnn.platform import jetpack_for_l4t
from edgecnn.trt import env as trt_env  # module attributes: tests stand in for a GPU by replacing them
from edgecnn.trt.calib_cache import read_table
from edgecnn.trt.devices import DEVICES, DevicePreset, get_device
from edgecnn.trt.env import require_tensorrt
from edgecnn.trt.fp16 import convert_fp16
from edgecnn.trt.logger import make_logger
from edgecnn.trt.manifest import file_record, manifest_path, write_manifest
from edgecnn.trt.plan import (
    DESKTOP_DEFAULT_TRT,
    BuildOptions,
    BuildPlan,
    TrtVersion,
    inspect_onnx,
    make_plan,
)

ENGINE_SUFFIXES = (".engine", ".plan")  # what runtime.load() recognises as a TensorRT engine
# calibration-table algorithm -> the IInt8Calibrator that replays it (TensorRT refuses a cache of another algorithm)
CALIBRATORS = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
}

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


def check_device_is_here(device: DevicePreset, jetson: dict | None) -> None:
    """The part of `check_device_matches` that needs no TensorRT and no GPU: a Jetson preset on a desktop (or the
    reverse) is an argument error, reported before TensorRT is looked for."""
    if device.jetson and not jetson:
        raise UserInputError(
            f"--device {device.name}: this machine is not a {device.title}, and engines only run on the GPU that "
            "built them; build on the device (or print the command with --print-trtexec)"
        )
    if not device.jetson and jetson:
        raise UserInputError(f"--device desktop on a Jetson: use --device {jetson.get('preset') or 'PRESET'}")


def check_device_matches(device: DevicePreset, here: dict) -> None:
    """A build targets the GPU it runs on: refuse a preset that is not this machine (engines do not travel)."""
    check_device_is_here(device, here.get("jetson"))
    if device.compute_capability and device.compute_capability != here.get("compute_capability"):
        raise UserInputError(
            f"--device {device.name} has compute capability {device.compute_capability}, this GPU "
            f"({here.get('gpu')}) has {here.get('compute_capability')}: pick the preset of this board"
        )


def planning_version(trt_version: str | None, device: DevicePreset, jetson: dict | None) -> TrtVersion:
    """The TensorRT version a plan is made for before (or without) a build: --trt-version, else the installed one,
    else the one this Jetson's JetPack ships (when planning for this board), else the preset's newest JetPack's,
    else DESKTOP_DEFAULT_TRT. A malformed version is refused here, an unsupported one by make_plan (exit 2)."""
    version = trt_version or trt_env.tensorrt_version()
    if not version and jetson and jetson.get("preset") == device.name and jetson.get("l4t"):
        release = jetpack_for_l4t(jetson["l4t"])
        version = release.tensorrt if release else None
    return TrtVersion.parse(version or device.default_tensorrt or DESKTOP_DEFAULT_TRT)  # make_plan checks support


def preview_plan(
    options: BuildOptions, facts, trt_version: str | None = None, jetson: dict | None = None
) -> tuple[DevicePreset, BuildPlan]:
    """(device, plan) decided without TensorRT: every option checked against the version (see `planning_version`)
    and the target preset. `edgecnn build-engine` runs it first, so argument errors (exit 2) come before "TensorRT is
    not installed" (exit 3); `--print-trtexec` prints this plan."""
    device = resolve_device(options.device, jetson)
    version = planning_version(trt_version, device, jetson)
    plan = make_plan(options, facts, version, device)
    plan.notes.extend(calib_cache_notes(plan))
    return device, plan


def check_trt_version_matches(trt_version: str | None, installed: str) -> None:
    """A build uses the installed TensorRT: a --trt-version that names another release is a mistake, not a wish."""
    if not trt_version:
        return
    wanted, have = TrtVersion.parse(trt_version), TrtVersion.parse(installed)
    given = len(trt_version.strip().split("."))  # '10' matches any 10.x, '10.3' any 10.3.x
    if tuple(wanted)[:given] != tuple(have)[:given]:
        raise UserInputError(
            f"--trt-version {trt_version}, but the installed TensorRT is {installed}: a build uses the installed "
            "release; drop --trt-version, or plan for another release with --print-trtexec"
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


def check_calib_cache(path: str | os.PathLike) -> tuple[int, str, int]:
    """(header version number, algorithm, number of tensor scales) of a TensorRT calibration table, or a one-line
    UserInputError: a missing, empty, garbage or unusable cache fails here, not deep inside a TensorRT build."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"--calib-cache {path} does not exist")
    if not path.is_file():
        raise UserInputError(f"--calib-cache {path} is not a file (expected a TensorRT calibration table)")
    try:
        version, algorithm, scales = read_table(path)
    except ArtifactError as exc:
        raise UserInputError(
            f"--calib-cache {path}: {exc} (write one with `edgecnn quantize MODEL.onnx --cache FILE`)"
        ) from exc
    if algorithm not in CALIBRATORS:
        raise UserInputError(
            f"--calib-cache {path}: algorithm {algorithm!r} cannot be replayed "
            f"(expected one of {', '.join(CALIBRATORS)})"
        )
    if not scales:
        raise UserInputError(f"--calib-cache {path} has a header but no tensor scales")
    return version, algorithm, len(scales)


def calib_cache_notes(plan: BuildPlan) -> list[str]:
    """A warning when the calibration table's header names another TensorRT release than the plan's: TensorRT skips
    an incompatible cache, and a cache-only calibrator has no images to fall back on."""
    if plan.int8_source != "calib_cache" or not plan.calib_cache:
        return []
    note = calib_cache_version_note(plan.calib_cache, plan.tensorrt, "this plan is for")
    return [note] if note else []


def calib_cache_version_note(path: str | os.PathLike, tensorrt: str, target: str = "the target has") -> str | None:
    """The warning when the (checked) calibration table at `path` names another TensorRT major.minor than
    `tensorrt`, else None. Shared by build-engine and the commands that ship a cache to a device (deploy bundle)."""
    number = check_calib_cache(path)[0]
    major, minor = (number // 10000, number // 100 % 100) if number >= 100000 else (number // 1000, number // 100 % 10)
    want = TrtVersion.parse(tensorrt)
    if (major, minor) == (want.major, want.minor):
        return None
    return (
        f"--calib-cache {path} was written for TensorRT {major}.{minor} (header TRT-{number}), {target} "
        f"{want.major}.{want.minor}: TensorRT may skip it; rewrite it with "
        f"`edgecnn quantize MODEL.onnx --cache FILE --trt-version {tensorrt}`"
    )


def check_inputs(onnx_path: Path, out: Path, options: BuildOptions, require_contract: bool = True):
    """Everything about the files that can fail without TensorRT: the ONNX exists, the engine path is a writable
    .engine/.plan file (a missing folder is created when it is written, as every edgecnn command does), outputs
    (engine, manifest, timing cache) never overwrite an input, the calibration cache is a real calibration table, and
    the ONNX carries the edgecnn contract. Returns (contract or None, OnnxFacts)."""
    onnx_path, out = Path(onnx_path), Path(out)
    if not onnx_path.is_file():
        raise UserInputError(f"{onnx_path} does not exist" + (" (it is a folder)" if onnx_path.is_dir() else ""))
    calib = Path(options.calib_cache) if options.calib_cache else None
    timing = Path(options.timing_cache) if options.timing_cache else None
    inputs = [onnx_path] + ([calib] if calib else [])
    # The timing cache is read AND written (saved back after the build): it must not be the ONNX or the calibration
    # cache, and the engine/manifest must not land on it. An existing timing cache file itself is fine.
    if timing:
        ensure_distinct(inputs, timing, "--timing-cache")
    ensure_distinct(inputs + ([timing] if timing else []), out)  # never the engine over the ONNX or a cache
    ensure_distinct(inputs + ([timing] if timing else []) + [out], manifest_path(out))
    check_output_file(out, "--out")  # a folder, or a path under a file
    if out.suffix.lower() not in ENGINE_SUFFIXES:
        raise UserInputError(
            f"--out {out}: an engine file ends in {' or '.join(ENGINE_SUFFIXES)} (edgecnn loads engines by that "
            f"suffix), e.g. --out {out.with_suffix('.engine') if out.name else 'model.engine'}"
        )
    check_output_file(manifest_path(out), "--out (its manifest)")
    if timing:
        check_output_file(timing, "--timing-cache")
    if calib:
        check_calib_cache(calib)
        from edgecnn.calib_pair import check_pair

        check_pair(onnx_path, calib)  # a Q/DQ model from `quantize --cache` refuses a table it was not written with
    # Weights in external data files are checked now (missing, truncated, outside the model's folder), not by
    # TensorRT's parser minutes into a build; it reads them from beside the ONNX, so no output may land on one.
    data = [onnx_path.parent / rel for rel in onnx_external_data(onnx_path)]
    outputs = [(out, "--out"), (manifest_path(out), "--out")] + ([(timing, "--timing-cache")] if timing else [])
    for target, flag in outputs:
        ensure_distinct(data, target, flag)
    contract = read_onnx_contract(onnx_path) if require_contract else None  # no labels/preprocessing: fails here
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
    options = options or BuildOptions()
    onnx_path, out = Path(onnx_path), Path(out)
    contract, facts = check_inputs(onnx_path, out, options)

    trt_start = time.perf_counter()
    # imports tensorrt + cuda-python, finds the GPU (MissingDependencyError otherwise)
    here = here or trt_env.runtime_facts()
    device = resolve_device(options.device, here.get("jetson"))
    check_device_matches(device, here)
    plan = make_plan(options, facts, here["tensorrt"], device, here["compute_capability"])
    plan.notes.extend(calib_cache_notes(plan))

    with tempfile.TemporaryDirectory(prefix=".edgecnn-build-", dir=out.parent if out.parent.exists() else None) as tmp:
        parse_path = onnx_path
        if plan.convert_fp16:
            if progress:
                progress("converting the ONNX to FP16", 0, None)
            parse_path = convert_fp16(onnx_path, Path(tmp) / (onnx_path.stem + ".fp16.onnx"))
        serialized, io = _apply_plan(plan, parse_path, progress)
    seconds = time.perf_counter() - trt_start

    atomic_write_bytes(out, serialized)
    engine_precision = plan.engine_precision
    manifest = {
        "engine": file_record(out),
        "onnx": onnx_record(onnx_path),
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


def onnx_record(path: Path) -> dict:
    """The manifest's record of the ONNX an engine was built from; with external data, its data files' records too
    (`external_data`), since the .onnx alone holds only the graph and new weights would leave its sha256 unchanged."""
    record = file_record(path)
    data = onnx_external_data(path)
    if data:
        record["external_data"] = [{**file_record(path.parent / rel), "file": rel} for rel in data]
    return record


def _engine_contract(contract, precision: str, onnx_path: Path, here: dict):
    from dataclasses import replace

    return replace(contract, precision=precision).with_provenance(
        engine_from=onnx_path.name, tensorrt=here["tensorrt"], gpu=here["gpu"]
    )


# ---------------------------------------------------------------- the thin TensorRT layer


def calibrator_kind(cache: bytes) -> str:
    """Which IInt8Calibrator reads a calibration cache: its first line is 'TRT-<version>-<Algorithm>'.

    TensorRT refuses a cache whose algorithm differs from the calibrator's, so the class follows the header.
    """
    header = cache.split(b"\n", 1)[0].decode("ascii", errors="replace").strip()
    algo = header.rsplit("-", 1)[-1] if header.startswith("TRT-") else ""
    kinds = CALIBRATORS
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
    """Build the plan's engine: (serialized engine, its I/O tensors).

    The Python objects TensorRT calls back (the logger, the calibrator, the progress monitor) live here and every
    TensorRT object lives in `_build`, so they all go before the callbacks do, whether the build returns or raises:
    TensorRT does not own its callbacks ("the logger should be valid until all objects created are released"; "the
    lifetime of the IProgressMonitor must exceed the lifetime of all TensorRT objects that use it")."""
    trt = require_tensorrt()
    logger = make_logger(trt)
    callbacks: list = []
    return _build(trt, logger, callbacks, plan, onnx_file, progress)


def _build(trt, logger, callbacks: list, plan: BuildPlan, onnx_file: Path, progress: ProgressFn | None):
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

    # Python callbacks (calibrator, progress monitor) go into the caller's `callbacks`: they outlive the config
    if plan.int8_source == "calib_cache":
        calibrator = _cache_calibrator(trt, Path(plan.calib_cache).read_bytes(), plan.profile["opt"][0])
        callbacks.append(calibrator)
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
        # TensorRT: "the cache must not be destroyed until after the engine is built", so it stays in a local
        timing_cache = config.create_timing_cache(blob)  # 8.0+
        if not config.set_timing_cache(timing_cache, False):  # rejected: built by another TensorRT/GPU
            timing_cache = config.create_timing_cache(b"")
            config.set_timing_cache(timing_cache, False)

    if progress is not None:
        if plan.progress_monitor:
            monitor = _progress_monitor(trt, progress)
            callbacks.append(monitor)
            config.progress_monitor = monitor  # IProgressMonitor: 10.0+
        else:
            progress(f"building with TensorRT {plan.tensorrt} (no progress reports before 10.0)", 0, None)

    serialized = builder.build_serialized_network(network, config)  # 8.0+; None on failure
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
