"""`edgecnn build-engine` through Typer's CliRunner: the one-line "no TensorRT" error, --print-trtexec without TensorRT,
--json output, and option validation exit codes."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from edgecnn.cli.main import app

runner = CliRunner()


@pytest.fixture
def no_tensorrt(monkeypatch):
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def off_jetson(monkeypatch, tmp_path):
    import edgecnn.trt.env as env

    monkeypatch.setattr(env, "NV_TEGRA_RELEASE", tmp_path / "absent")


@pytest.fixture
def on_jetson(monkeypatch, tmp_path):
    """A fake JetPack 6.2 Orin Nano: /etc/nv_tegra_release and the device-tree model text."""
    import edgecnn.trt.env as env

    release, model = tmp_path / "nv_tegra_release", tmp_path / "model"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    monkeypatch.setattr(env, "NV_TEGRA_RELEASE", release)
    monkeypatch.setattr(env, "DEVICE_TREE_MODEL", model)


def test_without_tensorrt_one_line_and_exit_3_on_desktop(tiny_onnx, tmp_path, no_tensorrt, off_jetson):
    out = tmp_path / "tiny.engine"
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", str(out), "--precision", "fp16"])
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: TensorRT is not installed") and "pip install 'edgecnn[tensorrt]'" in lines[0]
    assert result.stdout == "" and not out.exists()


def test_without_tensorrt_on_jetson_points_to_jetpack(tiny_onnx, tmp_path, no_tensorrt, on_jetson):
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", str(tmp_path / "t.engine")])
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert "\n" not in line and "ships with JetPack" in line and "pip cannot install it" in line
    assert "sudo apt install nvidia-jetpack" in line


def test_print_trtexec_works_without_tensorrt(tiny_onnx, tmp_path, no_tensorrt, off_jetson):
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", "t.engine", "--print-trtexec",
                                 "--precision", "fp16", "--batch", "1:4:8"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == (
        f"trtexec --onnx={tiny_onnx} --saveEngine=t.engine --minShapes=input:1x3x32x32 --optShapes=input:4x3x32x32 "
        "--maxShapes=input:8x3x32x32 --fp16 --skipInference"
    )


def test_print_trtexec_defaults_to_the_detected_jetson_and_its_jetpack(tiny_onnx, no_tensorrt, on_jetson):
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", "t.engine", "--print-trtexec", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["plan"]["device"] == "orin-nano" and data["plan"]["tensorrt"] == "10.3.0"
    assert data["plan"]["workspace_bytes"] == 1 << 30 and "--memPoolSize=workspace:1024" in data["trtexec"]
    assert data["script"].startswith("trtexec ")


def test_print_trtexec_for_tensorrt_11_fp16(tiny_onnx, no_tensorrt, off_jetson):
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", "t.engine", "--print-trtexec",
                                 "--trt-version", "11.4.1", "--precision", "fp16"])
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[1].startswith("python3 -c ") and "convert_fp16" in lines[1]
    assert lines[2].startswith("trtexec --onnx=") and ".fp16.onnx" in lines[2] and "--fp16" not in lines[2]
    assert "converted to FP16" in result.stderr


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--dla", "0", "--precision", "fp16"], 2, "has no DLA"),
        (["--device", "xavier-nx", "--dla", "0"], 2, "DLA runs FP16 or INT8 only"),
        (["--precision", "int8"], 2, "edgecnn quantize MODEL.onnx --target tensorrt"),
        (["--trt-version", "11.0", "--precision", "int8", "--calib-cache", "c.cache"], 2, "removed implicit INT8"),
        (["--batch", "4:2:1"], 2, "MIN <= OPT <= MAX"),
        (["--workspace", "lots"], 2, "--workspace"),
        (["--device", "nano"], 2, "TensorRT 8.2"),
        (["--hardware-compat", "ampere+", "--device", "agx-orin"], 2, "not supported on JetPack"),
    ],
)
def test_invalid_options_exit_2_with_one_line(tiny_onnx, no_tensorrt, off_jetson, args, code, fragment):
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", "t.engine", "--print-trtexec", *args])
    assert result.exit_code == code
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_onnx_is_a_user_error(tmp_path, no_tensorrt):
    result = runner.invoke(app, ["build-engine", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x.engine")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_inputs_are_checked_before_tensorrt_and_never_overwritten(tiny_onnx, tmp_path, no_tensorrt):
    from edgecnn.artifacts import sha256_file

    before = sha256_file(tiny_onnx)
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", str(tiny_onnx)])
    assert result.exit_code == 2 and "is the input file" in result.stderr
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", str(tmp_path / "t.engine"),
                                 "--precision", "int8", "--calib-cache", str(tmp_path / "missing.cache")])
    assert result.exit_code == 2 and "--calib-cache" in result.stderr and "does not exist" in result.stderr
    foreign = tmp_path / "foreign.onnx"
    import onnx

    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    result = runner.invoke(app, ["build-engine", str(foreign), "--out", str(tmp_path / "f.engine")])
    assert result.exit_code == 4 and "no edgecnn metadata" in result.stderr
    assert sha256_file(tiny_onnx) == before
