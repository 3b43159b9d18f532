"""THE image transform: every stage (training, evaluation, prediction, calibration, camera loop) calls `preprocess()`.

A `PreprocessConfig` travels inside every artifact (checkpoint, ONNX metadata, engine sidecar) so no stage rebuilds
preprocessing from flags. Inputs are BGR uint8 frames as OpenCV decodes them; the output is a float32 batch.

The transform is split in two steps so that training augmentation can sit between them:
  `geometric(frame)`  -> uint8 H×W×3 at the model's input size (resize policy, crop, interpolation), still BGR
  `normalize(batch)`  -> float32 (channel order, mean/std on the 0–255 scale, layout)
`preprocess(frames) == normalize(stack(geometric(f) for f in frames))`, which the golden test checks.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from edgecnn.errors import ArtifactError, UserInputError

RESIZE_POLICIES = ("shorter_crop", "resize", "letterbox")
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
}
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
DTYPES = ("float32", "uint8")
# Fields added after contract version 1: left out of to_dict() while at their default, so a file that does not use
# them reads the same in an edgecnn that predates them.
_NEWER_FIELDS = {"dtype": "float32"}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a BGR uint8 frame becomes a model input.

    input_size:    (height, width) the model takes.
    resize:        'shorter_crop' (central crop of `crop_ratio` of the shorter side, then resize: the ImageNet
                   "resize 256, crop 224" with crop_ratio 0.875), 'resize' (stretch to size), or 'letterbox'
                   (fit inside, pad with `pad_value`, aspect kept).
    crop_ratio:    fraction of the shorter side kept by 'shorter_crop'.
    interpolation: OpenCV interpolation name (nearest, linear, area, cubic).
    channel_order: order the model expects ('rgb' or 'bgr'); frames arrive as BGR.
    mean, std:     per channel, in the model's channel order, on the 0–255 scale: x = (pixel - mean) / std.
    layout:        'nchw' or 'nhwc'.
    dtype:         'float32' (normalised input), or 'uint8' for models with normalisation built in: the pixels go in
                   unchanged (channel order and layout still apply), so mean must be 0 and std 1.
    """

    input_size: tuple[int, int] = (224, 224)
    resize: str = "shorter_crop"
    crop_ratio: float = 0.875
    interpolation: str = "linear"
    channel_order: str = "rgb"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: str = "nchw"
    pad_value: int = 114
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            problems.append(f"input_size must be (height, width) > 0, got {self.input_size}")
        if self.resize not in RESIZE_POLICIES:
            problems.append(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if not 0.0 < self.crop_ratio <= 1.0:
            problems.append(f"crop_ratio must be in (0, 1], got {self.crop_ratio}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            problems.append(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f"mean and std need 3 values each, std > 0 (got mean={self.mean}, std={self.std})")
        if self.layout not in LAYOUTS:
            problems.append(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        elif self.dtype == "uint8" and (self.mean != (0.0,) * 3 or self.std != (1.0,) * 3):
            problems.append(
                "dtype uint8 feeds the pixels unchanged: mean must be 0 and std 1 "
                f"(got mean={self.mean}, std={self.std})"
            )
        if problems:
            raise UserInputError("Invalid preprocessing: " + "; ".join(problems))

    @property
    def height(self) -> int:
        return self.input_size[0]

    @property
    def width(self) -> int:
        return self.input_size[1]

    def input_shape(self, batch: int | None = 1) -> tuple:
        """The tensor shape for `batch` images (None for a dynamic batch)."""
        h, w = self.input_size
        return (batch, 3, h, w) if self.layout == "nchw" else (batch, h, w, 3)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        for key, default in _NEWER_FIELDS.items():
            if d[key] == default:
                del d[key]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        if not isinstance(d, dict):
            raise ArtifactError(f"Preprocessing metadata must be a mapping, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ArtifactError(f"Unknown preprocessing fields {sorted(unknown)}: written by a newer edgecnn?")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"Invalid preprocessing metadata: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> "PreprocessConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"Preprocessing metadata is not valid JSON: {exc}") from exc


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGRA, 16-bit, float 0–1) as BGR uint8 H×W×3."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise UserInputError("Expected a non-empty image array")
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype in (np.float32, np.float64):
        frame = np.clip(frame * 255.0 if frame.max() <= 1.0 else frame, 0, 255).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise UserInputError(f"Unsupported image dtype {frame.dtype}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise UserInputError(f"Expected an H×W×3 BGR image, got shape {frame.shape}")


def _center_crop_box(h: int, w: int, out_h: int, out_w: int, ratio: float) -> tuple[int, int, int, int]:
    """Central region with the output's aspect ratio covering `ratio` of the shorter fitting side."""
    scale = min(h / out_h, w / out_w) * ratio
    ch, cw = max(1, round(out_h * scale)), max(1, round(out_w * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    return top, left, ch, cw


def geometric(frame: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize/crop/pad one BGR frame to the model's input size; returns uint8 H×W×3 (BGR, contiguous)."""
    frame = as_bgr(frame)
    h, w = frame.shape[:2]
    out_h, out_w = cfg.input_size
    interp = INTERPOLATIONS[cfg.interpolation]
    if cfg.resize == "shorter_crop":
        top, left, ch, cw = _center_crop_box(h, w, out_h, out_w, cfg.crop_ratio)
        frame = frame[top : top + ch, left : left + cw]
        if (ch, cw) == (out_h, out_w):
            return np.ascontiguousarray(frame)
        return cv2.resize(frame, (out_w, out_h), interpolation=interp)
    if cfg.resize == "resize":
        if (h, w) == (out_h, out_w):
            return np.ascontiguousarray(frame)
        return cv2.resize(frame, (out_w, out_h), interpolation=interp)
    # letterbox
    scale = min(out_h / h, out_w / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = frame if (nh, nw) == (h, w) else cv2.resize(frame, (nw, nh), interpolation=interp)
    top, left = (out_h - nh) // 2, (out_w - nw) // 2
    return cv2.copyMakeBorder(
        resized, top, out_h - nh - top, left, out_w - nw - left, cv2.BORDER_CONSTANT, value=(cfg.pad_value,) * 3
    )


def normalize(batch_bgr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 N×H×W×3 BGR (already at input size) -> model input in cfg's channel order, layout and dtype (float32
    normalised, or the uint8 pixels themselves for a model that normalises inside).

    Done by OpenCV's `blobFromImagesWithParams` (channel swap, per-channel (x - mean) * 1/std and the layout change in
    one C++ pass): about 10× faster than the same numpy expression, which `_normalize_numpy` keeps as the reference.
    """
    if batch_bgr.ndim == 3:
        batch_bgr = batch_bgr[None]
    if batch_bgr.ndim != 4 or batch_bgr.shape[3] != 3 or tuple(batch_bgr.shape[1:3]) != cfg.input_size:
        raise UserInputError(f"normalize() expects N×{cfg.height}×{cfg.width}×3 uint8, got {batch_bgr.shape}")
    if batch_bgr.dtype != np.uint8:
        raise UserInputError(f"normalize() expects uint8 pixels, got {batch_bgr.dtype}")
    params = _blob_params(cfg)
    if params is None or cfg.dtype == "uint8":  # OpenCV < 4.8 (older JetPack builds): same result, slower
        return _normalize_numpy(batch_bgr, cfg)
    blob = cv2.dnn.blobFromImagesWithParams(list(batch_bgr), params)
    return np.ascontiguousarray(blob, dtype=np.float32)


@functools.lru_cache(maxsize=32)
def _blob_params(cfg: PreprocessConfig):
    """OpenCV's blob parameters for cfg, or None where this OpenCV lacks blobFromImagesWithParams (< 4.8)."""
    if not hasattr(cv2.dnn, "blobFromImagesWithParams"):
        return None
    # The layout constants live in cv2.dnn on OpenCV 4.x and at the top level on 5.x.
    nchw = getattr(cv2.dnn, "DNN_LAYOUT_NCHW", getattr(cv2, "DNN_LAYOUT_NCHW", None))
    nhwc = getattr(cv2.dnn, "DNN_LAYOUT_NHWC", getattr(cv2, "DNN_LAYOUT_NHWC", None))
    if nchw is None or nhwc is None:
        return None
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = tuple(1.0 / s for s in cfg.std) + (1.0,)  # applied after the channel swap: model order
    params.mean = tuple(cfg.mean) + (0.0,)
    params.swapRB = cfg.channel_order == "rgb"
    params.ddepth = cv2.CV_32F
    params.size = (cfg.width, cfg.height)
    params.datalayout = nchw if cfg.layout == "nchw" else nhwc
    return params


def _normalize_numpy(batch_bgr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The definition of normalize() in numpy (the tests hold the OpenCV path to it)."""
    x = batch_bgr[..., ::-1] if cfg.channel_order == "rgb" else batch_bgr
    if cfg.dtype == "uint8":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if cfg.layout == "nchw" else x, dtype=np.uint8)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    inv_std = (1.0 / np.asarray(cfg.std, dtype=np.float32)).astype(np.float32)
    x = (x.astype(np.float32) - mean) * inv_std
    if cfg.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocess(frames: np.ndarray | Sequence[np.ndarray] | Iterable[np.ndarray], cfg: PreprocessConfig) -> np.ndarray:
    """BGR uint8 frame(s) of any size -> model batch (float32 N×3×H×W for 'nchw'; uint8 for a dtype 'uint8' model).
    A single H×W×C array is one frame."""
    if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
        frames = [frames]
    resized = [geometric(f, cfg) for f in frames]
    if not resized:
        raise UserInputError("preprocess() got no frames")
    return normalize(np.stack(resized), cfg)


def denormalize(x: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Inverse of normalize(): float batch -> uint8 N×H×W×3 BGR (for previews and debugging)."""
    if cfg.layout == "nchw":
        x = x.transpose(0, 2, 3, 1)
    if cfg.dtype == "uint8":
        return np.ascontiguousarray(x[..., ::-1] if cfg.channel_order == "rgb" else x, dtype=np.uint8)
    x = x * np.asarray(cfg.std, dtype=np.float32) + np.asarray(cfg.mean, dtype=np.float32)
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x[..., ::-1] if cfg.channel_order == "rgb" else x)


IMAGENET_EFFICIENTNET_LITE = PreprocessConfig()
