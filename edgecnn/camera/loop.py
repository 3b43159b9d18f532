"""The real-time classification loop: frame -> preprocess -> infer -> postprocess -> sinks, with per-stage timings.

Library code: it prints nothing. Results go to sinks (window, recorder, JSON lines, ...) and the caller gets a
`LiveSummary`. Any Runner works (ONNX Runtime, TensorRT engine, checkpoint); preprocessing always comes from the
runner's contract through `edgecnn.preprocess.preprocess`, the same transform training and evaluation use.

Stages, per frame:
  capture_wait  time the loop waited for a frame (≈ 0 when capture keeps up; up to a frame interval when paced)
  preprocess    resize/crop/normalise (the contract's transform); by default done in the capture thread, so it
                overlaps the previous frame's inference (LiveOptions(pipelined=False) does it in the loop)
  inference     runner.infer()
  postprocess   softmax, EMA smoothing, top-k, threshold
  display       overlay + window + recording
  frame_age     from the frame's arrival to its result (what a user perceives as lag)
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from edgecnn.camera.capture import Frame, ThreadedCapture
from edgecnn.camera.stats import LatencyHistogram
from edgecnn.errors import SourceError, UserInputError
from edgecnn.postprocess import softmax, top_indices
from edgecnn.preprocess import preprocess

STAGES = ("capture_wait", "preprocess", "inference", "postprocess", "display", "frame_age")


@dataclass(frozen=True)
class LiveOptions:
    """top_k: classes reported; threshold: below this top-1 probability the label is `unknown_label`;
    smoothing: EMA factor a in [0, 1) over class probabilities (p = a·p_prev + (1-a)·p_now; 0 = off);
    max_frames: stop after this many processed frames (None: until the source ends or stop is set);
    pipelined: preprocess in the capture thread so it overlaps inference (the loop then only infers);
    warmup: inferences on a blank input before the first frame (first runs allocate arenas, pick kernels, compile),
    so that one-off cost does not show up as the first frame's latency."""

    top_k: int = 3
    threshold: float = 0.0
    smoothing: float = 0.0
    max_frames: int | None = None
    unknown_label: str = "unknown"
    pipelined: bool = True
    warmup: int = 1

    def __post_init__(self):
        if self.top_k < 1:
            raise UserInputError(f"--top-k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UserInputError(f"--threshold is a probability in [0, 1], got {self.threshold}")
        if not 0.0 <= self.smoothing < 1.0:
            raise UserInputError(f"--smoothing is an EMA factor in [0, 1), got {self.smoothing}")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserInputError(f"--max-frames must be at least 1, got {self.max_frames}")


@dataclass
class FrameResult:
    """What the loop concluded about one frame. Times in seconds; `to_dict()` gives milliseconds."""

    index: int
    timestamp: float  # wall clock (Unix time) when the frame arrived
    top: list[tuple[str, float]]
    label: str  # top-1 label, or the unknown label below the threshold
    score: float
    timings: dict[str, float]
    frame_age: float
    dropped: int
    processed: int
    fps: float
    reconnects: int = 0
    position: int = 0  # frames read from the source before this one, across --loop restarts (Frame.position)
    t_capture: float = 0.0  # time.perf_counter() when the frame arrived: a clock NTP cannot step back

    def to_dict(self, source: str | None = None) -> dict:
        d = {
            "type": "frame",
            "timestamp": round(self.timestamp, 6),
            "frame": self.index,
            "processed": self.processed,
            "label": self.label,
            "score": round(self.score, 6),
            "top": [{"label": name, "score": round(score, 6)} for name, score in self.top],
            "latency_ms": {k: round(v * 1e3, 3) for k, v in self.timings.items()},
            "frame_age_ms": round(self.frame_age * 1e3, 3),
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "fps": round(self.fps, 2),
        }
        if source is not None:
            d["source"] = source
        return d


class Sink(Protocol):
    """Where results go. `needs_image` sinks get the annotated frame and count as the display stage.
    `handle()` returns False to ask the loop to stop (a window's q/Esc)."""

    needs_image: bool

    def handle(self, result: FrameResult, image: np.ndarray | None) -> bool: ...

    def close(self) -> None: ...


@dataclass
class LiveSummary:
    source: str
    frames: int
    dropped: int
    frames_read: int
    elapsed_s: float
    fps: float
    reconnects: int
    loops: int
    end_reason: str
    stages: dict[str, dict] = field(default_factory=dict)
    error: str | None = None  # why a live source ended for good (end_reason 'source_lost')
    skipped_unreadable: int = 0  # image-folder source: files that could not be decoded and were passed over
    frames_expected: int | None = None  # video file: the frames its header declares (a shorter read: truncated?)
    frames_per_pass: int | None = None  # video file: the frames a whole pass gave (None if no pass ended)

    @property
    def truncated(self) -> bool:
        """The video ended before the frames its header declares (cut short or damaged), as far as it can tell; with
        --loop too (each pass ends early there, and the run only ends by a stop)."""
        return (
            self.frames_expected is not None
            and self.frames_per_pass is not None
            and self.frames_per_pass < self.frames_expected
        )

    def to_dict(self) -> dict:
        return {
            "type": "summary",
            "source": self.source,
            "frames": self.frames,
            "dropped": self.dropped,
            "frames_read": self.frames_read,
            "elapsed_s": round(self.elapsed_s, 3),
            "fps": round(self.fps, 2),
            "reconnects": self.reconnects,
            "loops": self.loops,
            "end_reason": self.end_reason,
            "stages_ms": self.stages,
            "error": self.error,
            "skipped_unreadable": self.skipped_unreadable,
            "frames_expected": self.frames_expected,
            "frames_per_pass": self.frames_per_pass,
        }


class Postprocessor:
    """Logits -> probabilities (softmax unless the model already outputs them) -> EMA -> top-k + threshold."""

    def __init__(self, labels: Sequence[str], options: LiveOptions):
        self.labels = list(labels)
        self.options = options
        self.k = min(options.top_k, len(self.labels))
        self.state: np.ndarray | None = None

    def __call__(self, logits: np.ndarray) -> tuple[list[tuple[str, float]], str, float]:
        """A model that outputs NaN or inf (a broken export, an overflowing INT8 build) gives NaN probabilities: the
        frame is reported as the unknown label whatever the threshold (NaN compares false with everything, so it
        would otherwise pass any --threshold), and it is kept out of the EMA, which it would poison for good."""
        row = np.asarray(logits, dtype=np.float32).reshape(-1)
        if row.min() >= 0.0 and row.max() <= 1.0 and abs(float(row.sum()) - 1.0) < 1e-3:
            probs = row
        else:
            with np.errstate(invalid="ignore"):  # inf logits: inf - inf; the NaN is handled below, no warning per run
                probs = softmax(row)
        finite = bool(np.isfinite(probs).all())
        a = self.options.smoothing
        if a > 0.0 and finite:
            self.state = probs if self.state is None else a * self.state + (1.0 - a) * probs
            probs = self.state
        idx = top_indices(probs, self.k)
        top = [(self.labels[i], float(probs[i])) for i in idx]
        label, score = top[0]
        if not finite or not score >= self.options.threshold:
            label = self.options.unknown_label
        return top, label, score


def run_live(
    runner,
    capture: ThreadedCapture,
    options: LiveOptions = LiveOptions(),
    sinks: Sequence[Sink] = (),
    stop: threading.Event | None = None,
    annotate=None,
) -> LiveSummary:
    """Classify frames from a started `capture` until it ends, `options.max_frames`, `stop` is set, or a sink asks
    to quit. Sinks are closed (recording finalised) and the capture released on every way out, Ctrl-C included.

    If closing a sink fails after the loop itself ended normally (a recording cut short by a full disk), that error is
    raised with the run's LiveSummary attached as its `summary` attribute: the results delivered so far stay valid.

    annotate(image, result) draws the overlay for image sinks; defaults to `edgecnn.camera.overlay.annotate`.
    """
    if annotate is None:
        from edgecnn.camera.overlay import annotate
    stop = stop or threading.Event()
    cfg = runner.preprocess_config
    post = Postprocessor(runner.labels, options)
    image_sinks = [s for s in sinks if s.needs_image]
    other_sinks = [s for s in sinks if not s.needs_image]
    hist = {name: LatencyHistogram() for name in STAGES}
    if options.pipelined:
        capture.transform = lambda image: preprocess(image, cfg)
    if options.warmup:
        blank = np.zeros(cfg.input_shape(1), dtype=np.float32)
        for _ in range(options.warmup):
            runner.infer(blank)
    processed = 0
    fps = 0.0
    end_reason = "stopped"
    source_error = None
    clock = time.perf_counter
    t_begin = clock()
    t_prev = None
    span = [None, None]  # when the first and the last frame were done: N frames span N - 1 intervals
    try:
        while True:
            if stop.is_set():
                end_reason = "stopped"
                break
            if options.max_frames is not None and processed >= options.max_frames:
                end_reason = "max_frames"
                break
            t0 = clock()
            try:
                frame: Frame | None = capture.get(timeout=0.1)
                while frame is None and not stop.is_set() and not capture.ended:
                    frame = capture.get(timeout=0.1)
            except SourceError as exc:  # lost for good after the reconnect attempts: end with a summary
                end_reason, source_error = "source_lost", str(exc)
                break
            if frame is None:
                end_reason = "end_of_source" if capture.ended else "stopped"
                break
            t1 = clock()
            if frame.tensor is not None:  # preprocessed by the capture thread while the last frame was inferred
                batch, prep = frame.tensor, frame.prep_time
            else:
                batch = preprocess(frame.image, cfg)
                prep = clock() - t1
            t2 = clock()
            logits = runner.infer(batch)
            t3 = clock()
            top, label, score = post(logits[0])
            t4 = clock()
            processed += 1
            if t_prev is not None:  # EMA of the instantaneous rate: a steady number for the overlay
                inst = 1.0 / max(t4 - t_prev, 1e-6)
                fps = inst if fps == 0.0 else 0.9 * fps + 0.1 * inst
            t_prev = t4
            span[0] = t4 if span[0] is None else span[0]
            span[1] = t4
            timings = {"capture_wait": t1 - t0, "preprocess": prep, "inference": t3 - t2, "postprocess": t4 - t3}
            result = FrameResult(
                index=frame.index,
                timestamp=frame.wall_time,
                top=top,
                label=label,
                score=score,
                timings=timings,
                frame_age=t4 - frame.t_capture,
                dropped=capture.dropped,
                processed=processed,
                fps=fps,
                reconnects=capture.reconnects,
                position=frame.position,
                t_capture=frame.t_capture,
            )
            keep_going = True
            if image_sinks:
                image = annotate(frame.image, result)
                for sink in image_sinks:
                    keep_going = sink.handle(result, image) is not False and keep_going
            t5 = clock()
            timings["display"] = t5 - t4
            for name, value in timings.items():
                hist[name].add(value)
            hist["frame_age"].add(result.frame_age)
            for sink in other_sinks:
                keep_going = sink.handle(result, None) is not False and keep_going
            if not keep_going:  # a window's q/Esc, or a sink with its own reason (stdout closed: 'output_closed')
                end_reason = next((s.stop_reason for s in sinks if getattr(s, "stop_reason", None)), "quit")
                break
    finally:
        elapsed = clock() - t_begin
        # Close the capture and every sink even if one of them fails, or is interrupted: a second Ctrl-C raising
        # KeyboardInterrupt inside capture.close() must not leave the recording unfinished (its temporary file
        # behind). An interruption wins over errors; otherwise the first failure is reported.
        errors = []
        for close in [capture.close, *(sink.close for sink in sinks)]:
            try:
                close()
            except BaseException as exc:
                errors.append(exc)
        interrupted = next((exc for exc in errors if not isinstance(exc, Exception)), None)
        if interrupted is not None:
            raise interrupted
        if errors and sys.exc_info()[1] is None:  # the loop ended normally: the summary travels with the error
            errors[0].summary = _summary(capture, processed, elapsed, end_reason, hist, source_error, span)
        if errors:
            raise errors[0]
    return _summary(capture, processed, elapsed, end_reason, hist, source_error, span)


def _summary(capture, processed, elapsed, end_reason, hist, source_error, span) -> LiveSummary:
    """FPS is frames over the time between the first and the last frame done, (N - 1) / span: counting from the
    start of the loop, where the first frame was already waiting, read 40 FPS for the first 5 frames of a 30 fps
    video."""
    first, last = span
    if processed >= 2 and last > first:
        fps = (processed - 1) / (last - first)
    else:
        fps = processed / elapsed if elapsed > 0 else 0.0
    return LiveSummary(
        source=capture.spec.display,
        frames=processed,
        dropped=capture.dropped,
        frames_read=capture.frames_read,
        elapsed_s=elapsed,
        fps=fps,
        frames_expected=capture.frame_count,
        frames_per_pass=capture.pass_frames,
        reconnects=capture.reconnects,
        loops=capture.loops,
        end_reason=end_reason,
        stages={name: h.summary_ms() for name, h in hist.items()},
        error=source_error,
        skipped_unreadable=capture.skipped,
    )
