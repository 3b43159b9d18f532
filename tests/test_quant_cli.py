"""`edgecnn quantize` end to end through Typer's CliRunner: outputs, metadata carried over, accuracy gate, report,
bad input (clear error, non-zero exit, nothing overwritten), and one slow run on the real pretrained network."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import build_tiny_onnx, make_image_folder
from typer.testing import CliRunner

from edgecnn.cli.main import app
from edgecnn.contract import read_onnx_contract

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def setup(tmp_path):
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    calib = make_image_folder(tmp_path / "calib", per_class=8, seed=1)
    return model, calib, tmp_path


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_quantize_json_outputs_and_metadata(setup, target):
    model, calib, tmp = setup
    out, cache, report = tmp / "tiny.int8.onnx", tmp / "tiny.calib", tmp / "report"
    res = invoke(
        "quantize",
        model,
        "--calib",
        calib,
        "--out",
        out,
        "--target",
        target,
        "--method",
        "entropy",
        "--cache",
        cache,
        "--report",
        report,
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["target"] == target and data["calibration"]["images"] == 16
    agree = data["accuracy"]["agreement"]
    assert agree["top1_agreement"] >= 0.9
    bins = agree["by_fp32_confidence"]
    assert sum(b["images"] for b in bins) == 16
    assert all(b["agreement"] is None or 0.0 <= b["agreement"] <= 1.0 for b in bins)
    c0, c1 = read_onnx_contract(model), read_onnx_contract(out)
    assert c1.labels == c0.labels and c1.preprocess == c0.preprocess and c1.precision == "int8"
    prov = c1.provenance["quantization"]
    assert prov["target"] == target and prov["method"] == "entropy" and prov["calibration"]["images"] == 16
    qmax = 64 if target == "cpu" else 127  # cpu: reduced range by default (no int16 saturation on any x86 CPU)
    assert data["weights"]["qmax"] == qmax and f"{qmax}]" in prov["weights"]
    assert f"{qmax}]" in (report / "quantization.md").read_text()
    assert cache.read_text().startswith("TRT-8601-EntropyCalibration2\n")
    assert (report / "quantization.json").is_file() and "Per-tensor ranges" in (report / "quantization.md").read_text()
    latency = json.loads((report / "quantization.json").read_text())["latency"]
    assert latency["int8"]["median_ms"] > 0 and latency["fp32"]["runs"] == latency["int8"]["runs"] == latency["runs"]
    assert latency["interleaved_rounds"] == 5 and "interleaved in 5 rounds" in (report / "quantization.md").read_text()
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}


def test_fixed_batch_model_quantizes_and_keeps_its_input_shape(tmp_path):
    """The `edgecnn export` default is a fixed batch baked into the graph; quantize must calibrate and round (GPTQ)
    it, measure and time it at that batch size, and the INT8 model takes the same input as the FP32 one."""
    model = build_tiny_onnx(tmp_path / "fixed.onnx", batch=2)
    calib = make_image_folder(tmp_path / "calib", per_class=7, seed=1)  # 14 images: 7 batches of 2
    val = make_image_folder(tmp_path / "val", classes=("cat", "dog", "bird"), per_class=3, seed=5)  # 9: a padded chunk
    out = tmp_path / "fixed.int8.onnx"
    res = invoke(
        "quantize",
        model,
        "--calib",
        calib,
        "--out",
        out,
        "--target",
        "cpu",
        "--val",
        val,
        "--report",
        tmp_path / "report",
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["calibration"]["images"] == 14 and data["accuracy"]["images"] == 9
    assert data["rounding"]["method"] == "gptq" and data["rounding"]["layers"] == 3
    assert data["accuracy"]["agreement"]["top1_agreement"] >= 0.75
    assert data["latency"]["int8"]["median_ms"] > 0 and data["latency"]["batch"] == 2
    assert "ONNX Runtime CPU, batch 2" in (tmp_path / "report" / "quantization.md").read_text()
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 32, 32]


def test_labelled_val_reports_top1_top5_and_per_class(setup):
    model, calib, tmp = setup
    val = make_image_folder(tmp / "val", classes=("cat", "dog", "bird"), per_class=4, seed=5)
    shutil.copy(next((val / "cat").glob("*.png")), val / "loose.png")  # in no class folder: not scored, and said so
    res = invoke("quantize", model, "--calib", calib, "--out", tmp / "q.onnx", "--val", val, "--json")
    assert res.exit_code == 0, res.output
    acc = json.loads(res.stdout)["accuracy"]
    assert acc["kind"] == "labelled" and acc["images"] == 12
    assert "1 image(s) directly in" in acc["note"] and "not scored" in acc["note"]
    assert set(acc["per_class"]) == {"cat", "dog", "bird"}
    assert 0.0 <= acc["int8"]["top1"] <= 1.0 and acc["fp32"]["top5"] == 1.0  # 3 classes: top-5 is everything
    assert acc["drop"] == pytest.approx(100 * (acc["fp32"]["top1"] - acc["int8"]["top1"]), abs=1e-6)


def test_human_output_has_summary_and_progress(setup):
    model, calib, tmp = setup
    res = invoke("quantize", model, "--calib", calib, "--out", tmp / "q.onnx")
    assert res.exit_code == 0, res.output
    assert "calibration: 16 images (cat: 8, dog: 8)" in res.output and "brightness" in res.output
    assert "warning" in res.output and "100 recommended" in res.output
    assert "top-1 agreement" in res.output
    assert "agreement by FP32 top-1 probability: p 0.0-0.2:" in res.output


def test_max_drop_fallback_and_failure(setup):
    """Calibrating on one dark image saturates on bright images: the gate must notice and act."""
    import cv2

    model, _, tmp = setup
    dark = tmp / "dark"
    dark.mkdir()
    cv2.imwrite(str(dark / "d.png"), np.full((32, 32, 3), 118, np.uint8))
    val = make_image_folder(tmp / "val", classes=("street", "park"), per_class=10, seed=7)  # not model classes
    out = tmp / "q.onnx"
    res = invoke(
        "quantize",
        model,
        "--calib",
        dark,
        "--out",
        out,
        "--val",
        val,
        "--method",
        "minmax",
        "--max-drop",
        "0",
        "--max-steps",
        "1",
        "--json",
    )
    first = json.loads(
        invoke(
            "quantize",
            model,
            "--calib",
            dark,
            "--out",
            tmp / "probe.onnx",
            "--val",
            val,
            "--method",
            "minmax",
            "--json",
        ).stdout
    )["accuracy"]["drop"]
    assert first > 0  # the setup really hurts INT8 (drop = share of images whose top-1 changed)
    assert res.exit_code == 5 and "max-drop" in res.output and "Nothing was written" in res.output
    assert not out.exists()
    failed = json.loads(res.stdout)["error"]  # --json: the error object holds the measured steps too
    assert "Nothing was written" in failed["message"] and failed["exit_code"] == 5 and failed["max_drop"] == 0
    assert failed["steps"][0]["drop"] == first and len(failed["steps"]) == 2 and failed["sensitivity"]
    res = invoke(
        "quantize",
        model,
        "--calib",
        dark,
        "--out",
        out,
        "--val",
        val,
        "--method",
        "minmax",
        "--max-drop",
        "0",
        "--max-steps",
        "8",
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["accuracy"]["drop"] <= 0 and data["excluded"] and len(data["fallback"]["steps"]) >= 2
    assert read_onnx_contract(out).provenance["quantization"]["excluded"] == data["excluded"]


def test_cache_leaves_out_the_tensors_of_layers_kept_in_float(setup):
    """TensorRT's implicit INT8 runs every layer whose tensors have a scale in INT8: a layer --exclude keeps in float
    in the Q/DQ model must have none in the table either, or the engine is not the model the gate measured."""
    from edgecnn.trt import calib_cache

    model, calib, tmp = setup
    full = json.loads(
        invoke(
            "quantize",
            model,
            "--calib",
            calib,
            "--out",
            tmp / "a.onnx",
            "--cache",
            tmp / "a.calib",
            "--target",
            "tensorrt",
            "--json",
        ).stdout
    )
    part = json.loads(
        invoke(
            "quantize",
            model,
            "--calib",
            calib,
            "--out",
            tmp / "b.onnx",
            "--cache",
            tmp / "b.calib",
            "--target",
            "tensorrt",
            "--exclude",
            "conv2",
            "--json",
        ).stdout
    )
    _, _, all_scales = calib_cache.read_table(tmp / "a.calib")
    _, _, kept = calib_cache.read_table(tmp / "b.calib")
    gone = set(all_scales) - set(kept)
    assert gone == {"r1", "c2"} == set(part["cache"]["left_out_for_float_layers"])  # conv2's input and output
    assert all(kept[t] == all_scales[t] for t in kept) and full["cache"]["left_out_for_float_layers"] == []


def test_bad_inputs_are_one_line_errors_and_write_nothing(setup):
    model, calib, tmp = setup
    out = tmp / "existing.onnx"
    out.write_bytes(b"keep me")

    def fails(*args, match, code=2):
        res = invoke("quantize", *args, "--force")  # --force: each error below is found before replacing `out`
        assert res.exit_code == code, res.output
        assert match in res.output and "Traceback" not in res.output
        assert out.read_bytes() == b"keep me"

    res = invoke("quantize", model, "--calib", calib, "--out", out)  # an earlier result is replaced only with --force
    assert res.exit_code == 2 and "already exists: pass --force" in res.output and out.read_bytes() == b"keep me"
    (tmp / "empty").mkdir()
    fails(model, "--calib", tmp / "empty", "--out", out, match="No images")
    fails(model, "--calib", tmp / "nowhere", "--out", out, match="does not exist")
    fails(model, "--calib", model, "--out", out, match="neither an image folder, an image nor a video")
    fails(model, "--calib", calib, "--out", out, "--every", "5", match="--every is for a video source")
    fails(model, "--calib", calib, "--out", model, match="is the input file")
    fails(model, "--calib", calib, "--out", out, "--exclude", "conv9", match="Unknown --exclude node(s): conv9")
    fails(model, "--calib", calib, "--out", out, "--target", "gpu", match="--target")
    fails(model, "--calib", calib, "--out", out, "--method", "mse", match="--method")
    fails(model, "--calib", calib, "--out", out, "--reduce-range", match="--reduce-range is for --target cpu")
    fails(
        model,
        "--calib",
        calib,
        "--out",
        out,
        "--input-size",
        "32,32",
        "--mean",
        "1",
        "--std",
        "1",
        match="carries its own preprocessing",
    )
    # outputs are checked before any work: never over an input image, a folder, a file's "subfolder" or each other
    image = sorted(p for p in calib.rglob("*") if p.is_file())[0]
    image_bytes = image.read_bytes()
    fails(model, "--calib", calib, "--out", image, match="would overwrite a file inside the input folder")
    fails(model, "--calib", calib, "--out", out, "--cache", image, match="--cache")
    fails(model, "--calib", calib, "--out", tmp / "new.onnx", "--val", calib, "--cache", image, match="input folder")
    assert image.read_bytes() == image_bytes
    fails(model, "--calib", calib, "--out", out, "--cache", out, match="--cache and --out both name")
    fails(model, "--calib", calib, "--out", out, "--cache", tmp / "empty", match="--cache")
    fails(model, "--calib", calib, "--out", out, "--report", out, match="--report")
    fails(model, "--calib", calib, "--out", out / "x.onnx", match="is a file, not a folder")
    for bad in ("nan", "inf", "-1"):
        fails(model, "--calib", calib, "--out", out, "--max-drop", bad, match="--max-drop must be a number >= 0")
    fails(model, "--calib", calib, "--out", out, "--max-drop", "1", "--max-steps", "0", match="--max-steps")
    fails(
        model,
        "--calib",
        calib,
        "--out",
        out,
        "--cache",
        tmp / "t.calib",
        "--trt-version",
        "banana",
        match="TensorRT version",
    )
    fails(model, "--calib", calib, "--out", out, "--trt-version", "10", match="major.minor.patch")
    assert not (tmp / "t.calib").exists() and not (tmp / "new.onnx").exists()
    # an already quantized model
    q = tmp / "q.onnx"
    assert invoke("quantize", model, "--calib", calib, "--out", q).exit_code == 0
    fails(q, "--calib", calib, "--out", out, match="already quantized")
    assert model.read_bytes() == build_tiny_onnx(tmp / "again.onnx").read_bytes()  # the input is untouched


def test_model_without_metadata_asks_for_preprocessing(setup):
    model, calib, tmp = setup
    bare = onnx.load(str(model))
    del bare.metadata_props[:]
    bare_path = tmp / "bare.onnx"
    onnx.save(bare, str(bare_path))
    res = invoke("quantize", bare_path, "--calib", calib, "--out", tmp / "q.onnx")
    assert res.exit_code == 2 and "--input-size" in res.output and "edgecnn adopt" in res.output
    res = invoke(
        "quantize",
        bare_path,
        "--calib",
        calib,
        "--out",
        tmp / "q.onnx",
        "--input-size",
        "32,32",
        "--mean",
        "120",
        "--std",
        "60",
        "--resize",
        "resize",
        "--json",
    )
    assert res.exit_code == 0, res.output
    contract = read_onnx_contract(tmp / "q.onnx")
    assert contract.labels == ["class_0", "class_1", "class_2"] and contract.preprocess.mean == (120.0,) * 3
    res = invoke(
        "quantize",
        bare_path,
        "--calib",
        calib,
        "--out",
        tmp / "q3.onnx",
        "--input-size",
        "32,32",
        "--mean",
        "120",
        "--std",
        "60",
        "--interpolation",
        "cubic",
    )
    assert res.exit_code == 0, res.output
    assert read_onnx_contract(tmp / "q3.onnx").preprocess.interpolation == "cubic"
    res = invoke(
        "quantize",
        bare_path,
        "--calib",
        calib,
        "--out",
        tmp / "q4.onnx",
        "--input-size",
        "32,32",
        "--mean",
        "120",
        "--std",
        "60",
        "--interpolation",
        "bicubic",
    )
    assert res.exit_code == 2 and "interpolation must be one of" in res.output
    res = invoke("quantize", model, "--calib", calib, "--out", tmp / "q4.onnx", "--interpolation", "cubic")
    assert res.exit_code == 2 and "model without edgecnn metadata" in res.output and not (tmp / "q4.onnx").exists()
    res = invoke(
        "quantize",
        bare_path,
        "--calib",
        calib,
        "--out",
        tmp / "q2.onnx",
        "--input-size",
        "100,100",
        "--mean",
        "120",
        "--std",
        "60",
    )
    assert res.exit_code == 2 and "takes 32x32 inputs" in res.output and not (tmp / "q2.onnx").exists()
    (tmp / "two.txt").write_text("cat\ndog\n")  # the model outputs 3 classes: said before any calibration
    res = invoke(
        "quantize",
        bare_path,
        "--calib",
        calib,
        "--out",
        tmp / "q5.onnx",
        "--input-size",
        "32,32",
        "--mean",
        "120",
        "--std",
        "60",
        "--labels",
        tmp / "two.txt",
    )
    assert res.exit_code == 2 and "--labels has 2 names but bare.onnx outputs 3 classes" in res.output
    assert not (tmp / "q5.onnx").exists()


def test_a_model_with_fp16_weights_is_refused(setup):
    from onnx import TensorProto, numpy_helper

    model, calib, tmp = setup
    half = onnx.load(str(model))
    for init in half.graph.initializer:
        if init.name == "conv2.w":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), "conv2.w.half"))
    half.graph.node.insert(0, onnx.helper.make_node("Cast", ["conv2.w.half"], ["conv2.w"], to=TensorProto.FLOAT))
    onnx.save(half, str(tmp / "half.onnx"))
    res = invoke("quantize", tmp / "half.onnx", "--calib", calib, "--out", tmp / "q.onnx")
    assert res.exit_code == 2 and "16-bit floats (conv2.w.half)" in res.output and not (tmp / "q.onnx").exists()


def test_malformed_metadata_is_named_not_taken_for_missing(setup):
    model, calib, tmp = setup
    broken = onnx.load(str(model))
    for prop in broken.metadata_props:
        if prop.key == "edgecnn.preprocess":
            prop.value = "{not json"
    path = tmp / "broken.onnx"
    onnx.save(broken, str(path))
    res = invoke("quantize", path, "--calib", calib, "--out", tmp / "q.onnx")
    assert res.exit_code == 2 and "cannot be used" in res.output and "edgecnn.preprocess" in res.output
    assert "no edgecnn metadata" not in res.output and not (tmp / "q.onnx").exists()


def test_full_range_cpu_weights_on_request(setup):
    from edgecnn.platform import x86_without_vnni

    model, calib, tmp = setup
    res = invoke("quantize", model, "--calib", calib, "--out", tmp / "q.onnx", "--target", "cpu", "--full-range")
    assert res.exit_code == 0, res.output
    assert "8-bit weights" in res.output
    assert ("this x86 CPU has no VNNI" in res.output) == x86_without_vnni()  # said where it matters, only there
    assert "[-127, 127]" in read_onnx_contract(tmp / "q.onnx").provenance["quantization"]["weights"]


@pytest.mark.slow
def test_pretrained_efficientnet_lite0_cpu_target(scenes_dir, tmp_path):
    """The real network by name, 48 real photos: the INT8 model is fused by ORT and mostly agrees with FP32."""
    pytest.importorskip("torch")
    from edgecnn.data import list_images

    photos = list_images(scenes_dir)[::25][:48]
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in photos:
        (calib / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    out = tmp_path / "lite0.int8.onnx"
    res = invoke(
        "quantize",
        "efficientnet-lite0",
        "--calib",
        calib,
        "--out",
        out,
        "--target",
        "cpu",
        "--cache",
        tmp_path / "lite0.calib",
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["accuracy"]["agreement"]["top1_in_top5"] >= 0.95
    assert data["accuracy"]["agreement"]["cosine_mean"] > 0.99
    assert data["sizes"]["int8_bytes"] < 0.35 * data["sizes"]["fp32_bytes"]
    assert data["qdq"]["int8_nodes"] >= 50
    assert (tmp_path / "lite0.calib").read_text().count("\n") > 60
    # reduced-range weights: any ONNX Runtime app gets the same numbers as edgecnn, VNNI or not (nothing saturates)
    import onnxruntime as ort

    from edgecnn.runtime.onnxrt import session_options

    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    plain = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    exact = ort.InferenceSession(str(out), session_options(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    np.testing.assert_allclose(plain, exact, atol=1e-5)


def test_a_full_disk_while_writing_the_outputs_writes_none_of_them(setup, small_disk):
    """The model, its table and the report are staged together: a report that does not fit (a real 300 KiB tmpfs,
    filled first) leaves the earlier model and table as they were, and no report folder, with one clear error."""
    model, calib, tmp = setup
    out, cache = tmp / "q.onnx", tmp / "q.calib"
    out.write_bytes(b"earlier model")
    cache.write_text("earlier table")
    (small_disk / "filler").write_bytes(b"\0" * (300 * 1024 - 4096))  # leaves one page at most
    res = invoke(
        "quantize",
        model,
        "--calib",
        calib,
        "--out",
        out,
        "--cache",
        cache,
        "--report",
        small_disk / "report",
        "--json",
        "--force",
    )
    assert res.exit_code == 74, res.output  # the one StorageError exit code
    assert "nothing was replaced" in res.stderr and "disk full" in res.stderr
    assert json.loads(res.stdout)["error"]["exit_code"] == 74  # --json: the error object, nothing else
    assert "internal error" not in res.output
    assert out.read_bytes() == b"earlier model" and cache.read_text() == "earlier table"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".q.")) == []  # no temporary file left


def test_the_report_names_its_own_files(setup):
    model, calib, tmp = setup
    data = json.loads(
        invoke("quantize", model, "--calib", calib, "--out", tmp / "q.onnx", "--report", tmp / "r", "--json").stdout
    )
    written = json.loads((tmp / "r" / "quantization.json").read_text())
    assert (
        written["report"]
        == data["report"]
        == {"json": str(tmp / "r" / "quantization.json"), "markdown": str(tmp / "r" / "quantization.md")}
    )
    assert written["sizes"]["int8_bytes"] == (tmp / "q.onnx").stat().st_size


def test_a_val_folder_with_one_misnamed_class_is_an_error_not_unlabelled(setup):
    model, calib, tmp = setup
    val = make_image_folder(tmp / "val", classes=("cat", "dog", "birds"), per_class=3, seed=5)  # "bird" misspelled
    res = invoke("quantize", model, "--calib", calib, "--out", tmp / "q.onnx", "--val", val)
    assert res.exit_code == 2 and "2 of its 3 class folders name this model's classes, but" in res.output
    assert "birds" in res.output and not (tmp / "q.onnx").exists()
    # one folder of four matching by chance (a scenes folder with a subject that is a class) is still unlabelled
    scenes = make_image_folder(tmp / "scenes", classes=("street", "park", "cat", "beach"), per_class=2, seed=6)
    res = invoke("quantize", model, "--calib", calib, "--out", tmp / "q2.onnx", "--val", scenes, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["accuracy"]["kind"] == "unlabelled"


def test_the_table_has_a_scale_for_pad_outputs_too(setup):
    """TensorRT builds from the FP32 ONNX, where a Pad (EfficientNet-Lite0 has 17) feeds a Conv; ranges come from the
    prepared graph, where ORT fused it away. The Pad's output gets its input's scale (zero padding adds nothing)."""
    from onnx import helper, numpy_helper

    from edgecnn.trt import calib_cache

    model, calib, tmp = setup
    padded = onnx.load(str(model))
    conv1 = next(n for n in padded.graph.node if n.name == "conv1")
    padded.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    padded.graph.node.insert(
        0, helper.make_node("Pad", ["input", "pads"], ["input_padded"], name="pad", mode="constant")
    )
    conv1.input[0] = "input_padded"
    del conv1.attribute[:]  # the Pad does the padding now
    onnx.save(padded, str(tmp / "padded.onnx"))
    res = invoke(
        "quantize",
        tmp / "padded.onnx",
        "--calib",
        calib,
        "--out",
        tmp / "q.onnx",
        "--cache",
        tmp / "q.calib",
        "--target",
        "tensorrt",
    )
    assert res.exit_code == 0, res.output
    _, _, scales = calib_cache.read_table(tmp / "q.calib")
    assert scales["input_padded"] == scales["input"]
