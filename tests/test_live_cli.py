"""`edgecnn live` end to end: JSON-only stdout, Ctrl-C/SIGTERM finalise the recording and print the summary,
credentials never printed, a clear error instead of a window on a headless machine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from test_camera_server import MjpegServer, OneFrameServer
from test_camera_sources import write_video
from test_live_loop import write_noise_video
from typer.testing import CliRunner

from edgecnn.camera.sinks import display_available
from edgecnn.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_headless_json_lines_then_summary(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=9)
    result = CliRunner().invoke(
        app,
        [
            "live",
            str(tiny_onnx),
            "--source",
            str(video),
            "--headless",
            "--json",
            "--no-pace",
            "--every",
            "4",
            "--top-k",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # stdout is JSON only
    frames, summary = lines[:-1], lines[-1]
    assert [d["frame"] for d in frames] == [0, 4, 8] and all(len(d["top"]) == 2 for d in frames)
    assert summary["type"] == "summary" and summary["frames"] == 9 and summary["end_reason"] == "end_of_source"
    assert summary["stages_ms"]["inference"]["p99"] >= summary["stages_ms"]["inference"]["p50"] > 0
    assert "FPS" in result.stderr and "p99" in result.stderr


@pytest.mark.skipif(display_available()[0], reason="a display is available here: the no-display error cannot occur")
def test_no_display_says_use_headless(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=3)
    result = CliRunner().invoke(app, ["live", str(tiny_onnx), "--source", str(video)])
    assert result.exit_code == 2 and "--headless" in result.output


def test_threshold_shows_unknown(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=3)
    result = CliRunner().invoke(
        app,
        ["live", str(tiny_onnx), "--source", str(video), "--headless", "--json", "--no-pace", "--threshold", "0.999"],
    )
    assert result.exit_code == 0, result.output
    frames = [json.loads(line) for line in result.stdout.splitlines()][:-1]
    assert frames and all(d["label"] == "unknown" and d["top"][0]["score"] < 0.999 for d in frames)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finalises_recording_and_prints_summary(tiny_onnx, tmp_path, sig):
    video = write_video(tmp_path / "clip.mp4", frames=30)
    out = tmp_path / "annotated.avi"
    proc, lines, seen, t = _start_live_recording(tiny_onnx, video, out, lines_before=8)
    try:
        assert seen.wait(60), "no frames from the live loop"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    t.join(10)
    stderr = proc.stderr.read()
    assert proc.returncode == (130 if sig == signal.SIGINT else 0), stderr  # Ctrl-C: 130, once all is finalised
    records = [json.loads(line) for line in lines]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["end_reason"] == "stopped"
    assert summary["frames"] == len(records) - 1 >= 8
    assert "frames in" in stderr and "p99" in stderr
    rec = summary["recording"]  # frames the loop dropped (a busy machine) are filled by repeats: the video's timeline
    assert rec["frames"] == summary["frames"] + rec["repeated"] - rec["left_out"]
    assert out.exists() and count_frames(out) == rec["frames"]
    assert not list(tmp_path.glob(".annotated*"))


def test_credentials_never_printed(tiny_onnx):
    with MjpegServer(fps=60) as server:
        url = server.url("admin:hunter2")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgecnn",
                "live",
                str(tiny_onnx),
                "--source",
                url,
                "--headless",
                "--json",
                "--max-frames",
                "5",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 6 and records[-1]["frames"] == 5
    assert records[0]["source"] == f"http://***@127.0.0.1:{server.port}/stream.mjpg"
    assert "hunter2" not in proc.stdout and "hunter2" not in proc.stderr  # fd-level stderr, FFmpeg included
    assert "admin" not in proc.stdout + proc.stderr


def test_lost_stream_ends_with_summary_and_source_error(tiny_onnx):
    server = MjpegServer(fps=60).start()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecnn",
            "live",
            str(tiny_onnx),
            "--source",
            server.url(),
            "--headless",
            "--json",
            "--reconnect-attempts",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert json.loads(first)["type"] == "frame"
        server.stop()
        out, err = proc.communicate(timeout=60)
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()
    summary = json.loads(out.splitlines()[-1])
    assert proc.returncode == 6
    assert summary["end_reason"] == "source_lost" and "2 attempts" in summary["error"]["message"]
    assert summary["error"]["exit_code"] == 6  # --json: the summary line carries the error object
    assert "reconnecting" in err and err.strip().splitlines()[-1].startswith("error: Lost http://127.0.0.1")


# ---------------------------------------------------------------- --record: checked before anything runs, --force


@pytest.mark.parametrize("where", ["under-a-file", "proc", "sys", "existing"])
def test_bad_record_path_is_refused_before_the_model_loads(tmp_path, where):
    video = write_video(tmp_path / "clip.mp4", frames=3)
    (tmp_path / "afile").write_text("x")
    existing = write_video(tmp_path / "existing.avi", frames=2, fourcc="MJPG")
    record = {
        "under-a-file": tmp_path / "afile" / "out.mp4",
        "proc": "/proc/out.mp4",
        "sys": "/sys/out.avi",
        "existing": existing,
    }[where]
    before = existing.read_bytes()
    # the model does not exist: a --record error (not a model error) proves the path was checked first
    result = CliRunner().invoke(
        app, ["live", str(tmp_path / "missing.onnx"), "--source", str(video), "--headless", "--record", str(record)]
    )
    assert result.exit_code == (74 if where == "sys" else 2), result.output  # /sys: permission denied: StorageError
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"--record {record}" in errors[0] and "internal error" not in result.output
    if where == "existing":
        assert "--force" in errors[0]
    assert existing.read_bytes() == before
    assert not list(tmp_path.glob(".*"))


def test_force_replaces_an_existing_recording(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=6)
    out = write_video(tmp_path / "out.avi", frames=2, fourcc="MJPG")
    result = CliRunner().invoke(
        app,
        ["live", str(tiny_onnx), "--source", str(video), "--headless", "--no-pace", "--record", str(out), "--force"],
    )
    assert result.exit_code == 0, result.output
    assert count_frames(out) == 6
    assert "--force" in CliRunner().invoke(app, ["live", "--help"]).output


# ---------------------------------------------------------------- a recording the disk could not hold


def test_full_disk_recording_exits_non_zero_with_the_summary(tiny_onnx, tmp_path, small_disk):
    video = write_noise_video(tmp_path / "noise.avi", frames=30)
    out = small_disk / "out.avi"
    result = CliRunner().invoke(
        app, ["live", str(tiny_onnx), "--source", str(video), "--headless", "--no-pace", "--json", "--record", str(out)]
    )
    assert result.exit_code == 74, result.output  # the one StorageError exit code
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 31 and records[-1]["type"] == "summary" and records[-1]["frames"] == 30
    assert records[-1]["error"]["exit_code"] == 74  # --json: the summary line carries the error object
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "is unusable" in errors[0] and "disk full" in errors[0]
    assert "recording:" not in result.stderr
    assert list(small_disk.iterdir()) == []  # no final file, no temporary file


# ---------------------------------------------------------------- stdout closed by its reader (`| head -1`)


def test_json_piped_into_head_stops_quietly_and_finalises_the_recording(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=30)
    out = tmp_path / "annotated.avi"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecnn",
            "live",
            str(tiny_onnx),
            "--source",
            str(video),
            "--loop",
            "--headless",
            "--json",
            "--record",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # what `head -1` does: one line, then it exits
        proc.stdout.close()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(first)["type"] == "frame"
    assert proc.returncode == 0, stderr
    assert "error" not in stderr.lower() and "Exception" not in stderr and "Traceback" not in stderr
    assert "ended: output closed" in stderr
    assert count_frames(out) >= 1 and not list(tmp_path.glob(".annotated*"))


# ---------------------------------------------------------------- unreadable files, sources without a single frame


def test_unreadable_images_are_counted_and_warned_about(tiny_onnx, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.UMat(16, 16, cv2.CV_8UC3).get())
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    result = CliRunner().invoke(app, ["live", str(tiny_onnx), "--source", str(folder), "--headless", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["frames"] == 3 and summary["skipped_unreadable"] == 2
    assert f"2 unreadable image file(s) skipped in {folder}" in result.stderr


@pytest.mark.parametrize("kind", ["all-corrupt-folder", "corrupt-image", "zero-frame-video"])
def test_a_source_without_a_single_frame_is_a_source_error(tiny_onnx, tmp_path, kind):
    if kind == "zero-frame-video":
        source = tmp_path / "zero.avi"
        writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
        writer.release()  # a valid AVI that opens, holding no frame
        assert cv2.VideoCapture(str(source)).isOpened()
        detail = "(end of source)"
    else:
        folder = tmp_path / "bad"
        folder.mkdir()
        for name in ("a.jpg", "b.png"):
            (folder / name).write_bytes(b"\xff\xd8\xff garbage")
        source = folder if kind == "all-corrupt-folder" else folder / "a.jpg"
        detail = f"(end of source; {2 if kind == 'all-corrupt-folder' else 1} unreadable image file(s) skipped)"
    result = CliRunner().invoke(app, ["live", str(tiny_onnx), "--source", str(source), "--headless", "--json"])
    assert result.exit_code == 6, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["frames"] == 0 and summary["end_reason"] == "end_of_source"
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: No frames from {source} {detail}"]


# ---------------------------------------------------------------- a source that connects and dies, every time


def test_reconnect_attempts_bound_a_source_that_dies_right_after_connecting(tiny_onnx):
    with OneFrameServer() as server:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgecnn",
                "live",
                str(tiny_onnx),
                "--source",
                server.url(),
                "--headless",
                "--json",
                "--reconnect-attempts",
                "1",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.perf_counter() - t0
    assert proc.returncode == 6, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["end_reason"] == "source_lost" and summary["reconnects"] == 1
    assert "after 1 attempt " in summary["error"]["message"]
    assert server.connections == 2 and elapsed < 30


# ---------------------------------------------------------------- recording rate of a live stream


def test_recording_of_a_10fps_stream_plays_at_10fps(tiny_onnx, tmp_path):
    out = tmp_path / "cam.avi"
    with MjpegServer(fps=10) as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgecnn",
                "live",
                str(tiny_onnx),
                "--source",
                server.url(),
                "--headless",
                "--max-frames",
                "25",
                "--record",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    cap = cv2.VideoCapture(str(out))
    assert abs(cap.get(cv2.CAP_PROP_FRAME_COUNT) - 25) <= 3  # 25 frames placed on the stream's clock
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10, rel=0.15)  # not FFmpeg's nominal 25 for MJPEG
    assert f"recording: {out} ({int(cap.get(cv2.CAP_PROP_FRAME_COUNT))} frames at" in " ".join(proc.stderr.split())


def test_a_truncated_video_warns(tiny_onnx, tmp_path):
    from conftest import write_video

    video = write_video(tmp_path / "clip.avi", frames=60, size=(160, 120), fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    result = CliRunner().invoke(app, ["live", str(tiny_onnx), "--source", str(cut), "--headless", "--no-pace"])
    assert result.exit_code == 0, result.output
    assert "of the 60 frames its header declares" in result.stderr


# ---------------------------------------------------------------- Ctrl-C twice, and Ctrl-C after the run


def _start_live_recording(tiny_onnx, video, out, lines_before=5):
    """A looping headless live run with --json and --record; returns (process, its stdout lines so far, an event set
    once `lines_before` lines are out, the reader thread)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecnn",
            "live",
            str(tiny_onnx),
            "--source",
            str(video),
            "--loop",
            "--headless",
            "--json",
            "--record",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    seen = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if len(lines) >= lines_before:
                seen.set()
        seen.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return proc, lines, seen, thread


