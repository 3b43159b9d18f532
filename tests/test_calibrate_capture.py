"""`edgecnn calibrate capture`: N frames, T ms apart, as JPEG files in a new folder, from a video or an HTTP camera."""

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
from test_camera_server import MjpegServer
from test_camera_sources import write_video
from typer.testing import CliRunner

from edgecnn.camera.capture import ThreadedCapture
from edgecnn.camera.record import capture_frames, output_folder, prepare_output
from edgecnn.camera.sources import parse_source
from edgecnn.cli.main import app
from edgecnn.data import iter_video_frames
from edgecnn.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]


def test_video_frames_spaced_in_source_time(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=60, fps=30)  # frame i has grey level 7·i
    out = tmp_path / "calibration" / "lab"
    start = prepare_output(out)
    cap = ThreadedCapture(parse_source(str(video)), pace=False).start()
    report = capture_frames(cap, out, count=5, every_ms=200, start_number=start)
    assert [p.name for p in report.saved] == [f"frame_{i:05d}.jpg" for i in range(5)]
    saved = [float(cv2.imread(str(p))[:20].mean()) for p in report.saved]
    decoded = {i: float(f[:20].mean()) for i, f in iter_video_frames(video)}
    assert saved == pytest.approx([decoded[i] for i in (0, 6, 12, 18, 24)], abs=2)  # 200 ms at 30 fps: every 6th
    assert report.size == (64, 48) and not report.ended_early
    assert report.brightness["min"] < report.brightness["max"]
    assert not list(out.glob(".*"))  # atomic writes left no temporary files


