"""The real-time classification loop: frames -> preprocess -> infer -> postprocess -> sinks, with per-stage timings.

One loop for one source or many: every source has its own capture thread, newest-frame slot and reconnects; the
frames that are ready when the loop comes round are run through the model as ONE batch (a dynamic-batch model takes
them at once; `Runner.infer` splits the batch for a fixed-batch one), so N cameras cost far less than N processes.
A source that ends or is lost for good does not stop the others; the run ends when all have ended.

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
  batch         frames per inference (1 with one source)
capture_wait, inference, postprocess and display are counted once per batch; preprocess and frame_age per frame.
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
POLL_S = 0.1  # how long the loop waits for a frame before it looks at stop / ended again


@dataclass(frozen=True)
class LiveOptions:
    """top_k: classes reported; threshold: below this top-1 probability the label is `unknown_label`;
    smoothing: EMA factor a in [0, 1) over class probabilities (p = a·p_prev + (1-a)·p_now; 0 = off);
    max_frames: stop after this many processed frames, all sources together (None: until the sources end or stop);
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
    source: int = 0  # which source, counting from 0 in the order given (index, processed, fps, ... are its own)
    source_name: str | None = None  # its display form (credentials masked)
    batch: int = 1  # frames in the inference batch this frame was part of

    def to_dict(self, source: str | None = None) -> dict:
        """`source`: the name to report (default: `source_name`); `source_index` is always there."""
        source = self.source_name if source is None else source
        d = {
            "type": "frame",
            "source_index": self.source,
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
            "batch": self.batch,
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
    sources: list[dict] = field(default_factory=list)  # per source: frames, dropped, fps, reconnects, end, error
    batch: dict = field(default_factory=dict)  # frames per inference: count (inferences), mean, max

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
            "batch": self.batch,
            "sources": self.sources,
        }

    @property
    def lost(self) -> list[dict]:
        """The sources lost for good (their reconnect attempts used up)."""
        return [s for s in self.sources if s["end_reason"] == "source_lost"]


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


class _SourceState:
    """What the loop keeps per source: its capture, postprocessor (EMA state), counts, FPS and end."""

    def __init__(self, index: int, capture: ThreadedCapture, post: Postprocessor):
        self.index = index
        self.capture = capture
        self.name = capture.spec.display
        self.post = post
        self.processed = 0
        self.fps = 0.0
        self.t_prev: float | None = None
        self.span: list = [None, None]  # when its first and last frame were done
        self.end_reason: str | None = None  # end_of_source | source_lost, once it has ended
        self.error: str | None = None

    def done(self, t: float) -> None:
        self.processed += 1
        if self.t_prev is not None:  # EMA of the instantaneous rate: a steady number for the overlay
            inst = 1.0 / max(t - self.t_prev, 1e-6)
            self.fps = inst if self.fps == 0.0 else 0.9 * self.fps + 0.1 * inst
        self.t_prev = t
        self.span[0] = t if self.span[0] is None else self.span[0]
        self.span[1] = t


