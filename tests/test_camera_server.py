"""An MJPEG-over-HTTP camera served on 127.0.0.1 (what cheap IP cameras and ESP32-CAMs speak), used by the live
loop and calibrate-capture tests; here, the tests that OpenCV reads it as a `http://` source."""

from __future__ import annotations

import http.server
import threading
import time

import cv2
import numpy as np
import pytest

from edgecnn.camera.sources import open_reader, parse_source


def numbered_frame(i: int, size=(64, 48)) -> np.ndarray:
    """A frame whose mean grey level encodes i (mod 50): readable back through JPEG within ±2 levels."""
    w, h = size
    img = np.full((h, w, 3), 20 + 4 * (i % 50), dtype=np.uint8)
    img[h // 2 :, : w // 2, 2] = 255  # some structure so a classifier sees more than a flat field
    return img


class MjpegServer:
    """multipart/x-mixed-replace JPEG stream at `fps`; stop() drops every open connection, restart() comes back on
    the same port — a camera that loses power or network and returns. With `hold`, each request waits until that
    event is set before answering: a camera that is slow to open (the client is stuck opening it meanwhile)."""

    def __init__(self, fps: float = 60.0, size=(64, 48), port: int = 0, hold: threading.Event | None = None):
        self.fps, self.size, self.port, self.hold = fps, size, port, hold
        self.sent = 0
        self.connections = 0
        self.httpd = None
        self.thread = None

    def start(self) -> "MjpegServer":
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.connections += 1
                if server.hold is not None:
                    server.hold.wait(30)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=edgecnnframe")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                stopping = self.server.stopping
                try:
                    while not stopping.is_set():
                        ok, buf = cv2.imencode(".jpg", numbered_frame(server.sent, server.size))
                        data = buf.tobytes()
                        self.wfile.write(
                            b"--edgecnnframe\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                            + data
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        server.sent += 1
                        stopping.wait(1.0 / server.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = True
        self.httpd.stopping = threading.Event()
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/stream.mjpg"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.stopping.set()
            self.httpd.shutdown()
            self.httpd.server_close()  # joins the handler threads: every client sees its stream end
            self.thread.join(5)
            self.httpd = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class OneFrameServer:
    """An HTTP camera that answers every request with one JPEG (image/jpeg, Content-Length) and closes: OpenCV opens
    it as a stream, reads one frame, then sees the end — a source that connects and dies at once, every time."""

    def __init__(self, size=(64, 48)):
        self.size = size
        self.connections = 0
        self.httpd = None

    def start(self) -> "OneFrameServer":
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.connections += 1
                data = cv2.imencode(".jpg", numbered_frame(server.connections, server.size))[1].tobytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/snapshot.jpg"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def mjpeg_server():
    with MjpegServer() as server:
        yield server


def test_http_mjpeg_stream_is_read_as_a_live_source(mjpeg_server):
    spec = parse_source(mjpeg_server.url())
    assert spec.kind == "stream" and spec.live
    reader = open_reader(spec)
    try:
        frames = [reader.read() for _ in range(5)]
    finally:
        reader.release()
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames)
    levels = [float(f[:24].mean()) for f in frames]  # top half: the encoded grey level
    assert levels == sorted(levels) and levels[-1] > levels[0]  # consecutive frames of the stream, in order


def test_stream_end_is_seen_when_the_server_stops(mjpeg_server):
    reader = open_reader(parse_source(mjpeg_server.url()))
    try:
        assert reader.read() is not None
        mjpeg_server.stop()
        t0 = time.perf_counter()
        while reader.read() is not None and time.perf_counter() - t0 < 10:
            pass
        assert reader.read() is None  # EOF, not a hang: the loop can reconnect
    finally:
        reader.release()


def test_one_frame_server_gives_one_frame_per_connection():
    with OneFrameServer() as server:
        reader = open_reader(parse_source(server.url()))
        try:
            assert reader.read() is not None
            assert reader.read() is None  # and then the source is gone
        finally:
            reader.release()
    assert server.connections == 1