def test_cli_refuses_a_non_empty_folder_and_force_adds_without_overwriting(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=20)
    out = tmp_path / "cal"
    runner = CliRunner()
    args = ["calibrate", "capture", "--source", str(video), "--out", str(out), "--count", "4", "--every-ms", "0"]
    first = runner.invoke(app, args + ["--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["saved"] == 4 and summary["last"] == "frame_00003.jpg"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    forced = runner.invoke(app, args + ["--force", "--json"])
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:05d}.jpg" for i in range(8)]
    assert all((out / name).read_bytes() == data for name, data in before.items())


def test_short_source_saves_what_it_has_and_warns(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=6)
    out = tmp_path / "cal"
    result = CliRunner().invoke(
        app, ["calibrate", "capture", "--source", str(video), "--out", str(out), "--count", "50", "--every-ms", "0"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.jpg"))) == 6
    assert "only 6 of 50" in result.output and "fewer than 100" in result.output


def test_bad_out_and_bad_source(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserInputError, match="is a file"):
        prepare_output(tmp_path / "file.txt")
    result = CliRunner().invoke(app, ["calibrate", "capture", "--source", "/dev/video97", "--out", str(tmp_path / "c")])
    assert result.exit_code == 6 and "No camera /dev/video97" in result.output
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.UMat(8, 8, cv2.CV_8UC3).get())
    for out in (folder, folder / "new"):  # the folder itself, or one inside it (it would look like a class)
        result = CliRunner().invoke(
            app, ["calibrate", "capture", "--source", str(folder), "--out", str(out), "--force"]
        )
        assert result.exit_code == 2 and "must not be --source or a folder inside it" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_from_an_http_mjpeg_camera(tmp_path):
    out = tmp_path / "cam"
    with MjpegServer(fps=100) as server:
        result = CliRunner().invoke(
            app,
            [
                "calibrate",
                "capture",
                "--source",
                server.url("u:secret"),
                "--out",
                str(out),
                "--count",
                "5",
                "--every-ms",
                "30",
                "--json",
            ],
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["saved"] == 5 and summary["source"].startswith("http://***@127.0.0.1")
    assert "secret" not in result.output
    images = [cv2.imread(str(p)) for p in sorted(out.glob("*.jpg"))]
    assert len(images) == 5 and all(img.shape == (48, 64, 3) for img in images)


def _start_capture(source: str, out: Path) -> subprocess.Popen:
    """`edgecnn calibrate capture` as a real process (signals reach it as they would from a terminal)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecnn",
            "calibrate",
            "capture",
            "--source",
            source,
            "--out",
            str(out),
            "--count",
            "100000",
            "--every-ms",
            "20",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, timeout: float = 60) -> None:
    t0 = time.perf_counter()
    while not condition() and time.perf_counter() - t0 < timeout:
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_keeps_the_frames_saved_so_far_and_exits_130(tmp_path, sig):
    """Interrupted before --count: every frame saved so far stays (complete files, JSON summary), one line on stderr
    says how many and where, and the exit is 130 (cli_command's Ctrl-C code), so `capture && quantize` stops."""
    out = tmp_path / "cam"
    with MjpegServer(fps=100) as server:
        proc = _start_capture(server.url(), out)
        try:
            _wait_for(lambda: len(list(out.glob("*.jpg"))) >= 5)
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    files = sorted(out.glob("*.jpg"))
    assert summary["end_reason"] == "stopped" and summary["saved"] == len(files) >= 5
    assert all(cv2.imread(str(p)) is not None for p in files)  # every file complete
    assert not list(out.glob(".*"))
    how = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "terminated (SIGTERM)"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {how}: kept the {len(files)} frame(s) saved so far in {out}"], stderr
    assert "Traceback" not in stderr


def test_ctrl_c_before_the_first_frame_exits_130_and_leaves_no_folder(tmp_path):
    """Ctrl-C while a slow camera is still opening: nothing saved, so the folder the run created is removed again."""
    out = tmp_path / "calibration" / "slow"
    answer = threading.Event()
    with MjpegServer(fps=100, hold=answer) as server:
        proc = _start_capture(server.url(), out)
        try:
            _wait_for(lambda: server.connections >= 1)  # the CLI is inside the camera's open (handlers installed)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            answer.set()  # the camera answers; the capture then sees the stop before its first frame
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            answer.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["saved"] == 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: interrupted (Ctrl-C) before any frame was saved: nothing was written to {out}"], stderr
    assert not (tmp_path / "calibration").exists()


def test_output_folder_takes_back_only_the_empty_folders_it_made(tmp_path):
    """The folders a failed capture created are removed while empty; one that existed, or holds a frame, stays."""
    out = tmp_path / "a" / "b" / "c"
    with pytest.raises(RuntimeError):
        with output_folder(out) as first:
            assert first == 0 and out.is_dir()
            raise RuntimeError("source failed")
    assert not (tmp_path / "a").exists()

    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError):
        with output_folder(out):
            (out / "frame_00000.jpg").write_bytes(b"x")  # a saved frame: its folder and parents stay
            raise RuntimeError("source lost")
    assert (out / "frame_00000.jpg").is_file()

    with pytest.raises(RuntimeError):
        with output_folder(out, force=True) as first:
            assert first == 1  # after the existing frame
            raise RuntimeError("source failed")
    assert (out / "frame_00000.jpg").is_file()  # existed before this run: kept

    with pytest.raises(UserInputError, match="already holds 1 file"):
        with output_folder(out):
            pass


def test_out_under_a_file_is_a_one_line_user_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    video = write_video(tmp_path / "clip.mp4", frames=4)
    result = CliRunner().invoke(
        app, ["calibrate", "capture", "--source", str(video), "--out", str(tmp_path / "file.txt" / "cal")]
    )
    assert result.exit_code == 2, result.output
    assert "Cannot create the folder" in result.output and "internal error" not in result.output
    assert (tmp_path / "file.txt").read_text() == "x"


def _corrupt_sources(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "corrupt.mp4").write_bytes(rng.bytes(5000))
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(3000))
    (tmp_path / "empty").mkdir()
    return {"corrupt.mp4": "Cannot open video", "bad": "3 unreadable image file(s)", "empty": "No images in"}


@pytest.mark.parametrize("source", ["corrupt.mp4", "bad", "empty"])
def test_failed_capture_leaves_no_folder_behind(tmp_path, source):
    message = _corrupt_sources(tmp_path)[source]
    out = tmp_path / "calibration" / "lab"  # both folders are new: neither may be left behind
    result = CliRunner().invoke(
        app, ["calibrate", "capture", "--source", str(tmp_path / source), "--out", str(out), "--count", "5"]
    )
    assert result.exit_code == 6 and message in result.output, result.output
    assert "No frames captured" in result.output or source != "bad"
    assert not (tmp_path / "calibration").exists()


def test_failed_capture_keeps_a_folder_that_existed(tmp_path):
    _corrupt_sources(tmp_path)
    runner = CliRunner()
    empty_out = tmp_path / "existing"
    empty_out.mkdir()
    result = runner.invoke(app, ["calibrate", "capture", "--source", str(tmp_path / "bad"), "--out", str(empty_out)])
    assert result.exit_code == 6 and empty_out.is_dir()

    video = write_video(tmp_path / "clip.mp4", frames=10)
    out = tmp_path / "cal"
    ok = runner.invoke(
        app, ["calibrate", "capture", "--source", str(video), "--out", str(out), "--count", "3", "--every-ms", "0"]
    )
    assert ok.exit_code == 0, ok.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for source in ("bad", "corrupt.mp4", "empty"):
        failed = runner.invoke(
            app, ["calibrate", "capture", "--source", str(tmp_path / source), "--out", str(out), "--force"]
        )
        assert failed.exit_code == 6, failed.output
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # saved frames untouched


def test_mixed_folder_counts_unreadable_files(tmp_path):
    import numpy as np

    src = tmp_path / "mixed"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"ok{i}.png"), np.full((12, 16, 3), 60 * i, np.uint8))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (src / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "cal"
    args = ["calibrate", "capture", "--source", str(src), "--out", str(out), "--count", "5", "--every-ms", "0"]
    result = CliRunner().invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["saved"] == 3 and summary["skipped_unreadable"] == 2
    assert "2 unreadable image file(s) skipped" in result.output
    assert len(list(out.glob("*.jpg"))) == 3

    clean = CliRunner().invoke(
        app,
        [
            "calibrate",
            "capture",
            "--source",
            str(write_video(tmp_path / "v.mp4", frames=4)),
            "--out",
            str(tmp_path / "cal2"),
            "--count",
            "2",
            "--every-ms",
            "0",
            "--json",
        ],
    )
    assert clean.exit_code == 0 and json.loads(clean.stdout)["skipped_unreadable"] == 0
    assert "unreadable image" not in clean.output  # no warning line


def test_a_folder_gives_every_image_not_one_per_500_ms(tmp_path):
    """A folder is read at full speed and has no timeline: the default --every-ms kept 1 image of 20."""
    import numpy as np

    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(20):
        cv2.imwrite(str(src / f"{i:02d}.png"), np.full((12, 16, 3), 10 * i, np.uint8))
    result = CliRunner().invoke(
        app, ["calibrate", "capture", "--source", str(src), "--out", str(tmp_path / "cal"), "--count", "20", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["saved"] == 20 and "every image is taken" in result.output


@pytest.mark.parametrize("fps", ["nan", "inf", "1e300", "0"])
def test_fps_must_be_a_sane_finite_rate(tmp_path, fps):
    video = write_video(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "cal"
    result = CliRunner().invoke(app, ["calibrate", "capture", "--source", str(video), "--out", str(out), "--fps", fps])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--fps must be a frame rate from 0.01 to 1000" in errors[0]
    assert not out.exists()


def test_csi_fps_parameter_is_checked_too(tmp_path):
    result = CliRunner().invoke(
        app, ["calibrate", "capture", "--source", "csi://0?fps=inf", "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 2 and "csi:// fps must be a frame rate" in result.output
    assert "internal error" not in result.output and not (tmp_path / "c").exists()


def test_a_stream_lost_for_good_keeps_its_frames_and_exits_6(tmp_path):
    """The camera goes away mid-capture and does not come back: the frames stay, but the exit is 6 (a source
    error, as `live` exits for the same loss), so `capture && quantize` does not go on with a part of the set."""
    out = tmp_path / "calx" / "sub"
    server = MjpegServer(fps=100).start()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecnn",
            "calibrate",
            "capture",
            "--source",
            server.url(),
            "--out",
            str(out),
            "--count",
            "100000",
            "--every-ms",
            "10",
            "--reconnect-attempts",
            "1",
            "--json",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: len(list(out.glob("*.jpg"))) >= 5)
        server.stop()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 6, stderr
    summary = json.loads(stdout)
    files = sorted(out.glob("*.jpg"))
    assert summary["end_reason"].startswith("source lost") and summary["saved"] == len(files) >= 5
    assert all(cv2.imread(str(p)) is not None for p in files)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: Lost http://127.0.0.1"), stderr
    assert errors[0].endswith(f"kept the {len(files)} of 100000 frame(s) saved so far in {out}")


def test_fps_does_not_change_a_video_files_timeline(tmp_path):
    """--every-ms 500 on a 3 s, 30 fps video is 6 frames; --fps 10 (for cameras) made it 18 by slowing the clock."""
    video = write_video(tmp_path / "clip.mp4", frames=90, fps=30)
    out = tmp_path / "cal"
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "capture",
            "--source",
            str(video),
            "--out",
            str(out),
            "--count",
            "100",
            "--every-ms",
            "500",
            "--fps",
            "10",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["saved"] == 6 == len(list(out.glob("*.jpg")))
    assert "--fps 10 is ignored for a video file" in " ".join(result.stderr.split())


def test_ctrl_c_while_a_stream_never_answers_exits_130_not_6(tmp_path):
    """The camera accepts the connection and never answers: Ctrl-C during the open (OpenCV blocks in C for its 5 s
    open timeout) was lost, and the run ended in 'Cannot open stream', exit 6."""
    out = tmp_path / "calibration" / "mute"
    answer = threading.Event()  # set only once the process has ended
    with MjpegServer(fps=100, hold=answer) as server:
        proc = _start_capture(server.url(), out)
        try:
            _wait_for(lambda: server.connections >= 1)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=30)
            answered_before_exit = answer.is_set()
        finally:
            answer.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, stderr
    assert not answered_before_exit
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: interrupted (Ctrl-C) before any frame was saved: nothing was written to {out}"], stderr
    assert not (tmp_path / "calibration").exists()
