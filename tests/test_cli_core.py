"""CLI behaviour of export / predict / eval and the shared error handling, through Typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from asserts import assert_error
from typer.testing import CliRunner

from edgecnn.cli.main import COMMAND_MODULES, app

runner = CliRunner()


@pytest.fixture
def cat_dog_onnx(tmp_path):
    from conftest import build_tiny_onnx

    return build_tiny_onnx(tmp_path / "catdog.onnx", labels=("cat", "dog"))


def test_every_command_module_is_present_and_registered():
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"edgecnn.cli.{name}")
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in (
        "train",
        "export",
        "predict",
        "eval",
        "quantize",
        "build-engine",
        "live",
        "profile",
        "compare",
        "deploy",
        "doctor",
        "models",
        "calibrate",
    ):
        assert cmd in result.output, cmd


def test_python_dash_m_and_version():
    out = subprocess.run([sys.executable, "-m", "edgecnn", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("edgecnn ")


def test_ctrl_c_while_the_cli_imports_is_one_line_and_exit_130():
    # Ctrl-C arrives while Typer is being imported (before any command's handler exists).
    code = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *a, **k):\n"
        "    if name == 'typer':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = interrupted\n"
        "from edgecnn.__main__ import main\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 130 and out.stderr == "error: interrupted\n"


@pytest.mark.parametrize("raised", ["KeyboardInterrupt()", "RuntimeError('Error calling __set_name__')"])
def test_ctrl_c_while_typer_builds_the_command_is_one_line_and_exit_130(raised):
    # Ctrl-C lands in Typer's get_command (after the imports, before any command runs); an interrupted import inside
    # it can surface as another error raised from the KeyboardInterrupt.
    code = (
        "import typer.main\n"
        "def interrupted(*a, **k):\n"
        "    try:\n"
        "        raise KeyboardInterrupt\n"
        "    except KeyboardInterrupt:\n"
        f"        raise {raised}\n"
        "typer.main.get_command = interrupted\n"
        "from edgecnn.__main__ import main\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True)
    assert out.returncode == 130 and out.stderr == "error: interrupted\n", out


def test_a_library_error_raised_by_ctrl_c_is_an_interruption_not_an_internal_error():
    from edgecnn.cli.common import cli_command

    @cli_command
    def command():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:  # what e.g. an interrupted import inside a library can turn it into
            raise ImportError("partially initialized module") from exc

    import typer

    with pytest.raises(typer.Exit) as exit_info:
        command()
    assert exit_info.value.exit_code == 130


def test_predict_json(cat_dog_onnx, image_folder):
    result = runner.invoke(app, ["predict", str(cat_dog_onnx), str(image_folder / "cat"), "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["results"]) == 6
    top = data["results"][0]["top_k"]
    assert [t["label"] for t in top] != [] and abs(sum(t["score"] for t in top) - 1.0) < 1e-5


def test_predict_reports_bad_files_and_exits_2(cat_dog_onnx, image_folder, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = next((image_folder / "dog").iterdir())
    result = runner.invoke(app, ["predict", str(cat_dog_onnx), str(bad), str(good), "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["results"][0]["error"] and "top_k" in data["results"][1]


def test_predict_classifies_the_rest_when_an_input_is_missing(cat_dog_onnx, image_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    good = sorted((image_folder / "dog").iterdir())[0]
    result = runner.invoke(
        app, ["predict", str(cat_dog_onnx), str(tmp_path / "missing.jpg"), str(good), str(tmp_path / "empty"), "--json"]
    )
    assert result.exit_code == 2
    missing, ok, empty = json.loads(result.stdout)["results"]
    assert missing["error"] == "does not exist" and empty["error"] == "folder without images"
    assert ok["path"] == str(good) and len(ok["top_k"]) == 2


def test_eval_with_no_readable_image_fails_in_both_modes(cat_dog_onnx, tmp_path):
    (tmp_path / "d" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "cat" / "x.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    for extra in ([], ["--json"]):
        result = runner.invoke(app, ["eval", str(cat_dog_onnx), str(tmp_path / "d"), *extra])
        assert_error(result, 2, "1", str(tmp_path / "d"))
        if extra:  # --json: the error object on stdout too (scripts read it there)
            assert json.loads(result.stdout)["error"]["exit_code"] == 2
        else:
            assert result.stdout == ""


def test_result_tables_go_to_stdout_and_brackets_are_text_not_markup(tmp_path):
    """`edgecnn models | grep`, `eval ... > table.txt`: the result is on stdout (messages stay on stderr). Labels and
    paths with '[' are printed as they are: rich read 'cat [house]' as a markup tag and '[/' crashed (exit 70)."""
    from conftest import build_tiny_onnx, make_image_folder

    models = runner.invoke(app, ["models"])
    assert models.exit_code == 0 and "cifar-cnn" in models.stdout

    model = build_tiny_onnx(tmp_path / "m.onnx", labels=("cat [house]", "[bold]bird"))
    data = make_image_folder(tmp_path / "d [/]", classes=("cat [house]", "[bold]bird"), per_class=2)
    result = runner.invoke(app, ["eval", str(model), str(data)])
    assert result.exit_code == 0, result.output
    assert "cat [house]" in result.stdout and "[bold]bird" in result.stdout and "top-1" in result.stdout

    broken = tmp_path / "shots [" / "] broken.jpg"  # the path reads '.../shots [/] broken.jpg'
    broken.parent.mkdir()
    broken.write_bytes(b"not an image")
    predicted = runner.invoke(app, ["predict", str(model), str(broken)])
    assert predicted.exit_code == 2 and "shots [/] broken.jpg" in predicted.stderr
    assert "internal error" not in predicted.output

    compared = runner.invoke(app, ["compare", str(model), str(model), "--data", str(data / "[bold]bird")])
    assert compared.exit_code == 0, compared.output
    assert "top-1 agreement" in compared.stdout and "d [/]" in compared.stdout


def test_eval_keeps_classes_that_share_a_name_apart(tmp_path):
    """Two model classes named alike (ImageNet's two 'crane's) get one row each, and the rows add up."""
    from conftest import build_tiny_onnx, make_image_folder

    model = build_tiny_onnx(tmp_path / "m.onnx", labels=("crane", "crane", "dog"))
    data = make_image_folder(tmp_path / "d", classes=("0", "1", "dog"), per_class=2)
    (data / "dog" / "notes.txt").write_text("not an image")
    (data / "loose.png").write_bytes(next((data / "dog").glob("*.png")).read_bytes())
    result = runner.invoke(app, ["eval", str(model), str(data), "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    assert set(m["per_class"]) == {"crane (#0)", "crane (#1)", "dog"} and m["ignored"] == 1
    assert m["not_in_a_class_folder"] == 1 and m["scored"] == str(data)
    assert sum(row["images"] for row in m["per_class"].values()) == m["images"] == 6
    human = runner.invoke(app, ["eval", str(model), str(data)])
    assert "ignored 1 file(s) that are not images" in human.output
    assert "not scored: 1 image(s) directly in the data folder" in human.output


def test_eval_json_on_labelled_folder(cat_dog_onnx, image_folder):
    (image_folder / "cat" / "broken.png").write_bytes(b"\x89PNG broken")
    result = runner.invoke(app, ["eval", str(cat_dog_onnx), str(image_folder), "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    assert m["images"] == 12 and m["corrupt"] == 1
    assert 0.0 <= m["top1"] <= 1.0 and m["top5"] == 1.0  # 2 classes: top-5 always hits
    assert set(m["per_class"]) == {"cat", "dog"}


def test_eval_unknown_folder_is_one_line(cat_dog_onnx, tmp_path):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "d", classes=("cat", "zebra"), per_class=2)
    result = runner.invoke(app, ["eval", str(cat_dog_onnx), str(data)])
    assert result.exit_code == 2
    assert "zebra" in result.stderr and "Traceback" not in result.output


def test_missing_model_one_line_and_debug_traceback(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "nope.onnx"), str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    debug = runner.invoke(app, ["--debug", "predict", str(tmp_path / "nope.onnx"), str(tmp_path)])
    assert debug.exit_code != 0 and debug.exception is not None


def test_export_cli_writes_parity_checked_onnx(tmp_path, image_folder):
    pytest.importorskip("torch")
    from edgecnn.checkpoint import save_checkpoint
    from edgecnn.contract import ModelContract, read_onnx_contract
    from edgecnn.models.registry import create_model, get_entry

    model = create_model("lenet5", num_classes=2).eval()
    contract = ModelContract(labels=["cat", "dog"], preprocess=get_entry("lenet5").preprocess, arch="lenet5")
    ckpt = save_checkpoint(tmp_path / "m.pt", model, "lenet5", {"num_classes": 2}, contract)
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(ckpt), "--out", str(out), "--data", str(image_folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_diff"] < 1e-4 and "real images" in report["parity_inputs"]
    assert read_onnx_contract(out).labels == ["cat", "dog"]
    # never over its input
    before = ckpt.read_bytes()
    same = runner.invoke(app, ["export", str(ckpt), "--out", str(ckpt)])
    assert same.exit_code == 2 and ckpt.read_bytes() == before
    wrong = runner.invoke(app, ["export", str(out), "--out", str(tmp_path / "x.onnx")])
    assert wrong.exit_code == 2 and "checkpoint" in wrong.stderr
