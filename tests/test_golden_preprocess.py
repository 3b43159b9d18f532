"""The golden test of the preprocessing contract: training, evaluation, calibration, prediction and the camera loop
all hand the model exactly the tensor `preprocess()` makes from the same decoded image.

The model inputs are captured by a real ONNX Runtime runner that records what it is given (it still runs).
"""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from edgecnn.data import decode_resized, list_images, read_image
from edgecnn.preprocess import PreprocessConfig, preprocess
from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

CONFIGS = {
    "imagenet-crop": PreprocessConfig(
        input_size=(32, 32), resize="shorter_crop", interpolation="cubic", mean=(127, 127, 127), std=(128, 128, 128)
    ),
    "cifar-resize": PreprocessConfig(
        input_size=(32, 32), resize="resize", interpolation="linear", mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7)
    ),
    "letterbox-bgr": PreprocessConfig(
        input_size=(32, 32), resize="letterbox", channel_order="bgr", mean=(0, 0, 0), std=(255, 255, 255)
    ),
    # the options an adopted model can have: NHWC (tf2onnx), uint8 pixels (normalisation inside the model)
    "nhwc-crop": PreprocessConfig(
        input_size=(32, 32), resize="shorter_crop", layout="nhwc", mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)
    ),
    "uint8-nchw-stretch": PreprocessConfig(
        input_size=(32, 32), resize="resize", dtype="uint8", mean=(0,) * 3, std=(1,) * 3
    ),
    "uint8-nhwc-letterbox": PreprocessConfig(
        input_size=(32, 32),
        resize="letterbox",
        layout="nhwc",
        dtype="uint8",
        channel_order="bgr",
        mean=(0,) * 3,
        std=(1,) * 3,
    ),
}


def wrap_input(model, layout: str, dtype: str):
    """The tiny NCHW float model given the input `layout`/`dtype` in front (Cast, Transpose), as tf2onnx and models
    with their normalisation inside have it."""
    from onnx import TensorProto, helper

    graph = model.graph
    old = graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    for node in graph.node:
        node.input[:] = ["x_nchw" if name == old.name else name for name in node.input]
    front, current = [], old.name
    if dtype == "uint8":
        front.append(helper.make_node("Cast", [current], ["x_float"], to=TensorProto.FLOAT))
        current = "x_float"
    if layout == "nhwc":
        front.append(helper.make_node("Transpose", [current], ["x_nchw"], perm=[0, 3, 1, 2]))
        dims = [dims[0], dims[2], dims[3], dims[1]]
    else:
        front.append(helper.make_node("Identity", [current], ["x_nchw"]))
    elem = TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT
    new_input = helper.make_tensor_value_info(old.name, elem, dims)
    nodes = front + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(new_input)
    return model


class RecordingRunner(OnnxRuntimeRunner):
    """A real ONNX Runtime runner that also keeps every batch it was asked to run."""

    def __init__(self, path):
        super().__init__(path)
        self.seen: list[np.ndarray] = []

    def _infer(self, batch):
        self.seen.append(batch.copy())
        return super()._infer(batch)

    def inputs(self) -> np.ndarray:
        return np.concatenate(self.seen)


@pytest.fixture
def photos(tmp_path, request):
    """Images of several sizes and formats: real photos when ../shared is here, made ones always."""
    folder = tmp_path / "photos" / "cls"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i, (h, w) in enumerate([(48, 64), (64, 48), (40, 40), (33, 97)]):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)
        cv2.imwrite(str(folder / f"made{i}.{'png' if i % 2 else 'jpg'}"), img)
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 256, (30, 50), dtype=np.uint8))
    try:
        scenes = request.getfixturevalue("scenes_dir")
        for p in sorted((scenes / "forest").glob("*.jpg"))[:3]:
            shutil.copy(p, folder / f"real-{p.name}")
    except pytest.skip.Exception:
        pass
    return tmp_path / "photos"


@pytest.fixture(params=sorted(CONFIGS))
def setup(request, tmp_path, photos):
    from conftest import build_tiny_onnx

    from edgecnn.contract import ModelContract, read_onnx_contract, write_onnx_contract
    from edgecnn.onnx_io import save_onnx

    cfg = CONFIGS[request.param]
    path = build_tiny_onnx(tmp_path / "m.onnx", labels=("cls", "other"))
    import onnx

    model = wrap_input(onnx.load(str(path)), cfg.layout, cfg.dtype)
    onnx.checker.check_model(model)
    contract = read_onnx_contract(path)
    write_onnx_contract(model, ModelContract(labels=contract.labels, preprocess=cfg, arch="tiny"))
    save_onnx(model, path)
    paths = list_images(photos)
    reference = preprocess([read_image(p) for p in paths], cfg)
    return cfg, path, paths, reference


def test_training_paths(setup):
    from edgecnn.train import eval_inputs, train_inputs

    cfg, _, paths, reference = setup
    decoded = decode_resized(paths, cfg)
    np.testing.assert_array_equal(eval_inputs(decoded.images, cfg), reference)
    no_aug = train_inputs(decoded.images, cfg, np.random.default_rng(0), augment=False)
    np.testing.assert_array_equal(no_aug, reference)


def test_evaluation_path(setup, photos):
    from edgecnn.evaluate import run_labelled

    cfg, path, paths, reference = setup
    with RecordingRunner(path) as runner:
        run_labelled(runner, photos, batch=3)
        np.testing.assert_array_equal(runner.inputs(), reference)


def test_calibration_path(setup, photos):
    from edgecnn.quant.calib_data import load_calibration

    cfg, _, paths, reference = setup
    calib = load_calibration(photos, cfg)
    assert calib.names == [str(p) for p in paths]
    np.testing.assert_array_equal(np.concatenate(list(calib.batches(batch=2))), reference)


def test_prediction_path(setup):
    from edgecnn.predict import predict_files

    cfg, path, paths, reference = setup
    with RecordingRunner(path) as runner:
        predict_files(runner, paths, batch=2)
        np.testing.assert_array_equal(runner.inputs(), reference)


@pytest.mark.parametrize("pipelined", [True, False])
def test_camera_loop_path(setup, photos, pipelined):
    from edgecnn.camera.capture import ThreadedCapture
    from edgecnn.camera.loop import LiveOptions, run_live
    from edgecnn.camera.sources import parse_source

    cfg, path, paths, reference = setup
    with RecordingRunner(path) as runner:
        capture = ThreadedCapture(parse_source(str(photos)), pace=False).start()
        summary = run_live(runner, capture, LiveOptions(pipelined=pipelined, warmup=0))
        assert summary.frames == len(paths)
        np.testing.assert_array_equal(runner.inputs(), reference)
