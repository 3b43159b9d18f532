"""Every TensorRT use of edgecnn, run against the doubles of ONE release's real bindings (one process per release).

Run by tests/test_trt_conformance.py as `python tests/trt_conformance_checks.py SPEC.json RESULT.json` with the
release's `tensorrt_bindings` on PYTHONPATH and its stub libraries on LD_LIBRARY_PATH (trt_conformance_bindings.py).
`tensorrt` is the double module of tests/trt_conformance_doubles.py, TensorRT's side is scripted in
trt_conformance_world.py. The result holds one entry per check (pass / fail with the line of edgecnn that failed /
na with the build plan's reason), every TensorRT attribute used, and the release's API surface and deprecations.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trt_conformance_doubles import REAL_CLASSES, ConformanceError, Double, World, make_module  # noqa: E402
from trt_conformance_surface import deprecation_candidates, deprecations, surface  # noqa: E402
from trt_conformance_world import (  # noqa: E402
    cuda_answers,
    exercise_logger,
    install_cuda,
    script_builder,
    script_runtime,
    through_tensorrt,
)

# ---------------------------------------------------------------- the checks


class NotApplicable(Exception):
    """The build plan refuses this case for this release (a version gate): reported, not failed."""


def check_gates(trt, version: str) -> None:
    """What the plan uses must exist in the bindings; what it declares unsupported must be absent."""
    from edgecnn.trt.plan import TrtVersion, capabilities

    real = trt.__real__
    caps = capabilities(TrtVersion.parse(version))
    flags, members = real.BuilderFlag.__members__, dir(real.IBuilderConfig)
    facts = {
        "precision builder flags FP16/INT8 (weak typing)": ("FP16" in flags and "INT8" in flags, caps.weak_typing),
        "implicit INT8 calibrators + IBuilderConfig.int8_calibrator": (
            all(
                hasattr(real, c) for c in ("IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator")
            )
            and "int8_calibrator" in members
            and "set_calibration_profile" in members,
            caps.implicit_int8,
        ),
        "IProgressMonitor + IBuilderConfig.progress_monitor": (
            hasattr(real, "IProgressMonitor") and "progress_monitor" in members,
            caps.progress_monitor,
        ),
        "BuilderFlag.VERSION_COMPATIBLE": ("VERSION_COMPATIBLE" in flags, caps.version_compatible),
        "HardwareCompatibilityLevel.AMPERE_PLUS": (
            "AMPERE_PLUS" in real.HardwareCompatibilityLevel.__members__,
            caps.ampere_plus,
        ),
        "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY": (
            "SAME_COMPUTE_CAPABILITY" in real.HardwareCompatibilityLevel.__members__,
            caps.same_compute_capability,
        ),
    }
    wrong = [
        f"{what}: bindings {'have' if have else 'lack'} it, plan says {planned}"
        for what, (have, planned) in facts.items()
        if have != planned
    ]
    # used-only gates: when the plan uses it, it must exist (absence when unused is not required)
    if caps.explicit_batch_flag and "EXPLICIT_BATCH" not in real.NetworkDefinitionCreationFlag.__members__:
        wrong.append("NetworkDefinitionCreationFlag.EXPLICIT_BATCH is used but missing")
    if caps.dla and not ("DLA" in real.DeviceType.__members__ and "DLA_core" in members):
        wrong.append("DLA is planned but DeviceType.DLA / IBuilderConfig.DLA_core are missing")
    if wrong:
        raise ConformanceError("; ".join(wrong))


def build_cases() -> list[tuple[str, str, dict, str]]:
    """(case id, device preset, BuildOptions fields, ONNX kind) for `_apply_plan`."""
    from edgecnn.trt.devices import DEVICES

    cases = []
    for name in DEVICES:
        if name == "nano":
            continue  # the plan refuses it for every release (no TensorRT 8.5+ on JetPack 4)
        cases.append((f"{name}-fp16", name, {"precision": "fp16"}, "fixed"))
    cases += [
        ("desktop-fp32", "desktop", {"precision": "fp32"}, "fixed"),
        ("desktop-best", "desktop", {"precision": "best"}, "fixed"),
        ("desktop-fp16-dynamic-batch", "desktop", {"precision": "fp16", "batch": "1:4:8"}, "dynamic"),
        ("desktop-int8-qdq", "desktop", {"precision": "int8"}, "qdq"),
        ("desktop-best-qdq", "desktop", {"precision": "best"}, "qdq"),
        ("desktop-workspace", "desktop", {"precision": "fp32", "workspace": 512 << 20}, "fixed"),
        ("desktop-timing-cache-new", "desktop", {"timing_cache": "new"}, "fixed"),
        ("desktop-timing-cache-reused", "desktop", {"timing_cache": "good"}, "fixed"),
        ("desktop-timing-cache-rejected", "desktop", {"timing_cache": "stale"}, "fixed"),
        ("desktop-hardware-ampere-plus", "desktop", {"hardware_compat": "ampere+"}, "fixed"),
        ("desktop-hardware-same-cc", "desktop", {"hardware_compat": "same-cc"}, "fixed"),
        ("desktop-version-compatible", "desktop", {"version_compatible": True}, "fixed"),
        ("desktop-progress-monitor", "desktop", {"precision": "fp16", "progress": True}, "fixed"),
        ("agx-orin-dla-gpu-fallback", "agx-orin", {"precision": "fp16", "dla_core": 1, "gpu_fallback": True}, "fixed"),
        ("agx-orin-dla-int8-qdq", "agx-orin", {"precision": "int8", "dla_core": 0, "gpu_fallback": True}, "qdq"),
        # DLA on 11.x needs 11.4.1 (JetPack 7.2.2): planned for 11.4.1, applied to the 11.4.0 bindings (same API)
        ("agx-orin-dla-trt-11.4.1", "agx-orin", {"precision": "int8", "dla_core": 0, "plan_for": "11.4.1"}, "qdq"),
    ]
    for algorithm in ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration"):
        cases.append((f"desktop-int8-cache-{algorithm}", "desktop", {"precision": "int8", "calib": algorithm}, "fixed"))
    cases.append(
        (
            "orin-nano-int8-cache-dynamic-batch",
            "orin-nano",
            {"precision": "int8", "calib": "EntropyCalibration2", "batch": "1:2:4"},
            "dynamic",
        )
    )
    return cases


def run_build_case(
    trt, world: World, version: str, spec: dict, device: str, opts: dict, kind: str, tmp: Path, io_example: dict
):
    from edgecnn.errors import UserInputError
    from edgecnn.trt import builder
    from edgecnn.trt.calib_cache import format_table
    from edgecnn.trt.devices import get_device
    from edgecnn.trt.plan import BuildOptions, OnnxFacts, make_plan, parse_batch

    opts = dict(opts)
    progress_events: list = []
    wants_progress = opts.pop("progress", False)
    progress = (lambda phase, done, total: progress_events.append((phase, done, total))) if wants_progress else None
    if "batch" in opts:
        opts["batch"] = parse_batch(opts["batch"])
    timing = opts.pop("timing_cache", None)
    if timing:
        path = tmp / f"timing-{timing}.cache"
        path.unlink(missing_ok=True)
        if timing != "new":
            path.write_bytes(b"stale" if timing == "stale" else b"timing cache v1")
        opts["timing_cache"] = str(path)
    algorithm = opts.pop("calib", None)
    if algorithm:
        path = tmp / f"{algorithm}.cache"
        path.write_text(format_table({"input": 1.0, "logits": 4.0}, version, algorithm))
        opts["calib_cache"] = str(path)
    plan_for = opts.pop("plan_for", None)
    if plan_for:
        if plan_for.split(".")[:2] != version.split(".")[:2]:
            raise NotApplicable(f"a plan for TensorRT {plan_for}, checked on the {plan_for[:4]} bindings only")
        version = plan_for
    shape = (None, 3, 32, 32) if kind == "dynamic" else (1, 3, 32, 32)
    facts = OnnxFacts("input", shape, ("logits",), 6 if kind == "qdq" else 0, False)
    try:
        plan = make_plan(BuildOptions(**opts), facts, version, get_device(device), "8.9")
    except UserInputError as exc:
        raise NotApplicable(str(exc)) from None

    io = {
        "inputs": [{"name": "input", "shape": [-1 if kind == "dynamic" else 1, 3, 32, 32]}],
        "outputs": [{"name": "logits", "shape": [-1 if kind == "dynamic" else 1, 3]}],
    }
    state: dict = {"engine_bytes": f"engine {device} {version}".encode()}
    script_builder(world, trt, io, state)
    world.calls.clear()
    serialized, io_out = builder._apply_plan(plan, Path(spec["onnx"]), progress)
    if kind == "dynamic" and not io_example:
        io_example.update(io_out)  # what tests/test_trt_cli.py's stand-in for _apply_plan must look like

    assert serialized == state["engine_bytes"], serialized
    assert [t["name"] for t in io_out["inputs"]] == ["input"] and io_out["inputs"][0]["dtype"] == "float32", io_out
    assert io_out["inputs"][0]["profile"] == plan.profile and io_out["outputs"][0]["name"] == "logits", io_out
    flags = [str(args[0]).split(".")[-1] for name, args, _ in world.calls if name == "IBuilderConfig.set_flag"]
    assert flags == plan.builder_flags, (flags, plan.builder_flags)
    assert world.count("IOptimizationProfile.set_shape") == (1 if plan.dynamic_batch else 0)
    if plan.int8_source == "calib_cache":
        assert state.get("calibrated"), "the calibrator was never handed to TensorRT"
    if plan.dla_core is not None:
        assert world.count("IBuilderConfig.DLA_core=") == 1 and world.count("IBuilderConfig.default_device_type=") == 1
    if plan.timing_cache:
        saved = Path(plan.timing_cache).read_bytes()
        assert saved == b"timing cache from " + trt.__real__.__version__.encode(), saved
    if progress is not None and plan.progress_monitor:
        assert ("Tactic search", 3, 3) in progress_events, progress_events
    elif progress is not None:
        assert progress_events and progress_events[0][2] is None, progress_events
    return "; ".join(plan.notes)


def check_failures(trt, world: World, version: str, spec: dict) -> str:
    """What TensorRT reports on failure reaches the user: parser errors, a failed build, a board without that DLA."""
    from edgecnn.errors import ArtifactError, EdgeCNNError, UserInputError
    from edgecnn.trt import builder
    from edgecnn.trt.devices import get_device
    from edgecnn.trt.plan import BuildOptions, OnnxFacts, make_plan

    real = trt.__real__
    facts = OnnxFacts("input", (1, 3, 32, 32), ("logits",), 0, False)
    io = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32]}], "outputs": [{"name": "logits", "shape": [1, 3]}]}
    plan = make_plan(BuildOptions(), facts, version, get_device("desktop"))
    onnx = Path(spec["onnx"])

    def parser_error(parser, index):
        error = Double(real.ParserError, world, trt)
        error.state["text"] = "Unsupported ONNX opset"
        return error

    script_builder(world, trt, io, {})
    world.on("OnnxParser.parse_from_file", False)
    world.on("OnnxParser.num_errors", 1)
    world.on("OnnxParser.get_error", parser_error)
    try:
        builder._apply_plan(plan, onnx, None)
        raise AssertionError("a parser failure was not reported")
    except ArtifactError as exc:
        assert "cannot parse" in str(exc), exc

    script_builder(world, trt, io, {})
    world.on("Builder.build_serialized_network", None)
    try:
        builder._apply_plan(plan, onnx, None)
        raise AssertionError("a failed build was not reported")
    except EdgeCNNError as exc:
        assert "could not build" in str(exc), exc

    dla_version = "11.4.1" if version.startswith("11.") else version  # DLA on 11.x: 11.4.1+
    options = BuildOptions(precision="fp16", dla_core=1, gpu_fallback=True)
    dla_plan = make_plan(options, facts, dla_version, get_device("agx-orin"))
    script_builder(world, trt, io, {})
    world.on("Builder.num_DLA_cores", 1)
    try:
        builder._apply_plan(dla_plan, onnx, None)
        raise AssertionError("a missing DLA core was not reported")
    except UserInputError as exc:
        assert "--dla 1" in str(exc), exc
    return ""


def end_to_end_build(trt, world: World, version: str, spec: dict, kind: str, precision: str, extra: dict):
    """`build_engine()` as the CLI calls it: real ONNX + contract, runtime facts from TensorRT and CUDA, manifest."""
    from edgecnn.errors import UserInputError
    from edgecnn.trt.builder import build_engine
    from edgecnn.trt.plan import BuildOptions, parse_batch

    onnx = Path(spec["onnx_dynamic" if kind == "dynamic" else "onnx_fixed"])
    out = Path(spec["tmp"]) / f"{kind}-{precision}{'-vc' if extra else ''}.engine"
    io = {
        "inputs": [{"name": "input", "shape": [-1 if kind == "dynamic" else 1, 3, 32, 32]}],
        "outputs": [{"name": "logits", "shape": [-1 if kind == "dynamic" else 1, 3]}],
    }
    state = {"engine_bytes": f"engine {kind} {version}".encode()}
    script_builder(world, trt, io, state)
    batch = parse_batch("1:4:8") if kind == "dynamic" else None
    try:
        report = build_engine(onnx, out, BuildOptions(precision=precision, batch=batch, **extra))
    except UserInputError as exc:
        raise NotApplicable(str(exc)) from None
    assert out.read_bytes() == state["engine_bytes"]
    manifest = json.loads(report.manifest.read_text())
    assert manifest["built_with"]["tensorrt"] == version and manifest["built_with"]["gpu"] == "Conformance GPU"
    return str(out)


def scripted_engine(dynamic: bool = True, layers: tuple = ()) -> dict:
    """The engine script_runtime plays: input (N, 3, 32, 32) -> logits (N, 3); dynamic: batch 1 to 8 (opt 4)."""
    return {
        "input": "input",
        "output": "logits",
        "shape": [-1 if dynamic else 1, 3, 32, 32],
        "batches": [1, 4, 8] if dynamic else [1, 1, 1],
        "max_batch": 8 if dynamic else 1,
        "classes": 3,
        "layers": list(layers),
    }


def run_runner(trt, world: World, engine_path: str, kind: str, layers: bool) -> str:
    import numpy as np

    from edgecnn.runtime.tensorrt import TensorRTRunner

    dynamic = kind == "dynamic"
    engine = scripted_engine(dynamic, [("conv1 + relu1", 0.25), ("conv2 + relu2", 0.5), ("fc", 0.125)])
    script_runtime(world, trt, engine)
    runner = TensorRTRunner(Path(engine_path))
    try:
        assert (
            runner.input_spec.min_batch == (1 if dynamic else 1) and runner.input_spec.max_batch == engine["max_batch"]
        )
        batch = 3 if dynamic else 1
        logits = runner.infer(np.zeros((batch, 3, 32, 32), np.float32))
        assert logits.shape == (batch, 3), logits.shape
        runner.describe()
        detail = ""
        if layers:
            rows = runner.layer_profile(batch=1, iterations=4, warmup=1)
            assert [r["name"] for r in rows] == ["conv2 + relu2", "conv1 + relu1", "fc"], rows
            assert rows[0]["mean_ms"] == 0.5 and rows[0]["op"] == "CaskConvolution", rows[0]
            detail = f"{len(rows)} layers, types from the engine inspector"
            assert runner.infer(np.zeros((batch, 3, 32, 32), np.float32)).shape == (batch, 3)  # unprofiled again
    finally:
        runner.close()
    return detail


def check_profile(trt, world: World, engine_path: str) -> str:
    """`edgecnn profile ENGINE --per-layer`: latency through the runner, then the per-layer table (IProfiler +
    engine inspector) through the profile module's hook."""
    from edgecnn.profiling.latency import ProfileOptions, profile_models

    engine = scripted_engine(layers=[("conv1 + relu1", 0.25), ("fc", 0.125)])
    script_runtime(world, trt, engine)
    options = ProfileOptions(batches=(1, 2), warmup=1, iterations=3, per_layer=True, layer_iterations=2)
    result = profile_models([engine_path], options)
    text = json.dumps(result.to_dict() if hasattr(result, "to_dict") else str(result))
    assert "conv1 + relu1" in text and "CaskConvolution" in text, text[:500]
    return ""


