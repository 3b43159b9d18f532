"""Threaded capture: newest-frame queue with counted drops, lossless unpaced files, pacing, --loop, reconnects."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from test_camera_server import MjpegServer, OneFrameServer, numbered_frame
from test_camera_sources import write_video

from edgecnn.camera.capture import ReconnectPolicy, ThreadedCapture
from edgecnn.camera.sources import parse_source
from edgecnn.errors import SourceError


def drain(cap: ThreadedCapture, delay: float = 0.0, limit: int = 10_000):
    frames = []
    while len(frames) < limit:
        f = cap.get(timeout=0.2)
        if f is None:
            if cap.ended:
                break
            continue
        frames.append(f)
        if delay:
            time.sleep(delay)
    return frames


def test_unpaced_file_delivers_every_frame_in_order_even_to_a_slow_consumer(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=12)
    with ThreadedCapture(parse_source(str(video)), pace=False) as cap:
        frames = drain(cap, delay=0.01)
        assert cap.lossless and not cap.pace
    assert [f.index for f in frames] == list(range(12))
    assert cap.dropped == 0 and cap.frames_read == 12
    assert frames[3].t_source == pytest.approx(3 / 30)
    assert frames[0].image.shape == (48, 64, 3)


def test_paced_file_behaves_like_a_camera(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=15, fps=30)
    t0 = time.perf_counter()
    with ThreadedCapture(parse_source(str(video))) as cap:
        frames = drain(cap)
    elapsed = time.perf_counter() - t0
    assert cap.pace and cap.fps == pytest.approx(30)
    assert elapsed >= 14 / 30 * 0.95  # released at its own frame rate, not as fast as it decodes
    assert len(frames) + cap.dropped == 15


def test_slow_consumer_gets_the_newest_frame_and_drops_are_counted(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=30, fps=60)
    with ThreadedCapture(parse_source(str(video))) as cap:
        frames = drain(cap, delay=0.05)  # ~20 fps consumer on a 60 fps source
    indexes = [f.index for f in frames]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    assert cap.dropped > 0 and len(frames) + cap.dropped == 30
    assert len(frames) < 30 and indexes[-1] >= 27  # nothing stale: it caught up with the end of the source


def test_loop_restarts_a_file(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=5)
    events = []
    with ThreadedCapture(
        parse_source(str(video)), pace=False, loop=True, on_event=lambda k, m: events.append(k)
    ) as cap:
        frames = drain(cap, limit=12)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert cap.loops >= 2 and events.count("looped") == cap.loops


def test_image_folder_skips_unreadable_files_and_runs_unpaced(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 30, 3), i * 40, np.uint8))
    (tmp_path / "2b.jpg").write_bytes(b"corrupt")
    with ThreadedCapture(parse_source(str(tmp_path))) as cap:
        frames = drain(cap)
        assert not cap.pace  # a folder has no frame rate of its own
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 40, 80, 120]
    assert cap.reader is None  # released


def test_stream_reconnects_after_the_camera_comes_back():
    events = []
    with MjpegServer(fps=100) as server:
        cap = ThreadedCapture(
            parse_source(server.url()),
            reconnect=ReconnectPolicy(attempts=20, initial=0.1, max_delay=0.2),
            on_event=lambda kind, msg: events.append(kind),
        ).start()
        try:
            before = drain(cap, limit=5)
            server.stop()
            time.sleep(0.5)
            server.start()
            after = drain(cap, limit=5)
        finally:
            cap.close()
    assert len(before) == 5 and len(after) == 5
    assert "lost" in events and "reconnected" in events and cap.reconnects >= 1
    assert after[-1].index > before[-1].index  # frame numbering continues across the reconnect
    assert server.connections >= 2


def test_lost_stream_gives_up_after_bounded_attempts():
    events = []
    server = MjpegServer(fps=100).start()
    cap = ThreadedCapture(
        parse_source(server.url()),
        reconnect=ReconnectPolicy(attempts=3, initial=0.05, max_delay=0.1),
        on_event=lambda kind, msg: events.append((kind, msg)),
    ).start()
    try:
        assert drain(cap, limit=2)
        server.stop()
        with pytest.raises(SourceError, match="could not reconnect after 3 attempts"):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 20:
                cap.get(timeout=0.2)
    finally:
        cap.close()
    kinds = [k for k, _ in events]
    assert kinds.count("retry") == 3 and kinds[-1] == "gave_up"


def test_close_stops_the_thread_and_releases_the_source(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=200)
    cap = ThreadedCapture(parse_source(str(video))).start()
    assert cap.get(timeout=2) is not None
    cap.close()
    assert not cap._thread.is_alive() and cap.reader is None
    cap.close()  # twice is fine


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_source_that_connects_then_dies_at_once_uses_up_the_attempts(attempts):
    # Each reconnect succeeds (the server answers) and dies after one frame: a successful open must not restore the
    # budget, or this would reconnect forever.
    events = []
    with OneFrameServer() as server:
        cap = ThreadedCapture(
            parse_source(server.url()),
            reconnect=ReconnectPolicy(attempts=attempts, initial=0.05, max_delay=0.1),
            on_event=lambda kind, msg: events.append((kind, msg)),
        ).start()
        t0 = time.perf_counter()
        try:
            with pytest.raises(SourceError, match=f"could not reconnect after {attempts} attempt"):
                while time.perf_counter() - t0 < 30:
                    cap.get(timeout=0.2)
        finally:
            cap.close()
    assert time.perf_counter() - t0 < 15
    kinds = [k for k, _ in events]
    assert kinds.count("reconnected") == attempts and kinds[-1] == "gave_up"
    assert server.connections == attempts + 1  # the first open, then one per attempt
    assert cap.reconnects == attempts


def test_a_stream_healthy_again_wins_its_attempts_back():
    # attempts=1: each of two outages needs one attempt; the budget comes back because the stream delivered frames
    # for healthy_s between them
    events = []
    with MjpegServer(fps=100) as server:
        cap = ThreadedCapture(
            parse_source(server.url()),
            reconnect=ReconnectPolicy(attempts=1, initial=0.3, max_delay=0.3, healthy_s=0.3),
            on_event=lambda kind, msg: events.append(kind),
        ).start()
        try:
            for _ in range(2):
                assert len(drain(cap, limit=5)) == 5
                server.stop()
                server.start()  # back before the reconnect attempt (0.3 s after the loss)
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 1.2:  # reconnect after 0.3 s, then frames for longer than healthy_s
                    cap.get(timeout=0.2)
            assert len(drain(cap, limit=5)) == 5
        finally:
            cap.close()
    assert cap.reconnects == 2 and "gave_up" not in events


def test_looping_folder_counts_each_unreadable_file_once(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 30, 3), i * 40, np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"corrupt")
    with ThreadedCapture(parse_source(str(tmp_path)), pace=False, loop=True) as cap:
        frames = drain(cap, limit=7)
    assert len(frames) == 7 and cap.loops >= 3
    assert cap.skipped == 1


def test_a_requested_rate_does_not_pace_a_video_file(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=5, fps=30)
    with ThreadedCapture(parse_source(str(video), fps=60)) as cap:
        assert cap.fps == pytest.approx(30) and cap.pace
        frames = drain(cap)
    assert frames and all(f.t_source == pytest.approx(f.index / 30) for f in frames)  # the video's own clock


# ---------------------------------------------------------------- Ctrl-C while a stream is still opening


class _Interrupted(Exception):
    """What this test's SIGINT handler raises (a stand-in for KeyboardInterrupt that cannot abort pytest itself)."""


