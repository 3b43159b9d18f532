"""Every TensorRT use of edgecnn, run against the doubles of ONE release's real bindings (one process per release).

Run by tests/test_trt_conformance.py as `python tests/trt_conformance_checks.py SPEC.json RESULT.json` with the
release's `tensorrt_bindings` on PYTHONPATH and its stub libraries on LD_LIBRARY_PATH (trt_conformance_bindings.py).
`tensorrt` is the double module of tests/trt_conformance_doubles.py; CUDA (cuda-python) is a small in-process
stand-in (no GPU here): only TensorRT's API is under test. The result holds one entry per check (pass / fail with the
traceback's last line / na with the build plan's reason), every TensorRT attribute used, and the release's API surface.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import traceback
import types
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trt_conformance_doubles import REAL_CLASSES, ConformanceError, Double, World, check_override, make_module  # noqa: E402

# ---------------------------------------------------------------- CUDA stand-in (cuda-python's runtime API shape)


def fake_cudart() -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = 0

    class cudaError_t:  # noqa: N801 (cuda-python's names)
        cudaSuccess = ok

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class Stream:  # cuda-python's cudaStream_t converts with int()
        def __int__(self):
            return 0x5000

    class Props:
        name, major, minor, totalGlobalMem = b"Conformance GPU", 8, 9, 8 << 30

    keep: dict[int, object] = {}

    def malloc_host(n):
        buf = ctypes.create_string_buffer(max(1, n))
        keep[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt.cudaGetDeviceCount = lambda: (ok, 1)
    rt.cudaGetDeviceProperties = lambda device: (ok, Props())
    rt.cudaRuntimeGetVersion = lambda: (ok, 12060)
    rt.cudaGetErrorString = lambda err: (ok, b"error")
    rt.cudaSetDevice = lambda device: (ok,)
    rt.cudaStreamCreate = lambda: (ok, Stream())
    rt.cudaEventCreate = lambda: (ok, object())
    rt.cudaEventRecord = lambda ev, stream: (ok,)
    rt.cudaEventElapsedTime = lambda a, b: (ok, 0.1)
    rt.cudaEventDestroy = lambda ev: (ok,)
    rt.cudaStreamDestroy = lambda s: (ok,)
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaMallocHost = malloc_host
    rt.cudaMalloc = lambda n: (ok, 0x10000 + n)
    rt.cudaMemcpyAsync = lambda dst, src, n, kind, stream: (ok,)
    rt.cudaFree = lambda p: (ok,)
    rt.cudaFreeHost = lambda p: (ok,)
    return rt


def install_cuda() -> None:
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = fake_cudart()
    cuda.bindings = bindings
    sys.modules.update({"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": bindings.runtime})


# ---------------------------------------------------------------- calling our callbacks as TensorRT does


def through_tensorrt(base: type, method: str, obj, *args):
    """Call `base.method(obj, *args)`: pybind dispatches through the C++ vtable to the Python override, as TensorRT
    does. An exception in the override is caught and printed by the trampoline, so stderr is captured and checked."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as err:
        os.dup2(err.fileno(), 2)
        try:
            result = getattr(base, method)(obj, *args)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if "Exception caught" in text or "pure virtual" in text:
        raise ConformanceError(f"TensorRT calling {type(obj).__name__}.{method}: {text.strip()[:300]}")
    return result


def exercise_logger(trt, logger) -> None:
    real = trt.__real__
    problems = check_override(real.ILogger, type(logger))
    if problems:
        raise ConformanceError("; ".join(problems))
    through_tensorrt(real.ILogger, "log", logger, real.ILogger.Severity.WARNING, "conformance warning")
    through_tensorrt(real.ILogger, "log", logger, real.ILogger.Severity.INFO, "conformance info")
    assert logger.messages[-1] == "conformance warning", logger.messages


