"""The preprocessing contract: exact values, policies, serialization, and that every path agrees."""

import json

import cv2
import numpy as np
import pytest

from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.preprocess import PreprocessConfig, as_bgr, denormalize, geometric, normalize, preprocess


def test_golden_values_rgb_nchw():
    """A 2×2 BGR frame with known pixels gives exactly (rgb - mean) / std in NCHW."""
    frame = np.array([[[0, 0, 255], [0, 255, 0]], [[255, 0, 0], [10, 20, 30]]], dtype=np.uint8)  # BGR
    cfg = PreprocessConfig(input_size=(2, 2), resize="resize", mean=(127, 127, 127), std=(128, 128, 128))
    x = preprocess(frame, cfg)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    red = (np.array([[255, 0], [0, 30]], np.float32) - 127) / 128
    blue = (np.array([[0, 0], [255, 10]], np.float32) - 127) / 128
    np.testing.assert_array_equal(x[0, 0], red)  # channel 0 is R after BGR->RGB
    np.testing.assert_array_equal(x[0, 2], blue)


def test_bgr_nhwc_per_channel_mean_std():
    frame = np.full((4, 4, 3), (10, 20, 30), dtype=np.uint8)
    cfg = PreprocessConfig(
        input_size=(4, 4), resize="resize", channel_order="bgr", layout="nhwc", mean=(10, 10, 10), std=(1, 2, 4)
    )
    x = preprocess(frame, cfg)
    assert x.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(x[0, 0, 0], [0.0, 5.0, 5.0])


def test_shorter_crop_matches_resize_256_crop_224():
    """'shorter_crop' with ratio 0.875 keeps the same central region as the classic resize-256/crop-224."""
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    cfg = PreprocessConfig(input_size=(224, 224), resize="shorter_crop", crop_ratio=0.875)
    ours = geometric(frame, cfg)
    classic = cv2.resize(frame, (341, 256), interpolation=cv2.INTER_LINEAR)[16:240, 58:282]
    assert ours.shape == (224, 224, 3)
    assert np.mean(np.abs(ours.astype(int) - classic.astype(int))) < 3.0


def test_letterbox_keeps_aspect_and_pads():
    frame = np.full((100, 200, 3), 200, dtype=np.uint8)
    cfg = PreprocessConfig(input_size=(64, 64), resize="letterbox", pad_value=0)
    out = geometric(frame, cfg)
    assert out.shape == (64, 64, 3)
    assert out[0, 32].max() == 0 and out[32, 32].min() == 200  # pad on top, image in the middle
    assert (out[:, :, 0] == 200).sum() == 64 * 32


def test_conversions_gray_rgba_16bit():
    gray = np.full((8, 8), 100, np.uint8)
    rgba = np.dstack([np.full((8, 8, 3), 50, np.uint8), np.full((8, 8), 255, np.uint8)])
    deep = np.full((8, 8, 3), 256 * 77, np.uint16)
    assert as_bgr(gray).shape == (8, 8, 3) and as_bgr(gray)[0, 0, 0] == 100
    assert as_bgr(rgba).shape == (8, 8, 3)
    assert as_bgr(deep).dtype == np.uint8 and as_bgr(deep)[0, 0, 0] == 77


def test_preprocess_equals_geometric_then_normalize():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (300, 200), (224, 224)]]
    cfg = PreprocessConfig()
    a = preprocess(frames, cfg)
    b = normalize(np.stack([geometric(f, cfg) for f in frames]), cfg)
    np.testing.assert_array_equal(a, b)


def test_denormalize_roundtrip():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cfg = PreprocessConfig(input_size=(32, 32), resize="resize", mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7))
    np.testing.assert_array_equal(denormalize(preprocess(frame, cfg), cfg)[0], frame)


def test_config_json_roundtrip_and_validation():
    cfg = PreprocessConfig(input_size=(32, 48), resize="letterbox", mean=(1, 2, 3), std=(4, 5, 6), layout="nhwc")
    assert PreprocessConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["input_size"] == [32, 48]
    with pytest.raises(UserInputError):
        PreprocessConfig(resize="squash")
    with pytest.raises(UserInputError):
        PreprocessConfig(std=(0, 1, 1))
    with pytest.raises(ArtifactError):
        PreprocessConfig.from_dict({"input_size": [1, 1], "gamma": 2})
    with pytest.raises(ArtifactError):
        PreprocessConfig.from_json("{not json")


def test_bad_frames_are_clear_errors():
    cfg = PreprocessConfig()
    with pytest.raises(UserInputError):
        preprocess([], cfg)
    with pytest.raises(UserInputError):
        preprocess(np.zeros((4, 4, 5), np.uint8), cfg)
    with pytest.raises(UserInputError):
        normalize(np.zeros((1, 10, 10, 3), np.uint8), cfg)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_opencv_normalize_matches_numpy_definition(layout, order):
    from edgecnn.preprocess import _normalize_numpy

    rng = np.random.default_rng(4)
    batch = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    cfg = PreprocessConfig(
        input_size=(20, 24),
        resize="resize",
        channel_order=order,
        layout=layout,
        mean=(123.7, 116.3, 103.5),
        std=(58.4, 57.1, 57.4),
    )
    np.testing.assert_allclose(normalize(batch, cfg), _normalize_numpy(batch, cfg), rtol=1e-6, atol=1e-6)


def test_postprocess_softmax_and_topk():
    from edgecnn.postprocess import softmax, top_indices, topk

    logits = np.array([[1.0, 3.0, 2.0, -1.0], [0.0, 0.0, 5.0, 0.0]], dtype=np.float32)
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    idx, probs = topk(logits, 3)
    assert idx.tolist() == [[1, 2, 0], [2, 0, 1]]
    assert probs[0, 0] == p[0, 1] and probs[1, 0] > 0.97
    assert top_indices(p[0], 2).tolist() == [1, 2]  # 1-D rows too
    assert topk(logits, 10)[0].shape == (2, 4)  # k capped at the class count
