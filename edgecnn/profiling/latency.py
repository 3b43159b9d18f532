"""Latency profiling: several models side by side, interleaved, with statistics, memory, per-layer time and environment.

`profile_models(["a.onnx", "a.int8.onnx", "a.onnx@openvino"], ProfileOptions(batches=(1, 8)))` loads each model through
`edgecnn.runtime.load` (any backend: ONNX Runtime, PyTorch via the torch runner, TensorRT, OpenVINO), warms it up and
then times the models *interleaved*: each round runs a block of `block` consecutive calls of every model, starting from
a rotating model, so drifting clocks, thermal throttling or a noisy neighbour hit all models alike. Blocks (rather than
alternating single calls) plus a short pause between models matter on small CPUs: ONNX Runtime, OpenVINO and PyTorch
keep their worker threads spinning for a while after a call, and with per-call alternation one runtime's spinning
threads steal the cores of the next (measured here: PyTorch eager 23 ms alone, 50 ms alternating call by call with ONNX
Runtime). Ratios are to the first model.

Modes per (model, batch):
  model       runner.infer() on a ready float32 batch: the model alone.
  end-to-end  a BGR uint8 640x480 frame -> the model's own preprocess() -> infer() -> softmax top-5, what a camera
              user pays per frame (frame decoding/capture excluded).

Optional runner hooks read here (a backend provides them when it can; none is required):
  `runner.last_timings`                   dict of stage -> ms for the latest infer() call, e.g.
                                          {"h2d_ms": .., "compute_ms": .., "d2h_ms": ..} on GPU runners; the profile
                                          reports each stage's mean and median.
  `runner.layer_profile(batch, iterations)` list of {"name", "op", "mean_ms"} per layer/node, slowest first
                                          (TensorRT's IProfiler, OpenVINO's performance counters). ONNX models on
                                          ONNX Runtime use its own profiler (`edgecnn.profiling.layers`).

Load time and memory: `load_s` is the time to open the model, `rss_delta_mb` the process's resident memory growth while
it was loaded and warmed up (models are loaded one after the other). A backend's one-time setup (importing its library,
creating its runtime environment) would otherwise be charged to whichever model of that backend comes first (two
identical ONNX models: 23 MB and 0.06 s vs 0.1 MB and 0.005 s), so each backend is set up first, untimed (ONNX
Runtime: a session of a one-node model made in memory; a backend without such a hook: its first model loaded once
and closed). The numbers are then per model, with the backend already set up, whatever the order. They remain
process-level measurements (what the allocator keeps or returns to the OS varies): treat differences of a few MB as
noise. `peak_rss_mb` is the process's peak (ru_maxrss).
This module never imports PyTorch (a .pt goes through the torch runner).
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgecnn.errors import ArtifactError, EdgeCNNError, UserInputError
from edgecnn.onnx_io import model_bytes
from edgecnn.postprocess import topk
from edgecnn.preprocess import preprocess
from edgecnn.profiling.environment import capture_environment
from edgecnn.profiling.layers import onnxrt_layer_profile
from edgecnn.profiling.stats import LatencyStats, latency_stats, stage_means
from edgecnn.runtime.base import backend_for
from edgecnn.zoo import open_model, resolve_model

MODES = ("model", "end-to-end")
FRAME_SIZE = (480, 640)  # height, width of the end-to-end camera frame


@dataclass(frozen=True)
class ModelSpec:
    """One model to profile: a path or pretrained name, optionally forced onto a backend, with a display label."""

    model: str
    backend: str | None = None
    label: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """`MODEL` or `MODEL@BACKEND` (e.g. `model.onnx@openvino`); an existing file named with '@' stays a path."""
        text = str(text)
        if "@" in text and not Path(text).exists():
            model, backend = text.rsplit("@", 1)
            if model and backend:
                return cls(model=model, backend=backend)
        return cls(model=text)

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        name = Path(self.model).name
        return f"{name}@{self.backend}" if self.backend else name


@dataclass(frozen=True)
class ProfileOptions:
    """How to measure. `duration` (seconds per model, batch and mode) replaces `iterations` when given."""

    batches: tuple[int, ...] = (1,)
    warmup: int = 10
    iterations: int | None = 100
    duration: float | None = None
    threads: int | None = None
    per_layer: bool = False
    top_layers: int = 10
    layer_iterations: int = 20
    end_to_end: bool = False
    model_only: bool = True
    block: int = 10
    settle_s: float = 0.02
    seed: int = 0

    def validate(self) -> None:
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise UserInputError(f"Batch sizes must be >= 1, got {list(self.batches)}")
        if self.warmup < 0:
            raise UserInputError(f"--warmup must be >= 0, got {self.warmup}")
        if self.duration is not None:
            if not (math.isfinite(self.duration) and self.duration > 0):  # NaN never ends the timing loop
                raise UserInputError(f"--duration must be a number of seconds > 0, got {self.duration}")
        elif self.iterations is None or self.iterations < 1:
            raise UserInputError(f"--iterations must be >= 1, got {self.iterations}")
        if self.threads is not None and self.threads < 1:
            raise UserInputError(f"--threads must be >= 1, got {self.threads}")
        if self.block < 1 or self.settle_s < 0:
            raise UserInputError("block must be >= 1 and settle_s >= 0")
        if self.top_layers < 1 or self.layer_iterations < 1:
            raise UserInputError("top_layers and layer_iterations must be >= 1")
        if not (self.model_only or self.end_to_end):
            raise UserInputError("Nothing to measure: enable model-only and/or end-to-end timing")

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m for m, on in zip(MODES, (self.model_only, self.end_to_end)) if on)


@dataclass
class ModelInfo:
    label: str
    path: str
    backend: str
    precision: str
    input_shape: list
    file_size_mb: float
    load_s: float
    rss_delta_mb: float | None
    layers: list[dict] | None = None
    layers_note: str | None = None


@dataclass
class Measurement:
    label: str
    batch: int
    mode: str
    stats: LatencyStats
    samples_ms: list[float]
    stages: dict | None = None
    latency_ratio: float | None = None  # p50 / first model's p50 (same batch and mode); < 1 = faster
    speedup: float | None = None  # first model's p50 / p50; > 1 = faster

    def to_dict(self, samples: bool = True) -> dict:
        d = {
            "model": self.label,
            "batch": self.batch,
            "mode": self.mode,
            **self.stats.to_dict(),
            "stages": self.stages,
            "latency_ratio": self.latency_ratio,
            "speedup": self.speedup,
        }
        if samples:
            d["samples_ms"] = [round(s, 4) for s in self.samples_ms]
        return d


@dataclass
class ProfileResult:
    environment: dict
    options: ProfileOptions
    models: list[ModelInfo]
    measurements: list[Measurement]
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    timing: str | None = None  # how the models were interleaved, as it happened (see _interleaving)

    def to_dict(self, samples: bool = True) -> dict:
        opts = asdict(self.options)
        opts["batches"] = list(self.options.batches)
        return {
            "environment": self.environment,
            "options": opts,
            "models": [asdict(m) for m in self.models],
            "measurements": [m.to_dict(samples) for m in self.measurements],
            "peak_rss_mb": self.peak_rss_mb,
            "notes": self.notes,
            "timing": self.timing,
        }

    def get(self, label: str, batch: int, mode: str = "model") -> Measurement | None:
        for m in self.measurements:
            if (m.label, m.batch, m.mode) == (label, batch, mode):
                return m
        return None


Progress = Callable[..., None]


def profile_models(
    models: Sequence[str | ModelSpec], options: ProfileOptions = ProfileOptions(), progress: Progress | None = None
) -> ProfileResult:
    """Load, warm up and time `models` side by side; see the module docstring for what is measured."""
    options.validate()
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models]
    if not specs:
        raise UserInputError("Give at least one model to profile")
    labels = _unique_labels([s.display for s in specs])
    batches = tuple(dict.fromkeys(int(b) for b in options.batches))
    frame = synthetic_frame(FRAME_SIZE, options.seed)
    runners, infos = [], []
    try:
        _prime_backends(specs, options, progress)
        for spec, label in zip(specs, labels):
            runner, info = _load_and_warm(spec, label, options, batches, frame, progress)
            runners.append(runner)
            infos.append(info)
        measurements, timing = _measure_interleaved(runners, labels, options, batches, frame, progress)
        if options.per_layer:
            for runner, info in zip(runners, infos):
                info.layers, info.layers_note = _layers(runner, options, batches[0], frame)
    finally:
        for r in runners:
            r.close()
    _add_ratios(measurements, labels[0])
    return ProfileResult(
        environment=capture_environment(options.threads),
        options=options,
        models=infos,
        measurements=measurements,
        peak_rss_mb=_peak_rss_mb(),
        timing=timing,
    )


# ---------------------------------------------------------------- loading


def _load_kwargs(options: ProfileOptions) -> dict:
    return {"threads": options.threads} if options.threads else {}


def _prime_backends(specs: Sequence[ModelSpec], options: ProfileOptions, progress) -> None:
    """Do each backend's one-time setup (its import, its runtime environment) untimed, so it is not charged to the
    load time and RSS delta of whichever model of that backend comes first: through the backend's `prime` hook (a
    session of a one-node model made in memory), or, for a backend without one, by loading and closing its first
    model (memory the allocator keeps from that load may then be reused by the real one).

    A model or backend that fails here is left alone: loading it for real, next, reports the error with its label."""
    seen = set()
    for spec in specs:
        try:
            backend = backend_for(resolve_model(spec.model, backend=spec.backend), spec.backend)
        except EdgeCNNError:
            continue
        if backend.name in seen:
            continue
        seen.add(backend.name)
        if progress:
            progress(0, None, info=f"setting up {backend.name}")
        try:
            if backend.prime is not None:
                backend.prime(**_load_kwargs(options))
            else:
                open_model(spec.model, backend=spec.backend, **_load_kwargs(options)).close()
        except Exception:  # noqa: BLE001 - untimed set-up only; the real load below reports any problem
            continue


def _load_and_warm(spec: ModelSpec, label: str, options: ProfileOptions, batches, frame, progress):
    if progress:
        progress(0, None, info=f"loading {label}")
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    try:
        runner = open_model(spec.model, backend=spec.backend, **_load_kwargs(options))
    except TypeError as exc:  # a backend that takes no `threads=`
        raise UserInputError(f"{label}: its backend does not accept --threads ({exc})") from exc
    load_s = time.perf_counter() - t0
    try:
        for b in batches:
            _check_batch(runner, label, b)
        for b in batches:
            for mode in options.modes:
                fn = _workload(runner, mode, b, frame)
                for _ in range(options.warmup):  # --warmup 0: the first timed run is the cold one
                    _run_checked(fn, runner, label)
    except BaseException:
        runner.close()
        raise
    rss1 = current_rss_mb()
    path = Path(runner.path)
    info = ModelInfo(
        label=label,
        path=str(path),
        backend=runner.backend,
        precision=runner.contract.precision,
        input_shape=["N" if d is None else d for d in runner.input_spec.shape],
        # MB = 10^6 bytes, as export and quantize report sizes (it was MiB here: 12.88 for their 13.50)
        file_size_mb=round(model_bytes(path) / 1e6, 3) if path.is_file() else 0.0,
        load_s=round(load_s, 4),
        rss_delta_mb=round(rss1 - rss0, 1) if rss0 is not None and rss1 is not None else None,
    )
    return runner, info


def _check_batch(runner, label: str, batch: int) -> None:
    """A batch the model cannot take as one call is an error here (infer() would silently split or pad it)."""
    spec = runner.input_spec
    fixed = spec.fixed_batch
    if fixed is not None and batch != fixed:
        raise UserInputError(
            f"{label} only takes batch {fixed} (static shape); profile it with --batch {fixed}, or export/build it "
            "with a dynamic batch"
        )
    try:
        spec.check_batch(batch)
    except UserInputError as exc:
        raise UserInputError(f"{label}: {exc}") from exc


def _run_checked(fn, runner, label: str):
    try:
        return fn()
    except EdgeCNNError:
        raise
    except Exception as exc:  # a backend failing at run time: the model is not runnable there
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__
        raise ArtifactError(f"{label}: backend {runner.backend} cannot run this model: {first}") from exc


# ---------------------------------------------------------------- workloads


def synthetic_frame(size=FRAME_SIZE, seed: int = 0) -> np.ndarray:
    """A deterministic BGR uint8 camera-sized frame (gradients, shapes, sensor-like noise).

    Latency does not depend on pixel values for these models, so no image file is needed; the content is still
    image-like so INT8 paths see in-range activations.
    """
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frame = np.stack([xx / w * 200, yy / h * 180, (xx + yy) / (w + h) * 160], axis=-1)
    frame[h // 4 : h // 2, w // 3 : w // 2] = (40, 160, 220)
    frame += rng.normal(0, 8, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def top5(logits: np.ndarray, labels: Sequence[str]) -> list[list[tuple[str, float]]]:
    """Softmax top-5 (label, probability) per row."""
    idx, probs = topk(logits, 5)
    return [
        [(labels[i] if i < len(labels) else str(i), float(p)) for i, p in zip(ids, ps)] for ids, ps in zip(idx, probs)
    ]


def _workload(runner, mode: str, batch: int, frame: np.ndarray) -> Callable[[], object]:
    cfg = runner.preprocess_config
    frames = [frame] * batch
    if mode == "model":
        x = preprocess(frames, cfg)
        return lambda: runner.infer(x)
    labels = runner.labels
    return lambda: top5(runner.infer(preprocess(frames, cfg)), labels)


# ---------------------------------------------------------------- timing


def _measure_interleaved(
    runners, labels, options: ProfileOptions, batches, frame, progress
) -> tuple[list[Measurement], str]:
    """(the measurements, one sentence saying how the models were actually interleaved; see `_interleaving`)."""
    groups = [(b, mode) for b in batches for mode in options.modes]
    n = len(runners)
    out: list[Measurement] = []
    rounds_done = []
    timer = time.perf_counter
    for gi, (batch, mode) in enumerate(groups):
        fns = [_workload(r, mode, batch, frame) for r in runners]
        samples = [[] for _ in runners]
        stages = [dict() for _ in runners]
        budget = options.duration or None  # seconds of timed calls per model (its own calls only)
        spent = [0.0] * n
        rounds = options.iterations or 0
        r = 0  # rounds done: every model has run r blocks
        done = 0  # timed runs per model so far
        while True:
            if budget is None and done >= rounds:
                break
            if budget is not None and r > 0 and all(t >= budget for t in spent):
                break
            size = options.block if budget is not None else min(options.block, rounds - done)
            for k in range(n):
                i = (r + k) % n  # rotate who goes first
                if budget is not None and r > 0 and spent[i] >= budget:
                    continue
                if n > 1 and options.settle_s:
                    time.sleep(options.settle_s)  # let the previous runtime's worker threads park
                fn, into, split_into = fns[i], samples[i], stages[i]
                for j in range(size):
                    # --duration is each model's own: checked before every call, not once per block (a block of 10
                    # batch-16 calls ran 3.75 s for --duration 0.5), and against that model's time only (a shared
                    # budget let the first model spend it all and left the next one a single sample). Every model
                    # gets at least one timed call.
                    if budget is not None and (r > 0 or j > 0) and spent[i] >= budget:
                        break
                    t0 = timer()
                    fn()
                    took = timer() - t0
                    spent[i] += took
                    into.append(took * 1000.0)
                    split = getattr(runners[i], "last_timings", None)
                    if isinstance(split, dict):
                        for stage, ms in split.items():
                            split_into.setdefault(stage, []).append(float(ms))
            r += 1
            done += size
            if progress:
                _report(progress, gi, len(groups), done, rounds, budget, min(spent), batch, mode)
        rounds_done.append(r)
        for i, label in enumerate(labels):
            out.append(
                Measurement(
                    label=label,
                    batch=batch,
                    mode=mode,
                    stats=latency_stats(samples[i], batch),
                    samples_ms=samples[i],
                    stages=stage_means(stages[i]) or None,
                )
            )
    return out, _interleaving(n, options.block, rounds_done)


def _interleaving(models: int, block: int, rounds: list[int]) -> str:
    """What the timing loop did, for the report: with --iterations <= the block size there is a single round, and
    the models simply ran one after the other; saying 'interleaved in blocks' then would be untrue."""
    if models == 1:
        return f"one model, timed in blocks of up to {block} calls"
    least, most = min(rounds), max(rounds)
    if most <= 1:
        return (
            f"not interleaved: each model ran all its calls in one block, one model after the other (the calls per "
            f"model fit in one block of {block}; more iterations or a longer --duration interleave them)"
        )
    span = f"{least}" if least == most else f"{least}-{most}"
    return f"interleaved in blocks of up to {block} calls over {span} rounds (round-robin, rotating first model)"


def _report(progress, gi, n_groups, r, rounds, budget, elapsed, batch, mode):
    info = f"batch {batch}, {mode}"
    if budget is None:
        progress(gi * rounds + r, n_groups * rounds, info=info)
    else:
        done = min(1.0, elapsed / budget)
        progress(int((gi + done) * 100), n_groups * 100, info=info)


def _add_ratios(measurements: list[Measurement], first: str) -> None:
    base = {(m.batch, m.mode): m.stats.p50_ms for m in measurements if m.label == first}
    for m in measurements:
        ref = base.get((m.batch, m.mode))
        if ref and m.stats.p50_ms > 0:
            m.latency_ratio = m.stats.p50_ms / ref
            m.speedup = ref / m.stats.p50_ms


# ---------------------------------------------------------------- per layer


def _layers(runner, options: ProfileOptions, batch: int, frame) -> tuple[list[dict] | None, str | None]:
    hook = getattr(runner, "layer_profile", None)
    if callable(hook):
        rows = hook(batch, options.layer_iterations)
    elif runner.backend == "onnxrt":
        x = preprocess([frame] * batch, runner.preprocess_config)
        rows = onnxrt_layer_profile(runner.path, batch, options.layer_iterations, threads=options.threads, inputs=x)
    else:
        return None, f"per-layer timing is not available for backend {runner.backend}"
    rows = sorted(rows, key=lambda r: r.get("mean_ms", 0.0), reverse=True)
    return rows[: options.top_layers], f"batch {batch}, mean of {options.layer_iterations} runs"


# ---------------------------------------------------------------- memory


def current_rss_mb() -> float | None:
    """Resident memory of this process in MiB (Linux /proc; None where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _peak_rss_mb() -> float | None:
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return round(peak / (2**20 if sys.platform == "darwin" else 1024.0), 1)  # bytes on macOS, KiB on Linux


def _unique_labels(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out