def exercise_calibrator(trt, calibrator, input_name: str) -> None:
    """What TensorRT does with a calibrator during a build from a cache: batch size, then the cache."""
    real = trt.__real__
    base = next(b for b in type(calibrator).__mro__[1:] if b.__name__ in REAL_CLASSES)
    problems = check_override(base, type(calibrator))
    if problems:
        raise ConformanceError("; ".join(problems))
    size = through_tensorrt(base, "get_batch_size", calibrator)
    assert isinstance(size, int) and size >= 1, size
    batch = calibrator.get_batch([input_name])  # TensorRT accepts None (no more data) or a list of device pointers
    assert batch is None or all(isinstance(p, int) for p in batch), batch
    cache = calibrator.read_calibration_cache()  # TensorRT reads it through the buffer protocol
    assert cache is None or isinstance(cache, (bytes, bytearray, memoryview)), type(cache)
    assert bytes(cache).startswith(b"TRT-"), cache[:20]
    calibrator.write_calibration_cache(memoryview(bytes(cache)))
    algorithm = through_tensorrt(base, "get_algorithm", calibrator) if hasattr(base, "get_algorithm") else None
    assert algorithm is None or isinstance(algorithm, real.CalibrationAlgoType)


def exercise_monitor(trt, monitor) -> None:
    real = trt.__real__
    problems = check_override(real.IProgressMonitor, type(monitor))
    if problems:
        raise ConformanceError("; ".join(problems))
    through_tensorrt(real.IProgressMonitor, "phase_start", monitor, "Building engine", None, 2)
    through_tensorrt(real.IProgressMonitor, "phase_start", monitor, "Tactic search", "Building engine", 3)
    for step in range(3):
        assert through_tensorrt(real.IProgressMonitor, "step_complete", monitor, "Tactic search", step) is True
    through_tensorrt(real.IProgressMonitor, "phase_finish", monitor, "Tactic search")
    through_tensorrt(real.IProgressMonitor, "phase_finish", monitor, "Building engine")


# ---------------------------------------------------------------- the world: what TensorRT returns


def script_builder(world: World, trt, io: dict, state: dict) -> None:
    real = trt.__real__

    def tensor(spec):
        t = Double(real.ITensor, world, trt)
        t.state.update(spec)
        return t

    def new_builder(logger):
        b = Double(real.Builder, world, trt)
        b.state["logger"] = weakref.ref(logger)  # TensorRT does not own it (see trt_conformance_doubles)
        return b

    def build(builder, network, config):
        attached_timing_cache(config)
        exercise_logger(trt, builder.state["logger"]())
        if config.value("int8_calibrator") is not None:
            exercise_calibrator(trt, config.value("int8_calibrator"), io["inputs"][0]["name"])
            state["calibrated"] = True
        if config.value("progress_monitor") is not None:
            exercise_monitor(trt, config.value("progress_monitor"))
        mem = Double(real.IHostMemory, world, trt)
        mem.state["bytes"] = state.get("engine_bytes", b"conformance engine")
        return mem

    # IBuilderConfig.set_timing_cache: "The cache must not be destroyed until after the engine is built" (the
    # config does not own it): held here by a weak reference, so a cache only the call held is gone at build time.
    def set_timing_cache(config, cache, ignore_mismatch):
        accepted = cache.state.get("blob") != b"stale"
        if accepted:
            config.state["timing_cache"] = weakref.ref(cache)
        return accepted

    def attached_timing_cache(config):
        ref = config.state.get("timing_cache")
        cache = ref() if ref else None
        if ref and cache is None:
            raise ConformanceError("the timing cache given to set_timing_cache was destroyed before the build")
        return cache

    def timing_serialize(cache):
        mem = Double(real.IHostMemory, world, trt)
        mem.state["bytes"] = b"timing cache from " + trt.__real__.__version__.encode()
        return mem

    def new_timing_cache(config, blob):
        cache = Double(real.ITimingCache, world, trt)
        cache.state["blob"] = bytes(blob)
        return cache

    world.on("Builder.__init__", new_builder)
    world.on("Builder.num_DLA_cores", 2)
    world.on("Builder.build_serialized_network", build)
    world.on("OnnxParser.parse_from_file", True)
    world.on("OnnxParser.num_errors", 0)
    world.on("INetworkDefinition.num_inputs", len(io["inputs"]))
    world.on("INetworkDefinition.num_outputs", len(io["outputs"]))
    world.on("INetworkDefinition.get_input", lambda net, i: tensor(io["inputs"][i]))
    world.on("INetworkDefinition.get_output", lambda net, i: tensor(io["outputs"][i]))
    world.on("ITensor.name", lambda t: t.state["name"])
    world.on("ITensor.shape", lambda t: real.Dims(t.state["shape"]))
    world.on("ITensor.dtype", lambda t: real.DataType.FLOAT)
    world.on("IBuilderConfig.create_timing_cache", new_timing_cache)
    world.on("IBuilderConfig.set_timing_cache", set_timing_cache)
    world.on("IBuilderConfig.get_timing_cache", attached_timing_cache)
    world.on("ITimingCache.serialize", timing_serialize)


