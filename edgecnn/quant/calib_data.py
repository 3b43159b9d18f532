"""Calibration data: an image folder (recursive, optionally one sub-folder per class) or a video file (every k-th
frame), decoded and brought to the model's input size with the model's OWN preprocessing, plus a summary.

Images are kept as uint8 at input size (150 KB each at 224x224), so 1,000 calibration images cost 150 MB, and
normalised per batch when fed to the model. This is edgecnn's one-method `CalibrationDataReader` equivalent:
`CalibrationSet.batches(batch)` yields float32 model inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgecnn.data import decode_resized, is_video, iter_video_frames, list_images
from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig, geometric, normalize

MIN_RECOMMENDED = 100
DEFAULT_LOCATION = Path("calibration")

Progress = Callable[[int, int], None]


@dataclass
class CalibrationSet:
    """Decoded calibration images (uint8 N×H×W×3 BGR at the model's input size) and where they came from."""

    images: np.ndarray
    cfg: PreprocessConfig
    source: str
    kind: str  # 'folder' or 'video'
    names: list[str]  # file paths or 'frame N'
    classes: list[str] | None = None  # per image: its class sub-folder (None when the folder is flat)
    corrupt: list[str] = field(default_factory=list)
    available: int = 0  # images (or frames considered) before --num-images sampling

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batch: int = 16) -> Iterator[np.ndarray]:
        """Model inputs (float32), `batch` images at a time, through the model's normalisation."""
        for start in range(0, len(self.images), max(1, batch)):
            yield normalize(self.images[start : start + batch], self.cfg)

    def summary(self) -> dict:
        """Count, per-class counts (labelled folders), brightness spread, corrupt files and warnings."""
        gray = self.images.astype(np.float32) @ np.array([0.114, 0.587, 0.299], dtype=np.float32)  # BGR luma
        bright = gray.reshape(len(self.images), -1).mean(axis=1)
        per_class = None
        if self.classes is not None:
            names, counts = np.unique(np.asarray(self.classes), return_counts=True)
            per_class = {str(n): int(c) for n, c in zip(names, counts)}
        warnings = []
        if len(self) < MIN_RECOMMENDED:
            warnings.append(
                f"only {len(self)} calibration images (at least {MIN_RECOMMENDED} recommended): ranges may not cover "
                "what the camera will see"
            )
        if self.corrupt:
            warnings.append(f"{len(self.corrupt)} unreadable file(s) skipped")
        if per_class and len(per_class) > 1 and max(per_class.values()) > 10 * max(1, min(per_class.values())):
            warnings.append("classes are very unevenly represented")
        return {
            "source": self.source,
            "kind": self.kind,
            "images": len(self),
            "available": self.available,
            "corrupt": len(self.corrupt),
            "corrupt_files": self.corrupt[:20],
            "per_class": per_class,
            "brightness": {
                "mean": round(float(bright.mean()), 2),
                "std": round(float(bright.std()), 2),
                "min": round(float(bright.min()), 2),
                "p5": round(float(np.percentile(bright, 5)), 2),
                "p95": round(float(np.percentile(bright, 95)), 2),
                "max": round(float(bright.max()), 2),
            },
            "warnings": warnings,
        }


def _pick(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most `limit` of n items: a reproducible random subset, in original order."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def load_calibration(
    source: str | os.PathLike,
    cfg: PreprocessConfig,
    num_images: int | None = None,
    every: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> CalibrationSet:
    """Decode a calibration folder or video with the model's preprocessing (geometric step).

    Folder: every image below it (recursive); a file directly in a sub-folder takes that sub-folder as its class.
    Corrupt files are skipped and counted. Video: every `every`-th frame (default: spread `num_images` frames over
    the whole video). Raises UserInputError when nothing usable is found.
    """
    src = Path(source)
    if not src.exists():
        hint = " (put images in calibration/<name>/, see calibration/README.md)" if "calibration" in src.parts else ""
        raise UserInputError(f"Calibration source {src} does not exist{hint}")
    if num_images is not None and num_images < 1:
        raise UserInputError(f"--num-images must be at least 1, got {num_images}")
    if src.is_file() and is_video(src):
        return _load_video(src, cfg, num_images, every, progress)
    if src.is_file() and not list_images(src):
        raise UserInputError(f"Calibration source {src} is neither an image folder, an image nor a video file")
    if every is not None:
        raise UserInputError("--every is for a video source; this calibration source is images")
    paths = list_images(src)
    if not paths:
        hint = ": see calibration/README.md for how to fill it" if (src / "README.md").is_file() else ""
        raise UserInputError(
            f"No images found in {src} (looked recursively for .jpg, .png, .bmp, .tif, .webp, ...){hint}"
        )
    available = len(paths)
    paths = [paths[i] for i in _pick(len(paths), num_images, seed)]
    decoded = decode_resized(paths, cfg, progress=progress)
    corrupt = [str(p) for p in decoded.corrupt]
    if len(decoded.images) == 0:
        raise UserInputError(f"None of the {len(paths)} image file(s) in {src} could be decoded (all corrupt?)")
    classes = None
    if src.is_dir():
        rel = [p.relative_to(src).parts for p in decoded.paths]
        if all(len(parts) >= 2 for parts in rel):
            classes = [parts[0] for parts in rel]
    return CalibrationSet(
        images=decoded.images,
        cfg=cfg,
        source=str(src),
        kind="folder",
        names=[str(p) for p in decoded.paths],
        classes=classes,
        corrupt=corrupt,
        available=available,
    )


def _video_frame_count(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def _load_video(
    path: Path, cfg: PreprocessConfig, num_images: int | None, every: int | None, progress: Progress | None
) -> CalibrationSet:
    if every is not None and every < 1:
        raise UserInputError(f"--every must be at least 1, got {every}")
    if every is None and num_images:
        picked, total = _spread_frames(iter_video_frames(path), num_images, cfg, progress)
    else:
        total = _video_frame_count(path)  # the header's count: a hint for the progress bar, may be wrong or missing
        picked = []
        expected = min(num_images or total or 0, -(-total // (every or 1)) if total else num_images or 0) or None
        for index, frame in iter_video_frames(path, every=every or 1, max_frames=num_images):
            picked.append((index, geometric(frame, cfg)))
            if progress:
                progress(len(picked), expected or len(picked))
    frames = [image for _, image in picked]
    names = [f"frame {index}" for index, _ in picked]
    if not frames:
        raise UserInputError(f"No frames could be read from video {path}")
    return CalibrationSet(
        images=np.stack(frames),
        cfg=cfg,
        source=str(path),
        kind="video",
        names=names,
        available=total or len(frames),
    )


def _spread_frames(
    frames, n: int, cfg: PreprocessConfig, progress: Progress | None
) -> tuple[list[tuple[int, np.ndarray]], int]:
    """`n` of the video's frames, evenly spread over all of it, without trusting the header's frame count (a cut or
    re-muxed file may claim 1,000 frames and hold 100, or claim none): frames are kept at a stride that doubles
    whenever 2n are held (every other one is dropped then), so at most 2n are held; n are picked evenly at the end.
    Returns (the picked (index, image) pairs, how many frames the video really had)."""
    kept: list[tuple[int, np.ndarray]] = []
    stride, seen = 1, 0
    for index, frame in frames:
        seen = index + 1
        if index % stride:
            continue
        kept.append((index, geometric(frame, cfg)))
        if len(kept) >= 2 * n:
            kept, stride = kept[::2], stride * 2
        if progress:
            progress(min(len(kept), n), n)
    if len(kept) > n:
        kept = [kept[i * len(kept) // n] for i in range(n)]
    return kept, seen