def check_profile_selection(trt, world: World, engine_path: str) -> str:
    """A context TensorRT hands out without an optimization profile (8.x: -1) gets profile 0 selected."""
    import numpy as np

    from edgecnn.runtime.tensorrt import TensorRTRunner

    engine = scripted_engine(layers=[("conv1 + relu1", 0.25)])
    script_runtime(world, trt, engine)
    world.on("IExecutionContext.active_optimization_profile", -1)
    with TensorRTRunner(Path(engine_path)) as runner:
        world.calls.clear()
        assert runner.layer_profile(batch=2, iterations=2, warmup=0)[0]["name"] == "conv1 + relu1"
        assert runner.infer(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3)
    assert world.count("IExecutionContext.set_optimization_profile_async") == 2, world.calls  # profiled + fresh
    return ""


def check_runner_dla_and_bad_engine(trt, world: World, engine_path: str) -> str:
    """A DLA engine's runtime gets the manifest's DLA core (on a Jetson: its /etc/nv_tegra_release and device-tree
    model are given as files); an engine TensorRT cannot deserialize is an ArtifactError."""
    import shutil

    from edgecnn import platform
    from edgecnn.errors import ArtifactError
    from edgecnn.runtime.tensorrt import TensorRTRunner
    from edgecnn.trt.manifest import manifest_path

    src = Path(engine_path)
    dla = src.with_name("dla-" + src.name)
    shutil.copy(src, dla)
    manifest = json.loads(manifest_path(src).read_text())
    manifest["dla_core"] = 1
    manifest_path(dla).write_text(json.dumps(manifest))
    engine = scripted_engine(dynamic=False)
    root = src.parent / "jetson-root"  # an AGX Orin with JetPack 6.1: its /etc and /proc files under a folder
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
    (root / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n"
    )
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    saved, platform.ROOT = platform.ROOT, root
    try:
        script_runtime(world, trt, engine)
        world.calls.clear()
        TensorRTRunner(dla).close()
        assert ("Runtime.DLA_core=", (1,), {}) in world.calls, world.calls

        script_runtime(world, trt, engine)
        world.on("Runtime.deserialize_cuda_engine", None)
        try:
            TensorRTRunner(dla)
            raise AssertionError("an engine TensorRT refused was opened")
        except ArtifactError as exc:
            assert "could not deserialize" in str(exc), exc
    finally:
        platform.ROOT = saved
    return ""