def script_runtime(world: World, trt, engine: dict) -> None:
    """An engine with one input (`engine['input']`, shape with -1 for a dynamic batch) and one output."""
    real = trt.__real__
    names = [engine["input"], engine["output"]]

    def new_engine(runtime, blob):
        e = Double(real.ICudaEngine, world, trt)
        e.state["blob"] = bytes(blob)
        return e

    # Optimization profiles (C++ IExecutionContext::getOptimizationProfile): a new context gets profile 0 implicitly
    # only if no other live context is set to profile 0, else -1, and enqueueV3 fails until a profile is set; and a
    # profile is used by one context at a time unless PROFILE_SHARING_0806 (a preview feature, off in 8.6, on and
    # the only behaviour from 10.0). So on 8.x a second context while the first lives cannot run.
    sharing = int(real.__version__.split(".")[0]) >= 10
    live = weakref.WeakSet()

    def profile_taken(by):
        return any(c is not by and c.state["profile"] == 0 for c in live)

    def new_context(eng):
        c = Double(real.IExecutionContext, world, trt)
        c.state["batch"] = engine["max_batch"]
        c.state["profile"] = 0 if sharing or not profile_taken(c) else -1
        live.add(c)
        return c

    def set_profile(ctx, index, stream):
        if index != 0 or (not sharing and profile_taken(ctx)):
            return False
        ctx.state["profile"] = index
        return True

    def set_input_shape(ctx, name, shape):
        assert name == engine["input"], name
        ctx.state["batch"] = int(tuple(shape)[0])
        return True

    def context_shape(ctx, name):
        if name == engine["input"]:
            return real.Dims([ctx.state["batch"], *engine["shape"][1:]])
        return real.Dims([ctx.state["batch"], engine["classes"]])

    def execute(ctx, stream):
        if ctx.state["profile"] != 0:
            return False  # TensorRT: "all calls to enqueueV3() will fail until a valid profile index has been set"
        profiler = ctx.value("profiler")
        if profiler is not None:
            problems = check_override(real.IProfiler, type(profiler))
            if problems:
                raise ConformanceError("; ".join(problems))
            for layer, ms in engine["layers"]:
                through_tensorrt(real.IProfiler, "report_layer_time", profiler, layer, ms)
        return True

    def engine_shape(eng, name):
        if name == engine["input"]:
            return real.Dims(engine["shape"])
        return real.Dims([engine["shape"][0], engine["classes"]])

    def profile_shape(eng, name, index):
        assert index == 0 and name == engine["input"], (name, index)
        return [real.Dims([b, *engine["shape"][1:]]) for b in engine["batches"]]

    def info(inspector, fmt):
        assert fmt == real.LayerInformationFormat.JSON, fmt
        return json.dumps({"Layers": [{"Name": n, "LayerType": "CaskConvolution"} for n, _ in engine["layers"]]})

    world.on("Runtime.deserialize_cuda_engine", new_engine)
    world.on("ICudaEngine.num_io_tensors", 2)
    world.on("ICudaEngine.get_tensor_name", lambda eng, i: names[i])
    world.on(
        "ICudaEngine.get_tensor_mode",
        lambda eng, n: real.TensorIOMode.INPUT if n == engine["input"] else real.TensorIOMode.OUTPUT,
    )
    world.on("ICudaEngine.get_tensor_shape", engine_shape)
    world.on("ICudaEngine.get_tensor_profile_shape", profile_shape)
    world.on("ICudaEngine.get_tensor_dtype", lambda eng, n: real.DataType.FLOAT)
    world.on("ICudaEngine.create_execution_context", new_context)
    world.on("IExecutionContext.set_input_shape", set_input_shape)
    world.on("IExecutionContext.get_tensor_shape", context_shape)
    world.on("IExecutionContext.set_tensor_address", True)
    world.on("IExecutionContext.execute_async_v3", execute)
    world.on("IExecutionContext.active_optimization_profile", lambda ctx: ctx.state["profile"])
    world.on("IExecutionContext.set_optimization_profile_async", set_profile)
    world.on("EngineInspector.get_engine_information", info)


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
    from edgecnn.quant.trt_cache import format_table
    from edgecnn.trt import builder
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


