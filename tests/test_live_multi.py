"""Several sources through one model: batching, per-source results and summaries, a source that is down among good
ones, bad input, and network video outputs (FFmpeg through OpenCV to a local UDP port, read back by OpenCV)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import build_tiny_onnx, write_video
from test_camera_server import MjpegServer
from typer.testing import CliRunner

from edgecnn.camera.capture import ReconnectPolicy
from edgecnn.camera.loop import LiveOptions, run_live
from edgecnn.camera.netout import NetworkOutput, output_support, parse_output
from edgecnn.camera.session import check_distinct, record_paths, start_captures
from edgecnn.camera.sinks import CallbackSink
from edgecnn.camera.sources import parse_source
from edgecnn.cli.main import app
from edgecnn.errors import MissingDependencyError, UserInputError
from edgecnn.preprocess import preprocess
from edgecnn.runtime.base import load

ROOT = Path(__file__).resolve().parents[1]


def decoded_frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("batch", [None, 2], ids=["dynamic-batch", "fixed-batch-2"])
def test_every_frame_of_three_files_is_classified_as_the_runner_would_in_batches(tmp_path, batch):
    model = build_tiny_onnx(tmp_path / "m.onnx", batch=batch)
    videos = [write_video(tmp_path / f"v{i}.mp4", frames=12 + 3 * i) for i in range(3)]
    results = []
    with load(model) as runner:
        caps = start_captures([parse_source(str(v)) for v in videos], pace=False)
        summary = run_live(runner, caps, LiveOptions(top_k=3), [CallbackSink(results.append)])
        for i, video in enumerate(videos):
            mine = [r for r in results if r.source == i]
            frames = decoded_frames(video)
            assert [r.index for r in mine] == list(range(len(frames)))  # unpaced: nothing dropped, in order
            expected = runner.infer(preprocess(frames, runner.preprocess_config))
            for r, logits in zip(mine, expected):
                p = np.exp(logits - logits.max())
                p /= p.sum()
                assert r.label == runner.labels[int(p.argmax())] and r.score == pytest.approx(float(p.max()), abs=1e-5)
                assert r.source_name == str(video) and r.processed == r.index + 1
    assert summary.end_reason == "end_of_source" and summary.frames == 12 + 15 + 18
    assert [s["frames"] for s in summary.sources] == [12, 15, 18]
    assert all(s["end_reason"] == "end_of_source" and s["dropped"] == 0 for s in summary.sources)
    assert 2 <= summary.batch["max"] <= 3 and summary.batch["count"] < 45  # frames that were ready ran together
    assert summary.stages["frame_age"]["count"] == 45 and summary.stages["inference"]["count"] == summary.batch["count"]


def test_paced_sources_keep_their_own_rate_and_counts(tiny_onnx, tmp_path):
    videos = [write_video(tmp_path / f"v{i}.mp4", frames=30) for i in range(2)]
    with load(tiny_onnx) as runner:
        caps = start_captures([parse_source(str(v)) for v in videos], pace=True)
        summary = run_live(runner, caps, LiveOptions())
    d = summary.to_dict()
    assert [s["index"] for s in d["sources"]] == [0, 1] and d["frames"] == sum(s["frames"] for s in d["sources"])
    for s in d["sources"]:
        assert s["frames"] + s["dropped"] == 30 and s["frames"] >= 27
        assert 25 <= s["fps"] <= 35  # each at its own 30 fps, not 60
    assert json.dumps(d)


def test_max_frames_counts_all_sources_together(tiny_onnx, tmp_path):
    videos = [write_video(tmp_path / f"v{i}.mp4", frames=20) for i in range(2)]
    with load(tiny_onnx) as runner:
        caps = start_captures([parse_source(str(v)) for v in videos], pace=False)
        summary = run_live(runner, caps, LiveOptions(max_frames=7))
    assert summary.frames == 7 and summary.end_reason == "max_frames"


def test_a_source_that_is_down_at_start_is_retried_while_the_others_run(tiny_onnx, tmp_path):
    """The camera is unreachable when the run starts, then comes up: frames from the file meanwhile, then from it."""
    video = write_video(tmp_path / "clip.mp4", frames=300)
    port = free_port()
    events = []
    server = MjpegServer(fps=30, port=port)
    seen = {0: 0, 1: 0}

    def on_result(r):
        seen[r.source] += 1
        return seen[1] < 10  # stop once the late camera has delivered

    with load(tiny_onnx) as runner:
        caps = start_captures(
            [parse_source(str(video)), parse_source(f"http://127.0.0.1:{port}/cam.mjpg")],
            pace=True,
            reconnect=ReconnectPolicy(attempts=6, initial=0.3, max_delay=1.0),
            on_event=lambda i, kind, msg: events.append((i, kind)),
        )
        threading.Timer(1.0, server.start).start()
        try:
            summary = run_live(runner, caps, LiveOptions(), [CallbackSink(on_result)])
        finally:
            server.stop()
    assert (1, "unreachable") in events and (1, "reconnected") in events
    assert seen[0] >= 20 and seen[1] == 10 and summary.end_reason == "quit"
    assert summary.sources[1]["reconnects"] == 1


def test_an_unreachable_source_among_good_ones_is_reported_and_the_run_exits_6(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=20)
    port = free_port()  # nothing listens there
    result = CliRunner().invoke(
        app,
        ["live", str(tiny_onnx), "-s", str(video), "-s", f"http://user:pw@127.0.0.1:{port}/x.mjpg", "--headless",
         "--json", "--no-pace", "--reconnect-attempts", "1"],
    )  # fmt: skip
    assert result.exit_code == 6, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    frames, summary = lines[:-1], lines[-1]
    assert len(frames) == 20 and {d["source_index"] for d in frames} == {0}
    assert summary["sources"][0]["frames"] == 20 and summary["sources"][0]["end_reason"] == "end_of_source"
    assert summary["sources"][1]["end_reason"] == "source_lost" and summary["sources"][1]["frames"] == 0
    assert "Lost 1 of 2 sources" in result.stderr and "[1]" in result.stderr
    assert "pw" not in result.output and "***@127.0.0.1" in result.stderr


def test_json_lines_name_each_source_and_the_summary_has_per_source_numbers(tiny_onnx, tmp_path):
    videos = [write_video(tmp_path / f"v{i}.mp4", frames=6) for i in range(2)]
    result = CliRunner().invoke(
        app, ["live", str(tiny_onnx), "-s", str(videos[0]), "-s", str(videos[1]), "--headless", "--json", "--no-pace"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    frames, summary = lines[:-1], lines[-1]
    for i in (0, 1):
        mine = [d for d in frames if d["source_index"] == i]
        assert [d["frame"] for d in mine] == list(range(6)) and all(d["source"] == str(videos[i]) for d in mine)
    assert summary["frames"] == 12 and [s["frames"] for s in summary["sources"]] == [6, 6]
    # how many frames were ready together depends on the scheduler (batching itself: the library test above)
    assert 1 <= summary["batch"]["max"] <= 2 and summary["batch"]["count"] >= 6 and "stages_ms" in summary
    assert "[0]" in result.stderr and "[1]" in result.stderr  # the per-source table


def test_one_source_keeps_its_output(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=4)
    result = CliRunner().invoke(app, ["live", str(tiny_onnx), "-s", str(video), "--headless", "--json", "--no-pace"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(d["source"] == str(video) and d["source_index"] == 0 for d in lines[:-1])
    assert lines[-1]["source"] == str(video) and lines[-1]["frames_expected"] == 4


def test_record_one_file_per_source(tiny_onnx, tmp_path):
    videos = [write_video(tmp_path / f"v{i}.mp4", frames=8 + i) for i in range(2)]
    out = tmp_path / "out-{i}.avi"
    result = CliRunner().invoke(
        app,
        ["live", str(tiny_onnx), "-s", str(videos[0]), "-s", str(videos[1]), "--headless", "--no-pace", "--json",
         "--record", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert [r["path"] for r in summary["recordings"]] == [str(tmp_path / "out-0.avi"), str(tmp_path / "out-1.avi")]
    assert [len(decoded_frames(tmp_path / f"out-{i}.avi")) for i in (0, 1)] == [8, 9]


@pytest.mark.parametrize(
    "args, names",
    [
        (["-s", "{v}", "-s", "{v}"], "given twice"),
        (["-s", "{v}", "-s", "{link}"], "given twice"),  # the same file under another name
        (["-s", "{v}", "-s", "{w}", "--record", "{tmp}/out.mp4"], "{i}"),
        (["-s", "{v}", "-s", "{w}", "--output", "udp://127.0.0.1:5000"], "one per --source"),
        (["-s", "{v}", "--output", "tcp://127.0.0.1:5000"], "udp://"),
        (["-s", "{v}", "--output", "udp://127.0.0.1"], "port"),
    ],
)
def test_bad_multi_source_input_is_refused_before_the_model_loads(tmp_path, args, names):
    v = write_video(tmp_path / "v.mp4", frames=3)
    w = write_video(tmp_path / "w.mp4", frames=3)
    (tmp_path / "link.mp4").symlink_to(v)
    fill = {"v": str(v), "w": str(w), "link": str(tmp_path / "link.mp4"), "tmp": str(tmp_path)}
    argv = ["live", str(tmp_path / "no-model.onnx"), "--headless", *(a.format(**fill) for a in args)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert names in result.stderr and "no-model" not in result.stderr
    assert not list(tmp_path.glob("out*"))


def test_record_paths_and_distinct_sources():
    assert [p.name for p in record_paths("x/out-{i}.mp4", 3)] == ["out-0.mp4", "out-1.mp4", "out-2.mp4"]
    assert [p.name for p in record_paths("out.mp4", 1)] == ["out.mp4"]
    check_distinct([parse_source("0"), parse_source("1")])
    with pytest.raises(UserInputError, match="twice"):
        check_distinct([parse_source("0"), parse_source("/dev/video0")])


# ---------------------------------------------------------------------------------------------- network outputs


def test_output_urls():
    assert parse_output("udp://10.0.0.2:5000") == ("udp", "10.0.0.2", 5000, "/live")
    assert parse_output("rtsp://0.0.0.0:8554/cam") == ("rtsp", "0.0.0.0", 8554, "/cam")
    with pytest.raises(UserInputError, match="udp://"):
        parse_output("srt://host:1")


def test_missing_backend_names_what_to_install():
    support = output_support()
    missing = [scheme for scheme, backend in support.items() if backend is None]
    if not missing:
        pytest.skip("this machine can do every output")
    with pytest.raises(MissingDependencyError, match="GStreamer|gstreamer"):
        NetworkOutput(f"{missing[-1]}://127.0.0.1:5000/x")


def test_udp_output_is_received_and_decoded_by_opencv(tiny_onnx, tmp_path):
    if output_support()["udp"] != "ffmpeg":
        pytest.skip("OpenCV here has no FFmpeg writer for udp://")
    port = free_port()
    video = write_video(tmp_path / "clip.mp4", frames=150, size=(160, 120))
    received = []

    def receive():  # (no os.environ change here: setenv while another thread's C code reads the environment crashes)
        cap = cv2.VideoCapture(f"udp://127.0.0.1:{port}?timeout=5000000", cv2.CAP_FFMPEG)
        t0 = time.monotonic()
        while cap.isOpened() and time.monotonic() - t0 < 15 and len(received) < 20:
            ok, img = cap.read()
            if not ok:
                break
            received.append(img)
        cap.release()

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    time.sleep(0.3)
    result = subprocess.run(  # its own process, as in use (in this one, OpenCV's reader never opened)
        [sys.executable, "-m", "edgecnn", "live", str(tiny_onnx), "-s", str(video), "--headless", "--json",
         "--output", f"udp://127.0.0.1:{port}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    reader.join(30)
    assert not reader.is_alive()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["outputs"][0]["backend"] == "ffmpeg" and summary["outputs"][0]["frames"] > 100
    assert len(received) >= 10 and received[-1].shape == (120, 160, 3)
    # the annotated video: the overlay's darkened corner differs from the source frame
    assert received[-1][:10, :40].mean() < received[-1][-20:, -40:].mean() + 80


SIGNAL_SCRIPT = """
import os, signal, time
from edgecnn.camera.session import StopOnSignals

