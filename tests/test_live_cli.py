"""`edgecnn live` end to end: JSON-only stdout, Ctrl-C/SIGTERM finalise the recording and print the summary,
credentials never printed, a clear error instead of a window on a headless machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from edgecnn.camera.sinks import display_available
from edgecnn.cli.main import app
from test_camera_server import MjpegServer
from test_camera_sources import write_video

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
        app, ["live", str(tiny_onnx), "--source", str(video), "--headless", "--json", "--no-pace", "--every", "4", "--top-k", "2"]
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
        app, ["live", str(tiny_onnx), "--source", str(video), "--headless", "--json", "--no-pace", "--threshold", "0.999"]
    )
    assert result.exit_code == 0, result.output
    frames = [json.loads(line) for line in result.stdout.splitlines()][:-1]
    assert frames and all(d["label"] == "unknown" and d["top"][0]["score"] < 0.999 for d in frames)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finalises_recording_and_prints_summary(tiny_onnx, tmp_path, sig):
    video = write_video(tmp_path / "clip.mp4", frames=30)
    out = tmp_path / "annotated.avi"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecnn", "live", str(tiny_onnx), "--source", str(video), "--loop", "--headless",
         "--json", "--record", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    seen = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if len(lines) >= 8:
                seen.set()
        seen.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert seen.wait(60), "no frames from the live loop"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    t.join(10)
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in lines]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["end_reason"] == "stopped"
    assert summary["frames"] == len(records) - 1 >= 8
    assert "frames in" in stderr and "p99" in stderr
    assert out.exists() and count_frames(out) == summary["frames"]
    assert not list(tmp_path.glob(".annotated*"))


def test_credentials_never_printed(tiny_onnx):
    with MjpegServer(fps=60) as server:
        url = server.url("admin:hunter2")
        proc = subprocess.run(
            [sys.executable, "-m", "edgecnn", "live", str(tiny_onnx), "--source", url, "--headless", "--json",
             "--max-frames", "5"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
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
        [sys.executable, "-m", "edgecnn", "live", str(tiny_onnx), "--source", server.url(), "--headless", "--json",
         "--reconnect-attempts", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
    assert summary["end_reason"] == "source_lost" and "2 attempts" in summary["error"]
    assert "reconnecting" in err and err.strip().splitlines()[-1].startswith("error: Lost http://127.0.0.1")
