"""What TensorRT does around edgecnn's calls, for the conformance doubles: the scripted builder and runtime (an
engine with one input and one output), our callbacks called the way TensorRT calls them, and what a GPU answers to
cuda-python (tests/cuda_conformance.py checks the calls against the real cuda-python where it is available). Used by
tests/trt_conformance_checks.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
import types
import weakref

from trt_conformance_doubles import REAL_CLASSES, ConformanceError, Double, World, check_override

# ---------------------------------------------------------------- CUDA: what a GPU would answer


def cuda_answers(real=None) -> types.ModuleType:
    """cuda-python's runtime module as a machine with one GPU answers it: `(cudaError_t, *results)` tuples. With the
    real module (`real`), the answers are made of its own types (enums, cudaStream_t, cudaEvent_t, cudaDeviceProp);
    tests/cuda_conformance.py puts the real functions in front, so every argument is checked by cuda-python itself."""
    rt = types.ModuleType("cuda.bindings.runtime")
    if real is not None:
        ok = real.cudaError_t.cudaSuccess
        rt.cudaError_t, rt.cudaMemcpyKind = real.cudaError_t, real.cudaMemcpyKind
        stream = real.cudaStream_t(init_value=0x5000)
        events = (real.cudaEvent_t(init_value=0x6000 + i) for i in range(1 << 20))
        props = real.cudaDeviceProp()
        props.name = b"Conformance GPU".ljust(256, b"\0")
        props.major, props.minor, props.totalGlobalMem = 8, 9, 8 << 30
    else:
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

        rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
        stream, props = Stream(), Props()
        events = (0x6000 + i for i in range(1 << 20))

    keep: dict[int, object] = {}

    def malloc_host(n):
        buf = ctypes.create_string_buffer(max(1, n))
        keep[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    rt.cudaGetDeviceCount = lambda: (ok, 1)
    rt.cudaGetDeviceProperties = lambda device: (ok, props)
    rt.cudaRuntimeGetVersion = lambda: (ok, 12060)
    rt.cudaGetErrorString = lambda err: (ok, b"error")
    rt.cudaSetDevice = lambda device: (ok,)
    rt.cudaStreamCreate = lambda: (ok, stream)
    rt.cudaEventCreate = lambda: (ok, next(events))
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


def install_cuda(runtime: types.ModuleType | None = None, name: str = "cuda.bindings.runtime") -> None:
    """Make `import <name>` (edgecnn's cudart.load) give `runtime`, by default the GPU answers without cuda-python."""
    runtime = runtime or cuda_answers()
    if name in sys.modules or "cuda" in sys.modules:  # the real package is imported: replace only the module
        sys.modules[name] = runtime
        return
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda.bindings = bindings
    sys.modules.update({"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": runtime})


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