def kill(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)

before = signal.getsignal(signal.SIGINT)
notes = []
with StopOnSignals(protect=lambda: True, on_note=notes.append) as s:
    kill(signal.SIGINT)
    assert s.stop.is_set() and s.signalled == signal.SIGINT
    kill(signal.SIGINT)
    kill(signal.SIGINT)
assert len(notes) == 1 and "recording" in notes[0], notes
assert signal.getsignal(signal.SIGINT) is before
try:
    with StopOnSignals() as s:
        kill(signal.SIGTERM)
        assert s.stop.is_set() and s.signalled == signal.SIGTERM
        kill(signal.SIGINT)
    raise AssertionError("a second Ctrl-C did not interrupt")
except KeyboardInterrupt:
    pass
assert signal.getsignal(signal.SIGINT) is before
with StopOnSignals(ignore_after=True) as s:
    kill(signal.SIGINT)
assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
print("ok")
"""


def test_stop_on_signals_policy():
    """First Ctrl-C stops; a second one is ignored (and said once) while a recording is finishing, else it
    interrupts; afterwards the previous handler is back (or Ctrl-C ignored, with ignore_after). In a process of its
    own: signals sent to the test runner would also land in the threads earlier tests left behind."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_gstreamer_encoder_chains():
    """The pipelines are plain strings (GStreamer itself is not installed here): Jetson's hardware encoder goes
    through NVMM memory, x264 is tuned for latency; both key-frame once a second."""
    from edgecnn.camera.netout import _encoder_chain

    jetson = _encoder_chain("nvv4l2h264enc", 2000, 30.0)
    assert "nvvidconv" in jetson and "bitrate=2000000" in jetson and "iframeinterval=30" in jetson
    x264 = _encoder_chain("x264enc", 2000, 25.0)
    assert "tune=zerolatency" in x264 and "bitrate=2000" in x264 and "key-int-max=25" in x264
