"""One parser for every frame source (`edgecnn live --source`, `edgecnn calibrate capture --source`), and readers.

Accepted sources:
  `0`, `1`, ...          V4L2 camera by index (MJPG fourcc requested; --width/--height/--fps applied)
  `/dev/video0`          V4L2 camera by device path
  `csi://0?capture=1920x1080&flip=2`
                         Jetson CSI camera through nvarguscamerasrc (needs an OpenCV built with GStreamer);
                         --width/--height set the output size, --fps the frame rate
  `gst:<pipeline>`       a raw GStreamer pipeline ending in an appsink
  `rtsp://...`, `http(s)://...`
                         IP cameras and MJPEG streams (OpenCV's FFmpeg backend, with open/read timeouts)
  `clip.mp4`             a video file (paced at its own frame rate unless --no-pace)
  `frames/`, `img.jpg`   an image folder (sorted, recursive) or a single image

Credentials in URLs (`user:pass@`, `password=`/`token=` query values, `user-pw=` pipeline properties) are redacted in
`SourceSpec.display`, which is the only form logs, JSON and files ever see.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from edgecnn.data import IMAGE_EXTS, VIDEO_EXTS, list_images, read_image
from edgecnn.errors import MissingDependencyError, SourceError, UserInputError
from edgecnn.masking import mask_credentials

KINDS = ("camera", "csi", "gst", "stream", "file", "folder")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000

_DIGITS = re.compile(r"[0-9]+")


def redact(text: str) -> str:
    """`text` with credentials replaced by `***` (the one masking function: `edgecnn.masking.mask_credentials`)."""
    return mask_credentials(text)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: what to open and how, plus its redacted `display` form (safe for logs, JSON and files).

    kind:   camera | csi | gst | stream | file | folder
    target: what OpenCV opens (a device index or path, a GStreamer pipeline, a URL, a file or folder path).
    live:   frames come in real time (reconnect on loss) rather than from a finite file.
    width/height/fps: requested capture size and rate (None: the source's own).
    """

    kind: str
    target: str | int
    display: str
    live: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    options: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # never leak the raw target (it may hold credentials)
        return f"SourceSpec(kind={self.kind!r}, display={self.display!r})"

    __str__ = __repr__


def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV was built with GStreamer (JetPack's is; pip's opencv-python wheels are not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1].upper()
    return False


GSTREAMER_HINT = (
    "this OpenCV ({version}) was built without GStreamer, which CSI cameras and gst: pipelines need. "
    "On Jetson use JetPack's OpenCV: `pip uninstall opencv-python opencv-python-headless` so the system "
    "python3-opencv (built with GStreamer) is imported; elsewhere build OpenCV with -D WITH_GSTREAMER=ON. "
    'Check with: python3 -c "import cv2; print(cv2.getBuildInformation())" | grep GStreamer'
)


def _require_gstreamer(display: str) -> None:
    if not opencv_has_gstreamer():
        raise MissingDependencyError(f"Cannot open {display}: " + GSTREAMER_HINT.format(version=cv2.__version__))


MIN_FPS = 0.01  # one frame every 100 s (a slow slideshow of an image folder)
MAX_FPS = 1000.0  # a frame rate above this is a typo (or nan/inf), not a camera


def _positive(name: str, value, cast=int):
    if value is None:
        return None
    try:
        v = cast(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float('inf'))
        raise UserInputError(f"{name} must be a positive number, got {value!r}") from None
    if v <= 0:
        raise UserInputError(f"{name} must be positive, got {value!r}")
    return v


