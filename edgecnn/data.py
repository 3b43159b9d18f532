"""Images in, BGR uint8 out: robust decoding, image folders, class mapping, video frames.

Decoding goes through OpenCV (`imdecode` on the raw bytes, so non-ASCII paths work). Grayscale, RGBA, palette and
16-bit images are converted to BGR uint8; a corrupt or unsupported file yields None and is counted, never a crash.
Images come back upright: the EXIF Orientation tag (phone photos) is applied by OpenCV itself.
"""

from __future__ import annotations

import os
import stat
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from edgecnn.errors import UserInputError
from edgecnn.imagesize import MAX_PIXELS_ENV, image_size, max_pixels
from edgecnn.preprocess import PreprocessConfig, as_bgr, geometric

# .gif (first frame) and .avif decode with OpenCV >= 4.11; with an older OpenCV they count as unreadable files.
IMAGE_EXTS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".webp",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
        ".jp2",
        ".gif",
        ".avif",
    }
)
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
SPLIT_TRAIN = ("train", "training")
SPLIT_VAL = ("val", "valid", "validation")
SPLIT_TEST = ("test",)

Progress = Callable[[int, int], None]  # (done, total)
PROGRESS_INTERVAL_S = 0.1

# Keep 16-bit / float depth and gray-vs-colour (as_bgr converts them), but NOT IMREAD_UNCHANGED: OpenCV ignores the
# EXIF Orientation tag for IMREAD_UNCHANGED only, so phone photos would come back sideways or mirrored. The alpha
# channel this drops is the one as_bgr would drop anyway (BGRA2BGR), so the pixels are otherwise identical.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """BGR uint8 H×W×3, upright per the EXIF Orientation tag, or None when the file is unreadable, not an image, not a
    regular file (a FIFO would block), or larger than the pixel limit (`image_problem` says which)."""
    buf = _read_bytes(path)
    if buf is None or _too_large(buf) is not None:
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


def _read_bytes(path: str | os.PathLike) -> np.ndarray | None:
    """The file's bytes; None for an empty or unreadable file or anything but a regular file (never opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    return buf if buf.size else None


def _too_large(buf: np.ndarray) -> str | None:
    """Why the encoded image `buf` is refused before decoding (its header declares more pixels than the limit)."""
    size = image_size(memoryview(buf)[: 1 << 20])
    limit = max_pixels()
    if size is None or size[0] * size[1] <= limit:
        return None
    w, h = size
    return (
        f"{w}x{h} pixels ({w * h / 1e6:.0f} MP), above the limit of {limit / 1e6:g} MP: not decoded "
        f"(raise it with {MAX_PIXELS_ENV}=N if the image is wanted)"
    )


