"""The one source parser (live loop and calibrate capture): every source form, credentials redacted, clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import write_video  # noqa: F401  (re-exported: the other camera tests import it from here)
from typer.testing import CliRunner

from edgecnn.camera.sources import (
    csi_pipeline,
    open_reader,
    opencv_has_gstreamer,
    parse_source,
    redact,
)
from edgecnn.cli.main import app
from edgecnn.errors import MissingDependencyError, SourceError, UserInputError


def test_camera_index_and_device_path():
    spec = parse_source("0", width=640, height=480, fps=30)
    assert (spec.kind, spec.target, spec.live) == ("camera", 0, True)
    assert (spec.width, spec.height, spec.fps) == (640, 480, 30.0)
    spec = parse_source("/dev/video2")
    assert (spec.kind, spec.target, spec.display) == ("camera", "/dev/video2", "/dev/video2")


def test_csi_builds_nvargus_pipeline_with_options():
    spec = parse_source("csi://1?capture=1280x720&flip=2", width=640, height=360, fps=60)
    assert spec.kind == "csi" and spec.display == "csi://1" and spec.live
    p = spec.target
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM)")
    assert "width=(int)1280, height=(int)720, framerate=(fraction)60/1" in p
    assert "nvvidconv flip-method=2 ! video/x-raw, width=(int)640, height=(int)360, format=(string)BGRx" in p
    assert p.endswith("appsink drop=true max-buffers=1 sync=false")
    # defaults: 1080p capture at 30 fps, output = capture size
    assert "width=(int)1920, height=(int)1080, framerate=(fraction)30/1" in parse_source("csi://0").target
    assert "framerate=(fraction)29970/1000" in csi_pipeline(0, (1280, 720), 29.97)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("csi://front", "csi://<sensor-id>"),
        ("csi://0?flip=9", "flip must be 0..7"),
        ("csi://0?capture=big", "1920x1080"),
        ("csi://0?zoom=2", "Unknown csi:// option"),
        ("gst:", "needs a pipeline"),
        ("gst:videotestsrc ! fakesink", "appsink"),
        ("rtsp://", "no host"),
        ("http://cam.local:99999/x", "Malformed URL"),
        ("ftp://cam/x", "Unsupported source scheme"),
        ("no/such/clip.mp4", "not found"),
        ("", "empty"),
    ],
)
def test_malformed_sources_are_one_clear_error(text, fragment):
    with pytest.raises(UserInputError) as err:
        parse_source(text)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_capture_options():
    with pytest.raises(UserInputError, match="--fps"):
        parse_source("0", fps=0)
    with pytest.raises(UserInputError, match="--width"):
        parse_source("0", width="wide")


def test_files_folders_and_unsupported_files(tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    assert parse_source(str(video)).kind == "file"
    assert not parse_source(str(video)).live
    assert parse_source(str(tmp_path)).kind == "folder"
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((8, 8, 3), np.uint8))
    assert parse_source(str(tmp_path / "one.png")).kind == "folder"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserInputError, match="Unsupported source"):
        parse_source(str(tmp_path / "notes.txt"))


def test_credentials_are_redacted_everywhere():
    spec = parse_source("rtsp://admin:hunter2@10.0.0.5:554/stream1?token=abc123&channel=1")
    assert spec.target.startswith("rtsp://admin:hunter2@")  # OpenCV still gets them
    assert spec.display == "rtsp://***@10.0.0.5:554/stream1?token=***&channel=1"
    assert "hunter2" not in repr(spec) and "hunter2" not in str(spec) and "abc123" not in repr(spec)
    assert redact("https://user@cam/x.mjpg?password=p&x=1") == "https://***@cam/x.mjpg?password=***&x=1"
    gst = parse_source(
        "gst:rtspsrc location=rtsp://u:p@cam/s user-id=bob user-pw=s3cret ! decodebin ! videoconvert ! appsink"
    )
    assert "s3cret" not in gst.display and "u:p@" not in gst.display and "bob" not in gst.display
    assert redact("plain text, no secrets") == "plain text, no secrets"


def test_unknown_camera_device_is_a_clear_error():
    with pytest.raises(SourceError, match=r"No camera /dev/video97 \("):
        open_reader(parse_source("/dev/video97"))


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer: the missing-GStreamer path cannot occur")
def test_csi_without_gstreamer_explains_the_fix():
    with pytest.raises(MissingDependencyError) as err:
        open_reader(parse_source("csi://0"))
    msg = str(err.value)
    assert "without GStreamer" in msg and "JetPack" in msg and "WITH_GSTREAMER" in msg


def test_unreadable_video_file_is_a_source_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SourceError, match="Cannot open video"):
        open_reader(parse_source(str(bad)))


@pytest.mark.parametrize(
    "source, code, fragment",
    [
        ("/dev/video97", 6, "No camera /dev/video97"),
        ("ftp://cam/x", 2, "Unsupported source scheme"),
        ("rtsp://admin:hunter2@127.0.0.1:1/stream", 6, "rtsp://***@127.0.0.1:1/stream"),
    ],
)
def test_cli_bad_source_exits_non_zero_with_one_line(tiny_onnx, source, code, fragment):
    result = CliRunner().invoke(app, ["live", str(tiny_onnx), "--source", source, "--headless"])
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0]
    assert "hunter2" not in result.output


def test_camera_package_and_commands_never_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import edgecnn.camera.sources, edgecnn.camera.capture, edgecnn.camera.loop, edgecnn.camera.overlay, "
        "edgecnn.camera.sinks, edgecnn.camera.record, edgecnn.camera.stats, edgecnn.cli.live_cmd, "
        "edgecnn.cli.calibrate_cmd\n"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), float("-inf"), 1e300, 0, -1, 1001, 0.001, "fast"])
def test_frame_rate_must_be_finite_and_in_range(fps):
    with pytest.raises(UserInputError) as err:
        parse_source("0", fps=fps)
    assert str(err.value).startswith("--fps must be a frame rate from 0.01 to 1000") and "\n" not in str(err.value)


@pytest.mark.parametrize("query", ["fps=inf", "fps=nan", "fps=1e300", "fps=-5", "fps=0", "fps=x"])
def test_csi_fps_parameter_must_be_finite_and_in_range(query):
    with pytest.raises(UserInputError, match=r"^csi:// fps must be a frame rate from 0\.01 to 1000"):
        parse_source(f"csi://0?{query}")


def test_valid_frame_rates_are_kept():
    assert parse_source("0", fps=0.01).fps == 0.01 and parse_source("0", fps=1000).fps == 1000.0
    assert "framerate=(fraction)29970/1000" in parse_source("csi://0?fps=29.97").target


@pytest.mark.parametrize(
    "text, fragment",
    [("²", "not found"), ("٣", "not found"), ("csi://²", "csi://<sensor-id>"), ("csi://0?capture=١٢x٣٤", "1920x1080")],
)
def test_unicode_digits_are_not_camera_numbers(text, fragment):
    # str.isdigit() is true for "²" and "٣"; only ASCII 0-9 make a camera index or CSI sensor id
    with pytest.raises(UserInputError) as err:
        parse_source(text)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--source", "²"], "Source ² not found"),
        (["--source", "csi://0?fps=inf"], "csi:// fps must be a frame rate"),
        (["--source", "csi://0", "--fps", "nan"], "--fps must be a frame rate"),
        (["--fps", "inf", "--record", "{tmp}/out.mp4"], "--fps must be a frame rate"),
        (["--fps", "nan"], "--fps must be a frame rate"),
        (["--fps", "1e300", "--record", "{tmp}/out.avi"], "--fps must be a frame rate"),
    ],
)
def test_cli_bad_frame_rate_or_source_is_one_line_exit_2(tiny_onnx, tmp_path, args, fragment):
    video = write_video(tmp_path / "clip.mp4", frames=3)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--source" not in args:
        args = ["--source", str(video)] + args
    result = CliRunner().invoke(app, ["live", str(tiny_onnx), "--headless", "--json", *args])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "internal error" not in result.output
    assert json.loads(result.stdout)["error"]["exit_code"] == 2  # refused before anything ran: only the error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "tiny.onnx"]  # no recording, no temporary file


@pytest.fixture
def dev_shm_folder():
    """A fresh folder on /dev/shm (the RAM disk Jetson users record to), removed afterwards."""
    import shutil
    import tempfile
    from pathlib import Path

    try:
        folder = Path(tempfile.mkdtemp(prefix="edgecnn-test-", dir="/dev/shm"))
    except OSError as exc:
        pytest.skip(f"/dev/shm is not writable here ({exc.strerror or exc})")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_files_and_folders_under_dev_are_not_cameras(dev_shm_folder):
    video = write_video(dev_shm_folder / "v10.avi", frames=10, fourcc="MJPG")
    spec = parse_source(str(video))
    assert spec.kind == "file" and not spec.live
    reader = open_reader(spec)
    try:
        assert reader.read() is not None  # really read as the video it is
    finally:
        reader.release()
    assert parse_source(str(dev_shm_folder)).kind == "folder"
    assert parse_source("/dev/video7").kind == "camera"  # a device path (existing or not) is still a camera
