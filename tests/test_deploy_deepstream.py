"""`edgecnn deploy deepstream`: nvinfer values come from the preprocessing contract, checked against it."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from conftest import build_tiny_onnx
from edgecnn.artifacts import ModelContract, save_onnx, write_onnx_contract
from edgecnn.deploy.deepstream import DeepStreamOptions, scale_and_offsets, write_deepstream
from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig, preprocess


def with_contract(src: Path, dst: Path, pre: PreprocessConfig, labels=("cat", "dog", "bird"), precision="fp32") -> Path:
    model = onnx.load(str(src))
    write_onnx_contract(model, ModelContract(labels=list(labels), preprocess=pre, arch="tiny-test", precision=precision))
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


CIFAR = PreprocessConfig(input_size=(32, 32), resize="resize", interpolation="area", channel_order="rgb",
                         mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7))


def test_per_channel_std_is_an_error_unless_approximated(tmp_path):
    model = with_contract(build_tiny_onnx(tmp_path / "s.onnx"), tmp_path / "cifar.onnx", CIFAR)
    with pytest.raises(UserInputError, match="single net-scale-factor.*--approximate-std"):
        write_deepstream(model, tmp_path / "ds")
    assert not (tmp_path / "ds").exists(), "nothing written on error"

    report = write_deepstream(model, tmp_path / "ds", DeepStreamOptions(approximate_std=True))
    p = props(tmp_path / "ds")
    assert float(p["net-scale-factor"]) == pytest.approx(3 / (63.0 + 62.1 + 66.7))
    assert p["offsets"] == "125.3;123;113.9"
    assert p["scaling-filter"] == "3" and p["maintain-aspect-ratio"] == "0"
    assert any("differs per channel" in w and "%" in w for w in report.warnings)


def test_bgr_nhwc_letterbox_contract(tmp_path):
    pre = PreprocessConfig(input_size=(32, 32), resize="letterbox", channel_order="bgr", layout="nchw",
                           mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), interpolation="nearest")
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
    with pytest.raises(UserInputError, match="Q/DQ ONNX .* or --calib-cache"):
        write_deepstream(model, tmp_path / "ds", DeepStreamOptions(precision="int8"))
    calib = tmp_path / "model.calib"
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    report = write_deepstream(model, tmp_path / "ds", DeepStreamOptions(precision="int8", calib_cache=calib, batch_size=4))
    p = props(tmp_path / "ds")
    assert p["network-mode"] == "1" and p["int8-calib-file"] == "calib.cache" and p["batch-size"] == "4"
    assert p["model-engine-file"] == "model.softmax.onnx_b4_gpu0_int8.engine"
    assert (tmp_path / "ds" / "calib.cache").read_bytes() == calib.read_bytes()
    assert "calib.cache" in report.files

    qdq = with_contract(model, tmp_path / "q.onnx", PreprocessConfig(input_size=(32, 32)), precision="int8")
    write_deepstream(qdq, tmp_path / "ds2")  # Q/DQ model: INT8 without a cache
    assert props(tmp_path / "ds2")["network-mode"] == "1"


def test_batch_and_threshold_checks(tmp_path):
    fixed = build_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(UserInputError, match="fixed batch of 1"):
        write_deepstream(fixed, tmp_path / "ds", DeepStreamOptions(batch_size=8))
    with pytest.raises(UserInputError, match="probability"):
        write_deepstream(fixed, tmp_path / "ds", DeepStreamOptions(classifier_threshold=3))


def test_labels_with_separator(tmp_path):
    model = with_contract(build_tiny_onnx(tmp_path / "s.onnx"), tmp_path / "m.onnx",
                          PreprocessConfig(input_size=(32, 32)), labels=("a;b", "c", "d"))
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