def image_problem(path: str | os.PathLike) -> str:
    """Why `read_image(path)` gave None, in words for the user (the file's name is said by the caller)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"not a regular file ({kind}): not read"
    buf = _read_bytes(path)
    if buf is None:
        return "empty or unreadable file"
    too_large = _too_large(buf)
    if too_large:
        return too_large
    return "not an image file" if not is_image(path) else "corrupt or unreadable image"


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
    loose: list[Path] = field(default_factory=list)  # images directly in the root: in no class, so not used

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
    loose = sorted(p for p in root.iterdir() if p.is_file() and is_image(p) and not p.name.startswith("."))
    if not samples:
        extra = " (it holds images directly: put them in one sub-folder per class)" if loose else ""
        raise UserInputError(f"No images found in class sub-folders of {root}{extra}")
    if len(classes) < min_classes:
        raise UserInputError(
            f"{root} has {len(classes)} class folder(s) with images ({', '.join(classes)}); need at least {min_classes}"
        )
    return ImageFolder(root, classes, samples, ignored, empty, loose)


def _first_folder(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def find_splits(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """(train, evaluation folder) when `root` holds train/ beside test/ or val/, else (root, None). For scoring a
    model (eval, quantize --val): test/ is preferred, val/ (valid/, validation/) taken when there is no test/."""
    return _train_beside(root, SPLIT_TEST, SPLIT_VAL)


def find_training_splits(root: str | os.PathLike) -> tuple[Path, Path | None]:
    """(train, validation folder) for training when `root` holds train/ beside val/ (valid/, validation/) or test/,
    else (root, None). val/ validates when it is there, and test/ then stays unseen; a plain train/ + test/ pair
    (CIFAR-10's layout) validates on test/, the usual convention, which the caller says out loud: the best epoch and
    early stopping are then chosen on test/, so its score is no longer an unseen-data score (--val-split keeps it
    unseen)."""
    return _train_beside(root, SPLIT_VAL, SPLIT_TEST)


def _train_beside(
    root: str | os.PathLike, preferred: Sequence[str], fallback: Sequence[str]
) -> tuple[Path, Path | None]:
    root = Path(root)
    train = _first_folder(root, SPLIT_TRAIN)
    held_out = _first_folder(root, preferred) or _first_folder(root, fallback)
    if train is not None and held_out is not None:
        return train, held_out
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


def iter_video_frames(
    path: str | os.PathLike, every: int = 1, max_frames: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
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


def loose_name(name: str) -> str:
    """A class name as people spell it in folder names: Unicode NFC (macOS stores names decomposed), case-folded,
    '_' and '-' read as spaces, runs of spaces collapsed, ends stripped: 'Great_White-Shark ' -> 'great white shark'."""
    name = unicodedata.normalize("NFC", name).casefold().replace("_", " ").replace("-", " ")
    return " ".join(name.split())


def _is_class_id(name: str) -> bool:
    return name.isascii() and name.isdigit()


def map_classes(
    folder_names: Sequence[str], labels: Sequence[str], label_keys: Sequence[str] | None = None
) -> list[int]:
    """Model class index for each dataset folder, by the first rule that gives an answer:
    1. the exact label (after NFC and stripping): 'Cardigan' is ImageNet's corgi (264), 'cardigan' the sweater (474);
    2. a label key (ImageNet wnid, any case);
    3. the label spelled loosely (`loose_name`: case, '_', '-', spaces);
    4. a numeric class id (ASCII digits), unless a label is itself a number: with classes named '1' and '2', a
       folder '0' is a class nobody trained, not class index 0 (whose label is '1').
    A folder that names several classes (ImageNet has two 'crane's and two 'maillot's) is an error asking for the
    key or id, never a silent pick; an unknown folder is an error naming it."""
    exact: dict[str, list[int]] = {}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(labels):
        exact.setdefault(unicodedata.normalize("NFC", name).strip(), []).append(i)
        loose.setdefault(loose_name(name), []).append(i)
    by_key = {key.lower(): i for i, key in enumerate(label_keys or [])}
    ids_allowed = not any(_is_class_id(name.strip()) for name in labels)
    out, unknown, ambiguous = [], [], []
    for folder in folder_names:
        hits = exact.get(unicodedata.normalize("NFC", folder).strip())
        if hits is None and folder.strip().lower() in by_key:
            hits = [by_key[folder.strip().lower()]]
        if hits is None:
            hits = loose.get(loose_name(folder))
        if hits is None and ids_allowed and _is_class_id(folder) and int(folder) < len(labels):
            hits = [int(folder)]
        if not hits:
            unknown.append(folder)
        elif len(hits) > 1:
            keys = [label_keys[i] if label_keys else str(i) for i in hits]
            ambiguous.append(f"{folder!r} (classes {', '.join(f'{i} {k}' for i, k in zip(hits, keys))})")
        else:
            out.append(hits[0])
    if ambiguous:
        raise UserInputError(
            f"Folder(s) {'; '.join(ambiguous)} name more than one model class: rename each to its key or class id"
        )
    if unknown:
        sample = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
        raise UserInputError(
            f"Folder(s) {', '.join(unknown)} match no model class by name, id or key (model classes: {sample})"
        )
    return out
