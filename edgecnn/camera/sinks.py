"""Where live results go: an OpenCV window, a recorded video (finalised on every exit), JSON lines.

Each sink implements `needs_image`, `handle(result, image) -> bool` (False asks the loop to stop) and `close()`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from edgecnn.errors import UserInputError

FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def display_available() -> tuple[bool, str]:
    """(True, '') when an OpenCV window can open here, else (False, why)."""
    gui = ""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
            break
    if gui.upper() in ("NONE", "NO"):
        return False, "this OpenCV has no GUI support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY/WAYLAND_DISPLAY unset: SSH session or service)"
    return True, ""


class WindowSink:
    """An OpenCV window; `q` or Esc (or closing the window) stops the loop."""

    needs_image = True

    def __init__(self, title: str = "edgecnn live"):
        ok, why = display_available()
        if not ok:
            raise UserInputError(
                f"Cannot open a window: {why}. Run with --headless (add --json for per-frame results, "
                "--record out.mp4 for the annotated video)"
            )
        self.title = title
        self.opened = False

    def handle(self, result, image) -> bool:
        cv2.imshow(self.title, image)
        self.opened = True
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), ord("Q"), 27):
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        if self.opened:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
            self.opened = False


class VideoRecorder:
    """Writes annotated frames to `path` through a temporary file in the same folder; `close()` finalises it
    (the container is completed by VideoWriter.release, then moved into place), so an interrupted run still leaves a
    playable video and never a half-written file under the final name."""

    needs_image = True

    def __init__(self, path: str | os.PathLike, fps: float, inputs: list[str] = ()):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC_BY_SUFFIX:
            raise UserInputError(f"--record {self.path}: use one of {', '.join(sorted(FOURCC_BY_SUFFIX))}")
        if self.path.is_dir():
            raise UserInputError(f"--record {self.path} is a folder, expected a video file path")
        for inp in inputs:
            if Path(inp).exists() and self.path.exists() and os.path.samefile(inp, self.path):
                raise UserInputError(f"--record {self.path} is the input video: choose another file")
        if not self.path.parent.exists():
            raise UserInputError(f"--record {self.path}: folder {self.path.parent} does not exist")
        self.fourcc = FOURCC_BY_SUFFIX[suffix]
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.writer: cv2.VideoWriter | None = None
        self.tmp: Path | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
        if not self.writer.isOpened():
            self.writer = None
            self.tmp.unlink(missing_ok=True)
            raise UserInputError(f"Cannot write {self.path} with codec {self.fourcc}: try an .avi file")
        self.size = (w, h)

    def handle(self, result, image) -> bool:
        if self.writer is None:
            self._open(image)
        if (image.shape[1], image.shape[0]) != self.size:  # a stream that changed resolution after a reconnect
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.frames += 1
        return True

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        if self.frames:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600; a video is an ordinary user file
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class JsonLinesSink:
    """One JSON object per line for every `every`-th processed frame, flushed at once (pipes see it live)."""

    needs_image = False

    def __init__(self, stream: TextIO, every: int = 1, source: str | None = None):
        if every < 1:
            raise UserInputError(f"--every must be at least 1, got {every}")
        self.stream = stream
        self.every = every
        self.source = source

    def handle(self, result, image=None) -> bool:
        if (result.processed - 1) % self.every == 0:
            self.stream.write(json.dumps(result.to_dict(self.source)) + "\n")
            self.stream.flush()
        return True

    def close(self) -> None:
        try:
            self.stream.flush()
        except (ValueError, OSError):  # closed pipe (`| head`): nothing left to flush
            pass


class CallbackSink:
    """Hands every result to a function (for library users and tests); return False from it to stop the loop."""

    needs_image = False

    def __init__(self, fn):
        self.fn = fn

    def handle(self, result, image=None) -> bool:
        return self.fn(result) is not False

    def close(self) -> None:
        pass
