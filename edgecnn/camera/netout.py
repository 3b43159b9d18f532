"""Network video outputs for headless boards: the annotated video sent as a stream instead of shown in a window.

  udp://HOST:PORT    MPEG-TS over UDP (play with `ffplay udp://@:PORT` or VLC): OpenCV's FFmpeg (pip's OpenCV has
                     it) or, where OpenCV has GStreamer, an encoder + mpegtsmux pipeline
  rtp://HOST:PORT    H.264 over RTP (what jetson-inference's `rtp://` sends): GStreamer (nvv4l2h264enc on Jetson,
                     x264enc elsewhere) + rtph264pay + udpsink; FFmpeg through OpenCV cannot write RTP
  rtsp://HOST:PORT/PATH
                     an RTSP server in this process, serving PATH: GStreamer's rtsp-server through PyGObject
                     (JetPack: `sudo apt install gir1.2-gst-rtsp-server-1.0 python3-gi`)

`output_support()` says which of these this machine can do (`edgecnn doctor` lists it). Encoding runs in the
output's own thread with a one-frame slot, like the capture side: a slow encoder or network drops frames for the
stream (counted in `dropped`), it never holds up the loop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from urllib.parse import urlsplit

import cv2
import numpy as np

from edgecnn.camera.sources import opencv_has_gstreamer, redact
from edgecnn.errors import MissingDependencyError, UserInputError

SCHEMES = ("udp", "rtp", "rtsp")


def parse_output(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an --output URL; a clear error for anything else."""
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UserInputError(
            f"--output {redact(url)}: use udp://HOST:PORT (MPEG-TS), rtp://HOST:PORT (H.264/RTP) or "
            "rtsp://HOST:PORT/PATH (serves an RTSP stream); --record writes a file"
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise UserInputError(f"--output {redact(url)}: needs a host and a port, e.g. {scheme}://192.168.1.20:5000")
    return scheme, parts.hostname, port, parts.path or "/live"


def _gst_has(element: str) -> bool:
    """Whether a GStreamer element is installed (gst-inspect-1.0, or PyGObject's Gst when that is missing)."""
    inspect = shutil.which("gst-inspect-1.0")
    if inspect:
        try:
            return subprocess.run([inspect, "--exists", element], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        return Gst.ElementFactory.find(element) is not None
    except (ImportError, ValueError):
        return False


def _h264_encoder() -> str | None:
    """The GStreamer H.264 encoder to use: the Jetson hardware one first."""
    for element in ("nvv4l2h264enc", "x264enc"):
        if _gst_has(element):
            return element
    return None


def _has_rtsp_server() -> bool:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GstRtspServer  # noqa: F401
    except (ImportError, ValueError):
        return False
    return True


@contextmanager
def _quiet_stderr():
    """OpenCV's FFmpeg writer prints a harmless tag warning for MPEG-TS straight to file descriptor 2 (C code, no
    log level covers it): silence fd 2 for the moment the writer opens."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _ffmpeg_writer(host: str, port: int, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """MPEG-4 video in MPEG-TS over UDP (pip's OpenCV has no H.264 encoder)."""
    from edgecnn.camera.sources import _quiet_opencv

    _quiet_opencv()
    with _quiet_stderr():
        return cv2.VideoWriter(_ffmpeg_udp_url(host, port), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)


def _ffmpeg_writes_udp() -> bool:
    """Whether OpenCV's FFmpeg can open an MPEG-TS writer on a UDP URL (tried on the discard port: nothing listens,
    and UDP sends nothing until a frame is written)."""
    w = _ffmpeg_writer("127.0.0.1", 9, 30.0, (64, 48))
    try:
        return w.isOpened()
    finally:
        w.release()


def _ffmpeg_udp_url(host: str, port: int) -> str:
    """OpenCV picks the FFmpeg container from the name's extension only: the `.ts` tail (an option udp ignores)
    selects MPEG-TS; pkt_size 1316 = 7 TS packets per datagram, what players expect."""
    return f"udp://{host}:{port}?pkt_size=1316&container=.ts"


def output_support() -> dict[str, str | None]:
    """{scheme: backend that can write it here, or None}, e.g. {'udp': 'ffmpeg', 'rtp': None, 'rtsp': None}."""
    gst = opencv_has_gstreamer()
    encoder = _h264_encoder() if gst else None
    return {
        "udp": "ffmpeg" if _ffmpeg_writes_udp() else (f"gstreamer ({encoder})" if encoder else None),
        "rtp": f"gstreamer ({encoder})" if encoder else None,
        "rtsp": f"gstreamer rtsp-server ({encoder})" if encoder and _has_rtsp_server() else None,
    }


INSTALL_HINT = {
    "rtp": (
        "rtp:// needs an OpenCV built with GStreamer and an H.264 encoder: on Jetson, JetPack's python3-opencv "
        "(pip uninstall opencv-python opencv-python-headless) with nvv4l2h264enc; elsewhere an OpenCV built with "
        "-D WITH_GSTREAMER=ON and gstreamer1.0-plugins-ugly (x264enc). With this OpenCV, udp://HOST:PORT "
        "(MPEG-TS over UDP, via FFmpeg) works"
    ),
    "rtsp": (
        "rtsp:// needs GStreamer's RTSP server: sudo apt install gir1.2-gst-rtsp-server-1.0 python3-gi "
        "gstreamer1.0-plugins-ugly (JetPack has the encoder), and an OpenCV built with GStreamer; "
        "or send udp:// or rtp:// to a media server that re-serves RTSP"
    ),
    "udp": "udp:// needs OpenCV with FFmpeg (pip install opencv-python-headless) or with GStreamer",
}


class NetworkOutput:
    """A sink that streams one source's annotated frames to `url` (see the module docstring). The URL is checked
    and the backend chosen when it is made, before the model loads; the encoder opens at the first frame (its size).
    """

    needs_image = True

    def __init__(self, url: str, fps: float = 30.0, source: int | None = None, bitrate_kbps: int = 2000):
        self.url = str(url)
        self.display = redact(self.url)
        self.scheme, self.host, self.port, self.path = parse_output(url)
        self.fps = fps or 30.0
        self.source = source
        self.bitrate_kbps = bitrate_kbps
        support = output_support()
        self.backend = support[self.scheme]
        if self.backend is None:
            raise MissingDependencyError(f"--output {self.display}: " + INSTALL_HINT[self.scheme])
        self.frames = 0
        self.dropped = 0
        self.error: str | None = None
        self._writer = None
        self._rtsp = None
        self._slot: np.ndarray | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"output[{self.display}]", daemon=True)
        self._thread.start()

    def handle(self, result, image) -> bool:
        if self.source is not None and result.source != self.source:
            return True
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = image
            self._cond.notify()
        return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._rtsp is not None:
            self._rtsp.stop()
            self._rtsp = None

    # ------------------------------------------------------------------ the output's thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait(0.5)
                if self._slot is None:  # stopping, nothing left to send
                    return
                image, self._slot = self._slot, None
            try:
                self._send(image)
            except Exception as exc:  # a network output must never take the loop down: note it, stop sending
                self.error = f"{exc.__class__.__name__}: {exc}"
                return

    def _send(self, image: np.ndarray) -> None:
        if self._writer is None and self._rtsp is None:
            self._open(image.shape[1], image.shape[0])
        if self._rtsp is not None:
            self._rtsp.push(image)
        else:
            self._writer.write(image)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        if self.scheme == "rtsp":
            self._rtsp = _RtspServer(
                self.host, self.port, self.path, width, height, self.fps, _h264_encoder(), self.bitrate_kbps
            )
            return
        if self.backend == "ffmpeg":
            writer = _ffmpeg_writer(self.host, self.port, self.fps, (width, height))
        else:
            writer = cv2.VideoWriter(self._gst_pipeline(), cv2.CAP_GSTREAMER, 0, self.fps, (width, height), True)
        if not writer.isOpened():
            raise RuntimeError(f"cannot open the {self.backend} writer for {self.display}")
        self._writer = writer

    def _gst_pipeline(self) -> str:
        encoder = _h264_encoder()
        enc = _encoder_chain(encoder, self.bitrate_kbps, self.fps)
        pay = "mpegtsmux ! udpsink" if self.scheme == "udp" else "rtph264pay config-interval=1 pt=96 ! udpsink"
        return f"appsrc ! videoconvert ! {enc} ! h264parse ! {pay} host={self.host} port={self.port} sync=false"


def _encoder_chain(encoder: str, bitrate_kbps: int, fps: float) -> str:
    if encoder == "nvv4l2h264enc":  # Jetson: into NVMM memory, hardware encoder in bits per second
        return (
            "video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
            f"nvv4l2h264enc insert-sps-pps=true iframeinterval={max(1, round(fps))} bitrate={bitrate_kbps * 1000}"
        )
    return (
        f"video/x-raw,format=I420 ! x264enc tune=zerolatency speed-preset=ultrafast bitrate={bitrate_kbps} "
        f"key-int-max={max(1, round(fps))}"
    )


class _RtspServer:
    """GStreamer's RTSP server on `host`:`port`, serving `path`; frames are pushed into each client's appsrc."""

    def __init__(
        self, host: str, port: int, path: str, width: int, height: int, fps: float, encoder: str, bitrate_kbps: int
    ):
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer

        Gst.init(None)
        self.Gst = Gst
        self.caps = f"video/x-raw,format=BGR,width={width},height={height},framerate={max(1, round(fps))}/1"
        self.duration = int(Gst.SECOND / max(1.0, fps))
        self.sources: list = []
        self.lock = threading.Lock()
        launch = (
            "( appsrc name=src is-live=true format=time do-timestamp=true ! videoconvert ! "
            f"{_encoder_chain(encoder, bitrate_kbps, fps)} ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        server = GstRtspServer.RTSPServer()
        server.set_address(host)
        server.set_service(str(port))
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(True)
        factory.connect("media-configure", self._configure)
        server.get_mount_points().add_factory(path, factory)
        self.context = GLib.MainContext()
        self.loop = GLib.MainLoop(self.context)
        self.source_id = server.attach(self.context)
        self.thread = threading.Thread(target=self.loop.run, name="rtsp-server", daemon=True)
        self.thread.start()

    def _configure(self, _factory, media) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        appsrc.set_property("caps", self.Gst.Caps.from_string(self.caps))  # what the pushed bytes are
        with self.lock:
            self.sources.append(appsrc)

    def push(self, image: np.ndarray) -> None:
        data = np.ascontiguousarray(image).tobytes()
        with self.lock:
            sources = list(self.sources)
        for appsrc in sources:
            buf = self.Gst.Buffer.new_wrapped(data)
            buf.duration = self.duration
            if appsrc.emit("push-buffer", buf) != self.Gst.FlowReturn.OK:
                with self.lock:
                    if appsrc in self.sources:
                        self.sources.remove(appsrc)

    def stop(self) -> None:
        self.loop.quit()
        self.thread.join(timeout=5)
