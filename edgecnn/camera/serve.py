"""A browser view of a live run: annotated MJPEG per source, current numbers as JSON and as Prometheus metrics.

`LiveServer` is a sink (it gets every source's annotated frames and results) and a small HTTP server in the same
process, on the standard library's ThreadingHTTPServer (one thread per request, no dependency to install on Jetson):

  /                   the page: every source's video, its top-k, FPS, frame age, drops, and a live latency chart
  /stream/<i>.mjpg    source i's annotated video (multipart/x-mixed-replace JPEG, what <img> plays natively)
  /stats.json         the current per-source numbers (and a short latency history for the chart)
  /metrics            the same in Prometheus text format

The loop never waits for a viewer: `handle()` only keeps a reference to the newest annotated frame of each source;
an encoder thread turns it into JPEG once (whatever the number of viewers, and only while someone watches) and puts
it in every viewer's small buffer, where a newer frame pushes out the oldest one (counted as that viewer's drops).
A slow or vanished viewer therefore costs its own thread only, and a socket timeout frees that thread.
Encoding is the one real cost (a few ms per 640×480 frame), and on a busy machine it takes CPU from the loop; so the
encoder keeps to a budget (`encode_budget`, a fraction of one core: 10 % by default, 5 % of a 2-core board): it
pauses between frames in proportion to the time it spends, and the streams show fewer frames per second instead of
the loop slowing down.

With a token, every request needs it (`Authorization: Bearer <token>` or `?token=<token>`, which the page passes on
to its streams); anything else gets a bare 401 that says nothing about the cameras, not even which paths exist.
"""

from __future__ import annotations

import errno
import hmac
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from edgecnn.errors import UserInputError

BOUNDARY = "edgecnnframe"
HISTORY = 150  # latency samples kept per source for the chart (about 5 s at 30 fps)


def parse_address(text: str, flag: str = "--serve") -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' -> (host, port); the host defaults to 127.0.0.1 (this machine only): 0.0.0.0
    (every interface) only when asked for. Port 0 picks a free one."""
    text = str(text).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise UserInputError(f"{flag} {text}: expected HOST:PORT (e.g. 127.0.0.1:8080, or 0.0.0.0:8080)") from None
    if not 0 <= port <= 65535:
        raise UserInputError(f"{flag} {text}: port {port} is outside 0-65535")
    return host, port


class Viewer:
    """One MJPEG connection's buffer: at most `size` JPEG parts; a newer part pushes out the oldest (a drop)."""

    def __init__(self, source: int, size: int = 2):
        self.source = source
        self.parts: deque[bytes] = deque(maxlen=size)
        self.cond = threading.Condition()
        self.sent = 0
        self.dropped = 0
        self.closed = False

    def push(self, part: bytes) -> None:
        with self.cond:
            if len(self.parts) == self.parts.maxlen:
                self.dropped += 1
            self.parts.append(part)
            self.cond.notify()

    def pop(self, timeout: float) -> bytes | None:
        with self.cond:
            if not self.parts and not self.closed:
                self.cond.wait(timeout)
            return self.parts.popleft() if self.parts else None

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _SourceStats:
    def __init__(self, index: int, name: str):
        self.index = index
        self.name = name
        self.frame = None  # the newest FrameResult
        self.updated = 0.0  # time.time() of the newest result
        self.history: deque[tuple[float, float, float]] = deque(maxlen=HISTORY)  # (t, frame age ms, inference ms)

    def to_dict(self, now: float, with_history: bool) -> dict:
        r = self.frame
        d = {"index": self.index, "source": self.name, "frames": 0, "label": None, "score": None, "top": []}
        if r is not None:
            d.update(
                frames=r.processed,
                frame=r.index,
                label=r.label,
                score=_finite(r.score),
                top=[{"label": name, "score": _finite(score)} for name, score in r.top],
                fps=round(r.fps, 2),
                frame_age_ms=round(r.frame_age * 1e3, 2),
                inference_ms=round(r.timings.get("inference", 0.0) * 1e3, 2),
                dropped=r.dropped,
                reconnects=r.reconnects,
                batch=r.batch,
                seconds_since_result=round(now - self.updated, 2),
            )
        if with_history:
            d["history"] = [[round(t, 3), age, inf] for t, age, inf in self.history]
        return d


def _finite(x: float) -> float | None:
    return round(float(x), 6) if np.isfinite(x) else None


