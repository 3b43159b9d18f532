"""`edgecnn deploy deepstream`: nvinfer values come from the preprocessing contract, checked against it."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from asserts import assert_error, raises
from conftest import build_tiny_onnx
from typer.testing import CliRunner

from edgecnn.contract import ModelContract, write_onnx_contract
from edgecnn.deploy.deepstream import DeepStreamOptions, scale_and_offsets, write_deepstream
from edgecnn.errors import UserInputError
from edgecnn.onnx_io import save_onnx
from edgecnn.preprocess import PreprocessConfig, preprocess


def with_contract(src: Path, dst: Path, pre: PreprocessConfig, labels=("cat", "dog", "bird"), precision="fp32") -> Path:
    model = onnx.load(str(src))
    write_onnx_contract(
        model, ModelContract(labels=list(labels), preprocess=pre, arch="tiny-test", precision=precision)
    )
    return save_onnx(model, dst)


def props(out: Path) -> dict[str, str]:
    """nvinfer_config.txt as DeepStream's GKeyFile reads it ([property] key=value, # comments)."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str
    parser.read_string((out / "nvinfer_config.txt").read_text())
    return dict(parser["property"])


@pytest.fixture
def lite0_like(tmp_path) -> Path:
    """A small real ONNX carrying EfficientNet-Lite0's exact preprocessing contract (224, RGB, (x-127)/128, crop)."""
    from edgecnn.models.efficientnet_lite import LITE0_PREPROCESS

    src = build_tiny_onnx(tmp_path / "src.onnx", size=(224, 224), batch=1)
    return with_contract(src, tmp_path / "lite0.onnx", LITE0_PREPROCESS)


def test_efficientnet_lite0_values(tmp_path, lite0_like):
    report = write_deepstream(lite0_like, tmp_path / "ds")
    p = props(tmp_path / "ds")
    assert float(p["net-scale-factor"]) == pytest.approx(1 / 128)
    assert p["offsets"] == "127;127;127"
    assert p["model-color-format"] == "0"  # RGB
    assert p["network-type"] == "1" and p["process-mode"] == "1"
    assert p["network-mode"] == "2"  # fp16 by default
    assert p["infer-dims"] == "3;224;224" and p["network-input-order"] == "0"
    assert p["num-detected-classes"] == "3" and p["batch-size"] == "1"
    assert p["labelfile-path"] == "labels.txt" and p["output-blob-names"] == "probs"
    assert p["onnx-file"] == "model.softmax.onnx"
    assert p["model-engine-file"] == "model.softmax.onnx_b1_gpu0_fp16.engine"
    assert p["scaling-filter"] == "2"  # the contract's cubic resize
    assert float(p["classifier-threshold"]) == pytest.approx(0.2)
    assert "int8-calib-file" not in p
    assert (tmp_path / "ds" / "labels.txt").read_text() == "cat;dog;bird\n"
    assert any("central crop" in w for w in report.warnings)


def test_scale_and_offsets_reproduce_the_contract_exactly(tmp_path, lite0_like):
    """nvinfer's y = scale * (x - offset) on the scaled RGB pixels equals edgecnn's normalize() output."""
    from edgecnn.models.efficientnet_lite import LITE0_PREPROCESS as cfg

    scale, offsets, _ = scale_and_offsets(cfg.mean, cfg.std)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)  # already at network size: only normalization differs
    ours = preprocess(frame, PreprocessConfig(**{**cfg.to_dict(), "resize": "resize"}))[0]
    rgb = frame[..., ::-1].astype(np.float32)
    deepstream = (scale * (rgb - np.asarray(offsets, np.float32))).transpose(2, 0, 1)
    np.testing.assert_allclose(deepstream, ours, atol=1e-5)