@pytest.mark.parametrize("gap_s", [0.01, 0.03, 0.05, 0.07])
def test_a_second_ctrl_c_during_shutdown_never_leaves_a_temporary_recording(tiny_onnx, tmp_path, gap_s):
    video = write_video(tmp_path / "clip.mp4", frames=30)
    out = tmp_path / "rec.mp4"
    proc, lines, seen, _ = _start_live_recording(tiny_onnx, video, out)
    try:
        assert seen.wait(60), "no frames from the live loop"
        proc.send_signal(signal.SIGINT)
        time.sleep(gap_s)
        proc.send_signal(signal.SIGINT)  # impatient: lands while the loop stops and the video is finished
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr  # the second Ctrl-C waits for the recording (it says so), then exits 130
    assert out.exists() and count_frames(out) >= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.mp4",
        "rec.mp4",
        "tiny.onnx",
    ]  # no hidden .rec.mp4.xxxx.mp4


def test_ctrl_c_after_the_run_has_ended_does_not_change_its_exit(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=30)
    out = tmp_path / "rec.avi"
    proc, lines, seen, _ = _start_live_recording(tiny_onnx, video, out)
    try:
        assert seen.wait(60), "no frames from the live loop"
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while not any('"summary"' in line for line in lines) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the summary is out: the run is over
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, proc.stderr.read()  # the first Ctrl-C's 130, not -2 (killed by the second)
    assert out.exists()