def test_a_signal_while_a_stream_opens_interrupts_start_at_once():
    import os
    import signal
    import threading

    answer = threading.Event()
    with MjpegServer(hold=answer) as server:  # accepts the connection, never answers: OpenCV blocks for 5 s

        def interrupt(*_):
            raise _Interrupted

        previous = signal.signal(signal.SIGINT, interrupt)
        try:

            def ctrl_c_once_connected():
                while server.connections < 1:
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGINT)

            threading.Thread(target=ctrl_c_once_connected, daemon=True).start()
            cap = ThreadedCapture(parse_source(server.url()))
            t0 = time.perf_counter()
            with pytest.raises(_Interrupted):
                cap.start()
                time.sleep(30)  # only reached when start() returned without seeing the signal
            assert time.perf_counter() - t0 < 4  # well before OpenCV's 5 s open timeout
        finally:
            signal.signal(signal.SIGINT, previous)
            answer.set()
    assert cap._thread is None  # never started reading


def test_cancel_while_a_stream_opens_ends_the_capture_with_no_frames():
    import threading

    answer, cancel = threading.Event(), threading.Event()
    with MjpegServer(hold=answer) as server:
        threading.Thread(target=lambda: (time.sleep(0.2), cancel.set()), daemon=True).start()
        try:
            cap = ThreadedCapture(parse_source(server.url())).start(cancel=cancel)
            assert not answer.is_set() and cap.ended and cap.get(timeout=0.1) is None
            cap.close()
        finally:
            answer.set()


# ---------------------------------------------------------------- a stream that goes silent


class SilentServer:
    """An MJPEG camera that sends `first` frames on each connection, then keeps the connection open and sends nothing
    more: a frozen encoder, not a dropped connection."""

    def __init__(self, first: int = 3):
        self.first, self.connections, self.httpd = first, 0, None
        self.quit = threading.Event()

    def start(self) -> "SilentServer":
        import http.server

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=edgecnnframe")
                self.end_headers()
                for i in range(server.first):
                    data = cv2.imencode(".jpg", numbered_frame(i))[1].tobytes()
                    self.wfile.write(
                        b"--edgecnnframe\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                        + data
                        + b"\r\n"
                    )
                    self.wfile.flush()
                server.quit.wait(60)  # silent, connection open

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"

    def stop(self) -> None:
        self.quit.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_stream_that_goes_silent_is_said_to_have_gone_silent():
    server = SilentServer().start()
    events = []
    try:
        cap = ThreadedCapture(
            parse_source(server.url()),
            reconnect=ReconnectPolicy(attempts=1, initial=0.1),
            on_event=lambda kind, message: events.append((kind, message)),
        ).start()
        with pytest.raises(SourceError) as err:
            drain(cap)
        cap.close()
    finally:
        server.stop()
    assert cap.frames_read >= 1 and cap.reconnects == 1
    assert "it went silent: no frame for" in str(err.value) and "dropping the connection" not in str(err.value)
    assert any(kind == "lost" and "silent" in message for kind, message in events)