def run_live(
    runner,
    capture: ThreadedCapture | Sequence[ThreadedCapture],
    options: LiveOptions = LiveOptions(),
    sinks: Sequence[Sink] = (),
    stop: threading.Event | None = None,
    annotate=None,
) -> LiveSummary:
    """Classify frames from started captures (one, or a list: result.source is the position in it) until they all
    end, `options.max_frames`, `stop` is set, or a sink asks to quit. Sinks are closed (recordings finalised) and the
    captures released on every way out, Ctrl-C included.

    If closing a sink fails after the loop itself ended normally (a recording cut short by a full disk), that error is
    raised with the run's LiveSummary attached as its `summary` attribute: the results delivered so far stay valid.

    annotate(image, result) draws the overlay for image sinks; defaults to `edgecnn.camera.overlay.annotate`.
    """
    if annotate is None:
        from edgecnn.camera.overlay import annotate
    captures = [capture] if isinstance(capture, ThreadedCapture) else list(capture)
    if not captures:
        raise UserInputError("run_live() needs at least one source")
    stop = stop or threading.Event()
    cfg = runner.preprocess_config
    states = [_SourceState(i, c, Postprocessor(runner.labels, options)) for i, c in enumerate(captures)]
    image_sinks = [s for s in sinks if s.needs_image]
    other_sinks = [s for s in sinks if not s.needs_image]
    hist = {name: LatencyHistogram() for name in STAGES}
    batches: dict[int, int] = {}
    ready = threading.Event()
    for c in captures:
        c.ready = ready
        if options.pipelined:
            c.transform = lambda image: preprocess(image, cfg)
    if options.warmup:
        blank = np.zeros(cfg.input_shape(1), dtype=cfg.dtype)
        for _ in range(options.warmup):
            runner.infer(blank)
    processed = 0
    end_reason = "stopped"
    clock = time.perf_counter
    t_begin = clock()
    span = [None, None]
    turn = 0  # which source is looked at first: round robin, so --max-frames does not favour source 0
    try:
        while True:
            if stop.is_set():
                end_reason = "stopped"
                break
            if options.max_frames is not None and processed >= options.max_frames:
                end_reason = "max_frames"
                break
            t0 = clock()
            taken = _take_ready(
                states, ready, stop, turn, None if options.max_frames is None else options.max_frames - processed
            )
            turn = (turn + 1) % len(states)
            if not taken:
                if all(st.end_reason for st in states):
                    lost = all(st.end_reason == "source_lost" for st in states)
                    end_reason = "source_lost" if lost else "end_of_source"
                else:
                    end_reason = "stopped"
                break
            t1 = clock()
            if all(frame.tensor is not None for _, frame in taken):  # preprocessed by the capture threads
                batch = np.concatenate([frame.tensor for _, frame in taken]) if len(taken) > 1 else taken[0][1].tensor
                preps = [frame.prep_time for _, frame in taken]
            else:
                batch = preprocess([frame.image for _, frame in taken], cfg)
                preps = [(clock() - t1) / len(taken)] * len(taken)
            t2 = clock()
            logits = runner.infer(batch)
            t3 = clock()
            n = len(taken)
            batches[n] = batches.get(n, 0) + 1
            results = []
            for row, ((st, frame), prep) in enumerate(zip(taken, preps)):
                top, label, score = st.post(logits[row])
                t4 = clock()
                st.done(t4)
                processed += 1
                span[0] = t4 if span[0] is None else span[0]
                span[1] = t4
                timings = {"capture_wait": t1 - t0, "preprocess": prep, "inference": t3 - t2, "postprocess": t4 - t3}
                results.append(
                    (
                        FrameResult(
                            index=frame.index,
                            timestamp=frame.wall_time,
                            top=top,
                            label=label,
                            score=score,
                            timings=timings,
                            frame_age=t4 - frame.t_capture,
                            dropped=st.capture.dropped,
                            processed=st.processed,
                            fps=st.fps,
                            reconnects=st.capture.reconnects,
                            position=frame.position,
                            t_capture=frame.t_capture,
                            source=st.index,
                            source_name=st.name,
                            batch=n,
                        ),
                        frame,
                    )
                )
            t4 = clock()
            keep_going = True
            if image_sinks:
                for result, frame in results:
                    image = annotate(frame.image, result)
                    for sink in image_sinks:
                        keep_going = sink.handle(result, image) is not False and keep_going
            t5 = clock()
            for name, value in (("capture_wait", t1 - t0), ("inference", t3 - t2), ("postprocess", t4 - t3)):
                hist[name].add(value)
            hist["display"].add(t5 - t4)
            for result, _ in results:
                result.timings["display"] = t5 - t4
                hist["preprocess"].add(result.timings["preprocess"])
                hist["frame_age"].add(result.frame_age)
                for sink in other_sinks:
                    keep_going = sink.handle(result, None) is not False and keep_going
            if not keep_going:  # a window's q/Esc, or a sink with its own reason (stdout closed: 'output_closed')
                end_reason = next((s.stop_reason for s in sinks if getattr(s, "stop_reason", None)), "quit")
                break
    finally:
        elapsed = clock() - t_begin
        # Close the captures and every sink even if one of them fails, or is interrupted: a second Ctrl-C raising
        # KeyboardInterrupt inside capture.close() must not leave the recording unfinished (its temporary file
        # behind). An interruption wins over errors; otherwise the first failure is reported.
        errors = []
        for close in [*(c.close for c in captures), *(sink.close for sink in sinks)]:
            try:
                close()
            except BaseException as exc:
                errors.append(exc)
        interrupted = next((exc for exc in errors if not isinstance(exc, Exception)), None)
        if interrupted is not None:
            raise interrupted
        if errors and sys.exc_info()[1] is None:  # the loop ended normally: the summary travels with the error
            errors[0].summary = _summary(states, processed, elapsed, end_reason, hist, span, batches)
        if errors:
            raise errors[0]
    return _summary(states, processed, elapsed, end_reason, hist, span, batches)


