"""Where live results go: an OpenCV window, a recorded video (finalised on every exit), JSON lines.

Each sink implements `needs_image`, `handle(result, image) -> bool` (False asks the loop to stop) and `close()`.
A sink that stops the loop for a reason of its own sets `stop_reason` (the summary's end_reason; default 'quit').
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from edgecnn.camera.sources import MAX_FPS, MIN_FPS, check_fps
from edgecnn.errors import STORAGE_ERRNOS, StorageError, UserInputError
from edgecnn.files import check_output_file, put_in_place, raise_storage_error, temp_beside
from edgecnn.jsonout import strict_json

FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def display_available() -> tuple[bool, str]:
    """(True, '') when an OpenCV window can open here, else (False, why)."""
    gui = ""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
            break
    if gui.upper() in ("NONE", "NO"):
        return False, (
            "this OpenCV has no GUI support (opencv-python-headless, what edgecnn installs off Jetson; for a "
            "window: pip uninstall opencv-python-headless && pip install opencv-python)"
        )
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY/WAYLAND_DISPLAY unset: SSH session or service)"
    return True, ""


class WindowSink:
    """An OpenCV window; `q` or Esc (or closing the window) stops the loop."""

    needs_image = True

    def __init__(self, title: str = "edgecnn live", per_source: bool = False):
        """per_source: one window per source, titled with its index and name (several --source)."""
        ok, why = display_available()
        if not ok:
            raise UserInputError(
                f"Cannot open a window: {why}. Run with --headless (add --json for per-frame results, "
                "--record out.mp4 for the annotated video)"
            )
        self.title = title
        self.per_source = per_source
        self.windows: list[str] = []

    @property
    def opened(self) -> bool:
        return bool(self.windows)

    def handle(self, result, image) -> bool:
        title = f"{self.title} [{result.source}] {result.source_name}" if self.per_source else self.title
        cv2.imshow(title, image)
        if title not in self.windows:
            self.windows.append(title)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), ord("Q"), 27):
            return False
        return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        if self.windows:
            for title in self.windows:
                cv2.destroyWindow(title)
            cv2.waitKey(1)
            self.windows = []


class RecordingError(StorageError):
    """A recording could not be completed (disk full, write error): the final path was left as it was."""


def _disk_full(folder: Path) -> bool:
    """Whether `folder`'s file system has (about) no room left: OpenCV's writer reports failures without a cause."""
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _probe_writable(folder: Path, flag: str, path: Path) -> None:
    """Create and remove a temporary file in `folder`: the only reliable test (os.access says yes to root on a
    read-only mount, /proc or /sys)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgecnn-probe-", dir=folder)
    except OSError as exc:
        raise_storage_error(exc, [Path(f"{flag} {path}")], "nothing was written")
        raise UserInputError(f"{flag} {path}: cannot write to the folder {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def _recording_problem(path: Path, frames: int) -> str | None:
    """Why the finished video at `path` is not a complete recording of `frames` frames, or None when it is.

    A write that ran out of space leaves a file whose index (AVI idx1, MP4 moov, MKV cues/duration) is missing:
    OpenCV then cannot open it, decodes nothing, or counts no (or a nonsense number of) frames."""
    if not path.exists() or path.stat().st_size == 0:
        return "the video file is empty"
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            return "the video cannot be opened"
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        ok, image = cap.read()
        if not ok or image is None:
            return "its first frame cannot be decoded"
        if not math.isfinite(count) or count < 1:
            return "it is truncated, with no frame index"
        if count < frames - max(2, 0.02 * frames):  # MKV estimates the count from its duration: allow a little
            return f"it is truncated: {int(count)} of the {frames} frames written"
    finally:
        cap.release()
    return None


class VideoRecorder:
    """Writes annotated frames to `path` through a temporary file in the same folder; `close()` finalises it
    (the container is completed by VideoWriter.release, checked to be playable, then moved into place), so an
    interrupted run still leaves a playable video and never a half-written file under the final name. A recording
    that cannot be completed (disk full) is removed and `close()` raises RecordingError; `path` is left as it was.

    The path is checked when the recorder is made, before anything runs: a folder, a path under a file, a folder
    that cannot be written to, the input video itself, or an existing file (unless `overwrite`) are refused.

    timeline: how processed frames become video frames at a constant rate, so the video plays at the right speed
    even when the loop drops frames (and drops more as it heats up or the machine gets busy):
    - "frames": every processed frame once, at `fps` (an unpaced file or folder: nothing is dropped);
    - "source": each frame at its position in the source (a paced file at `fps`, its own rate; a looped file's
      positions count on across restarts); where the loop dropped frames the previous one is repeated, so the
      recording lasts exactly as long as the part of the source it covers;
    - "clock": each frame at its arrival time (a live source; a monotonic clock, which NTP cannot step back), at
      the source's rate measured over its first ~second (the median time per source frame, so one late frame
      cannot skew it; within 10 % of `fps` it is taken to be `fps`); gaps of up to MAX_FILL_S are filled by
      repeating the previous frame, a longer outage (a reconnect) is cut, and a frame that arrives while its slot
      is taken is left out (counted in `left_out`)."""

    needs_image = True
    TIMELINES = ("frames", "source", "clock")
    MEASURE_S = 1.0  # seconds of frames used to measure the rate
    MEASURE_MAX_FRAMES = 120
    MEASURE_MAX_BYTES = 64 * 1024 * 1024  # at most this much image data is held back while measuring
    MAX_FILL_S = 5.0  # the longest gap filled with repeats of the previous frame

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        inputs: list[str] = (),
        overwrite: bool = False,
        timeline: str = "frames",
    ):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC_BY_SUFFIX:
            raise UserInputError(f"--record {self.path}: use one of {', '.join(sorted(FOURCC_BY_SUFFIX))}")
        check_output_file(self.path, "--record")  # a folder, or a path under a file
        for inp in inputs:
            if Path(inp).exists() and self.path.exists() and os.path.samefile(inp, self.path):
                raise UserInputError(f"--record {self.path} is the input video: choose another file")
        if os.path.lexists(self.path) and not overwrite:
            raise UserInputError(
                f"--record {self.path} already exists: choose a new file name, or pass --force to replace it"
            )
        if not self.path.parent.exists():
            raise UserInputError(f"--record {self.path}: folder {self.path.parent} does not exist")
        _probe_writable(self.path.parent, "--record", self.path)
        self.fourcc = FOURCC_BY_SUFFIX[suffix]
        self.fps = fps
        self.timeline = timeline
        self.measured_fps: float | None = None
        self.writer: cv2.VideoWriter | None = None
        self.tmp: Path | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0  # video frames written, repeats included
        self.repeated = 0  # of them, repeats of the previous frame filling a gap
        self.left_out = 0  # processed frames not written (arrived while their slot was taken)
        self._pending: deque[tuple[float, int, np.ndarray]] = deque()  # (arrival, source position, image) held back
        self._pending_bytes = 0
        self._measured = False
        self._next_slot: int | None = None  # the video frame to be written next, on the timeline's clock
        self._last_image: np.ndarray | None = None
        self._clock: tuple[float, int] | None = None  # (arrival time, slot) the clock timeline counts from
        self._drained = 0  # held-back frames written so far (clock timeline)

    @property
    def fps(self) -> float:
        return self._fps

    @fps.setter
    def fps(self, value) -> None:
        """None or 0: 30 fps; nan, inf and rates outside [MIN_FPS, MAX_FPS] are refused (a VideoWriter at inf fps
        hangs inside OpenCV)."""
        self._fps = 30.0 if not value else check_fps("--fps", value)

    @property
    def timeline(self) -> str:
        return self._timeline

    @timeline.setter
    def timeline(self, value: str) -> None:
        if value not in self.TIMELINES:
            raise ValueError(f"timeline must be one of {self.TIMELINES}, got {value!r}")
        self._timeline = value

    @property
    def video_fps(self) -> float:
        """The rate the video is written at."""
        return self.measured_fps or self.fps

    def _open(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        self.tmp = temp_beside(self.path, self.path.suffix)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.video_fps, (w, h))
        if not self.writer.isOpened():
            self.writer = None
            self.tmp.unlink(missing_ok=True)
            if _disk_full(self.path.parent):
                raise StorageError(str(self.path), STORAGE_ERRNOS[errno.ENOSPC], "nothing was written")
            raise UserInputError(f"Cannot write {self.path} with codec {self.fourcc}: try an .avi file")
        self.size = (w, h)

    def _write(self, image: np.ndarray) -> None:
        if self.writer is None:
            self._open(image)
        if (image.shape[1], image.shape[0]) != self.size:  # a stream that changed resolution after a reconnect
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.frames += 1

    def _place(self, slot: int, image: np.ndarray) -> None:
        """Write `image` as video frame `slot`, repeating the previous frame over the slots in between (a gap longer
        than MAX_FILL_S is cut instead: the video jumps)."""
        if self._next_slot is None:
            self._next_slot = slot
        if slot < self._next_slot:
            self.left_out += 1
            return
        gap = slot - self._next_slot
        if gap and self._last_image is not None and gap <= max(1, round(self.MAX_FILL_S * self.video_fps)):
            for _ in range(gap):
                self._write(self._last_image)
            self.repeated += gap
        self._write(image)
        self._last_image = image
        self._next_slot = slot + 1

    def _measure(self) -> tuple[float | None, int]:
        """(the source's frames per second over the held-back frames: the median time per source frame between
        consecutive ones, None without two frames apart in time; how many of the first frames came in a burst,
        what queued up while a stream opened)."""
        times = np.array([t for t, _, _ in self._pending])
        positions = np.array([pos for _, pos, _ in self._pending])
        if len(times) < 2:
            return None, 0
        per_frame = np.diff(times) / np.maximum(np.diff(positions), 1)
        median = float(np.median(per_frame))
        start = 0
        while start < len(per_frame) and per_frame[start] < 0.5 * median:
            start += 1
        steady = per_frame[start:]
        if not len(steady) or not float(np.median(steady)) > 0:
            return None, start
        rate = 1.0 / float(np.median(steady))
        if abs(rate - self.fps) <= 0.1 * self.fps:
            return self.fps, start  # the nominal rate, measured: keep its exact value (30, not 29.7)
        return min(MAX_FPS, max(MIN_FPS, round(rate, 2))), start

    def _start_clock(self) -> None:
        """Measure the rate; the burst frames take the first slots one after another, the clock starts after them."""
        self.measured_fps, burst = self._measure()
        self._measured = True
        self._clock = (self._pending[min(burst, len(self._pending) - 1)][0], burst)

    def _drain(self, limit: int | None = None) -> None:
        """Write held-back frames, oldest first (all of them, or `limit` so no single frame pays for the backlog)."""
        n = len(self._pending) if limit is None else min(limit, len(self._pending))
        for _ in range(n):
            arrival, _, image = self._pending.popleft()
            self._pending_bytes -= image.nbytes
            t0, slot0 = self._clock
            slot = self._drained if self._drained < slot0 else slot0 + int(round((arrival - t0) * self.video_fps))
            self._drained += 1
            self._place(slot, image)

    def handle(self, result, image) -> bool:
        if self.timeline == "frames":
            self._write(image)
            return True
        if self.timeline == "source":
            self._place(int(result.position), image)
            return True
        self._pending.append((float(result.t_capture), int(result.position), image))
        self._pending_bytes += image.nbytes
        if not self._measured:
            span = self._pending[-1][0] - self._pending[0][0]
            if (
                (span >= self.MEASURE_S and len(self._pending) >= 3)
                or len(self._pending) >= self.MEASURE_MAX_FRAMES
                or self._pending_bytes >= self.MEASURE_MAX_BYTES
            ):
                self._start_clock()
        if self._measured:
            self._drain(limit=3)  # the backlog shrinks by two frames per frame: no latency spike
        return True

    def close(self) -> None:
        """Finish the video and move it into place. Anything that interrupts this (a second Ctrl-C raising
        KeyboardInterrupt in the middle of it) removes the temporary file before it propagates: no hidden
        `.name.xxxx.mp4` is ever left behind."""
        try:
            self._finish()
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        """Release the writer and remove the temporary file (an interrupted or failed close)."""
        writer, self.writer = self.writer, None
        tmp, self.tmp = self.tmp, None
        if writer is not None:
            writer.release()
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    def _finish(self) -> None:
        if self._pending:  # frames still held back (a run shorter than the measuring window: measure what there is)
            if not self._measured:
                self._start_clock()
            self._drain()
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        tmp = self.tmp  # self.tmp stays set until the file is in place or removed (see close)
        if not self.frames:
            tmp.unlink(missing_ok=True)
            self.tmp = None
            return
        kept = (
            f"the existing {self.path.name} was left as it was"
            if os.path.lexists(self.path)
            else "no video was written"
        )
        problem = _recording_problem(tmp, self.frames)
        hint = " (is the disk full?)"
        if problem is not None and _disk_full(self.path.parent):
            problem, hint = STORAGE_ERRNOS[errno.ENOSPC], ""
        if problem is None:
            try:
                put_in_place(tmp, self.path)  # mkstemp makes 0600; a video is an ordinary user file
                self.tmp = None
                return
            except OSError as exc:
                problem, hint = f"it could not be moved into place: {exc.strerror or exc}", ""
        tmp.unlink(missing_ok=True)
        self.tmp = None
        self.frames = 0
        raise RecordingError(
            str(self.path), f"the video is unusable: {problem}{hint}", f"the incomplete video was removed and {kept}"
        )