def run_runner(trt, world: World, engine_path: str, kind: str, layers: bool) -> str:
    import numpy as np

    from edgecnn.runtime.tensorrt import TensorRTRunner

    dynamic = kind == "dynamic"
    engine = {
        "input": "input",
        "output": "logits",
        "shape": [-1 if dynamic else 1, 3, 32, 32],
        "batches": [1, 4, 8],
        "max_batch": 8 if dynamic else 1,
        "classes": 3,
        "layers": [("conv1 + relu1", 0.25), ("conv2 + relu2", 0.5), ("fc", 0.125)],
    }
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
    from edgecnn.profile import ProfileOptions, profile_models

    engine = {
        "input": "input",
        "output": "logits",
        "shape": [-1, 3, 32, 32],
        "batches": [1, 4, 8],
        "max_batch": 8,
        "classes": 3,
        "layers": [("conv1 + relu1", 0.25), ("fc", 0.125)],
    }
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

    engine = {
        "input": "input",
        "output": "logits",
        "shape": [-1, 3, 32, 32],
        "batches": [1, 4, 8],
        "max_batch": 8,
        "classes": 3,
        "layers": [("conv1 + relu1", 0.25)],
    }
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

    from edgecnn.errors import ArtifactError
    from edgecnn.runtime.tensorrt import TensorRTRunner
    from edgecnn.trt import env
    from edgecnn.trt.manifest import manifest_path

    src = Path(engine_path)
    dla = src.with_name("dla-" + src.name)
    shutil.copy(src, dla)
    manifest = json.loads(manifest_path(src).read_text())
    manifest["dla_core"] = 1
    manifest_path(dla).write_text(json.dumps(manifest))
    engine = {
        "input": "input",
        "output": "logits",
        "shape": [1, 3, 32, 32],
        "batches": [1, 1, 1],
        "max_batch": 1,
        "classes": 3,
        "layers": [],
    }
    release, model = src.with_name("nv_tegra_release"), src.with_name("device-tree-model")
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    saved = env.NV_TEGRA_RELEASE, env.DEVICE_TREE_MODEL
    env.NV_TEGRA_RELEASE, env.DEVICE_TREE_MODEL = release, model
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
        env.NV_TEGRA_RELEASE, env.DEVICE_TREE_MODEL = saved
    return ""


def check_env(trt, version: str) -> str:
    from edgecnn.quant.trt_cache import installed_version
    from edgecnn.trt import env
    from edgecnn.trt.plan import TrtVersion, check_supported

    assert env.tensorrt_version() == version and installed_version() == version
    check_supported(TrtVersion.parse(version))
    facts = env.runtime_facts()
    assert facts["tensorrt"] == version and facts["compute_capability"] == "8.9", facts
    described = env.describe()
    assert described["tensorrt"] == version, described
    return f"TrtVersion {TrtVersion.parse(version)}"