def check_runner_refusals(trt, world: World, engine_path: str) -> str:
    """TensorRT answers False when it refuses an input shape or a tensor address (8.5+): the runner stops with the
    logger's reason instead of running on the previous shape's data or an unbound tensor."""
    import numpy as np

    from edgecnn.errors import EdgeCNNError
    from edgecnn.runtime.tensorrt import TensorRTRunner

    engine = scripted_engine()
    script_runtime(world, trt, engine)
    world.on("IExecutionContext.set_tensor_address", False)
    try:
        TensorRTRunner(Path(engine_path))
        raise AssertionError("a runner whose tensor address TensorRT refused was opened")
    except EdgeCNNError as exc:
        assert "refused the buffer of tensor" in str(exc), exc

    script_runtime(world, trt, engine)
    with TensorRTRunner(Path(engine_path)) as runner:
        world.on("IExecutionContext.set_input_shape", False)
        try:
            runner.infer(np.zeros((2, 3, 32, 32), np.float32))
            raise AssertionError("inference ran on a shape TensorRT refused")
        except EdgeCNNError as exc:
            assert "refused input shape (2, 3, 32, 32)" in str(exc), exc
    return ""


def check_cuda_without_driver(real_cuda) -> str:
    """The real cuda-python on a machine without the NVIDIA driver (a container started without --gpus or
    --runtime nvidia): one line naming libcuda.so.1 and the fix, not cuda-python's RuntimeError."""
    from edgecnn.errors import MissingDependencyError
    from edgecnn.trt import cudart

    if real_cuda is None:
        raise NotApplicable(os.environ.get("EDGECNN_CONFORMANCE_CUDA_UNAVAILABLE", "no cuda-python"))
    try:
        ctypes.CDLL("libcuda.so.1")
        raise NotApplicable("this machine has an NVIDIA driver (libcuda.so.1 loads)")
    except OSError:
        pass
    assert cudart.load() is real_cuda, (cudart.load(), real_cuda)
    try:
        cudart.gpu_properties(0)
        raise AssertionError("gpu_properties answered without a driver")
    except MissingDependencyError as exc:
        assert "libcuda.so.1" in str(exc) and "--gpus" in str(exc), exc
    return real_cuda.__name__