def test_json_of_a_model_that_outputs_nan_is_strict_json(tmp_path):
    from test_live_loop import build_broken_onnx, strict_loads

    model = build_broken_onnx(tmp_path / "broken.onnx", float("nan"))
    video = write_video(tmp_path / "clip.mp4", frames=3)
    result = CliRunner().invoke(
        app, ["live", str(model), "--source", str(video), "--headless", "--json", "--no-pace", "--threshold", "0.5"]
    )
    assert result.exit_code == 0, result.output
    records = [strict_loads(line) for line in result.stdout.splitlines()]  # no NaN anywhere, summary included
    assert [d["type"] for d in records] == ["frame"] * 3 + ["summary"]
    assert all(d["label"] == "unknown" and d["score"] is None for d in records[:3])


def test_fps_does_not_speed_up_a_video_file_or_its_recording(tiny_onnx, tmp_path):
    """A 30 fps video with --fps 60 plays at 30 fps: the recording has its rate and every frame (it had 60 fps and
    half the length)."""
    from conftest import write_video as write

    video = write(tmp_path / "clip.avi", frames=30, fps=30, fourcc="MJPG")
    out = tmp_path / "rec.avi"
    result = CliRunner().invoke(
        app, ["live", str(tiny_onnx), "--source", str(video), "--headless", "--fps", "60", "--record", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "--fps 60 is ignored for a video file" in " ".join(result.stderr.split())
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30)
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 30  # its own places on the source's timeline: as long as the source


def test_a_truncated_video_warns_with_loop_too(tiny_onnx, tmp_path):
    """Looped, a cut video never reaches an end: each pass is short, and that is what the warning is about."""
    from conftest import write_video

    video = write_video(tmp_path / "clip.avi", frames=60, size=(160, 120), fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    result = CliRunner().invoke(
        app, ["live", str(tiny_onnx), "--source", str(cut), "--headless", "--no-pace", "--loop", "--max-frames", "80"]
    )
    assert result.exit_code == 0, result.output
    assert "of the 60 frames its header declares" in " ".join(result.stderr.split())


def test_every_without_json_is_said_to_be_ignored(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=3)
    result = CliRunner().invoke(
        app, ["live", str(tiny_onnx), "--source", str(video), "--headless", "--no-pace", "--every", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "--every 5 only thins the --json lines" in " ".join(result.stderr.split())


def test_torch_backend_on_an_onnx_file_names_the_right_backend(tiny_onnx, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=3)
    result = CliRunner().invoke(
        app, ["live", str(tiny_onnx), "--source", str(video), "--headless", "--backend", "torch"]
    )
    assert result.exit_code == 2, result.output
    assert "torch backend runs .pt checkpoints, not tiny.onnx" in result.stderr and "onnxrt" in result.stderr
    assert "torch.save" not in result.stderr and "save_checkpoint" not in result.stderr
