"""The live loop as a library: results match the runner's own preprocessing, EMA/threshold/top-k, timings,
recording, JSON lines, reconnects from an HTTP camera, and flat memory over thousands of frames."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
import tracemalloc

import cv2
import numpy as np
import pytest
from test_camera_server import MjpegServer
from test_camera_sources import write_video

from edgecnn.camera.capture import ReconnectPolicy, ThreadedCapture
from edgecnn.camera.loop import STAGES, LiveOptions, Postprocessor, run_live
from edgecnn.camera.sinks import (
    CallbackSink,
    JsonLinesSink,
    RecordingError,
    VideoRecorder,
    WindowSink,
    display_available,
)
from edgecnn.camera.sources import parse_source
from edgecnn.camera.stats import LatencyHistogram
from edgecnn.data import iter_video_frames
from edgecnn.errors import StorageError, UserInputError
from edgecnn.runtime.base import load


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
            parse_source(server.url()),
            reconnect=ReconnectPolicy(attempts=20, initial=0.1, max_delay=0.2),
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
            summary = run_live(
                runner,
                cap,
                LiveOptions(smoothing=0.5),
                [CallbackSink(on_result), JsonLinesSink(io.StringIO(), every=1000)],
            )
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
        index=0,
        timestamp=0.0,
        top=[("forest", 0.9), ("buildings", 0.1)],
        label="forest",
        score=0.9,
        timings={"inference": 0.004},
        frame_age=0.012,
        dropped=2,
        processed=1,
        fps=29.5,
    )
    out = annotate(image, result)
    assert out is image and out.shape == (480, 640, 3)
    corner, rest = out[:100, :300], out[200:, 400:]
    assert (corner != 200).mean() > 0.5  # darkened box with text and bars
    assert (rest == 200).all()  # the scene itself is left alone


# ---------------------------------------------------------------- recording: checked up front, verified at the end


def write_noise_video(path, frames=30, size=(320, 240), fps=30.0):
    """A real video of random frames: MJPEG re-encodes each to ~50 KB, so a few fill the small disk."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("where", ["under-a-file", "proc", "sys", "folder"])
def test_recorder_refuses_an_unwritable_path_up_front(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    path = {
        "under-a-file": tmp_path / "afile" / "out.mp4",
        "proc": "/proc/out.mp4",
        "sys": "/sys/out.avi",
        "folder": tmp_path / "rec.mp4",
    }[where]
    if where == "folder":
        (tmp_path / "rec.mp4").mkdir()
    if where in ("proc", "sys") and not os.path.isdir(str(path).rsplit("/", 1)[0]):
        pytest.skip(f"no {path} parent folder on this system")
    with pytest.raises((UserInputError, StorageError)) as err:  # /sys: permission denied, the environment's refusal
        VideoRecorder(path, fps=30)
    assert "--record" in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob(".*"))  # the writability probe left nothing behind


def test_recorder_refuses_a_read_only_folder(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(StorageError, match="Cannot write --record .*out.avi: read-only file system"):
        VideoRecorder(small_disk / "out.avi", fps=30)


def test_recorder_refuses_an_existing_file_unless_overwrite(tmp_path):
    existing = write_video(tmp_path / "old.avi", frames=2, fourcc="MJPG")
    with pytest.raises(UserInputError, match="already exists.*--force"):
        VideoRecorder(existing, fps=30)
    os.symlink(tmp_path / "nowhere.avi", tmp_path / "dangling.avi")  # a link is a file there too
    with pytest.raises(UserInputError, match="already exists"):
        VideoRecorder(tmp_path / "dangling.avi", fps=30)
    assert VideoRecorder(existing, fps=30, overwrite=True).path == existing


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), 1e300, -3])
def test_recorder_refuses_a_frame_rate_opencv_cannot_write(tmp_path, fps):
    with pytest.raises(UserInputError, match="--fps must be a frame rate"):
        VideoRecorder(tmp_path / "out.avi", fps=fps)
    recorder = VideoRecorder(tmp_path / "out.avi", fps=None)
    with pytest.raises(UserInputError, match="--fps must be a frame rate"):
        recorder.fps = fps  # the rate the CLI sets once the source is open is checked too
    assert recorder.fps == 30.0


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".mkv"])
def test_recording_cut_short_by_a_full_disk_is_an_error_and_replaces_nothing(tiny_onnx, tmp_path, small_disk, suffix):
    video = write_noise_video(tmp_path / "noise.avi")
    out = small_disk / f"out{suffix}"
    out.write_bytes(b"previous recording")  # --force: replaced only by a complete new recording
    results = []
    with load(tiny_onnx) as runner:
        recorder = VideoRecorder(out, fps=30, overwrite=True)
        cap = ThreadedCapture(parse_source(str(video)), pace=False).start()
        with pytest.raises(RecordingError) as err:
            run_live(runner, cap, LiveOptions(), [CallbackSink(results.append), recorder])
    msg = str(err.value)
    assert (
        msg.startswith(f"Cannot write {out}: the video is unusable") and "disk full" in msg and "left as it was" in msg
    )
    assert err.value.exit_code == 74  # the one StorageError exit code
    assert err.value.summary.frames == 30 == len(results)  # what was classified is still reported
    assert err.value.summary.end_reason == "end_of_source"
    assert out.read_bytes() == b"previous recording"
    assert sorted(p.name for p in small_disk.iterdir()) == [out.name]  # the temporary file is gone


