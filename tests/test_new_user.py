"""What a new user hits first: pipes, --json failures, common mistakes, small wording and speed items."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, build_tiny_onnx, make_image_folder
from typer.testing import CliRunner

from edgecnn.cli.main import app

runner = CliRunner()


@pytest.fixture
def tiny(tmp_path) -> Path:
    return build_tiny_onnx(tmp_path / "tiny.onnx")


def _edgecnn(*args, stdout=subprocess.PIPE, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgecnn", *map(str, args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def _closed_pipe_run(*args) -> subprocess.CompletedProcess:
    """Run with stdout on a pipe whose reader has already gone (what `| head -1` leaves after its line)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return _edgecnn(*args, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_closed_pipe_ends_the_command_quietly(command, tiny, tmp_path):
    images = make_image_folder(tmp_path / "imgs", classes=("cat", "dog", "bird"), per_class=3)
    proc = _closed_pipe_run(command, tiny, images)
    assert proc.returncode == 0, proc.stderr
    assert "BrokenPipe" not in proc.stderr and "internal error" not in proc.stderr and "Exception" not in proc.stderr


def test_json_usage_error_is_an_error_object_on_stdout(tiny):
    proc = _edgecnn("predict", tiny, "x.jpg", "--top-k", "0", "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)["error"]
    assert err["exit_code"] == 2 and "--top-k" in err["message"] and err["type"] == "UsageError"


def test_json_library_error_is_an_error_object_on_stdout(tmp_path):
    res = runner.invoke(app, ["predict", str(tmp_path / "missing.onnx"), "a.jpg", "--json"])
    assert res.exit_code == 2
    err = json.loads(res.stdout)["error"]
    assert err["exit_code"] == 2 and "missing.onnx" in err["message"] and err["type"] == "UserInputError"


def test_quantize_a_checkpoint_says_export_first(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"PK\x03\x04 a torch checkpoint stands here")
    res = runner.invoke(app, ["quantize", str(ckpt), "--out", str(tmp_path / "q.onnx"), "--calib", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "export it first" in res.stderr and "edgecnn export" in res.stderr and "DecodeError" not in res.output


def test_a_fifo_named_jpg_is_not_a_regular_file_and_is_never_opened(tiny, tmp_path):
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)  # opening it for reading would block forever
    res = runner.invoke(app, ["predict", str(tiny), str(fifo), "--json"])
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["results"][0]["error"]
    assert "not a regular file" in error and "FIFO" in error and "does not exist" not in error


def test_profile_report_refuses_an_existing_report_without_force(tiny, tmp_path):
    report = tmp_path / "rep"
    args = ["profile", str(tiny), "--iterations", "2", "--warmup", "0", "--report", str(report)]
    assert runner.invoke(app, args).exit_code == 0
    before = (report / "profile.json").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.stderr and "already holds a report" in res.stderr
    assert (report / "profile.json").read_bytes() == before
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


def test_help_shows_no_bool_type_after_flags():
    for argv in (["predict", "--help"], ["train", "--help"], ["deploy", "bundle", "--help"]):
        out = runner.invoke(app, argv, env={"COLUMNS": "200"}).output
        assert "--json" in out and "<bool>" not in out, argv


def test_every_json_and_force_option_comes_from_common():
    """--json, --force, --threads and --backend are declared once (cli/common.py) and reused everywhere."""
    for path in (ROOT / "edgecnn" / "cli").glob("*_cmd.py"):
        text = path.read_text()
        for flag in ('"--json"', '"--force"', '"--threads"', '"--backend"'):
            assert flag not in text, f"{path.name} declares {flag} itself"
        assert "cli_command(" not in text and "@cli_command" not in text, f"{path.name}: register with add_command"


def test_an_int8_engine_not_a_int8(tiny, tmp_path):
    calib = tmp_path / "model.calib"
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    res = runner.invoke(
        app,
        ["deploy", "bundle", str(tiny), "--out", str(tmp_path / "b.tar.gz"), "--precision", "int8", "--calib-cache",
         str(calib)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "builds an int8 engine" in res.stderr and "a int8" not in res.stderr


def test_bundle_host_unreachable_says_the_bundle_was_kept(tiny, tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH's ssh is not installed here")
    with socket.socket() as probe:  # ssh reads the config of the passwd home, not $HOME: the port is 22
        if probe.connect_ex(("127.0.0.1", 22)) == 0:
            pytest.skip("something listens on 127.0.0.1:22 here; the test needs an unreachable host")
    out = tmp_path / "b.tar.gz"
    proc = _edgecnn("deploy", "bundle", tiny, "--out", out, "--host", "nobody@127.0.0.1")
    assert proc.returncode != 0 and proc.returncode != 70, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "bundle is kept" in line and str(out) in line, line
    assert out.is_file() and Path(str(out) + ".sha256").is_file()


def test_install_without_checksum_warns_and_require_sha256_refuses(tiny, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    assert runner.invoke(app, ["deploy", "bundle", str(tiny), "--out", str(bundle)]).exit_code == 0
    Path(str(bundle) + ".sha256").unlink()
    res = runner.invoke(app, ["deploy", "install", str(bundle), "--prefix", str(tmp_path / "p"), "--require-sha256"])
    assert res.exit_code == 4 and "--require-sha256" in res.stderr and not (tmp_path / "p" / "tiny").exists()
    res = runner.invoke(app, ["deploy", "install", str(bundle), "--prefix", str(tmp_path / "p"), "--no-build"])
    assert res.exit_code == 0, res.output
    assert "NO ARCHIVE CHECKSUM" in res.stderr and "NOT verified" in res.stderr


def test_models_does_not_import_dynamo():
    """`edgecnn models` built every model on the meta device, whose first operation imports torch._dynamo."""
    pytest.importorskip("torch")
    code = (
        "import sys\nfrom edgecnn.cli.models_cmd import zoo_rows\nrows = zoo_rows()\n"
        "print(len(rows), 'torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    count, dynamo = out.stdout.split()
    assert int(count) > 3 and dynamo == "False", out.stderr


def test_corrupt_jpeg_warnings_stay_off_stderr(tiny, tmp_path):
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = buf.tobytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[:600] + b"\x12\x34" * 10 + data[600:])  # decodable, with junk libjpeg warns about
    proc = _edgecnn("predict", tiny, bad)
    assert proc.returncode == 0 and "bad.jpg: " in proc.stdout, proc.stderr
    assert "Corrupt JPEG data" not in proc.stderr
    raw = _edgecnn("predict", tiny, bad, env=dict(os.environ, EDGECNN_RAW_STDERR="1"))
    assert "Corrupt JPEG data" in raw.stderr  # the filter, not the file, made the difference


def test_a_c_level_crash_message_survives_the_stderr_filter():
    """What a native library writes to descriptor 2 before it aborts (C++ "terminate called ...") reaches the real
    stderr: the filter's reader outlives the process that crashed."""
    code = (
        "from edgecnn.cli import stderr_filter\n"
        "stderr_filter.install()\n"
        "import os\n"
        "os.write(2, b'Corrupt JPEG data: 2 extraneous bytes before marker 0xd9\\nterminate called: native\\n')\n"
        "os.abort()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == -6, proc
    assert "terminate called: native" in proc.stderr and "Corrupt JPEG" not in proc.stderr, proc.stderr


def test_demo_steps_are_rerunnable():
    """`make demo` twice: every step that writes an output either checks it first or passes --force."""
    tree = ast.parse((ROOT / "examples" / "demo.py").read_text())
    outputs = {"--out", "--report", "--record"}
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            for call in ast.walk(node):
                if isinstance(call, ast.Call):
                    guarded.add(id(call))
    steps = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "edgecnn" and n.args
    ]
    assert len(steps) > 5
    for call in steps:
        args = [a.value for a in call.args if isinstance(a, ast.Constant)]
        if "--print-trtexec" in args or not outputs & set(args) or id(call) in guarded:
            continue
        assert "--force" in args, f"demo step {args[:2]} writes an existing output on a second run without --force"


# ---------------------------------------------------------------- training


def test_time_budget_mid_epoch_is_recorded_as_partial(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from edgecnn import train as train_module

    real_lr = train_module._Run._lr
    # the budget runs out after epoch 2's second step (forced: a real clock hits a step only by chance)
    monkeypatch.setattr(
        train_module._Run, "_lr", lambda self, e, i, t0: None if (e, i) == (2, 2) else real_lr(self, e, i, t0)
    )
    data = make_image_folder(tmp_path / "data", per_class=10)
    out = tmp_path / "m.pt"
    res = runner.invoke(
        app,
        ["train", str(data), "--out", str(out), "--epochs", "5", "--time-budget", "10", "--batch-size", "4",
         "--val-split", "0", "--arch", "cifar-cnn"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads(out.with_name("m.metrics.json").read_text())
    last = metrics["epochs"][-1]
    assert last["epoch"] == 2 and last["partial"] and last["steps"] == 2 and last["steps_planned"] == 5
    assert metrics["summary"]["partial_epoch"] and metrics["summary"]["epochs_completed"] == 1.4
    assert "1.4 epochs" in res.stderr and "part way through epoch 2" in res.stderr and "1 epochs" not in res.stderr
    # the config records the options typed as a list, not as "frozenset({...})"
    given = metrics["summary"]["config"]["given"]
    assert isinstance(given, list) and "time_budget" in given


def test_one_epoch_is_singular(tmp_path):
    pytest.importorskip("torch")
    data = make_image_folder(tmp_path / "data", per_class=4)
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "m.pt"), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "1 epoch " in res.stderr and "1 epochs" not in res.stderr


def test_curves_plot_has_whole_epoch_ticks():
    pytest.importorskip("matplotlib")
    from edgecnn.train import _curves_figure

    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.1 * e} for e in (1, 2)]
    fig = _curves_figure(history)
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