def check_logger(trt) -> str:
    from edgecnn.trt.builder import make_logger

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
    names = ["gates", "env", "logger", "build/failures"] + [f"build/{case[0]}" for case in build_cases()]
    names += [f"build_engine/{n}" for n in END_TO_END] + [f"runner/{n}" for n in END_TO_END]
    names += ["runner/layer-profile", "profile/per-layer", "runner/profile-selection"]
    return names + ["runner/dla-core-and-bad-engine"]


def surface(real) -> dict:
    """Every public class of the release with its members, every enum with its members (for the table)."""
    out = {"__version__": None}
    for name in dir(real):
        if name.startswith("_"):
            continue
        value = getattr(real, name)
        if isinstance(value, type):
            members = set(getattr(value, "__members__", {}))
            for klass in value.__mro__:
                members |= {k for k in vars(klass) if not k.startswith("__")}
            out[name] = sorted(members)
        else:
            out[name] = None
    return out


def _deprecation(text: str) -> str | None:
    """'deprecated in X' when `text` (a docstring paragraph) starts a line with [DEPRECATED], else None (a mention
    of another, deprecated API inside the text does not count)."""
    if not re.match(r"\s*(?::class:`[^`]*`\s*)?\[DEPRECATED\]", text) and not re.search(r"\n\s*\[DEPRECATED\]", text):
        return None
    m = re.search(r"Deprecated in TensorRT (\d+(?:\.\d+)*)", text)
    return f"deprecated in {m.group(1)}" if m else "deprecated"


def deprecations(real, names: list[str]) -> dict[str, str]:
    """Which of `names` ('tensorrt.X', 'Class.member') the release's docstrings mark [DEPRECATED]."""
    out = {}
    for name in names:
        owner, _, member = name.partition(".")
        note = None
        if owner == "tensorrt":
            value = getattr(real, member, None)
            doc = (getattr(value, "__doc__", "") or "") if isinstance(value, type) else ""
            note = _deprecation("\n".join(doc.strip().splitlines()[:3]))
        else:
            cls = getattr(real, owner, None)
            if cls is None or not hasattr(cls, member):
                continue
            if hasattr(cls, "__members__"):  # an enum: the member's paragraph under "Members:"
                m = re.search(rf"^\s+{re.escape(member)} :(.*?)(?=^\s+\w+ :|\Z)", cls.__doc__ or "", re.M | re.S)
                note = _deprecation(m.group(1)) if m else None
            elif isinstance(getattr(cls, member), property):  # described by the class docstring's :ivar
                owner_cls = next(k for k in cls.__mro__ if member in vars(k))
                m = re.search(rf":ivar {re.escape(member)}:(.*?)(?=:ivar|\Z)", owner_cls.__doc__ or "", re.S)
                note = _deprecation(m.group(1)) if m else None
            else:  # a method: its own docstring, before the argument list
                text = getattr(getattr(cls, member), "__doc__", "") or ""
                note = _deprecation(text.split(":arg", 1)[0])
        if note:
            out[name] = note
    return out


def deprecation_candidates(real, used: set[str]) -> list[str]:
    """Every module class, every enum member, and every member of each class edgecnn touched (the table shows
    deprecations for attributes used on other releases too)."""
    names = {f"tensorrt.{n}" for n in dir(real) if isinstance(getattr(real, n), type)}
    owners = {name.partition(".")[0] for name in used} | {name[9:] for name in used if name.startswith("tensorrt.")}
    owners |= {n for n in dir(real) if hasattr(getattr(real, n), "__members__")}  # every enum (few members each)
    for owner in owners - {"tensorrt"}:
        cls = getattr(real, owner, None)
        if isinstance(cls, type):
            members = set(getattr(cls, "__members__", {})) | set(dir(cls))
            names |= {f"{owner}.{m}" for m in members if not m.startswith("_")}
    return sorted(names | used)


def main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import tensorrt_bindings as real

    version = real.__version__
    world = World(real)
    trt = make_module(real, world)
    sys.modules["tensorrt"] = trt
    install_cuda()
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