def check_cuda_module(real_cuda) -> str:
    """edgecnn's cudart.load() finds the module this cuda-python has (12.2: only cuda.cudart)."""
    from edgecnn.trt import cudart

    if real_cuda is None:
        raise NotApplicable(os.environ.get("EDGECNN_CONFORMANCE_CUDA_UNAVAILABLE", "no cuda-python"))
    assert cudart.load().__name__ == os.environ["EDGECNN_CONFORMANCE_CUDA"], cudart.load().__name__
    assert cudart.gpu_properties(0) == {
        "name": "Conformance GPU",
        "compute_capability": "8.9",
        "memory_bytes": 8 << 30,
        "cuda_runtime": "12.6",
    }, cudart.gpu_properties(0)
    return cudart.load().__name__


def check_env(trt, version: str) -> str:
    from edgecnn.trt import env
    from edgecnn.trt.calib_cache import installed_version
    from edgecnn.trt.plan import TrtVersion, check_supported

    assert env.tensorrt_version() == version and installed_version() == version
    check_supported(TrtVersion.parse(version))
    facts = env.runtime_facts()
    assert facts["tensorrt"] == version and facts["compute_capability"] == "8.9", facts
    described = env.describe()
    assert described["tensorrt"] == version, described
    return f"TrtVersion {TrtVersion.parse(version)}"