def test_complete_recording_is_verified_and_moved_into_place(tiny_onnx, tmp_path):
    video = write_noise_video(tmp_path / "noise.avi", frames=8)
    out = tmp_path / "out.mkv"
    with load(tiny_onnx) as runner:
        recorder = VideoRecorder(out, fps=30)
        run(runner, video, sinks=[recorder])
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 8 and cap.read()[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.avi", "out.mkv", "tiny.onnx"]


# ---------------------------------------------------------------- recording at the rate frames really arrive


def _decoded(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            return frames, cap.get(cv2.CAP_PROP_FPS)
        frames.append(img)


def test_live_stream_is_recorded_at_its_measured_rate_not_ffmpegs_nominal_25(tiny_onnx, tmp_path):
    out = tmp_path / "cam.avi"
    results = []
    with MjpegServer(fps=10) as server, load(tiny_onnx) as runner:
        cap = ThreadedCapture(parse_source(server.url())).start()
        assert cap.fps == 25  # what FFmpeg claims for any MJPEG stream
        recorder = VideoRecorder(out, fps=cap.fps, timeline="clock")
        summary = run_live(runner, cap, LiveOptions(max_frames=25), [CallbackSink(results.append), recorder])
    frames, fps = _decoded(out)
    assert fps == pytest.approx(10, rel=0.15) and recorder.measured_fps == pytest.approx(10, rel=0.15)
    assert len(frames) == recorder.frames == summary.frames + recorder.repeated - recorder.left_out
    # from the clock's start, the recording lasts as long as the frames took to come (one frame short); the burst a
    # stream delivers as it opens (frames queued meanwhile, arriving at once) takes the first slots one by one
    t0, burst = recorder._clock
    assert abs(len(frames) - 1 - burst - (results[-1].t_capture - t0) * fps) <= 2


def test_paced_file_with_dropped_frames_plays_at_its_own_speed(tiny_onnx, tmp_path):
    """A loop slower than the file drops frames; each processed frame goes to its place in the file, the previous
    one standing in for the dropped frames, so the recording lasts as long as the file it covers."""
    video = write_video(tmp_path / "clip.mp4", frames=60, fps=30)
    out = tmp_path / "paced.avi"  # MJPG: every frame coded alone, so a repeat decodes identically
    with load(tiny_onnx) as runner:
        recorder = VideoRecorder(out, fps=30, timeline="source")
        slow = CallbackSink(lambda result: time.sleep(0.08))  # about 12 of the file's 30 frames a second
        results, summary = run(runner, video, sinks=[slow, recorder], pace=True)
    frames, fps = _decoded(out)
    first, last = results[0].index, results[-1].index
    assert summary.dropped > 0 and fps == 30.0
    assert len(frames) == recorder.frames == last - first + 1  # one video frame per frame of the file
    assert recorder.repeated == len(frames) - len(results) and recorder.left_out == 0
    processed = {r.index - first for r in results}
    for slot in range(1, len(frames)):
        if slot not in processed:
            assert np.array_equal(frames[slot], frames[slot - 1]), slot


def test_looped_paced_file_continues_its_timeline_and_its_pace(tiny_onnx, tmp_path):
    """A looped file's positions count on across restarts (the recording covers every pass, dropped frames
    included), and its pacing too: the first frame of a pass is due one interval after the last, not at once."""
    video = write_video(tmp_path / "clip.mp4", frames=3, fps=20)
    out = tmp_path / "looped.avi"
    with load(tiny_onnx) as runner:
        recorder = VideoRecorder(out, fps=20, timeline="source")
        results, summary = run(runner, video, LiveOptions(max_frames=10), sinks=[recorder], pace=True, loop=True)
    assert [r.index for r in results][:4] == [0, 1, 2, 0] or summary.dropped  # it looped
    assert [r.position for r in results] == sorted({r.position for r in results})
    assert recorder.frames == results[-1].position - results[0].position + 1 == len(_decoded(out)[0])
    elapsed = results[-1].t_capture - results[0].t_capture
    assert elapsed >= 0.9 * (results[-1].position - results[0].position) / 20  # paced across restarts


def test_clock_timeline_fills_gaps_cuts_outages_and_leaves_out_early_frames(tmp_path):
    """Placement on the clock, fed arrival times directly: a 10 fps stream that stalls 0.9 s in its first second
    (the measured rate stays 10: the median time per source frame), then a 0.5 s stall (filled with repeats), a 20 s
    outage (cut: longer than MAX_FILL_S), then a frame arriving in the slot just taken (left out)."""
    from types import SimpleNamespace

    recorder = VideoRecorder(tmp_path / "clock.avi", fps=25, timeline="clock")
    image = np.zeros((48, 64, 3), np.uint8)
    arrivals = [100 + i / 10 + (0.9 if i >= 3 else 0) for i in range(13)] + [102.6, 122.6, 122.61]
    for i, t in enumerate(arrivals):
        recorder.handle(SimpleNamespace(t_capture=t, position=i, index=i), image + i)
    recorder.close()
    assert recorder.measured_fps == 10
    assert recorder.repeated == 9 + 4 and recorder.left_out == 1  # the two stalls filled; the outage: none
    assert recorder.frames == 15 + 13 == len(_decoded(tmp_path / "clock.avi")[0])  # 16 arrived, 1 left out


def test_stepping_the_wall_clock_back_does_not_disturb_a_recording(tiny_onnx, tmp_path):
    """Live frames are placed by time.perf_counter(), not the wall clock NTP may step back (Jetsons without an RTC)."""
    from types import SimpleNamespace

    recorder = VideoRecorder(tmp_path / "ntp.avi", fps=10, timeline="clock")
    image = np.zeros((48, 64, 3), np.uint8)
    for i in range(40):
        wall = 1_000_000 + i / 10 - (60 if i >= 20 else 0)  # NTP steps the wall clock back a minute
        recorder.handle(SimpleNamespace(t_capture=50 + i / 10, timestamp=wall, position=i, index=i), image + i)
    recorder.close()
    assert recorder.frames == 40 and recorder.left_out == 0 and recorder.repeated == 0


def test_recorder_refuses_an_unknown_timeline(tmp_path):
    with pytest.raises(ValueError, match="timeline"):
        VideoRecorder(tmp_path / "x.avi", fps=30, timeline="wall")


# ---------------------------------------------------------------- a reader that goes away, unreadable files


def test_json_lines_to_a_closed_pipe_end_the_loop_quietly(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=20)
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader (`| head -1`) is gone
    stream = os.fdopen(write_fd, "w")
    try:
        with load(tiny_onnx) as runner:
            sink = JsonLinesSink(stream)
            results, summary = run(runner, video, sinks=[sink])
    finally:
        try:
            stream.close()
        except BrokenPipeError:
            pass
    assert summary.end_reason == "output_closed" and summary.frames == 1 and sink.stop_reason == "output_closed"


def test_summary_counts_unreadable_images(tiny_onnx, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((20, 30, 3), i * 40, np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with load(tiny_onnx) as runner:
        results, summary = run(runner, folder)
    assert summary.frames == 3 and summary.skipped_unreadable == 1
    assert summary.to_dict()["skipped_unreadable"] == 1


def test_fps_counts_the_intervals_between_frames(tiny_onnx, tmp_path):
    """5 frames span 4 intervals: FPS is 4 over the time from the first frame done to the last (on a paced 30 fps
    video it read ~40 when it was 5 over the time since the loop started, the first frame already waiting). The
    span is measured here by the sink itself, so machine load moves both numbers alike."""
    video = write_video(tmp_path / "clip.avi", frames=30, fps=30.0, fourcc="MJPG")
    done = []
    with load(tiny_onnx) as runner:
        cap = ThreadedCapture(parse_source(str(video)), pace=True).start()
        summary = run_live(
            runner, cap, LiveOptions(max_frames=5), [CallbackSink(lambda r: done.append(time.perf_counter()))]
        )
    assert summary.frames == len(done) == 5
    assert summary.fps == pytest.approx(4 / (done[-1] - done[0]), rel=0.03)


def test_a_truncated_video_is_noticed(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=60, size=(160, 120), fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with load(tiny_onnx) as runner:
        _, whole = run(runner, video)
        _, short = run(runner, cut)
    assert not whole.truncated and whole.frames_expected == 60
    assert short.truncated and short.frames_read < 60 == short.frames_expected
    assert short.to_dict()["frames_expected"] == 60


# ---------------------------------------------------------------- a second Ctrl-C while the loop shuts down


class _InterruptedSink:
    """A sink whose close() is where a second Ctrl-C lands (its KeyboardInterrupt raised there)."""

    needs_image = False

    def handle(self, result, image=None) -> bool:
        return True

    def close(self) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_landing_in_a_sink_close_still_finishes_the_recording(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=10)
    out = tmp_path / "rec.avi"
    with load(tiny_onnx) as runner:
        recorder = VideoRecorder(out, fps=30)
        cap = ThreadedCapture(parse_source(str(video)), pace=False).start()
        with pytest.raises(KeyboardInterrupt):  # the interruption still ends the run (exit 130 in the CLI)
            run_live(runner, cap, LiveOptions(), [_InterruptedSink(), recorder])
    assert not cap._thread.is_alive()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "rec.avi", "tiny.onnx"]  # no .rec.avi.xxxx
    assert len(_decoded(out)[0]) == 10


def test_ctrl_c_inside_the_recorder_close_removes_its_temporary_file(tiny_onnx, tmp_path, monkeypatch):
    import edgecnn.camera.sinks as sinks

    video = write_video(tmp_path / "clip.mp4", frames=5)
    out = tmp_path / "rec.mp4"
    recorder = VideoRecorder(out, fps=30)

    def interrupted(*args):  # a Ctrl-C arriving while the finished video is checked, before it is moved into place
        raise KeyboardInterrupt

    with load(tiny_onnx) as runner:
        monkeypatch.setattr(sinks, "_recording_problem", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(runner, video, sinks=[recorder])
    assert recorder.tmp is None and recorder.writer is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "tiny.onnx"]  # neither rec.mp4 nor a temp file


# ---------------------------------------------------------------- a model that outputs NaN or inf


def build_broken_onnx(path, bias: float):
    """The tiny classifier with `bias` (nan or inf) in its last layer: every logit row is non-finite."""
    import onnx
    from conftest import build_tiny_onnx
    from onnx import numpy_helper

    from edgecnn.onnx_io import save_onnx

    model = onnx.load(str(build_tiny_onnx(path)))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "fc.b":
            values = numpy_helper.to_array(init).copy()
            values[0] = bias
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, "fc.b"))
    return save_onnx(model, path)


def strict_loads(line: str):
    """json.loads that refuses NaN / Infinity, as jq and JavaScript do."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_probabilities_are_unknown_and_do_not_poison_the_ema():
    post = Postprocessor(["a", "b"], LiveOptions(top_k=2, smoothing=0.5))
    top, label, score = post(np.array([np.nan, 1.0], np.float32))
    assert label == "unknown" and not np.isfinite(score)  # threshold 0: NaN still is no prediction
    top, label, score = post(np.array([5.0, 0.0], np.float32))
    assert label == "a" and np.isfinite(score)  # the NaN frame was kept out of the average
    _, label, _ = Postprocessor(["a", "b"], LiveOptions(threshold=0.5))(np.array([np.inf, 1.0], np.float32))
    assert label == "unknown"


@pytest.mark.parametrize("bias", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_json_lines_of_a_nan_model_are_strict_json_with_unknown_labels(tmp_path, bias):
    from edgecnn.camera.overlay import annotate

    model = build_broken_onnx(tmp_path / "broken.onnx", bias)
    video = write_video(tmp_path / "clip.mp4", frames=4)
    buf = io.StringIO()
    with load(model) as runner:
        results, _ = run(runner, video, LiveOptions(threshold=0.5), sinks=[JsonLinesSink(buf)])
        annotate(np.zeros((48, 64, 3), np.uint8), results[0])  # the overlay draws it (an empty bar), no crash
    lines = [strict_loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 4
    assert all(d["label"] == "unknown" and d["score"] is None for d in lines)
    assert all(t["score"] is None for d in lines for t in d["top"])