class LiveServer:
    """The sink and its HTTP server. Binding happens in the constructor (a port in use fails before anything else is
    loaded); `start()` begins serving; `close()` ends every stream and stops the server."""

    needs_image = True

    def __init__(
        self,
        address: str | tuple[str, int],
        names: list[str],
        token: str | None = None,
        jpeg_quality: int = 80,
        viewer_buffer: int = 2,
        socket_timeout_s: float = 10.0,
        encode_budget: float = 0.10,
    ):
        host, port = parse_address(address) if isinstance(address, str) else address
        if token is not None and not token:
            raise UserInputError("--serve-token is empty: give a token, or leave the option out")
        self.token = token
        self.names = list(names)
        self.jpeg_quality = int(jpeg_quality)
        self.viewer_buffer = viewer_buffer
        if not 0.0 < encode_budget <= 1.0:
            raise UserInputError(f"encode_budget is a fraction of one core in (0, 1], got {encode_budget}")
        self.encode_budget = encode_budget
        self.encode_s = 0.0  # CPU time spent encoding (wall time of imencode), for /stats.json
        self.stats = [_SourceStats(i, n) for i, n in enumerate(self.names)]
        self.viewers: list[Viewer] = []
        self.t_start = time.perf_counter()
        self._lock = threading.Lock()
        self._pending: dict[int, np.ndarray] = {}
        self._pending_cond = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.frames_encoded = 0
        handler = _make_handler(self, socket_timeout_s)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except socket.gaierror as exc:
            raise UserInputError(f"--serve {host}:{port}: unknown host {host!r} ({exc.strerror or exc})") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserInputError(
                    f"--serve {host}:{port}: port {port} is in use (another edgecnn live?); choose another port"
                ) from None
            if exc.errno == errno.EACCES:
                raise UserInputError(
                    f"--serve {host}:{port}: not allowed to listen on port {port} (ports below 1024 need root); "
                    "choose a port above 1024"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserInputError(f"--serve {host}:{port}: {host} is not an address of this machine") from None
            raise UserInputError(f"--serve {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "LiveServer":
        for target, name in ((self.httpd.serve_forever, "serve"), (self._encode_loop, "serve-encoder")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    # ------------------------------------------------------------------ sink side (the loop's thread)

    def handle(self, result, image) -> bool:
        """Keep the numbers and a reference to the newest annotated frame; nothing here waits for a viewer."""
        i = result.source
        if i >= len(self.stats):  # a caller that did not name every source
            with self._lock:
                self.stats.extend(_SourceStats(k, f"source {k}") for k in range(len(self.stats), i + 1))
        st = self.stats[i]
        now = time.time()
        with self._lock:
            st.frame, st.updated = result, now
            st.history.append(
                (
                    time.perf_counter() - self.t_start,
                    round(result.frame_age * 1e3, 2),
                    round(result.timings.get("inference", 0.0) * 1e3, 2),
                )
            )
        if image is not None and self._watched(i):
            with self._pending_cond:
                self._pending[i] = image
                self._pending_cond.notify()
        return True

    def close(self) -> None:
        """End every stream, stop serving and close the socket. Safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._pending_cond:
            self._pending_cond.notify_all()
        with self._lock:
            viewers = list(self.viewers)
        for v in viewers:
            v.close()
        if self._threads:
            self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)

    # ------------------------------------------------------------------ encoder thread

    def _watched(self, source: int) -> bool:
        with self._lock:
            return any(v.source == source for v in self.viewers)

    def _encode_loop(self) -> None:
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        while not self._stopping.is_set():
            with self._pending_cond:
                while not self._pending and not self._stopping.is_set():
                    self._pending_cond.wait(0.5)
                pending, self._pending = self._pending, {}
            for source, image in pending.items():
                t0 = time.perf_counter()
                ok, buf = cv2.imencode(".jpg", image, params)
                spent = time.perf_counter() - t0
                self.encode_s += spent
                if not ok:
                    continue
                data = buf.tobytes()
                part = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    + data
                    + b"\r\n"
                )
                self.frames_encoded += 1
                with self._lock:
                    viewers = [v for v in self.viewers if v.source == source]
                for v in viewers:
                    v.push(part)
                # keep to the budget: `spent` of work, then idle so that work is `encode_budget` of the time
                if self._stopping.wait(spent * (1.0 / self.encode_budget - 1.0)):
                    return

    # ------------------------------------------------------------------ what the handlers serve

    def snapshot(self, with_history: bool = True) -> dict:
        now = time.time()
        with self._lock:
            sources = [st.to_dict(now, with_history) for st in self.stats]
            viewers = [{"source": v.source, "sent": v.sent, "dropped": v.dropped} for v in self.viewers]
        return {
            "uptime_s": round(time.perf_counter() - self.t_start, 3),
            "sources": sources,
            "viewers": viewers,
            "frames_encoded": self.frames_encoded,
            "encode_s": round(self.encode_s, 3),
        }

    def metrics(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        snap = self.snapshot(with_history=False)
        series = [
            ("edgecnn_live_frames_total", "counter", "Frames classified", "frames"),
            ("edgecnn_live_dropped_frames_total", "counter", "Frames dropped because the loop was busy", "dropped"),
            ("edgecnn_live_reconnects_total", "counter", "Reconnects of the source", "reconnects"),
            ("edgecnn_live_fps", "gauge", "Frames classified per second (smoothed)", "fps"),
            ("edgecnn_live_frame_age_seconds", "gauge", "Arrival to result of the newest frame", "frame_age_ms"),
            ("edgecnn_live_inference_seconds", "gauge", "Inference time of the newest batch", "inference_ms"),
            ("edgecnn_live_top1_score", "gauge", "Top-1 probability of the newest frame", "score"),
        ]
        lines = []
        for name, kind, help_text, key in series:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for s in snap["sources"]:
                value = s.get(key)
                if value is None:
                    continue
                if key.endswith("_ms"):
                    value = value / 1e3
                labels = f'source="{s["index"]}",name="{_label(s["source"])}"'
                if key == "score":
                    labels += f',label="{_label(s["label"])}"'
                lines.append(f"{name}{{{labels}}} {value}")
        lines += [
            "# HELP edgecnn_live_viewers Open MJPEG streams",
            "# TYPE edgecnn_live_viewers gauge",
            f"edgecnn_live_viewers {len(snap['viewers'])}",
        ]
        return "\n".join(lines) + "\n"

    def authorised(self, headers, query: dict) -> bool:
        if self.token is None:
            return True
        given = None
        auth = headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif query.get("token"):
            given = query["token"][0]
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def add_viewer(self, source: int) -> Viewer:
        v = Viewer(source, self.viewer_buffer)
        with self._lock:
            self.viewers.append(v)
        return v

    def remove_viewer(self, v: Viewer) -> None:
        with self._lock:
            if v in self.viewers:
                self.viewers.remove(v)


def _label(text) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _make_handler(server: LiveServer, socket_timeout_s: float):
    from edgecnn.camera.page import render_page

    class Handler(BaseHTTPRequestHandler):
        timeout = socket_timeout_s  # a viewer that stops reading frees its thread after this long
        server_version = "edgecnn"
        sys_version = ""

        def log_message(self, format, *args):  # no access log: it would print, and carry ?token= values
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if not server.authorised(self.headers, query):
                self._send(401, b"401 unauthorized\n", "text/plain", {"WWW-Authenticate": 'Bearer realm="edgecnn"'})
                return
            path = url.path
            if path in ("/", "/index.html"):
                self._send(200, render_page(server.names).encode(), "text/html; charset=utf-8")
            elif path == "/stats.json":
                self._send(200, json.dumps(server.snapshot()).encode(), "application/json")
            elif path == "/metrics":
                self._send(200, server.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path.startswith("/stream/") and path.endswith(".mjpg"):
                index = path[len("/stream/") : -len(".mjpg")]
                if not index.isdigit() or int(index) >= len(server.names):
                    self._send(404, b"404 no such source\n", "text/plain")
                    return
                self._stream(int(index))
            else:
                self._send(404, b"404 not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client went away
                pass

        def _stream(self, index: int) -> None:
            viewer = server.add_viewer(index)
            try:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                while not server._stopping.is_set():
                    part = viewer.pop(timeout=0.5)
                    if part is None:
                        continue
                    self.wfile.write(part)
                    self.wfile.flush()
                    viewer.sent += 1
            except OSError:  # the viewer disconnected (mid-frame too) or stopped reading for `timeout` s
                pass
            finally:
                server.remove_viewer(viewer)
                self.close_connection = True

    return Handler
