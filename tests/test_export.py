"""`edgecnn export` option checks, parity data, output paths, exporter chatter and SIGTERM cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asserts import assert_error, raises
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from edgecnn.checkpoint import save_checkpoint  # noqa: E402
from edgecnn.cli.main import app  # noqa: E402
from edgecnn.contract import ModelContract  # noqa: E402
from edgecnn.errors import UserInputError  # noqa: E402
from edgecnn.export import ExportOptions, export_onnx, opset_range  # noqa: E402
from edgecnn.models.registry import create_model, get_entry  # noqa: E402

runner = CliRunner()


@pytest.fixture
def ckpt(tmp_path):
    model = create_model("lenet5", num_classes=2).eval()
    contract = ModelContract(labels=["cat", "dog"], preprocess=get_entry("lenet5").preprocess, arch="lenet5")
    return save_checkpoint(tmp_path / "m.pt", model, "lenet5", {"num_classes": 2}, contract)


def _export(ckpt, tmp_path, *extra, out="m.onnx"):
    return runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / out), *extra])


def _no_staging_left(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".export-") or p.name.startswith(".m.onnx")]


def test_opset_range_is_torchs_and_checked_up_front(ckpt, tmp_path):
    low, high = opset_range()
    assert (low, high) == (7, 20)  # torch 2.13's TorchScript exporter; ONNX Runtime has no kernels below 7
    for opset in ("5", "21", "25", "99"):
        result = _export(ckpt, tmp_path, "--opset", opset, "--json")
        assert_error(result, 2, f"--opset {opset}", "7", "20")
        assert set(json.loads(result.stdout)) == {"error"}  # the error object only: no Torch IR graph on stdout
        assert ".export-" not in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists() and _no_staging_left(tmp_path)
    ok = _export(ckpt, tmp_path, "--opset", str(low), "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["opset"] == low


def test_exporter_chatter_never_reaches_stdout(ckpt, tmp_path, monkeypatch, capfd):
    """torch logs the whole Torch IR graph to file descriptor 1 when an export fails; `--json` stdout stays clean."""
    monkeypatch.setattr("edgecnn.export.opset_range", lambda: (7, 99))  # let torch itself fail
    capfd.readouterr()
    result = _export(ckpt, tmp_path, "--opset", "99", "--json")
    captured = capfd.readouterr()
    assert_error(result, 4, "99")
    assert set(json.loads(result.stdout)) == {"error"}  # the error object, nothing else
    assert "Torch IR graph" not in captured.out and "graph(" not in captured.out
    assert result.stderr.count("\n") == 1
    assert _no_staging_left(tmp_path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0"])
def test_tolerance_must_be_finite_and_positive(ckpt, tmp_path, value):
    result = _export(ckpt, tmp_path, f"--tolerance={value}")
    assert_error(result, 2, "--tolerance")
    assert not (tmp_path / "m.onnx").exists()


def test_explicit_data_is_used_or_the_export_fails(ckpt, tmp_path, image_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _export(ckpt, tmp_path, "--data", str(empty))
    assert_error(result, 2, "--data", "empty")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (corrupt / "b.png").write_bytes(b"")
    result = _export(ckpt, tmp_path, "--data", str(corrupt))
    assert_error(result, 2, "--data", "corrupt", "2")
    missing = _export(ckpt, tmp_path, "--data", str(tmp_path / "nope"))
    assert_error(missing, 2, "nope")
    assert not (tmp_path / "m.onnx").exists() and _no_staging_left(tmp_path)
    # corrupt files among good ones are skipped; the parity check runs on the folder given
    (image_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    ok = _export(ckpt, tmp_path, "--data", str(image_folder), "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["parity_inputs"] == f"8 real images from {image_folder}"


def test_out_is_checked_before_any_work(ckpt, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    under = _export(ckpt, tmp_path, out="afile/x.onnx")
    assert_error(under, 2, "afile")
    assert "internal" not in under.stderr
    (tmp_path / "dir.onnx").mkdir()
    folder = _export(ckpt, tmp_path, out="dir.onnx")
    assert_error(folder, 2, "dir.onnx")
    assert "internal" not in folder.stderr
    assert afile.read_text() == "x" and _no_staging_left(tmp_path)


def test_an_existing_out_is_replaced_only_with_force(ckpt, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"an earlier export")
    refused = _export(ckpt, tmp_path, out="m.onnx")
    assert_error(refused, 2, "m.onnx", "--force")
    assert (tmp_path / "m.onnx").read_bytes() == b"an earlier export"
    replaced = _export(ckpt, tmp_path, "--force", out="m.onnx")
    assert replaced.exit_code == 0, replaced.output
    from edgecnn.contract import read_onnx_contract

    assert read_onnx_contract(tmp_path / "m.onnx").labels


def test_batch_with_dynamic_batch_is_refused(ckpt, tmp_path):
    result = _export(ckpt, tmp_path, "--batch", "4", "--dynamic-batch")
    assert_error(result, 2, "--batch", "--dynamic-batch")
    with raises(UserInputError, "--batch", "--dynamic-batch"):
        export_onnx(ckpt, tmp_path / "m.onnx", ExportOptions(batch=2, dynamic_batch=True))
    report = export_onnx(ckpt, tmp_path / "m.onnx", ExportOptions(dynamic_batch=True))
    assert report.input_shape[0] == "N"


def test_sigterm_during_export_cleans_up(tmp_path):
    """SIGTERM (timeout, kill, docker stop) cleans up like Ctrl-C: no `.export-*` staging folder with the model."""
    big = create_model("mobilenetv2", num_classes=10).eval()  # large enough that the export takes a while
    contract = ModelContract(
        labels=[str(i) for i in range(10)], preprocess=get_entry("mobilenetv2").preprocess, arch="mobilenetv2"
    )
    src = save_checkpoint(tmp_path / "big.pt", big, "mobilenetv2", {"num_classes": 10}, contract)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecnn", "export", str(src), "--out", str(outdir / "m.onnx")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until the staging folder exists
        if any(p.name.startswith(".export-") for p in outdir.iterdir()):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the export finished before it could be interrupted")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert os.listdir(outdir) == []


@pytest.mark.parametrize("out", ["/proc/x.onnx", "/sys/x.onnx", "/proc/edgecnn-missing/x.onnx"])
def test_an_unwritable_out_is_one_line(ckpt, out):
    """/proc (FileNotFoundError: exit 2) and /sys (PermissionError: the environment refuses, StorageError 74) cannot
    take files: one line, as train says it."""
    result = runner.invoke(app, ["export", str(ckpt), "--out", out])
    assert result.exit_code == (74 if out.startswith("/sys") else 2), result.output
    assert out in result.stderr and "internal" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_failed_export_leaves_no_folders_behind(ckpt, tmp_path):
    """The folders made for --out are taken back when the export fails: a damaged checkpoint (exit 4) and a parity
    check that fails (exit 5) leave the disk as it was."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = _export(bad, tmp_path, out="fresh1/a/b.onnx")
    assert result.exit_code == 4, result.output
    assert not (tmp_path / "fresh1").exists()
    result = _export(ckpt, tmp_path, "--tolerance", "1e-30", out="fresh2/a/b.onnx")
    assert result.exit_code == 5, result.output
    assert not (tmp_path / "fresh2").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    result = _export(bad, tmp_path, out="kept/new/b.onnx")
    assert result.exit_code == 4 and (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()