class JsonLinesSink:
    """One JSON object per line for every `every`-th processed frame, flushed at once (pipes see it live); strict
    JSON (a NaN score is null)."""

    needs_image = False

    def __init__(self, stream: TextIO, every: int = 1, source: str | None = None):
        if every < 1:
            raise UserInputError(f"--every must be at least 1, got {every}")
        self.stream = stream
        self.every = every
        self.source = source
        self.stop_reason: str | None = None  # "output_closed" once the reader of the stream has gone away

    def handle(self, result, image=None) -> bool:
        if self.stop_reason is not None:
            return False
        if (result.processed - 1) % self.every == 0:
            line = json.dumps(strict_json(result.to_dict(self.source)), allow_nan=False) + "\n"
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, ValueError):  # the reader went away (`| head -1`), or the stream was closed
                self.stop_reason = "output_closed"
                return False
        return True

    def close(self) -> None:
        if self.stop_reason is not None:
            return
        try:
            self.stream.flush()
        except (ValueError, OSError):  # closed pipe (`| head`): nothing left to flush
            self.stop_reason = "output_closed"


class CallbackSink:
    """Hands every result to a function (for library users and tests); return False from it to stop the loop."""

    needs_image = False

    def __init__(self, fn):
        self.fn = fn

    def handle(self, result, image=None) -> bool:
        return self.fn(result) is not False

    def close(self) -> None:
        pass


class PerSourceSink:
    """Routes each result to the sink of its source (`sinks[result.source]`, None: nothing for that source): one
    recording per camera. Closes them all, even when one fails (the first failure is raised after)."""

    def __init__(self, sinks):
        self.sinks = list(sinks)
        self.needs_image = any(s is not None and s.needs_image for s in self.sinks)

    @property
    def stop_reason(self) -> str | None:
        return next((s.stop_reason for s in self.sinks if getattr(s, "stop_reason", None)), None)

    def handle(self, result, image) -> bool:
        sink = self.sinks[result.source] if result.source < len(self.sinks) else None
        return True if sink is None else sink.handle(result, image) is not False

    def close(self) -> None:
        errors = []
        for sink in self.sinks:
            if sink is None:
                continue
            try:
                sink.close()
            except BaseException as exc:
                errors.append(exc)
        interrupted = next((exc for exc in errors if not isinstance(exc, Exception)), None)
        if interrupted is not None or errors:
            raise interrupted or errors[0]