def test_softmax_model_keeps_the_classifier(tmp_path, lite0_like):
    import onnxruntime as ort

    write_deepstream(lite0_like, tmp_path / "ds")
    x = np.random.default_rng(1).normal(size=(1, 3, 224, 224)).astype(np.float32)
    logits = ort.InferenceSession(str(lite0_like)).run(None, {"input": x})[0]
    probs = ort.InferenceSession(str(tmp_path / "ds" / "model.softmax.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs.argmax(1).tolist() == logits.argmax(1).tolist()
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


CIFAR = PreprocessConfig(
    input_size=(32, 32),
    resize="resize",
    interpolation="area",
    channel_order="rgb",
    mean=(125.3, 123.0, 113.9),
    std=(63.0, 62.1, 66.7),
)


def test_per_channel_std_is_an_error_unless_approximated(tmp_path):
    model = with_contract(build_tiny_onnx(tmp_path / "s.onnx"), tmp_path / "cifar.onnx", CIFAR)
    with raises(UserInputError, "--approximate-std"):
        write_deepstream(model, tmp_path / "ds")
    assert not (tmp_path / "ds").exists(), "nothing written on error"

    report = write_deepstream(model, tmp_path / "ds", DeepStreamOptions(approximate_std=True))
    p = props(tmp_path / "ds")
    assert float(p["net-scale-factor"]) == pytest.approx(3 / (63.0 + 62.1 + 66.7))
    assert p["offsets"] == "125.3;123;113.9"
    assert p["scaling-filter"] == "3" and p["maintain-aspect-ratio"] == "0"
    assert any("differs per channel" in w and "%" in w for w in report.warnings)


def test_bgr_nhwc_letterbox_contract(tmp_path):
    pre = PreprocessConfig(
        input_size=(32, 32),
        resize="letterbox",
        channel_order="bgr",
        layout="nchw",
        mean=(104.0, 117.0, 123.0),
        std=(1.0, 1.0, 1.0),
        interpolation="nearest",
    )
    model = with_contract(build_tiny_onnx(tmp_path / "s.onnx"), tmp_path / "caffe.onnx", pre)
    report = write_deepstream(model, tmp_path / "ds")
    p = props(tmp_path / "ds")
    assert p["model-color-format"] == "1" and p["offsets"] == "104;117;123" and float(p["net-scale-factor"]) == 1.0
    assert p["maintain-aspect-ratio"] == "1" and p["symmetric-padding"] == "1" and p["scaling-filter"] == "0"
    assert any("pads letterboxed frames with black" in w for w in report.warnings)

    nhwc = PreprocessConfig(input_size=(32, 32), resize="resize", layout="nhwc")
    from edgecnn.deploy.deepstream import nvinfer_config
    from edgecnn.deploy.model_io import read_model_io

    io = read_model_io(with_contract(build_tiny_onnx(tmp_path / "t.onnx"), tmp_path / "nhwc.onnx", nhwc))
    text = nvinfer_config(io, DeepStreamOptions(), "m.onnx", "probs").text
    assert "network-input-order=1\n" in text and "infer-dims=32;32;3\n" in text


def test_int8(tmp_path):
    model = build_tiny_onnx(tmp_path / "m.onnx")
    with raises(UserInputError, "--calib-cache"):
        write_deepstream(model, tmp_path / "ds", DeepStreamOptions(precision="int8"))
    calib = tmp_path / "model.calib"
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    report = write_deepstream(
        model, tmp_path / "ds", DeepStreamOptions(precision="int8", calib_cache=calib, batch_size=4)
    )
    p = props(tmp_path / "ds")
    assert p["network-mode"] == "1" and p["int8-calib-file"] == "calib.cache" and p["batch-size"] == "4"
    assert p["model-engine-file"] == "model.softmax.onnx_b4_gpu0_int8.engine"
    assert (tmp_path / "ds" / "calib.cache").read_bytes() == calib.read_bytes()
    assert "calib.cache" in report.files

    qdq = with_contract(model, tmp_path / "q.onnx", PreprocessConfig(input_size=(32, 32)), precision="int8")
    write_deepstream(qdq, tmp_path / "ds2")  # Q/DQ model: INT8 without a cache
    assert props(tmp_path / "ds2")["network-mode"] == "1"


def test_calib_cache_is_checked_and_never_dropped_silently(tmp_path):
    """The cache goes through build-engine's check (as in `deploy bundle`), and one that nvinfer would not read
    because the config is not INT8 is reported, as `deploy bundle` does."""
    from edgecnn.cli.main import app

    model = build_tiny_onnx(tmp_path / "m.onnx")
    bad = tmp_path / "bad.calib"
    bad.write_text("garbage\n")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "deploy",
            "deepstream",
            str(model),
            "--out",
            str(tmp_path / "dsg"),
            "--approximate-std",
            "--precision",
            "int8",
            "--calib-cache",
            str(bad),
        ],
    )
    assert_error(res, 2, "--calib-cache", stream="output")
    assert not (tmp_path / "dsg").exists()
    with raises(UserInputError, "no.calib"):
        write_deepstream(
            model, tmp_path / "dsg", DeepStreamOptions(precision="int8", calib_cache=tmp_path / "no.calib")
        )
    with raises(UserInputError, "--calib-cache"):
        write_deepstream(model, tmp_path / "dsg", DeepStreamOptions(precision="int8", calib_cache=tmp_path))

    calib = tmp_path / "model.calib"
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    report = write_deepstream(model, tmp_path / "fp16", DeepStreamOptions(calib_cache=calib))
    assert any("--calib-cache is not used" in w and "fp16" in w for w in report.warnings)
    assert "calib.cache" not in report.files and "int8-calib-file" not in props(tmp_path / "fp16")
    res = runner.invoke(
        app,
        [
            "deploy",
            "deepstream",
            str(model),
            "--out",
            str(tmp_path / "fp32"),
            "--precision",
            "fp32",
            "--calib-cache",
            str(calib),
        ],
    )
    assert res.exit_code == 0 and "--calib-cache is not used" in res.output
    report = write_deepstream(model, tmp_path / "int8", DeepStreamOptions(precision="int8", calib_cache=calib))
    assert not any("--calib-cache" in w for w in report.warnings)


