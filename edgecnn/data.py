"""Images in, BGR uint8 out: robust decoding, image folders, class mapping, video frames.

Decoding goes through OpenCV (`imdecode` on the raw bytes, so non-ASCII paths work). Grayscale, RGBA, palette and
16-bit images are converted to BGR uint8; a corrupt or unsupported file yields None and is counted, never a crash.
Images come back upright: the EXIF Orientation tag (phone photos) is applied by OpenCV itself.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig, as_bgr, geometric

# .gif (first frame) and .avif decode with OpenCV >= 4.11; with an older OpenCV they count as unreadable files.
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm", ".jp2",
                        ".gif", ".avif"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
SPLIT_TRAIN = ("train", "training")
SPLIT_TEST = ("test", "val", "valid", "validation")

Progress = Callable[[int, int], None]  # (done, total)
PROGRESS_INTERVAL_S = 0.1

# Keep 16-bit / float depth and gray-vs-colour (as_bgr converts them), but NOT IMREAD_UNCHANGED: OpenCV ignores the
# EXIF Orientation tag for IMREAD_UNCHANGED only, so phone photos would come back sideways or mirrored. The alpha
# channel this drops is the one as_bgr would drop anyway (BGRA2BGR), so the pixels are otherwise identical.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """BGR uint8 H×W×3, upright per the EXIF Orientation tag, or None when the file is unreadable or not an image."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if buf.size == 0:
        return None
    try:
        img = cv2.imdecode(buf, _DECODE_FLAGS)
    except cv2.error:  # e.g. a decompression bomb beyond CV_IO_MAX_IMAGE_PIXELS: unreadable, like any bad file
        return None
    if img is None or img.size == 0:
        return None
    try:
        return as_bgr(img)
    except UserInputError:
        return None


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under `root` (recursive, sorted; hidden files skipped). A single image file is a list of one."""
    root = Path(root)
    if root.is_file():
        return [root] if is_image(root) else []
    if not root.is_dir():
        raise UserInputError(f"{root} does not exist")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image(p) and not _hidden(p, root))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


@dataclass
class ImageFolder:
    """A labelled folder: one sub-folder per class (sorted), images anywhere below it."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    ignored: list[Path] = field(default_factory=list)  # files with a non-image suffix
    empty: list[str] = field(default_factory=list)  # class folders without any image file: not classes

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for _, idx in self.samples:
            out[self.classes[idx]] += 1
        return out

    def __len__(self) -> int:
        return len(self.samples)


def scan_image_folder(root: str | os.PathLike, min_classes: int = 1) -> ImageFolder:
    """Read the class-per-sub-folder layout. Clear errors for a missing, empty or single-class folder."""
    root = Path(root)
    if not root.exists():
        raise UserInputError(f"Data folder {root} does not exist")
    if not root.is_dir():
        raise UserInputError(f"{root} is not a folder; expected one sub-folder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[tuple[Path, int]] = []
    ignored: list[Path] = []
    classes: list[str] = []
    empty: list[str] = []
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if p.is_file() and not _hidden(p, d))
        imgs = [p for p in files if is_image(p)]
        ignored += [p for p in files if not is_image(p)]
        if not imgs:
            empty.append(d.name)
            continue
        idx = len(classes)
        classes.append(d.name)
        samples += [(p, idx) for p in imgs]
    if not samples:
        loose = [p for p in root.iterdir() if p.is_file() and is_image(p)]
        extra = " (it holds images directly: put them in one sub-folder per class)" if loose else ""
        raise UserInputError(f"No images found in class sub-folders of {root}{extra}")
    if len(classes) < min_classes:
        raise UserInputError(
            f"{root} has {len(classes)} class folder(s) with images ({', '.join(classes)}); need at least {min_classes}"
        )
    return ImageFolder(root, classes, samples, ignored, empty)


def find_splits(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """(train, test) when `root` holds a train/ + test/ (or val/) pair, else (root, None)."""
    root = Path(root)
    train = next((root / n for n in SPLIT_TRAIN if (root / n).is_dir()), None)
    test = next((root / n for n in SPLIT_TEST if (root / n).is_dir()), None)
    if train is not None and test is not None:
        return train, test
    return root, None


@dataclass
class DecodedSet:
    """Images decoded and brought to the model's input size (uint8 N×H×W×3 BGR), with labels and failures."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    corrupt: list[Path]


def decode_resized(
    paths: Sequence[Path],
    cfg: PreprocessConfig,
    labels: Sequence[int] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> DecodedSet:
    """Decode files and apply the geometric step of `cfg` (OpenCV releases the GIL, so threads help)."""
    labels = list(labels) if labels is not None else [-1] * len(paths)
    out = np.empty((len(paths), cfg.height, cfg.width, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)

    def work(i: int) -> None:
        img = read_image(paths[i])
        if img is not None:
            out[i] = geometric(img, cfg)
            ok[i] = True

    total = len(paths)
    reported = 0.0
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for done, _ in enumerate(pool.map(work, range(total)), start=1):
            now = time.monotonic()
            if progress and (now - reported >= PROGRESS_INTERVAL_S or done == total):  # a few updates a second
                progress(done, total)
                reported = now
    keep = np.flatnonzero(ok)
    return DecodedSet(
        images=out[keep],
        labels=np.asarray(labels, dtype=np.int64)[keep],
        paths=[paths[i] for i in keep],
        corrupt=[paths[i] for i in np.flatnonzero(~ok)],
    )


def iter_video_frames(path: str | os.PathLike, every: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, BGR frame) for every `every`-th frame of a video file."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserInputError(f"Cannot open video {path}")
    try:
        index = produced = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % max(1, every) == 0:
                yield index, frame
                produced += 1
                if max_frames is not None and produced >= max_frames:
                    break
            index += 1
    finally:
        cap.release()


def map_classes(folder_names: Sequence[str], labels: Sequence[str], label_keys: Sequence[str] | None = None) -> list[int]:
    """Model class index for each dataset folder: by label name (case-insensitive), label key (ImageNet wnid), or
    numeric id. An unknown folder is a clear error naming it."""
    by_name = {name.lower(): i for i, name in enumerate(labels)}
    by_key = {key.lower(): i for i, key in enumerate(label_keys or [])}
    out, unknown = [], []
    for folder in folder_names:
        key = folder.lower()
        if key in by_name:
            out.append(by_name[key])
        elif key in by_key:
            out.append(by_key[key])
        elif folder.isdigit() and int(folder) < len(labels):
            out.append(int(folder))
        else:
            unknown.append(folder)
    if unknown:
        sample = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
        raise UserInputError(
            f"Folder(s) {', '.join(unknown)} match no model class by name, id or key (model classes: {sample})"
        )
    return out
