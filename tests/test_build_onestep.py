"""One step from a checkpoint to an engine: `edgecnn build-engine model.pt --precision int8 --calib DIR` exports,
quantizes and (here, without TensorRT) prints the trtexec command for the Q/DQ ONNX it kept beside --out; a second
run reuses the intermediates. `deploy bundle --calib` takes the same path. Real export, quantization and CLI."""

from __future__ import annotations

import json
import tarfile

import pytest
from conftest import make_image_folder
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from edgecnn.checkpoint import save_checkpoint  # noqa: E402
from edgecnn.cli.main import app  # noqa: E402
from edgecnn.contract import ModelContract, read_onnx_contract  # noqa: E402
from edgecnn.models.cifar_cnn import CIFAR_PREPROCESS  # noqa: E402
from edgecnn.models.registry import create_model  # noqa: E402

cli = CliRunner()


@pytest.fixture
def ckpt(tmp_path):
    labels = ["cat", "dog"]
    return save_checkpoint(
        tmp_path / "cnn.pt",
        create_model("cifar-cnn", num_classes=2).eval(),
        "cifar-cnn",
        {"num_classes": 2},
        ModelContract(labels=labels, preprocess=CIFAR_PREPROCESS, arch="cifar-cnn"),
    )


@pytest.fixture
def calib(tmp_path):
    return make_image_folder(tmp_path / "calib", per_class=4, size=(32, 32))


def build(ckpt, out, calib, *extra):
    argv = ["build-engine", str(ckpt), "--out", str(out), "--precision", "int8", "--calib", str(calib)]
    return cli.invoke(app, [*argv, "--device", "orin-nano", "--print-trtexec", "--json", *extra])


def test_checkpoint_to_trtexec_command_in_one_step_then_reused(tmp_path, ckpt, calib):
    out = tmp_path / "engines" / "cnn.engine"
    res = build(ckpt, out, calib, "--val", str(calib), "--max-drop", "100")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    steps = {s["step"]: s for s in report["steps"]}
    assert set(steps) == {"export", "quantize"} and not any(s["reused"] for s in steps.values())
    fp32, int8 = tmp_path / "engines" / "cnn.fp32.onnx", tmp_path / "engines" / "cnn.int8.onnx"
    assert report["onnx"] == str(int8) and fp32.is_file() and (tmp_path / "engines" / "cnn.calib").is_file()
    assert read_onnx_contract(int8).precision == "int8"
    assert report["trtexec"][0] == "trtexec" and f"--onnx={int8}" in report["trtexec"]
    assert f"--saveEngine={out}" in report["trtexec"] and "--int8" in report["trtexec"]
    assert not out.exists()  # printed, not built

    again = json.loads(build(ckpt, out, calib, "--val", str(calib), "--max-drop", "100").stdout)
    assert all(s["reused"] for s in again["steps"])
    (calib / "cat" / "000.jpg").unlink()  # the calibration set changed: quantize again, export still reused
    third = {s["step"]: s["reused"] for s in json.loads(build(ckpt, out, calib, "--val", str(calib)).stdout)["steps"]}
    assert third == {"export": True, "quantize": False}


def test_one_step_errors_before_any_work(tmp_path, ckpt, calib):
    out = tmp_path / "cnn.engine"
    res = cli.invoke(app, ["build-engine", str(ckpt), "--out", str(out), "--precision", "int8", "--print-trtexec"])
    assert res.exit_code == 2 and "--calib" in res.output
    res = build(ckpt, out, calib, "--max-drop", "1")
    assert res.exit_code == 2 and "--val" in res.output
    res = build(ckpt, tmp_path / "cnn.onnx", calib)
    assert res.exit_code == 2 and ".engine" in res.output
    assert not (tmp_path / "cnn.fp32.onnx").exists()


def test_build_engine_on_a_foreign_onnx_names_the_adopt_command(tmp_path):
    import onnx
    from conftest import build_tiny_onnx

    src = build_tiny_onnx(tmp_path / "f.onnx")
    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.save(model, str(src))
    res = cli.invoke(app, ["build-engine", str(src), "--out", str(tmp_path / "f.engine"), "--device", "orin-nano"])
    assert res.exit_code == 4 and "edgecnn adopt" in res.output


def test_deploy_bundle_from_a_checkpoint_with_calibration(tmp_path, ckpt, calib):
    out = tmp_path / "app.tar.gz"
    argv = ["deploy", "bundle", str(ckpt), "--out", str(out), "--precision", "int8", "--calib", str(calib)]
    res = cli.invoke(app, [*argv, "--device", "orin-nano", "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "app.int8.onnx").is_file() and (tmp_path / "app.fp32.onnx").is_file()
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert {"cnn/model.onnx", "cnn/model.int8.onnx", "cnn/model.calib"} <= set(names)
