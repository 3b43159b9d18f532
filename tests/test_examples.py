"""examples/: every script compiles and answers --help; the light ones run for real on a tiny model."""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder, write_video

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if p.name != "demo.py")  # demo.py is `make demo`, tested elsewhere


def run(script: str, *args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def test_examples_exist():
    assert {p.name for p in SCRIPTS} >= {
        "train_cifar10.py",
        "quantize_pretrained.py",
        "live_from_python.py",
        "deploy_bundle.py",
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_compiles_and_helps(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "x.pyc"), doraise=True)
    proc = run(script.name, "--help", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_live_from_python_runs(tmp_path, tiny_onnx):
    video = write_video(tmp_path / "clip.avi", frames=8, fps=10, fourcc="MJPG")
    proc = run("live_from_python.py", tiny_onnx, "--source", video, "--max-frames", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["frame 0", "frame 1", "frame 2"]
    assert lines[-1].startswith("3 frames at") and "(max_frames)" in lines[-1]


def test_deploy_bundle_runs(tmp_path, tiny_onnx):
    proc = run("deploy_bundle.py", tiny_onnx, "--out", tmp_path / "out", "--device", "orin-nano", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "tiny.tar.gz").is_file()
    assert (tmp_path / "out" / "triton" / "tiny" / "config.pbtxt").is_file()
    assert "net-scale-factor=" in (tmp_path / "out" / "deepstream" / "nvinfer_config.txt").read_text()


def test_quantize_example_runs_on_a_small_model(tmp_path, tiny_onnx):
    """The pretrained model is the script's default; the same code path on the tiny model keeps the test light."""
    pytest.importorskip("onnxruntime.quantization")
    photos = make_image_folder(tmp_path / "photos", per_class=6)
    proc = run(
        "quantize_pretrained.py",
        "--model",
        tiny_onnx,
        "--calib",
        photos,
        "--images",
        "12",
        "--out",
        tmp_path / "q",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "q" / "tiny.int8.onnx").is_file() and (tmp_path / "q" / "tiny.calib").is_file()
    assert "top-1 agreement" in proc.stdout
    from edgecnn.contract import read_onnx_contract

    assert read_onnx_contract(tmp_path / "q" / "tiny.int8.onnx").labels == ["cat", "dog", "bird"]


@pytest.mark.slow
def test_train_example_runs_one_epoch(tmp_path):
    """The CIFAR-10 script on a tiny labelled folder: fit -> export (parity-checked) -> ONNX Runtime accuracy (~6 s)."""
    pytest.importorskip("torch")
    data = make_image_folder(tmp_path / "data", per_class=8, size=(32, 32))
    proc = run(
        "train_cifar10.py", "--data", data, "--epochs", "1", "--out", tmp_path / "run", cwd=tmp_path, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "model.onnx").is_file()
    assert "epoch 1/1" in proc.stdout and "ONNX Runtime: top-1" in proc.stdout


def test_live_two_cameras_runs(tmp_path, tiny_onnx):
    a = write_video(tmp_path / "a.avi", frames=8, fps=30, fourcc="MJPG")
    b = write_video(tmp_path / "b.avi", frames=8, fps=30, fourcc="MJPG")
    proc = run("live_two_cameras.py", tiny_onnx, a, b, "--record", tmp_path / "out-{i}.avi", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert {line[:3] for line in lines if "frame" in line and line.startswith("[")} == {"[0]", "[1]"}
    assert lines[-1].endswith("(end_of_source)")
    assert (tmp_path / "out-0.avi").is_file() and (tmp_path / "out-1.avi").is_file()
