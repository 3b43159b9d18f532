"""`edgecnn live --serve`: the browser view over real HTTP on 127.0.0.1, fed by a real live loop on video files."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_video
from typer.testing import CliRunner

from edgecnn.camera.loop import LiveOptions, run_live
from edgecnn.camera.serve import LiveServer, parse_address
from edgecnn.camera.session import start_captures
from edgecnn.camera.sources import parse_source
from edgecnn.cli.main import app
from edgecnn.errors import UserInputError
from edgecnn.runtime.base import load

ROOT = Path(__file__).resolve().parents[1]


def get(url, headers=None, timeout=10):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def read_mjpeg_parts(url, count, timeout=20, headers=None):
    """The first `count` JPEG images of an MJPEG stream, decoded."""
    req = urllib.request.Request(url, headers=headers or {})
    images = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        buf = b""
        while len(images) < count:
            chunk = r.read1(65536)
            assert chunk, "stream ended early"
            buf += chunk
            while True:
                m = re.search(rb"Content-Length: (\d+)\r\n\r\n", buf)
                if not m or len(buf) < m.end() + int(m.group(1)):
                    break
                data = buf[m.end() : m.end() + int(m.group(1))]
                buf = buf[m.end() + int(m.group(1)) :]
                images.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    return images


class LiveRun:
    """A live loop on looping paced video files with a LiveServer sink, in a background thread."""

    def __init__(self, model, videos, token=None, **server_kw):
        self.runner = load(model)
        specs = [parse_source(str(v)) for v in videos]
        self.server = LiveServer("127.0.0.1:0", [s.display for s in specs], token=token, **server_kw)
        self.captures = start_captures(specs, pace=True, loop=True)
        self.stop = threading.Event()
        self.summary = None
        self.server.start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.summary = run_live(self.runner, self.captures, LiveOptions(), [self.server], stop=self.stop)

    def close(self):
        self.stop.set()
        self.thread.join(30)
        self.runner.close()
        assert not self.thread.is_alive()


@pytest.fixture
def videos(tmp_path):
    return [write_video(tmp_path / f"cam{i}.mp4", frames=60, size=(160, 120)) for i in range(2)]


@pytest.fixture
def live_run(tiny_onnx, videos):
    run = LiveRun(tiny_onnx, videos)
    yield run
    run.close()


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_page_streams_stats_and_metrics(live_run):
    url = live_run.server.url
    status, body, headers = get(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "stream/" in page and "<canvas" in page and "cam0.mp4" in page and "cam1.mp4" in page
    assert "http://" not in page.replace(url, "") and "https://" not in page  # nothing fetched from elsewhere

    first = wait_for(lambda: all(s["frames"] for s in json.loads(get(url + "stats.json")[1])["sources"]) and True)
    assert first
    a = json.loads(get(url + "stats.json")[1])
    time.sleep(0.5)
    b = json.loads(get(url + "stats.json")[1])
    for sa, sb in zip(a["sources"], b["sources"]):
        assert sb["frames"] > sa["frames"] and sb["fps"] > 0 and sb["top"] and sb["history"]
        assert set(sb) >= {"fps", "frame_age_ms", "dropped", "reconnects", "label", "score", "inference_ms"}
    assert [s["index"] for s in b["sources"]] == [0, 1]

    status, body, headers = get(url + "metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "# TYPE edgecnn_live_frames_total counter" in text
    assert re.search(r'edgecnn_live_frames_total\{source="1",name="[^"]*cam1.mp4"\} \d+', text)
    assert re.search(r"edgecnn_live_frame_age_seconds\{[^}]*\} [0-9.e-]+", text)

    for i in (0, 1):
        images = read_mjpeg_parts(url + f"stream/{i}.mjpg", 3)
        assert all(img is not None and img.shape == (120, 160, 3) for img in images)
    assert get(url + "stream/2.mjpg")[0] == 404
    assert get(url + "nothing")[0] == 404


def test_token_required_and_nothing_leaks(tiny_onnx, videos):
    run = LiveRun(tiny_onnx, videos, token="s3cret-token")
    try:
        url = run.server.url
        for path in ("", "stats.json", "metrics", "stream/0.mjpg", "nothing"):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                status, body, h = get(url + path, headers)
                assert status == 401, path
                assert b"cam0" not in body and b"edgecnn_live" not in body and b"s3cret" not in body
                assert h.get("WWW-Authenticate", "").startswith("Bearer")
            assert get(url + path + "?token=wrong")[0] == 401
        assert get(url + "stats.json", {"Authorization": "Bearer s3cret-token"})[0] == 200
        status, body, _ = get(url + "?token=s3cret-token")
        assert status == 200 and b"token" in body  # the page passes ?token= on to its streams and stats
        assert read_mjpeg_parts(url + "stream/1.mjpg?token=s3cret-token", 2)
    finally:
        run.close()


def noise_video(path, frames=30, size=(320, 240)):
    """Frames of random noise: each JPEG is large (~60 KB), so a viewer that does not read fills its socket soon."""
    rng = np.random.default_rng(0)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    writer.release()
    return path


def test_slow_and_vanishing_viewers_never_slow_the_loop(tiny_onnx, tmp_path):
    live_run = LiveRun(tiny_onnx, [noise_video(tmp_path / f"noise{i}.avi") for i in range(2)])
    try:
        _slow_and_vanishing(live_run)
    finally:
        live_run.close()


def _frames(url) -> int:
    return sum(s["frames"] for s in json.loads(get(url + "stats.json")[1])["sources"])


def _slow_and_vanishing(live_run):
    url = live_run.server.url
    host, port = live_run.server.host, live_run.server.port
    wait_for(lambda: _frames(url) > 0)
    before = _frames(url)
    time.sleep(2.0)
    rate_alone = (_frames(url) - before) / 2.0  # the same machine, the same moment: the comparison for below
    # a viewer that never reads: its kernel buffers fill, then its own small buffer drops frames
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((host, port))
    slow.sendall(b"GET /stream/0.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    # a viewer that disconnects in the middle of a frame
    quitter = socket.create_connection((host, port))
    quitter.sendall(b"GET /stream/1.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"Content-Length" not in got:
        got += quitter.recv(300)
    quitter.close()
    wait_for(lambda: len(live_run.server.viewers) == 1)  # the quitter is gone, the slow one stays
    before = _frames(url)
    time.sleep(2.0)
    stats = json.loads(get(url + "stats.json")[1])
    rate = (sum(s["frames"] for s in stats["sources"]) - before) / 2.0
    # a viewer blocking the loop would stop it dead; the machine's own noise moves both numbers a little
    assert rate > 0.6 * rate_alone, f"{rate:.1f} FPS with a stalled viewer, {rate_alone:.1f} without"
    slow_viewer = [v for v in stats["viewers"] if v["source"] == 0][0]
    assert slow_viewer["dropped"] > 0  # frames dropped for it, buffer bounded
    assert read_mjpeg_parts(url + "stream/1.mjpg", 2)  # others still served
    slow.close()


def test_clean_shutdown_ends_open_streams(tiny_onnx, videos):
    run = LiveRun(tiny_onnx, videos)
    req = urllib.request.urlopen(run.server.url + "stream/0.mjpg", timeout=20)
    req.read1(100)
    run.close()  # the loop ends and closes the server: the open stream ends, the port is free again
    deadline = time.monotonic() + 10
    while req.read1(65536) and time.monotonic() < deadline:
        pass
    assert time.monotonic() < deadline
    req.close()
    with socket.socket() as s:  # nobody listens on the port any more (connections in TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((run.server.host, run.server.port))
        s.listen()


@pytest.mark.parametrize(
    "text, expected",
    [("8080", ("127.0.0.1", 8080)), (":8080", ("127.0.0.1", 8080)), ("0.0.0.0:81", ("0.0.0.0", 81))],
)
def test_serve_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["localhost", "1.2.3.4:99999", "host:port"])
def test_bad_serve_address(text):
    with pytest.raises(UserInputError, match="--serve"):
        parse_address(text)


def test_port_in_use_is_one_line_exit_2_before_the_model_loads(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    video = write_video(tmp_path / "clip.mp4", frames=5)
    try:
        result = CliRunner().invoke(
            app,
            ["live", str(tmp_path / "not-a-model.onnx"), "--source", str(video), "--headless", "--serve", f"{port}"],
        )
    finally:
        busy.close()
    assert result.exit_code == 2, result.output
    assert f"port {port} is in use" in result.stderr and "not-a-model" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_with_viewers_attached_finalises_recordings_and_exits_130(tiny_onnx, tmp_path, videos):
    out = tmp_path / "rec-{i}.avi"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecnn", "live", str(tiny_onnx), "--source", str(videos[0]), "--source",
         str(videos[1]), "--loop", "--headless", "--serve", "127.0.0.1:0", "--record", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"serving (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "no serving line"
        viewers = [urllib.request.urlopen(url + f"stream/{i}.mjpg", timeout=20) for i in (0, 1)]
        for v in viewers:
            v.read1(1000)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        for v in viewers:  # the server closed their streams
            while v.read1(65536):
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stderr.read()
    assert proc.returncode == 130, rest
    for i in (0, 1):
        path = tmp_path / f"rec-{i}.avi"
        cap = cv2.VideoCapture(str(path))
        assert cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0
        cap.release()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary recording left


# ---------------------------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHECK_JS = """
(() => {
  const imgs = [...document.querySelectorAll('img[id^=video]')];
  return JSON.stringify({
    images: imgs.map(i => [i.naturalWidth, i.naturalHeight, i.complete]),
    frames: [...document.querySelectorAll('.frames')].map(e => e.textContent),
    fps: [...document.querySelectorAll('.fps')].map(e => e.textContent),
    top: [...document.querySelectorAll('.top li')].length,
    status: (document.getElementById('status') || {}).textContent,
  });
})()
"""


def test_headless_chromium_plays_every_stream_and_the_numbers_update(live_run, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium): the browser test needs it")
    from browser import ChromiumPage

    with ChromiumPage(chromium, live_run.server.url, tmp_path / "profile") as page:
        first = wait_for(lambda: _ready(page.evaluate(CHECK_JS)), timeout=60)
        time.sleep(1.5)
        second = json.loads(page.evaluate(CHECK_JS))
        shot = page.screenshot()
    assert all(w == 160 and h == 120 for w, h, _ in first["images"]) and len(first["images"]) == 2
    assert [int(x) for x in second["frames"]] > [int(x) for x in first["frames"]]
    assert all(int(b) > int(a) for a, b in zip(first["frames"], second["frames"]))
    assert second["top"] >= 2 and "up" in second["status"]
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("EDGECNN_SCREENSHOT")
    if target:  # docs/img/live-serve.png is made this way
        Path(target).write_bytes(shot)


def _ready(raw):
    if raw is None:  # the page is still loading (the script threw, or it is not there yet)
        return None
    d = json.loads(raw)
    if len(d["images"]) == 2 and all(w > 0 for w, _, _ in d["images"]) and all(f.isdigit() for f in d["frames"]):
        return d
    return None
