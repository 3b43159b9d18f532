"""The live loop as a library: results match the runner's own preprocessing, EMA/threshold/top-k, timings,
recording, JSON lines, reconnects from an HTTP camera, and flat memory over thousands of frames."""

from __future__ import annotations

import io
import json
import threading
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from edgecnn.camera.capture import ReconnectPolicy, ThreadedCapture
from edgecnn.camera.loop import STAGES, LiveOptions, Postprocessor, run_live
from edgecnn.camera.sinks import CallbackSink, JsonLinesSink, VideoRecorder, display_available, WindowSink
from edgecnn.camera.sources import parse_source
from edgecnn.camera.stats import LatencyHistogram
from edgecnn.data import iter_video_frames
from edgecnn.errors import UserInputError
from edgecnn.runtime.base import load
from test_camera_server import MjpegServer
from test_camera_sources import write_video


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run(runner, source, options=LiveOptions(), sinks=(), pace=False, **kw):
    results = []
    cap = ThreadedCapture(parse_source(str(source)), pace=pace, **kw).start()
    summary = run_live(runner, cap, options, [CallbackSink(results.append), *sinks])
    return results, summary


@pytest.mark.parametrize("pipelined", [True, False], ids=["preprocess-in-capture-thread", "preprocess-in-loop"])
def test_loop_results_equal_the_runner_on_the_same_frames(tiny_onnx, tmp_path, pipelined):
    video = write_video(tmp_path / "clip.mp4", frames=20)
    with load(tiny_onnx) as runner:
        results, summary = run(runner, video, LiveOptions(top_k=2, pipelined=pipelined))
        frames = [f for _, f in iter_video_frames(video)]
        expected = softmax(runner.infer_frames(frames))
    assert [r.index for r in results] == list(range(20))
    for r, p in zip(results, expected):
        order = np.argsort(-p)[:2]
        assert [name for name, _ in r.top] == [runner.labels[i] for i in order]
        assert [s for _, s in r.top] == pytest.approx(p[order], abs=1e-5)
        assert r.label == r.top[0][0] and r.score == r.top[0][1]
    assert summary.frames == 20 and summary.dropped == 0 and summary.end_reason == "end_of_source"
    assert set(summary.stages) == set(STAGES)
    for name in ("capture_wait", "preprocess", "inference", "postprocess", "display", "frame_age"):
        s = summary.stages[name]
        assert s["count"] == 20 and 0 <= s["p50"] <= s["p99"] <= s["max"]
    assert results[-1].frame_age >= results[-1].timings["inference"]


def test_smoothing_threshold_and_top_k():
    labels = ["a", "b", "c", "d"]
    post = Postprocessor(labels, LiveOptions(top_k=3, smoothing=0.5, threshold=0.6))
    p1 = np.array([0.7, 0.1, 0.1, 0.1], np.float32)  # already probabilities: no second softmax
    top, label, score = post(p1)
    assert label == "a" and score == pytest.approx(0.7)
    top, label, score = post(np.array([0.1, 0.7, 0.1, 0.1], np.float32))
    assert [n for n, _ in top][:2] == ["a", "b"] or [n for n, _ in top][:2] == ["b", "a"]
    assert score == pytest.approx(0.4) and label == "unknown"  # EMA 0.5·0.7 + 0.5·0.1, below 0.6
    assert len(top) == 3
    logits = np.array([2.0, 0.0, -1.0, 5.0], np.float32)
    top, label, _ = Postprocessor(labels, LiveOptions(top_k=10))(logits)
    assert len(top) == 4 and label == "d" and sum(s for _, s in top) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kw", [dict(top_k=0), dict(threshold=1.5), dict(smoothing=1.0), dict(max_frames=0)])
def test_bad_options(kw):
    with pytest.raises(UserInputError):
        LiveOptions(**kw)


def test_max_frames_and_recording_with_the_right_frame_count(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=30)
    out = tmp_path / "annotated.avi"
    with load(tiny_onnx) as runner:
        recorder = VideoRecorder(out, fps=30, inputs=[str(video)])
        results, summary = run(runner, video, LiveOptions(max_frames=12), sinks=[recorder])
    assert summary.frames == 12 and summary.end_reason == "max_frames"
    cap = cv2.VideoCapture(str(out))
    n, first = 0, None
    while True:
        ok, img = cap.read()
        if not ok:
            break
        first = img if first is None else first
        n += 1
    assert n == 12 and first.shape == (48, 64, 3)
    assert list(tmp_path.glob(".annotated*")) == []  # no temporary file left behind


