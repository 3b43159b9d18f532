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
}


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

    model = onnx.load(str(path))
    contract = read_onnx_contract(path)
    if cfg.layout != "nchw":
        pytest.skip("tiny model is NCHW")
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