def test_engine_whose_profile_starts_above_batch_1_is_refused(tmp_path):
    """nvinfer runs partly filled batches at their real size: a `--batch 2:4:8` engine cannot run them."""
    from conftest import engine_with_manifest

    model = build_tiny_onnx(tmp_path / "m.onnx")
    engine = engine_with_manifest(model, tmp_path / "b248.engine", batch="2:4:8")
    for batch_size in (1, 2, 4):
        with raises(UserInputError, "--batch 1:OPT:8"):
            write_deepstream(engine, tmp_path / "ds", DeepStreamOptions(batch_size=batch_size, approximate_std=True))
    assert not (tmp_path / "ds").exists()
    ok = engine_with_manifest(model, tmp_path / "b148.engine", batch="1:4:8")
    write_deepstream(ok, tmp_path / "ds", DeepStreamOptions(batch_size=4, approximate_std=True))
    assert props(tmp_path / "ds")["batch-size"] == "4"


def test_batch_and_threshold_checks(tmp_path):
    fixed = build_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    with raises(UserInputError, "fixed.onnx", "--batch-size 1"):
        write_deepstream(fixed, tmp_path / "ds", DeepStreamOptions(batch_size=8))
    with raises(UserInputError, "--classifier-threshold"):
        write_deepstream(fixed, tmp_path / "ds", DeepStreamOptions(classifier_threshold=3))


def test_labels_with_separator(tmp_path):
    model = with_contract(
        build_tiny_onnx(tmp_path / "s.onnx"),
        tmp_path / "m.onnx",
        PreprocessConfig(input_size=(32, 32)),
        labels=("a;b", "c", "d"),
    )
    report = write_deepstream(model, tmp_path / "ds")
    assert (tmp_path / "ds" / "labels.txt").read_text() == "a,b;c;d\n"
    assert any("';'" in w for w in report.warnings)