def check_logger(trt) -> str:
    from edgecnn.trt.logger import make_logger

    logger = make_logger(trt)
    exercise_logger(trt, logger)
    through_tensorrt(trt.__real__.ILogger, "log", logger, trt.__real__.ILogger.Severity.ERROR, "an error")
    assert logger.last(2) == "conformance warning | an error", logger.last(2)
    return ""


# ---------------------------------------------------------------- main

# build_engine() runs (ONNX kind, precision, extra BuildOptions), each engine then opened by the runner
END_TO_END = {
    "dynamic-fp16": ("dynamic", "fp16", {}),
    "fixed-fp32": ("fixed", "fp32", {}),
    "fixed-fp16-version-compatible": ("fixed", "fp16", {"version_compatible": True}),
}


def check_names() -> list[str]:
    """Every check main() records, in order (importable without TensorRT, for the test ids)."""
    names = ["cuda/without-driver", "cuda/module", "gates", "env", "logger", "build/failures"]
    names += [f"build/{case[0]}" for case in build_cases()]
    names += [f"build_engine/{n}" for n in END_TO_END] + [f"runner/{n}" for n in END_TO_END]
    names += ["runner/layer-profile", "profile/per-layer", "runner/profile-selection"]
    return names + ["runner/dla-core-and-bad-engine", "runner/refused-shape-and-address"]


