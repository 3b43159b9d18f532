"""What a live run needs around the loop, for the CLI and Python callers alike: starting several captures, the
recording timeline that suits a source, and the Ctrl-C / SIGTERM policy that lets recordings finish.

    specs = [parse_source(s) for s in ("0", "rtsp://cam/stream")]
    check_distinct(specs)
    captures = start_captures(specs, pace=True)
    with StopOnSignals() as signals:
        summary = run_live(runner, captures, options, sinks, stop=signals.stop)
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Callable, Sequence

from edgecnn.camera.capture import EventCallback, ReconnectPolicy, ThreadedCapture
from edgecnn.camera.sources import SourceSpec
from edgecnn.errors import UserInputError


def _identity(spec: SourceSpec):
    """What makes two sources the same device or file (the raw target, a file by its real path)."""
    if spec.kind in ("file", "folder"):
        return spec.kind, os.path.realpath(str(spec.target))
    if spec.kind == "camera" and isinstance(spec.target, int):
        return "camera", f"/dev/video{spec.target}"
    return spec.kind, str(spec.target)


def check_distinct(specs: Sequence[SourceSpec]) -> None:
    """Refuse a source given twice: a camera cannot be opened twice, and the same file twice is a typo more often
    than a wish (to load-test, give copies of it)."""
    seen: dict = {}
    for i, spec in enumerate(specs):
        key = _identity(spec)
        if key in seen:
            raise UserInputError(
                f"--source {spec.display} is given twice (sources {seen[key]} and {i}): give each camera or file once"
            )
        seen[key] = i


def start_captures(
    specs: Sequence[SourceSpec],
    *,
    pace: bool = True,
    loop: bool = False,
    reconnect: ReconnectPolicy = ReconnectPolicy(),
    on_event: Callable[[int, str, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[ThreadedCapture]:
    """Start one capture per source, in order. With several sources, a live one that cannot be opened yet does not
    fail the run: it is retried in its own thread (see ThreadedCapture.start(retry_unreachable)). A file or folder
    that cannot be read fails at once; the captures already started are closed again.

    on_event(source_index, kind, message) hears every loss, retry and reconnect."""
    several = len(specs) > 1
    captures: list[ThreadedCapture] = []
    try:
        for i, spec in enumerate(specs):
            cb = None if on_event is None else _tagged(on_event, i)
            cap = ThreadedCapture(spec, pace=pace, loop=loop, reconnect=reconnect, on_event=cb)
            captures.append(cap.start(cancel=cancel, retry_unreachable=several))
    except BaseException:
        for cap in captures:
            cap.close()
        raise
    return captures


def _tagged(on_event: Callable[[int, str, str], None], index: int) -> EventCallback:
    return lambda kind, message: on_event(index, kind, message)


def recording_timeline(capture: ThreadedCapture, requested_fps: float | None) -> tuple[float, str]:
    """(frames per second, timeline) for recording this capture's frames (see VideoRecorder): a video keeps its own
    rate; a live source, whose frames the loop may drop, is placed on its own clock so the video plays at the right
    speed however many are dropped (FFmpeg's 25 for any MJPEG stream is no clock); a paced file on its positions."""
    spec = capture.spec
    fps = (None if spec.kind == "file" else requested_fps) or capture.fps or 30.0
    timeline = "frames" if capture.lossless else "clock" if spec.live else "source"
    return fps, timeline


def record_paths(pattern: str | Path, count: int) -> list[Path]:
    """One recording per source: `out-{i}.mp4` -> out-0.mp4, out-1.mp4, ... (a single source may leave out {i})."""
    text = str(pattern)
    if count > 1 and "{i}" not in text:
        raise UserInputError(
            f"--record {text}: with {count} sources, put {{i}} in the name for the source's index (e.g. out-{{i}}.mp4)"
        )
    paths = [Path(text.replace("{i}", str(i))) for i in range(count)]
    return paths


class StopOnSignals:
    """Ctrl-C and SIGTERM stop a live run cleanly (recordings finalised, summary given) instead of killing it.

    First signal: `stop` is set; the loop ends and closes its sinks. A second Ctrl-C cuts the shutdown short
    (KeyboardInterrupt: a stream slow to close), except while `protect()` is true (a recording being finished:
    cutting it short could lose the video): then it is ignored and `on_note` is told once.
    On leaving: if the run was stopped by a signal and `ignore_after=True`, further Ctrl-Cs are ignored until the
    process exits (the CLI: one more Ctrl-C while the summary prints must not turn a finished run into exit 130);
    otherwise the previous handlers come back. Installs nothing outside the main thread (signals only go there)."""

    def __init__(
        self,
        stop: threading.Event | None = None,
        protect: Callable[[], bool] = lambda: False,
        on_note: Callable[[str], None] | None = None,
        ignore_after: bool = False,
    ):
        self.stop = stop or threading.Event()
        self.protect = protect
        self.on_note = on_note or (lambda text: None)
        self.ignore_after = ignore_after
        self.signalled: int | None = None
        self.finished = threading.Event()
        self._previous: dict = {}
        self._noted = False

    def _handler(self, signum, _frame) -> None:
        if not self.stop.is_set():
            self.signalled = signum
            self.stop.set()
            return
        if signum != signal.SIGINT or self.finished.is_set():
            return
        if self.protect():
            if not self._noted:
                self._noted = True
                self.on_note("finishing the recording, one moment (Ctrl-C is ignored until it is complete)")
            return
        raise KeyboardInterrupt

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> bool:
        self.finished.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.ignore_after and self.stop.is_set() else handler)
        self._previous.clear()
        return False
