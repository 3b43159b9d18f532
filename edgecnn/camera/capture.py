"""Threaded capture: decoding runs beside inference, and the consumer always gets the newest frame.

A camera keeps producing whether or not we keep up, so the capture thread holds a queue of one: a new frame replaces
an unconsumed one (counted in `dropped`), and latency never grows with buffering. A video file is paced at its own
frame rate by default so it behaves like a camera (a requested rate, `spec.fps`, paces an image folder, never a video:
a video keeps its own timeline); with `pace=False` (or an image folder without --fps) the queue
becomes a hand-off that drops nothing, so every frame is processed as fast as the consumer goes.

Live sources that fail (camera unplugged, stream dropped) are reopened with exponential backoff, a bounded number of
times; `on_event` hears about every loss and reconnect so the caller can say so. A reopened source wins its attempts
back only after it has delivered frames for `ReconnectPolicy.healthy_s` seconds: a server that accepts each connection
and drops it after one frame uses up the attempts and is given up on, instead of being reconnected forever.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgecnn.camera.sources import Reader, SourceSpec, open_reader
from edgecnn.errors import EdgeCNNError, SourceError

SILENT_S = 2.0  # a live source lost after this long without a frame went silent (a dropped connection ends at once)

EventCallback = Callable[[str, str], None]  # (kind, message): kind in lost | reconnected | looped | gave_up


@dataclass
class Frame:
    """One captured frame. `index` is its position in the source; `t_capture` is time.perf_counter() when it became
    available (its arrival for a camera, its due time for a paced file); `t_source` is seconds into the source."""

    image: np.ndarray
    index: int
    t_capture: float
    t_source: float
    wall_time: float
    tensor: np.ndarray | None = None  # the model input, when the capture thread preprocessed the frame
    prep_time: float = 0.0  # seconds the capture thread spent making `tensor`
    position: int = 0  # frames read from the source before this one, counting on across --loop restarts


@dataclass(frozen=True)
class ReconnectPolicy:
    """Backoff for live sources: wait initial, 2×initial, ... (capped at max_delay) for up to `attempts` tries.

    The attempts (and the backoff) are a budget over consecutive failures: a reconnect does not restore it; the source
    has to stay up, delivering frames, for `healthy_s` seconds after a reconnect before the budget is reset."""

    attempts: int = 5
    initial: float = 0.5
    max_delay: float = 8.0
    healthy_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.initial * (2 ** (attempt - 1)))


class ThreadedCapture:
    """Reads a source in a background thread. `get()` returns the newest frame, None on timeout; `ended` turns true
    when a finite source is done. A live source lost for good makes `get()` raise SourceError."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        pace: bool = True,
        loop: bool = False,
        reconnect: ReconnectPolicy = ReconnectPolicy(),
        on_event: EventCallback | None = None,
        opener: Callable[[SourceSpec], Reader] = open_reader,
    ):
        self.spec = spec
        self.loop = loop
        self.reconnect = reconnect
        self.on_event = on_event or (lambda kind, message: None)
        self._opener = opener
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: EdgeCNNError | None = None
        self._done = False
        self.reader: Reader | None = None
        self.pace = pace
        self.fps: float | None = None
        self.lossless = False
        self.frames_read = 0
        self.frame_count: int | None = None  # frames a video file's header declares (None: unknown / not a file)
        self.pass_frames: int | None = None  # frames a whole pass through a file gave (None until one ended)
        self.dropped = 0
        self.reconnects = 0
        self.loops = 0
        self._skipped_before = 0  # unreadable files skipped by readers already released (see `skipped`)
        self._attempts_used = 0  # reconnect attempts spent since the source was last healthy (see ReconnectPolicy)
        self._reconnected_at: float | None = None  # perf_counter() of the last successful reconnect, until healthy
        self._last_frame_at: float | None = None  # perf_counter() of the last frame read, or of the last (re)open
        self._silent_s: float | None = None  # how long the last lost live source had sent nothing (see _reconnect)
        # Optional per-frame work done in the capture thread, beside inference: the live loop sets the model's
        # preprocessing here so a frame arrives as a ready tensor (read each frame, so it may be set after start()).
        self.transform: Callable[[np.ndarray], np.ndarray] | None = None
        # Set whenever a frame is published or the source ends: a loop reading several captures waits on one event
        # shared by all of them instead of polling each in turn.
        self.ready: threading.Event | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self, cancel: threading.Event | None = None, retry_unreachable: bool = False) -> "ThreadedCapture":
        """Open the source now (so a bad source fails here, in the caller's thread) and start reading.

        Opening a stream can block inside OpenCV for the whole open timeout (5 s), and Python runs no signal handler
        until that C call returns: Ctrl-C waited (live) or was lost (calibrate capture ended in 'Cannot open stream').
        So the open runs in a helper thread while this thread waits in short slices: an exception a signal handler
        raises (KeyboardInterrupt) comes out of start() at once, and `cancel` set meanwhile ends start() early with
        the capture already ended (no frames, `ended` true). A reader the helper opens after that is released.

        retry_unreachable: a live source (camera, stream) that cannot be opened now is not an error: the capture thread
        starts with the reconnect policy's attempts, as if the source had just been lost (one of several cameras
        being down must not stop the others; it is reported, and ends as 'source_lost' if it never comes)."""
        try:
            self.reader = self._open_interruptibly(cancel)
        except SourceError as exc:
            if not (retry_unreachable and self.spec.live):
                raise
            self.on_event("unreachable", f"cannot open {self.spec.display} yet: {exc}")
            self.fps, self.pace, self.lossless = self.spec.fps, False, False
            self._thread = threading.Thread(target=self._run, name=f"capture[{self.spec.display}]", daemon=True)
            self._thread.start()
            return self
        if self.reader is None:  # cancelled while opening
            self._finish()
            return self
        own_fps = self.reader.fps
        self.frame_count = getattr(self.reader, "frame_count", None) if self.spec.kind == "file" else None
        if self.spec.live:
            self.fps = own_fps or self.spec.fps
            self.pace = False  # a camera paces itself; an MJPEG stream's nominal rate (FFmpeg says 25) is no clock
            self.lossless = False
        elif self.spec.kind == "file":
            # A video keeps its own timeline: --fps (for cameras) would change its speed, the times --every-ms
            # spaces calibration frames by and the length of a recording. It only stands in for a missing rate.
            self.fps = own_fps or self.spec.fps
            self.pace = self.pace and bool(self.fps)
            self.lossless = not self.pace
        else:  # a folder has no rate of its own: paced at --fps, unpaced without it
            self.fps = self.spec.fps or own_fps
            self.pace = self.pace and bool(self.fps)
            self.lossless = not self.pace
        self._thread = threading.Thread(target=self._run, name=f"capture[{self.spec.display}]", daemon=True)
        self._thread.start()
        return self

    def _open_interruptibly(self, cancel: threading.Event | None) -> Reader | None:
        """The opener's reader, or None if `cancel` was set first (see start)."""
        lock = threading.Lock()
        outcome: dict = {}  # "reader" or "error", set by the helper; "abandoned", set by the caller

        def open_source():
            try:
                reader = self._opener(self.spec)
            except BaseException as exc:  # handed to the caller, raised there
                with lock:
                    outcome["error"] = exc
                return
            with lock:
                if not outcome.get("abandoned"):
                    outcome["reader"] = reader
                    return
            reader.release()  # the caller gave up waiting: nobody will use it

        helper = threading.Thread(target=open_source, name=f"open[{self.spec.display}]", daemon=True)
        helper.start()
        finished = False
        try:
            while helper.is_alive() and not (cancel is not None and cancel.is_set()):
                helper.join(0.05)
            finished = not helper.is_alive()
        finally:
            with lock:
                if not finished:
                    outcome["abandoned"] = True
                reader = outcome.pop("reader", None) if not finished else None
            if reader is not None:
                reader.release()
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("reader")

    def close(self) -> None:
        """Stop the thread and release the device. Safe to call twice."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.reader is not None and (self._thread is None or not self._thread.is_alive()):
            self._release_reader()

    def _release_reader(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            # --loop reopens the same folder: each pass skips the same files, so keep the largest count, not the sum
            self._skipped_before = max(self._skipped_before, getattr(reader, "skipped", 0))
            reader.release()

    @property
    def skipped(self) -> int:
        """Unreadable files an image-folder source has passed over (0 for cameras, streams and videos); with --loop,
        files are counted once, not once per pass."""
        reader = self.reader
        return max(self._skipped_before, getattr(reader, "skipped", 0))

    def __enter__(self) -> "ThreadedCapture":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # -------------------------------------------------------------- consumer side

    @property
    def ended(self) -> bool:
        """True once the source is finished and its last frame was taken."""
        with self._cond:
            return self._done and self._slot is None

    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame (waiting up to `timeout` s), or None when none came in time or the source has ended."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while self._slot is None:
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return None
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    # -------------------------------------------------------------- producer side

    def _publish(self, frame: Frame) -> bool:
        with self._cond:
            if self.lossless:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return False
            elif self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self._cond.notify_all()
        if self.ready is not None:
            self.ready.set()
        return True

    def _finish(self, error: EdgeCNNError | None = None) -> None:
        with self._cond:
            self._error = error
            self._done = True
            self._cond.notify_all()
        if self.ready is not None:
            self.ready.set()

    def _run(self) -> None:
        try:
            self._read_loop()
        except EdgeCNNError as exc:
            self._finish(exc)
        except Exception as exc:  # never die silently: surface it to the consumer
            self._finish(SourceError(f"Capture from {self.spec.display} failed: {exc.__class__.__name__}: {exc}"))
        else:
            self._finish()
        finally:
            self._release_reader()

    def _read_loop(self) -> None:
        index = 0  # position in the source (restarts with --loop)
        position = 0  # frames read so far, across loops: the clock a paced source (and its recording) runs on
        t_start = time.perf_counter()
        self._last_frame_at = t_start
        pace_start, pace_first = t_start, 0
        interval = 1.0 / self.fps if self.fps else 0.0
        while not self._stop.is_set():
            image = self.reader.read() if self.reader is not None else None
            if image is None:
                if self.spec.live:
                    if not self._reconnect():
                        return
                    continue
                if self.pass_frames is None:  # the first whole pass: a truncated video shows here, looped or not
                    self.pass_frames = index
                if self.loop and index > 0:
                    self._release_reader()
                    self.reader = self._opener(self.spec)
                    self.loops += 1
                    self.on_event("looped", f"{self.spec.display}: restarting from the first frame (loop {self.loops})")
                    index = 0  # the pacing clock runs on: the first frame is due one interval after the last
                    continue
                return
            self.frames_read += 1
            self._last_frame_at = time.perf_counter()
            if (
                self._reconnected_at is not None
                and time.perf_counter() - self._reconnected_at >= self.reconnect.healthy_s
            ):
                self._attempts_used, self._reconnected_at = 0, None  # up and delivering for a while: budget restored
            if self.pace and interval:
                due = pace_start + (position - pace_first) * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    if self._stop.wait(wait):
                        return
                elif wait < -1.0:  # fell far behind (slow decoder): re-anchor instead of bursting to catch up
                    pace_start, pace_first = time.perf_counter(), position
            now = time.perf_counter()
            t_source = index * interval if not self.spec.live and interval else now - t_start
            frame = Frame(image, index, now, t_source, time.time(), position=position)
            transform = self.transform
            if transform is not None:
                frame.tensor = transform(image)
                frame.prep_time = time.perf_counter() - now
            if not self._publish(frame):
                return
            index += 1
            position += 1

    def _reconnect(self) -> bool:
        """Reopen a lost live source with backoff; False (and an error for the consumer) after the last attempt.

        Attempts count across reconnects until the source has been healthy for `policy.healthy_s` seconds, so a
        source that opens and dies at once is not reopened forever."""
        self._release_reader()
        policy = self.reconnect
        left = policy.attempts - self._attempts_used
        # A read that gave up after waiting seconds for a frame (FFmpeg's read timeout) means the source went silent,
        # connected but sending nothing; a dropped connection ends the read at once.
        quiet = time.perf_counter() - (self._last_frame_at or time.perf_counter())
        self._silent_s = quiet if quiet >= SILENT_S else None
        silent = f" (silent: no frame for {quiet:.0f} s)" if self._silent_s else ""
        self.on_event(
            "lost",
            f"lost {self.spec.display}{silent}; "
            + (
                f"reconnecting (up to {left} more attempt{'s' if left != 1 else ''})"
                if left > 0
                else "no reconnect attempts left"
            ),
        )
        last = ""
        while self._attempts_used < policy.attempts:
            self._attempts_used += 1
            attempt = self._attempts_used
            if self._stop.wait(policy.delay(attempt)):
                return False
            try:
                self.reader = self._opener(self.spec)
            except EdgeCNNError as exc:
                last = str(exc)
                self.on_event("retry", f"reconnect attempt {attempt}/{policy.attempts} failed: {last}")
                continue
            self.reconnects += 1
            self._reconnected_at = self._last_frame_at = time.perf_counter()
            self.on_event("reconnected", f"reconnected to {self.spec.display} (attempt {attempt}/{policy.attempts})")
            return True
        self.on_event(
            "gave_up",
            f"gave up on {self.spec.display} after {policy.attempts} reconnect "
            f"attempt{'s' if policy.attempts != 1 else ''}",
        )
        if last:
            detail = last
        elif self._silent_s is not None:  # it accepted the connection but then sent nothing: not a dropped connection
            detail = f"it went silent: no frame for {self._silent_s:.0f} s" + (
                " after reconnecting" if policy.attempts else "; reconnecting is off: --reconnect-attempts 0"
            )
        elif policy.attempts:
            detail = f"it kept dropping the connection within {policy.healthy_s:g} s of reconnecting"
        else:
            detail = "reconnecting is off: --reconnect-attempts 0"
        raise SourceError(
            f"Lost {self.spec.display} and could not reconnect after {policy.attempts} "
            f"attempt{'s' if policy.attempts != 1 else ''} ({detail})"
        )
