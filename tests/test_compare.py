"""edgecnn compare: output parity of two builds on real image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from asserts import assert_error, raises
from conftest import build_tiny_onnx
from typer.testing import CliRunner

from edgecnn.data import read_image
from edgecnn.errors import AccuracyGateError, UserInputError
from edgecnn.profiling.parity import check_gate, compare_runners, resolve_data
from edgecnn.runtime import load


def perturbed_copy(src, dst, scale=-1.0):
    """The same model (same contract) with its classifier weights changed: a 'bad build' of it."""
    import onnx
    from onnx import numpy_helper

    from edgecnn.onnx_io import save_onnx

    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "fc.w":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, "fc.w"))
    return save_onnx(model, dst)


def cli(*args):
    from edgecnn.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_model_vs_itself_is_identical(tiny_onnx, image_folder):
    root, images = resolve_data(image_folder)
    with load(tiny_onnx) as a, load(tiny_onnx) as b:
        r = compare_runners(a, b, images, batch=5, root=root)
    assert r["images"] == 12 and r["top1_agreement"] == 1.0
    assert r["max_abs_diff"] == 0.0 and r["mean_abs_diff"] == 0.0 and r["cosine_min"] == pytest.approx(1.0)
    assert r["disagreements"] == [] and r["notes"] == [] and r["unreadable"] == []


def test_perturbed_copy_disagrees_and_names_the_images(tmp_path, tiny_onnx, image_folder):
    bad = perturbed_copy(tiny_onnx, tmp_path / "bad.onnx")
    root, images = resolve_data(image_folder)
    with load(tiny_onnx) as a, load(bad) as b:
        r = compare_runners(a, b, images, batch=4, root=root)
        frame = read_image(images[0])
        la, lb = a.infer_frames([frame]), b.infer_frames([frame])
    assert r["top1_agreement"] < 1.0 and r["disagreements"]
    assert r["max_abs_diff"] >= float(np.abs(la - lb).max()) > 0
    d = r["disagreements"][0]
    assert (image_folder / d["image"]).is_file() and d["a"] != d["b"] and 0 < d["a_prob"] <= 1
    with raises(AccuracyGateError, "agreement"):
        check_gate(r, min_agreement=0.99)
    check_gate(r, min_agreement=0.0)


def test_real_photos_and_unreadable_files(tmp_path, tiny_onnx, scenes_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((scenes_dir / "forest").glob("*.jpg"))[:6]:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    root, images = resolve_data(photos)
    with load(tiny_onnx) as a, load(tiny_onnx) as b:
        r = compare_runners(a, b, images, batch=4, root=root)
    assert r["images"] == 6 and r["unreadable"] == ["broken.jpg"] and r["top1_agreement"] == 1.0


def test_bad_inputs(tmp_path, tiny_onnx, image_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./calibration here
    with raises(UserInputError, "--data"):
        resolve_data(None)
    (tmp_path / "empty").mkdir()
    with raises(UserInputError, "empty"):
        resolve_data(tmp_path / "empty")
    four = build_tiny_onnx(tmp_path / "four.onnx", labels=("a", "b", "c", "d"))
    with load(tiny_onnx) as a, load(four) as b, raises(UserInputError, "4"):
        compare_runners(a, b, resolve_data(image_folder)[1])


def test_default_data_is_the_calibration_folder(tmp_path, tiny_onnx, image_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "calibration").mkdir()
    for p in sorted(image_folder.rglob("*.png"))[:3]:
        (tmp_path / "calibration" / p.name).write_bytes(p.read_bytes())
    res = cli("compare", str(tiny_onnx), str(tiny_onnx), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 3


def test_cli_json_and_gate(tmp_path, tiny_onnx, image_folder):
    bad = perturbed_copy(tiny_onnx, tmp_path / "bad.onnx")
    res = cli("compare", str(tiny_onnx), str(bad), "--data", str(image_folder), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["images"] == 12 and data["top1_agreement"] < 1 and data["disagreements"]
    res = cli("compare", str(tiny_onnx), str(bad), "--data", str(image_folder), "--min-agreement", "0.99")
    assert_error(res, 5, "99.00%", stream="output")
    res = cli("compare", str(tiny_onnx), str(tiny_onnx), "--data", str(image_folder), "--max-diff", "0")
    assert res.exit_code == 0 and "top-1 agreement 100.00%" in res.output
    res = cli("compare", str(tiny_onnx), str(tmp_path / "missing.onnx"), "--data", str(image_folder))
    assert res.exit_code == 2


def test_nan_outputs_fail_the_gate_and_json_stays_strict(tmp_path, tiny_onnx, image_folder):
    """NaN compares False with every bound, so a broken build used to pass `--max-diff`; and NaN is not JSON."""
    broken = perturbed_copy(tiny_onnx, tmp_path / "nan.onnx", scale=float("nan"))
    res = cli("compare", str(tiny_onnx), str(broken), "--data", str(image_folder), "--max-diff", "0.001", "--json")
    assert_error(res, 5, "non-finite", stream="output")

    def strict(token):
        raise ValueError(f"not JSON: {token}")

    data = json.loads(res.stdout, parse_constant=strict)
    assert data["max_abs_diff"] is None and data["images"] == 12
    # the verdict is in the JSON too, not only in the exit code
    assert data["gate"]["passed"] is False and data["gate"]["max_abs_diff"] == 0.001
    assert "non-finite outputs" in data["gate"]["failures"][0]
    same = json.loads(
        cli("compare", str(tiny_onnx), str(tiny_onnx), "--data", str(image_folder), "--max-diff", "0", "--json").stdout
    )
    assert same["gate"] == {"min_agreement": None, "max_abs_diff": 0.0, "passed": True, "failures": []}


def test_top1_in_top5_is_the_tested_models_top1_inside_the_references_top5():
    from edgecnn.evaluate import agreement

    reference = np.array([[9.0, 8, 7, 6, 5, 0, 0]])  # top-5: classes 0-4
    inside = np.array([[0.0, 0, 0, 0, 9, 0, 0]])  # top-1 class 4: inside the reference's top-5
    outside = np.array([[0.0, 0, 0, 0, 0, 9, 0]])  # top-1 class 5: outside it
    assert agreement(reference, inside)["top1_in_top5"] == 1.0
    assert agreement(reference, outside)["top1_in_top5"] == 0.0
    # roles matter: here the tested model's top-1 (class 0) is outside the reference's top-5 (classes 2-6)
    assert agreement(np.array([[0.0, 1, 2, 3, 9, 4, 5]]), reference)["top1_in_top5"] == 0.0
