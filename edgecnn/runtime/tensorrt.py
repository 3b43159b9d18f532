"""TensorRT backend: `.engine` / `.plan` files built by `edgecnn build-engine`, run with tensorrt + cuda-python only.

Loading order matters: the sidecar manifest is read and the engine's size + sha256 checked BEFORE tensorrt is
imported, so a truncated or tampered engine is refused even on a machine without TensorRT; then the build facts are
compared with this machine's TensorRT version and GPU (respecting version-/hardware-compatible builds), and only
then is the engine deserialized. Inference: pinned host buffers, device buffers sized for the profile's largest batch,
one CUDA stream, the tensor-address API (`set_input_shape` / `set_tensor_address` / `execute_async_v3`, TensorRT 8.5+).
Never imports PyTorch; `tensorrt` is imported inside functions only.

Extra hooks for `edgecnn profile`: `last_timings` (H2D / compute / D2H ms of the latest call, from CUDA events) and
`layer_profile(batch, iterations)` (per-layer time through trt.IProfiler).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgecnn.errors import ArtifactError, EdgeCNNError, UserInputError, format_shape
from edgecnn.runtime.base import Backend, InputSpec, Runner
from edgecnn.trt import cudart
from edgecnn.trt.cudart import call
from edgecnn.trt.env import require_tensorrt, runtime_facts
from edgecnn.trt.logger import make_logger
from edgecnn.trt.manifest import (
    check_compatibility,
    contract_of,
    read_manifest,
    rebuild_hint,
    verify_engine_file,
)
from edgecnn.trt.plan import TrtVersion, check_supported


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(self, path: Path, device: int = 0):
        self._closed = True
        path = Path(path)
        if path.suffix.lower() in (".onnx", ".pt"):
            raise UserInputError(
                f"{path.name} is not a TensorRT engine: the tensorrt backend runs engines. Build one first with "
                f"`edgecnn build-engine {path} --out {path.with_suffix('.engine')}`"
            )
        manifest = read_manifest(path)
        verify_engine_file(path, manifest)  # size + sha256, before any TensorRT import
        contract = contract_of(manifest)

        here = runtime_facts(device)
        self.warnings = check_compatibility(manifest, here, path)
        check_supported(TrtVersion.parse(here["tensorrt"]))
        trt = require_tensorrt()
        self._trt, self._rt = trt, cudart.load()
        cudart.call(self._rt.cudaSetDevice(device), "cudaSetDevice")
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if (manifest.get("compatibility") or {}).get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # 8.6+: version-compatible plans carry their lean runtime
        if manifest.get("dla_core") is not None:
            self._runtime.DLA_core = int(manifest["dla_core"])
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"TensorRT could not deserialize {path.name} ({self._logger.last()}); {rebuild_hint(manifest, path)}"
            )
        self.context = self.engine.create_execution_context()

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]  # 8.5+
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self._outputs:
            raise ArtifactError(
                f"{path.name} has {len(inputs)} inputs / {len(self._outputs)} outputs; "
                "edgecnn runs single-input classifiers"
            )
        self.input_name = inputs[0]
        shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        self.dynamic = shape[0] < 0
        if self.dynamic:
            lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max), 8.5+
            min_b, max_b = int(lo[0]), int(hi[0])
        else:
            min_b = max_b = shape[0]
        spec = InputSpec(
            name=self.input_name,
            shape=(None if self.dynamic else shape[0],) + shape[1:],
            dtype=np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name))).name,
            min_batch=min_b,
            max_batch=max_b,
        )
        super().__init__(path, contract, spec)
        self.manifest = manifest
        self.last_timings: dict[str, float] = {}

        # Buffers for the largest batch; addresses never change, so they are bound once per context.
        max_shape = self._max_shape = (max_b,) + shape[1:]
        if self.dynamic:
            self._set_input_shape(self.context, max_shape)
        self._buffers = {}
        self._stream = None
        self._closed = False
        self._buffers[self.input_name] = cudart.Buffer(max_shape, spec.dtype)
        for name in self._outputs:
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._buffers[name] = cudart.Buffer(out_shape, dtype)
        self._stream = cudart.call(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._events = [cudart.call(self._rt.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]
        self._bind(self.context)

    # ------------------------------------------------------------ inference

    def _bind(self, context) -> None:
        for name, buf in self._buffers.items():
            if not context.set_tensor_address(name, int(buf.device)):  # 8.5+; False: TensorRT refused it
                raise EdgeCNNError(f"TensorRT refused the buffer of tensor {name!r}: {self._logger.last()}")

    def _set_input_shape(self, context, shape: tuple) -> None:
        """Shape the input, or fail: a refused shape (False, 8.5+) would run on the previous shape's data."""
        if not context.set_input_shape(self.input_name, shape):
            raise EdgeCNNError(
                f"TensorRT refused input shape {format_shape(shape)} for {self.path.name}: {self._logger.last()}"
            )

    def _new_context(self):
        """A fresh execution context on optimization profile 0, shaped and bound like the runner's own.

        The runner keeps ONE context alive at a time: on TensorRT 8.5/8.6 a context only gets profile 0 while no other
        context holds it (sharing a profile is the preview feature PROFILE_SHARING_0806 there, off by default; the
        only behaviour from 10.0), and enqueueV3 fails on a context without a profile."""
        context = self.engine.create_execution_context()
        if context.active_optimization_profile != 0:  # 8.x: -1 until set
            if not context.set_optimization_profile_async(0, self._stream):
                raise EdgeCNNError(f"TensorRT could not select optimization profile 0: {self._logger.last()}")
        if self.dynamic:
            self._set_input_shape(context, self._max_shape)
        self._bind(context)
        return context

    def _run(self, context, batch: np.ndarray, timed: bool = True) -> np.ndarray:
        rt, stream = self._rt, self._stream
        inp = self._buffers[self.input_name]
        if self.dynamic:
            self._set_input_shape(context, tuple(batch.shape))
        flat = np.ascontiguousarray(batch, dtype=inp.dtype).ravel()
        inp.host[: flat.size] = flat
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ev = self._events
        call(rt.cudaEventRecord(ev[0], stream))
        call(rt.cudaMemcpyAsync(inp.device, inp.host.ctypes.data, flat.nbytes, h2d, stream), "cudaMemcpyAsync")
        call(rt.cudaEventRecord(ev[1], stream))
        if not context.execute_async_v3(stream):  # 8.5+
            raise EdgeCNNError(f"TensorRT inference failed: {self._logger.last()}")
        call(rt.cudaEventRecord(ev[2], stream))
        out_name = self._outputs[0]
        out = self._buffers[out_name]
        out_shape = tuple(int(d) for d in context.get_tensor_shape(out_name))
        count = int(np.prod(out_shape))
        call(
            rt.cudaMemcpyAsync(out.host.ctypes.data, out.device, count * out.dtype.itemsize, d2h, stream),
            "cudaMemcpyAsync",
        )
        call(rt.cudaEventRecord(ev[3], stream))
        call(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        if timed:
            self.last_timings = {
                key: float(call(rt.cudaEventElapsedTime(ev[i], ev[i + 1])))
                for i, key in enumerate(("h2d_ms", "compute_ms", "d2h_ms"))
            }
        return out.host[:count].reshape(out_shape).astype(np.float32)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise UserInputError(f"{self.path.name}: the runner is closed")
        return self._run(self.context, batch)

    def layer_profile(self, batch: int = 1, iterations: int = 20, warmup: int = 3) -> list[dict]:
        """Mean time per TensorRT layer (ms per run) through trt.IProfiler, slowest first.

        The profiler rides on a fresh execution context that is dropped afterwards, so the runner's own context (made
        anew) stays unprofiled: a profiler synchronises after every layer.
        """
        trt = self._trt
        self.input_spec.check_batch(batch)
        if self.input_spec.max_batch is not None and batch > self.input_spec.max_batch:
            raise UserInputError(f"batch {batch} exceeds the engine's maximum {self.input_spec.max_batch}")

        class _Profiler(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)
                self.active = False
                self.total: dict[str, float] = defaultdict(float)

            def report_layer_time(self, layer_name, ms):
                if self.active:
                    self.total[layer_name] += float(ms)

        x = np.zeros((batch,) + tuple(self.input_spec.shape[1:]), np.float32)
        profiler = _Profiler()
        self.context = None  # one context at a time (see _new_context): the profiled one replaces it for the run
        try:
            context = self._new_context()
            context.profiler = profiler
            for i in range(warmup + iterations):
                profiler.active = i >= warmup
                self._run(context, x, timed=False)
        finally:
            context = None  # the profiled context goes (a profiler synchronises after every layer) ...
            self.context = self._new_context()  # ... and the runner gets a fresh, unprofiled one
        grand = sum(profiler.total.values()) or 1.0
        types = self._layer_types()
        rows = [
            {"name": name, "op": types.get(name) or "tensorrt", "mean_ms": t / iterations, "share": t / grand}
            for name, t in profiler.total.items()
        ]
        return sorted(rows, key=lambda r: r["mean_ms"], reverse=True)

    def _layer_types(self) -> dict[str, str]:
        """Layer name -> type from the engine inspector (8.2+; types need a DETAILED-verbosity build, which
        build-engine does). Only enriches the per-layer table, so any failure just leaves the types out."""
        try:
            inspector = self.engine.create_engine_inspector()
            info = json.loads(inspector.get_engine_information(self._trt.LayerInformationFormat.JSON))
            return {x["Name"]: str(x.get("LayerType", "")) for x in info.get("Layers", []) if isinstance(x, dict)}
        except (AttributeError, RuntimeError, TypeError, ValueError):  # older engine, changed JSON: no types, timings
            return {}

    # ------------------------------------------------------------ lifecycle

    def describe(self) -> dict:
        built = self.manifest["built_with"]
        return {
            **super().describe(),
            "tensorrt": built.get("tensorrt"),
            "gpu": built.get("gpu"),
            "dla_core": self.manifest.get("dla_core"),
            "batch_range": [self.input_spec.min_batch, self.input_spec.max_batch],
        }

    def close(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            for buf in self._buffers.values():
                buf.free()
            self._buffers = {}
            for ev in getattr(self, "_events", []):
                self._rt.cudaEventDestroy(ev)
            if self._stream is not None:
                self._rt.cudaStreamDestroy(self._stream)
                self._stream = None
        # TensorRT objects newest first, also after a failed __init__ (Runner.__del__ calls this); the logger they use
        # stays until the runner itself goes: TensorRT does not own it ("valid until all objects created are released")
        for name in ("context", "engine", "_runtime"):
            if hasattr(self, name):
                setattr(self, name, None)


def _open(path: Path, **options) -> Runner:
    return TensorRTRunner(path, **options)


def _available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        return False


BACKEND = Backend(
    name="tensorrt",
    suffixes=(".engine", ".plan"),
    open=_open,
    description="TensorRT engines from `edgecnn build-engine` (NVIDIA GPU / Jetson; needs tensorrt + cuda-python)",
    available=_available,
)