def _take_ready(states, ready: threading.Event, stop: threading.Event, turn: int, limit: int | None) -> list:
    """[(state, frame)] of every source that has a frame now (at most `limit`), waiting until one has; [] once all
    have ended or `stop` is set. A source lost for good is marked and left out; the others go on."""
    n = len(states)
    while True:
        ready.clear()  # cleared before looking: a frame published meanwhile sets it again, no wake-up is lost
        taken = []
        for k in range(n):
            st = states[(turn + k) % n]
            if st.end_reason is not None or (limit is not None and len(taken) >= limit):
                continue
            try:
                frame: Frame | None = st.capture.get(timeout=0)
            except SourceError as exc:  # lost for good after the reconnect attempts
                st.end_reason, st.error = "source_lost", str(exc)
                continue
            if frame is not None:
                taken.append((st, frame))
            elif st.capture.ended:
                st.end_reason = "end_of_source"
        if taken or stop.is_set() or all(st.end_reason for st in states):
            taken.sort(key=lambda pair: pair[0].index)
            return taken
        ready.wait(POLL_S)


def _fps(count: int, span, elapsed: float) -> float:
    """Frames over the time between the first and the last frame done, (N - 1) / span: counting from the start of
    the loop, where the first frame was already waiting, read 40 FPS for the first 5 frames of a 30 fps video."""
    first, last = span
    if count >= 2 and last > first:
        return (count - 1) / (last - first)
    return count / elapsed if elapsed > 0 else 0.0


def _source_dict(st: _SourceState, elapsed: float, end_reason: str) -> dict:
    c = st.capture
    expected, per_pass = c.frame_count, c.pass_frames
    return {
        "index": st.index,
        "source": st.name,
        "frames": st.processed,
        "dropped": c.dropped,
        "frames_read": c.frames_read,
        "fps": round(_fps(st.processed, st.span, elapsed), 2),
        "reconnects": c.reconnects,
        "loops": c.loops,
        "end_reason": st.end_reason or end_reason,
        "error": st.error,
        "skipped_unreadable": c.skipped,
        "frames_expected": expected,
        "frames_per_pass": per_pass,
        "truncated": expected is not None and per_pass is not None and per_pass < expected,
    }


def _summary(states, processed, elapsed, end_reason, hist, span, batches) -> LiveSummary:
    """One source: its own numbers (the summary as it always was). Several: totals, with each source's numbers in
    `sources`."""
    sources = [_source_dict(st, elapsed, end_reason) for st in states]
    count = sum(batches.values())
    batch = {
        "count": count,
        "mean": round(sum(k * v for k, v in batches.items()) / count, 3) if count else None,
        "max": max(batches) if batches else None,
    }
    single = len(states) == 1
    caps = [st.capture for st in states]
    errors = [f"{st.name}: {st.error}" if not single else st.error for st in states if st.error]
    return LiveSummary(
        source="; ".join(st.name for st in states),
        frames=processed,
        dropped=sum(c.dropped for c in caps),
        frames_read=sum(c.frames_read for c in caps),
        elapsed_s=elapsed,
        fps=_fps(processed, span, elapsed),
        frames_expected=caps[0].frame_count if single else None,
        frames_per_pass=caps[0].pass_frames if single else None,
        reconnects=sum(c.reconnects for c in caps),
        loops=sum(c.loops for c in caps),
        end_reason=end_reason,
        stages={name: h.summary_ms() for name, h in hist.items()},
        error="; ".join(errors) or None,
        skipped_unreadable=sum(c.skipped for c in caps),
        sources=sources,
        batch=batch,
    )