def check_fps(name: str, value) -> float | None:
    """A frame rate: a finite number in [MIN_FPS, MAX_FPS]. nan, inf and 1e300 are refused here, before they reach
    OpenCV (a VideoWriter at inf fps hangs in C code), a pipeline's framerate fraction, or pacing arithmetic."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserInputError(f"{name} must be a frame rate from {MIN_FPS:g} to {MAX_FPS:g}, got {value!r}") from None
    if not math.isfinite(v) or not MIN_FPS <= v <= MAX_FPS:
        raise UserInputError(f"{name} must be a frame rate from {MIN_FPS:g} to {MAX_FPS:g}, got {value!r}")
    return v


def csi_pipeline(
    sensor_id: int = 0,
    capture_size: tuple[int, int] = (1920, 1080),
    fps: float = 30,
    flip: int = 0,
    output_size: tuple[int, int] | None = None,
) -> str:
    """The nvarguscamerasrc pipeline for a Jetson CSI camera, ending in a BGR appsink that keeps only the newest frame.

    capture_size/output_size are (width, height); the ISP scales and flips (flip-method 0..7) in NVMM memory.
    """
    cw, ch = capture_size
    ow, oh = output_size or capture_size
    num, den = _fraction(fps)
    return (
        f"nvarguscamerasrc sensor-id={int(sensor_id)} ! "
        f"video/x-raw(memory:NVMM), width=(int){cw}, height=(int){ch}, framerate=(fraction){num}/{den}, "
        "format=(string)NV12 ! "
        f"nvvidconv flip-method={int(flip)} ! video/x-raw, width=(int){ow}, height=(int){oh}, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def _fraction(fps: float) -> tuple[int, int]:
    if float(fps).is_integer():
        return int(fps), 1
    return int(round(fps * 1000)), 1000


def _size(text: str, what: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", text or "")
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise UserInputError(f"{what} must look like 1920x1080, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_source(
    source: str | int | os.PathLike,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
) -> SourceSpec:
    """Turn what the user typed into a SourceSpec, or raise one clear UserInputError (unknown or malformed source)."""
    width = _positive("--width", width)
    height = _positive("--height", height)
    fps = check_fps("--fps", fps)
    text = str(source).strip()
    if not text:
        raise UserInputError(
            "--source is empty: give a camera index (0), /dev/videoN, csi://N, a URL, a video or a folder"
        )
    common = dict(width=width, height=height, fps=fps)

    if _DIGITS.fullmatch(text):  # ASCII only: str.isdigit() accepts "²", which int() refuses
        return SourceSpec("camera", int(text), f"camera {text}", live=True, **common)
    # A regular file or folder under /dev is not a camera (/dev/shm is a common RAM disk on Jetsons); a device node
    # (/dev/video0, a /dev/v4l/by-id/... link to one) is neither, so it is still taken as one.
    on_disk = Path(text).is_file() or Path(text).is_dir()
    if not on_disk and (
        text.startswith("/dev/video") or (sys.platform.startswith("linux") and text.startswith("/dev/"))
    ):
        return SourceSpec("camera", text, text, live=True, **common)
    if text.lower().startswith("gst:"):
        pipeline = text[4:].strip()
        if not pipeline:
            raise UserInputError("gst: needs a pipeline, e.g. gst:videotestsrc ! videoconvert ! appsink")
        if "appsink" not in pipeline:
            raise UserInputError(f"GStreamer pipeline must end in an appsink for OpenCV: {redact(pipeline)}")
        return SourceSpec("gst", pipeline, "gst:" + redact(pipeline), live=True, **common)

    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "csi":
        return _parse_csi(text, width, height, fps)
    if scheme in STREAM_SCHEMES:
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            raise UserInputError(f"Malformed URL {redact(text)}: {exc}") from None
        if not parts.hostname:
            raise UserInputError(f"Malformed URL {redact(text)}: no host (expected {scheme}://host[:port]/path)")
        return SourceSpec("stream", text, redact(text), live=True, **common)
    if scheme:
        raise UserInputError(
            f"Unsupported source scheme {scheme}:// in {redact(text)}; "
            "use rtsp://, http(s)://, csi://N or gst:<pipeline>"
        )

    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path), str(path), live=False, **common)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTS:
            return SourceSpec("file", str(path), str(path), live=False, **common)
        if suffix in IMAGE_EXTS:
            return SourceSpec("folder", str(path), str(path), live=False, **common)
        raise UserInputError(f"Unsupported source {path}: not a video ({', '.join(sorted(VIDEO_EXTS))}) or image file")
    raise UserInputError(
        f"Source {redact(text)} not found: expected a camera index (0), /dev/videoN, csi://N, gst:<pipeline>, "
        "rtsp:// or http(s):// URL, an existing video file or an image folder"
    )


def _parse_csi(text: str, width, height, fps) -> SourceSpec:
    parts = urlsplit(text)
    sensor = parts.netloc or parts.path.strip("/")
    if not _DIGITS.fullmatch(sensor):
        raise UserInputError(f"CSI source must be csi://<sensor-id> (e.g. csi://0), got {text!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"capture", "fps", "flip"}
    if unknown:
        raise UserInputError(
            f"Unknown csi:// option(s) {', '.join(sorted(unknown))}; known: capture=WxH, fps=F, flip=0..7"
        )
    capture = _size(query["capture"], "csi:// capture") if "capture" in query else (1920, 1080)
    rate = fps or check_fps("csi:// fps", query.get("fps")) or 30.0
    try:
        flip = int(query.get("flip", 0))
    except ValueError:
        flip = -1
    if not 0 <= flip <= 7:
        raise UserInputError(f"csi:// flip must be 0..7 (nvvidconv flip-method), got {query.get('flip')!r}")
    output = (width or capture[0], height or capture[1])
    pipeline = csi_pipeline(int(sensor), capture, rate, flip, output)
    return SourceSpec(
        "csi",
        pipeline,
        f"csi://{sensor}",
        live=True,
        width=output[0],
        height=output[1],
        fps=rate,
        options={"sensor_id": int(sensor), "capture": capture, "flip": flip},
    )


# ---------------------------------------------------------------- readers


class Reader:
    """A synchronous frame reader: `read()` -> BGR frame or None (end of file / stream lost)."""

    fps: float | None = None  # the source's own frame rate, when it has one
    frame_count: int | None = None
    skipped: int = 0  # unreadable files passed over (image folders)

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def release(self) -> None:
        pass


class CvReader(Reader):
    """cv2.VideoCapture for cameras, pipelines, streams and video files."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.cap = _open_capture(spec)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS else None
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if spec.kind == "file" and count and count > 0 else None

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            return None
        ok, frame = self.cap.read()
        return frame if ok and frame is not None and frame.size else None

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class FolderReader(Reader):
    """Images of a folder (sorted, recursive) as frames; unreadable files are skipped and counted."""

    def __init__(self, spec: SourceSpec):
        self.paths = list_images(spec.target)
        if not self.paths:
            raise SourceError(f"No images in {spec.display} (looked for {', '.join(sorted(IMAGE_EXTS))})")
        self.pos = 0
        self.skipped = 0
        self.fps = None
        self.frame_count = len(self.paths)

    def read(self) -> np.ndarray | None:
        while self.pos < len(self.paths):
            img = read_image(self.paths[self.pos])
            self.pos += 1
            if img is not None:
                return img
            self.skipped += 1
        return None