def test_cli_deepstream(tmp_path, lite0_like):
    from edgecnn.cli.main import app

    res = CliRunner().invoke(app, ["deploy", "deepstream", str(lite0_like), "--out", str(tmp_path / "ds"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["net_scale_factor"] == pytest.approx(0.0078125) and report["offsets"] == [127.0, 127.0, 127.0]
    model = with_contract(build_tiny_onnx(tmp_path / "s.onnx"), tmp_path / "cifar.onnx", CIFAR)
    res = CliRunner().invoke(app, ["deploy", "deepstream", str(model), "--out", str(tmp_path / "ds2")])
    assert res.exit_code == 2 and "net-scale-factor" in res.output


# ---------------------------------------------------------------- an existing --out, old-format models


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def earlier_config(tmp_path) -> Path:
    """A folder DeepStream has used: an INT8 config with a calibration cache, and the engine nvinfer cached."""
    model = build_tiny_onnx(tmp_path / "old.onnx", labels=("a", "b", "c"), seed=1)
    calib = tmp_path / "old.calib"
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    out = tmp_path / "ds"
    write_deepstream(model, out, DeepStreamOptions(precision="int8", calib_cache=calib))
    engine = props(out)["model-engine-file"]
    assert engine == "model.softmax.onnx_b1_gpu0_int8.engine"
    (out / engine).write_bytes(b"engine DeepStream built from the OLD model")
    return out


def test_earlier_config_is_refused_unless_forced_then_replaced_as_a_whole(tmp_path, earlier_config):
    new = build_tiny_onnx(tmp_path / "new.onnx", labels=("x", "y", "z"), seed=2)
    before = listing(earlier_config)
    with raises(UserInputError, "--force"):
        write_deepstream(new, earlier_config)
    assert listing(earlier_config) == before, "nothing changed without --force"

    report = write_deepstream(new, earlier_config, DeepStreamOptions(force=True))
    assert report.replaced
    assert (
        sorted(listing(earlier_config))
        == report.files
        == ["README.md", "labels.txt", "model.softmax.onnx", "nvinfer_config.txt"]
    )
    assert not list(earlier_config.glob("*.engine")) and not (earlier_config / "calib.cache").exists()
    assert (earlier_config / "labels.txt").read_text() == "x;y;z\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no staging or old folder left"


def test_cli_force_replaces_and_says_so(tmp_path, earlier_config):
    from edgecnn.cli.main import app

    new = build_tiny_onnx(tmp_path / "new.onnx", labels=("x", "y", "z"), seed=2)
    res = CliRunner().invoke(app, ["deploy", "deepstream", str(new), "--out", str(earlier_config)])
    assert res.exit_code == 2 and "--force" in res.output and "internal error" not in res.output
    res = CliRunner().invoke(app, ["deploy", "deepstream", str(new), "--out", str(earlier_config), "--force"])
    assert res.exit_code == 0, res.output
    assert "replaced the earlier config" in res.output
    assert not list(earlier_config.glob("*.engine"))


def test_same_config_again_keeps_the_engine_built_from_it(tmp_path, lite0_like):
    out = tmp_path / "ds"
    write_deepstream(lite0_like, out)
    engine = out / props(out)["model-engine-file"]
    engine.write_bytes(b"engine DeepStream built from this very model")
    (out / "README.md").unlink()
    report = write_deepstream(lite0_like, out)  # a rerun: nothing differs, no --force needed
    assert not report.replaced and engine.read_bytes() == b"engine DeepStream built from this very model"
    assert (out / "README.md").is_file()
    with raises(UserInputError, "--force"):  # other options: the cached engine no longer matches
        write_deepstream(lite0_like, out, DeepStreamOptions(classifier_threshold=0.5))


def test_files_edgecnn_did_not_write_are_never_replaced(tmp_path, lite0_like):
    out = tmp_path / "ds"
    write_deepstream(lite0_like, out)
    (out / "deepstream_app_config.txt").write_text("[application]\n")
    before = listing(out)
    for force in (False, True):
        with raises(UserInputError, "deepstream_app_config.txt"):
            write_deepstream(lite0_like, out, DeepStreamOptions(force=force))
    assert listing(out) == before
    with raises(UserInputError, "--out"):  # the model's own folder: its input would go
        write_deepstream(lite0_like, tmp_path, DeepStreamOptions(force=True))
    assert lite0_like.is_file()
    with raises(UserInputError, "--out"):  # an earlier output as input, into its own folder
        write_deepstream(out / "model.softmax.onnx", out, DeepStreamOptions(force=True))


def test_empty_existing_out_is_filled(tmp_path, lite0_like):
    out = tmp_path / "ds"
    out.mkdir()
    write_deepstream(lite0_like, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "labels.txt",
        "model.softmax.onnx",
        "nvinfer_config.txt",
    ]


def test_out_under_a_file_is_a_clear_error(tmp_path, lite0_like):
    from edgecnn.cli.main import app

    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "sub", tmp_path / "afile"):
        res = CliRunner().invoke(app, ["deploy", "deepstream", str(lite0_like), "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: --out") and "internal error" not in res.output
    assert (tmp_path / "afile").read_text() == "x"


def unsorted_qdq(tmp_path) -> tuple[Path, Path]:
    """A real INT8 Q/DQ model, and a copy with its nodes reversed (as older edgecnn versions wrote them)."""
    from conftest import build_int8_qdq_onnx

    good = build_int8_qdq_onnx(tmp_path / "sorted.int8.onnx", weight=64, activations=np.int8)  # TensorRT's form
    model = onnx.load(str(good))
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    bad = tmp_path / "old.int8.onnx"
    onnx.save(model, str(bad))
    with raises(onnx.checker.ValidationError, "topologically sorted"):
        onnx.checker.check_model(onnx.load(str(bad)))
    return good, bad


def test_unsorted_qdq_model_is_sorted_in_the_copy(tmp_path):
    import onnxruntime as ort

    good, bad = unsorted_qdq(tmp_path)
    src_bytes = bad.read_bytes()
    report = write_deepstream(bad, tmp_path / "ds")
    assert bad.read_bytes() == src_bytes, "the input is never changed"
    assert props(tmp_path / "ds")["network-mode"] == "1"  # INT8 from the Q/DQ contract
    assert any("topological order" in w and "re-quantize" in w for w in report.warnings)
    out = onnx.load(str(tmp_path / "ds" / "model.softmax.onnx"))
    onnx.checker.check_model(out)
    x = np.random.default_rng(3).uniform(0, 255, (2, 3, 8, 8)).astype(np.float32)
    logits = ort.InferenceSession(str(good), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    probs = ort.InferenceSession(str(tmp_path / "ds" / "model.softmax.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_unsortable_model_is_a_clear_error_and_leaves_nothing(tmp_path):
    from edgecnn.cli.main import app

    _, bad = unsorted_qdq(tmp_path)
    model = onnx.load(str(bad))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[0] = "produced_by_nothing"
    onnx.save(model, str(bad))
    out = tmp_path / "new" / "ds"
    res = CliRunner().invoke(app, ["deploy", "deepstream", str(bad), "--out", str(out)])
    assert res.exit_code == 4, res.output
    assert "re-quantize" in res.output and "internal error" not in res.output
    assert not (tmp_path / "new").exists(), "no empty folder left behind"


def test_a_cpu_target_int8_model_is_refused_and_nothing_is_written(tmp_path):
    """nvinfer builds the model with TensorRT, which takes symmetric INT8 Q/DQ only: a --target cpu model (uint8
    activations) is refused, as build-engine and deploy bundle refuse it."""
    from conftest import build_int8_qdq_onnx

    from edgecnn.cli.main import app

    cpu_model = build_int8_qdq_onnx(tmp_path / "m.cpu.int8.onnx", weight=64)
    with raises(UserInputError, "--target cpu", "--target tensorrt"):
        write_deepstream(cpu_model, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    res = CliRunner().invoke(app, ["deploy", "deepstream", str(cpu_model), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 2 and "--target tensorrt" in res.output