def main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import tensorrt_bindings as real

    version = real.__version__
    world = World(real)
    trt = make_module(real, world)
    sys.modules["tensorrt"] = trt
    real_cuda = None
    if os.environ.get("EDGECNN_CONFORMANCE_CUDA"):
        real_cuda = importlib.import_module(os.environ["EDGECNN_CONFORMANCE_CUDA"])
    tmp = Path(spec["tmp"])
    results: dict[str, dict] = {}

    def record(name, fn, *args):
        world.violations.clear()
        try:
            detail = fn(*args)
            gc.collect()  # every double of the check is gone: lifetime rules were checked as they went
            if world.violations:
                raise ConformanceError("; ".join(dict.fromkeys(world.violations)))
            results[name] = {"status": "pass", "detail": detail or ""}
        except NotApplicable as exc:
            results[name] = {"status": "na", "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001 - each failure is reported with where it happened
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/edgecnn/" in f.filename]
            where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno}: {frames[-1].line})" if frames else ""
            results[name] = {"status": "fail", "detail": f"{type(exc).__name__}: {exc}{where}"}
        world.script.clear()

    record("cuda/without-driver", check_cuda_without_driver, real_cuda)  # before the answers stand in for a GPU
    if real_cuda is None:
        install_cuda()
    else:
        from cuda_conformance import checked_runtime

        install_cuda(checked_runtime(real_cuda, cuda_answers(real_cuda)), real_cuda.__name__)
    record("cuda/module", check_cuda_module, real_cuda)
    record("gates", check_gates, trt, version)
    record("env", check_env, trt, version)
    record("logger", check_logger, trt)
    record("build/failures", check_failures, trt, world, version, spec)
    io_example = {}
    for case, device, opts, kind in build_cases():
        record(f"build/{case}", run_build_case, trt, world, version, spec, device, opts, kind, tmp, io_example)
    engines = {}
    for name, (kind, precision, extra) in END_TO_END.items():

        def build(kind=kind, precision=precision, extra=extra, name=name):
            engines[name] = end_to_end_build(trt, world, version, spec, kind, precision, extra)

        record(f"build_engine/{name}", build)
    for name, (kind, _, _) in END_TO_END.items():
        if name in engines:
            record(f"runner/{name}", run_runner, trt, world, engines[name], kind, False)
    if "dynamic-fp16" in engines:
        record("runner/layer-profile", run_runner, trt, world, engines["dynamic-fp16"], "dynamic", True)
    if "dynamic-fp16" in engines:
        record("profile/per-layer", check_profile, trt, world, engines["dynamic-fp16"])
        record("runner/profile-selection", check_profile_selection, trt, world, engines["dynamic-fp16"])
        record("runner/refused-shape-and-address", check_runner_refusals, trt, world, engines["dynamic-fp16"])
    if "fixed-fp32" in engines:
        record("runner/dla-core-and-bad-engine", check_runner_dla_and_bad_engine, trt, world, engines["fixed-fp32"])

    unused_real = sorted(n for n in REAL_CLASSES if hasattr(real, n))
    Path(result_path).write_text(
        json.dumps(
            {
                "version": version,
                "results": results,
                "used": sorted(world.used),
                "surface": surface(real),
                "real_classes": unused_real,
                "io_example": io_example,
                "deprecated": deprecations(real, deprecation_candidates(real, world.used)),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