def open_reader(spec: SourceSpec) -> Reader:
    """Open a source, or raise SourceError / MissingDependencyError with one clear line."""
    if spec.kind == "folder":
        return FolderReader(spec)
    return CvReader(spec)


def _camera_device(target) -> str | None:
    if isinstance(target, int):
        return f"/dev/video{target}" if sys.platform.startswith("linux") else None
    return str(target)


def _quiet_opencv() -> None:
    """OpenCV's and FFmpeg's own messages can print raw URLs (credentials included) to stderr and repeat what our
    reconnect events already say: keep OpenCV at errors only and FFmpeg quiet (set OPENCV_FFMPEG_LOGLEVEL to
    override; it is read when FFmpeg is first used)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    try:
        from cv2.utils import logging as cv_logging  # OpenCV >= 4.5

        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        if hasattr(cv2, "setLogLevel"):
            cv2.setLogLevel(2)


def _open_capture(spec: SourceSpec) -> cv2.VideoCapture:
    _quiet_opencv()
    if spec.kind in ("csi", "gst"):
        _require_gstreamer(spec.display)
        cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            hint = (
                " (is nvargus-daemon running and the sensor connected? try: gst-launch-1.0 nvarguscamerasrc ! fakesink)"
                if spec.kind == "csi"
                else ""
            )
            raise SourceError(f"Cannot open {spec.display}: GStreamer could not start the pipeline{hint}")
        return cap
    if spec.kind == "camera":
        device = _camera_device(spec.target)
        if device is not None and not os.path.exists(device):
            found = sorted(str(p) for p in Path("/dev").glob("video*"))
            have = f"found: {', '.join(found)}" if found else "no /dev/video* devices on this machine"
            raise SourceError(f"No camera {device} ({have})")
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(spec.target, api)
        if not cap.isOpened():
            raise SourceError(
                f"Cannot open {spec.display}: busy or not a capture device (check `v4l2-ctl --list-devices`)"
            )
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))  # before size: MJPG unlocks high fps at HD
        if spec.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, spec.width)
        if spec.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, spec.height)
        if spec.fps:
            cap.set(cv2.CAP_PROP_FPS, spec.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap
    if spec.kind == "stream":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            raise SourceError(f"Cannot open stream {spec.display}: refused, timed out or not a video stream")
        return cap
    if spec.kind == "file":
        cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap = cv2.VideoCapture(spec.target)
        if not cap.isOpened():
            raise SourceError(f"Cannot open video {spec.display}: not a format OpenCV's FFmpeg can decode")
        return cap
    raise UserInputError(f"Unsupported source kind {spec.kind!r}")
