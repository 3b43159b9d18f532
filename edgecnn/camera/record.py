"""Record calibration frames from the deployment camera or stream (`edgecnn calibrate capture`).

INT8 calibration works best on what the sensor really sees (its noise, exposure, white balance and scenes), so
frames are taken from the same sources the live loop reads, spaced in time so they are not near-duplicates, and
saved as JPEG files one at a time, atomically, into a new folder.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from edgecnn.camera.capture import ThreadedCapture
from edgecnn.errors import SourceError, StorageError, UserInputError
from edgecnn.files import atomic_write_bytes, make_dirs, remove_created

FRAME_NAME = "frame_{:05d}.jpg"
_FRAME_RE = re.compile(r"^frame_(\d+)\.jpg$")


@dataclass
class CaptureReport:
    out: Path
    source: str
    requested: int
    saved: list[Path] = field(default_factory=list)
    frames_seen: int = 0
    dropped: int = 0
    reconnects: int = 0
    skipped_unreadable: int = 0  # image-folder source: files that could not be decoded
    elapsed_s: float = 0.0
    size: tuple[int, int] | None = None  # (width, height) of the first frame
    brightness: dict = field(default_factory=dict)  # mean grey level: min, mean, max over saved frames
    ended_early: bool = False
    end_reason: str = "count"

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "source": self.source,
            "requested": self.requested,
            "saved": len(self.saved),
            "first": self.saved[0].name if self.saved else None,
            "last": self.saved[-1].name if self.saved else None,
            "frames_seen": self.frames_seen,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "skipped_unreadable": self.skipped_unreadable,
            "elapsed_s": round(self.elapsed_s, 3),
            "size": list(self.size) if self.size else None,
            "brightness": self.brightness,
            "ended_early": self.ended_early,
            "end_reason": self.end_reason,
        }


def _first_number(out: Path, force: bool) -> int:
    """Check `out` without writing anything and return the first frame number to use.

    A folder that already holds files is refused unless `force`: then new frames are added after the highest
    existing frame number, and no existing file is ever overwritten.
    """
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder for the calibration frames")
    existing = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    if existing and not force:
        raise UserInputError(
            f"--out {out} already holds {len(existing)} file(s); choose a new folder, or pass --force to add frames "
            "to it (existing files are kept)"
        )
    numbers = [int(m.group(1)) for p in existing if (m := _FRAME_RE.match(p.name))]
    return max(numbers) + 1 if numbers else 0


def prepare_output(out: str | Path, force: bool = False) -> int:
    """Create `out` (or accept it) and return the first frame number to use (see `_first_number`)."""
    start = _first_number(Path(out), force)
    make_dirs(out)
    return start


@contextmanager
def output_folder(out: str | Path, force: bool = False) -> Iterator[int]:
    """`prepare_output` for the duration of a capture: yields the first frame number, and if the body fails, removes
    the folders it created (`out` and any missing parents) as long as they are still empty.

    Uses the same `make_dirs` / `remove_created` pair as `deploy install` and `deploy deepstream`, so every command
    takes back its folders the same way. A folder that existed before is never removed, and neither is one holding a
    saved frame (or any other file).
    """
    start = _first_number(Path(out), force)
    created = make_dirs(out)
    try:
        yield start
    except BaseException:
        remove_created(created, out)
        raise


def capture_frames(
    capture: ThreadedCapture,
    out: str | Path,
    count: int,
    every_ms: float = 0.0,
    start_number: int = 0,
    jpeg_quality: int = 95,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> CaptureReport:
    """Save `count` frames from a started capture, at least `every_ms` apart in source time (a file's own timeline,
    a camera's clock). Ends early, with what it has, when the source ends or `stop` is set."""
    if count < 1:
        raise UserInputError(f"--count must be at least 1, got {count}")
    if every_ms < 0:
        raise UserInputError(f"--every-ms must be >= 0, got {every_ms}")
    out = Path(out)
    stop = stop or threading.Event()
    report = CaptureReport(out=out, source=capture.spec.display, requested=count)
    levels = []
    next_due = None
    number = start_number
    t0 = time.perf_counter()
    try:
        while len(report.saved) < count:
            if stop.is_set():
                report.end_reason = "stopped"
                break
            try:
                frame = capture.get(timeout=0.1)
            except SourceError as exc:
                report.end_reason = f"source lost: {exc}"
                break
            if frame is None:
                if capture.ended:
                    report.end_reason = "end of source"
                    break
                continue
            report.frames_seen += 1
            if next_due is not None and frame.t_source < next_due - 1e-4:  # float tolerance: 3 × (1/30) s is 100 ms
                continue
            next_due = frame.t_source + every_ms / 1000.0
            ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            if not ok:
                raise SourceError(f"Could not encode a frame from {capture.spec.display} as JPEG")
            path = out / FRAME_NAME.format(number)
            while path.exists():  # never overwrite, even if a file appeared meanwhile
                number += 1
                path = out / FRAME_NAME.format(number)
            try:
                atomic_write_bytes(path, buf.tobytes())
            except StorageError as exc:  # a full disk: the frames saved so far are complete files, and stay
                raise StorageError(
                    exc.what, exc.why, f"kept the {len(report.saved)} frame(s) saved so far in {out}"
                ) from exc
            number += 1
            report.saved.append(path)
            if report.size is None:
                report.size = (frame.image.shape[1], frame.image.shape[0])
            levels.append(float(cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY).mean()))
            if progress:
                progress(len(report.saved), count)
    finally:
        report.elapsed_s = time.perf_counter() - t0
        report.dropped = capture.dropped
        report.reconnects = capture.reconnects
        capture.close()
        report.skipped_unreadable = capture.skipped
    report.ended_early = len(report.saved) < count
    if levels:
        arr = np.asarray(levels)
        report.brightness = {
            "min": round(float(arr.min()), 1),
            "mean": round(float(arr.mean()), 1),
            "max": round(float(arr.max()), 1),
        }
    return report