def test_recorder_refuses_its_input_and_unknown_containers(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=2)
    with pytest.raises(UserInputError, match="input video"):
        VideoRecorder(video, fps=30, inputs=[str(video)])
    with pytest.raises(UserInputError, match="use one of"):
        VideoRecorder(tmp_path / "out.gif", fps=30)


def test_json_lines_every_n(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=10)
    buf = io.StringIO()
    with load(tiny_onnx) as runner:
        run(runner, video, sinks=[JsonLinesSink(buf, every=3, source="clip")])
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [d["frame"] for d in lines] == [0, 3, 6, 9]
    d = lines[0]
    assert d["type"] == "frame" and d["source"] == "clip" and len(d["top"]) == 3
    assert set(d["latency_ms"]) == {"capture_wait", "preprocess", "inference", "postprocess", "display"}
    assert {"timestamp", "frame_age_ms", "dropped", "label", "score"} <= set(d)


def test_window_sink_needs_a_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ok, why = display_available()
    assert not ok and why
    with pytest.raises(UserInputError, match="--headless"):
        WindowSink()


def test_stop_event_ends_the_loop_and_closes_everything(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=20)
    stop = threading.Event()
    with load(tiny_onnx) as runner:
        cap = ThreadedCapture(parse_source(str(video)), loop=True).start()  # paced, endless
        seen = []

        def on_result(r):
            seen.append(r)
            if len(seen) == 5:
                stop.set()

        summary = run_live(runner, cap, LiveOptions(), [CallbackSink(on_result)], stop=stop)
    assert summary.end_reason == "stopped" and summary.frames == 5
    assert cap.reader is None and not cap._thread.is_alive()


def test_loop_survives_an_http_camera_that_drops_and_returns(tiny_onnx):
    events = []
    with MjpegServer(fps=100) as server, load(tiny_onnx) as runner:
        cap = ThreadedCapture(
            parse_source(server.url()), reconnect=ReconnectPolicy(attempts=20, initial=0.1, max_delay=0.2),
            on_event=lambda kind, msg: events.append(kind),
        ).start()
        seen = []

        def on_result(r):
            seen.append(r)
            if len(seen) == 10:  # the camera goes away mid-stream, comes back 0.5 s later
                def bounce():
                    server.stop()
                    time.sleep(0.5)
                    server.start()

                threading.Thread(target=bounce, daemon=True).start()

        summary = run_live(runner, cap, LiveOptions(max_frames=30), [CallbackSink(on_result)])
    assert summary.frames == 30 and summary.end_reason == "max_frames"
    assert summary.reconnects >= 1 and "lost" in events and "reconnected" in events
    assert seen[-1].reconnects >= 1 and seen[-1].index > seen[9].index


def test_latency_histogram_percentiles_within_one_percent():
    h = LatencyHistogram()
    values = np.random.default_rng(0).lognormal(np.log(0.01), 0.5, 5000)
    for v in values:
        h.add(v)
    for q in (50, 90, 99):
        assert h.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.02)
    assert h.count == 5000 and h.mean == pytest.approx(values.mean())
    assert LatencyHistogram().percentile(50) is None


def test_memory_stays_flat_over_thousands_of_frames(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "long.mp4", frames=3000, size=(32, 32))
    with load(tiny_onnx) as runner:
        marks = {}

        def on_result(r):
            if r.processed in (500, 3000):
                marks[r.processed] = tracemalloc.get_traced_memory()[0]

        tracemalloc.start()
        try:
            cap = ThreadedCapture(parse_source(str(video)), pace=False).start()
            summary = run_live(runner, cap, LiveOptions(smoothing=0.5), [CallbackSink(on_result), JsonLinesSink(io.StringIO(), every=1000)])
        finally:
            tracemalloc.stop()
    assert summary.frames == 3000
    growth = marks[3000] - marks[500]
    assert growth < 256 * 1024, f"traced memory grew {growth / 1024:.0f} KiB between frame 500 and 3000"


def test_overlay_draws_labels_and_status_in_the_corner():
    from edgecnn.camera.loop import FrameResult
    from edgecnn.camera.overlay import annotate

    image = np.full((480, 640, 3), 200, np.uint8)
    result = FrameResult(
        index=0, timestamp=0.0, top=[("forest", 0.9), ("buildings", 0.1)], label="forest", score=0.9,
        timings={"inference": 0.004}, frame_age=0.012, dropped=2, processed=1, fps=29.5,
    )
    out = annotate(image, result)
    assert out is image and out.shape == (480, 640, 3)
    corner, rest = out[:100, :300], out[200:, 400:]
    assert (corner != 200).mean() > 0.5  # darkened box with text and bars
    assert (rest == 200).all()  # the scene itself is left alone
