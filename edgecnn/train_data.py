"""Training data for `edgecnn.train.fit`: which files train and which validate, then decoding them once.

Planning (scan, split, digest) reads no pixels, so every refusal about the data (too few classes, a validation folder
that overlaps the training images, a resume on other files) comes before the slow part; decoding brings every image
to the model's input size once, as uint8, so the epochs run from memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.data import SPLIT_TEST, decode_resized, find_training_splits, scan_image_folder
from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig
from edgecnn.train_types import TrainConfig, TrainProgress

MEMORY_FRACTION = 0.5  # refuse to hold more than this share of physical RAM as decoded images


@dataclass
class Split:
    """One split, decoded: what the epochs run from."""

    images: np.ndarray  # uint8 N×H×W×3 BGR at input size
    labels: np.ndarray  # int64 N


def _stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices): `fraction` of every class held out (at least one image when a class has two),
    and at least one image of every class kept for training: a class with a single image trains on it (a class the
    model never sees in training cannot be learnt, and moving it to validation only measures that)."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            k = max(k, 1)
        k = min(k, len(idx) - 1)
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(val)


def _check_memory(n_images: int, pre: PreprocessConfig) -> None:
    need = n_images * pre.height * pre.width * 3
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > MEMORY_FRACTION * phys:
        raise UserInputError(
            f"{n_images} images at {pre.height}×{pre.width} need {need / 2**30:.1f} GiB decoded in memory, more than "
            f"{MEMORY_FRACTION:.0%} of this machine's {phys / 2**30:.1f} GiB: use a smaller --img-size or fewer images"
        )


@dataclass
class DataPlan:
    """Which files train and which validate (scanned and split, nothing decoded yet)."""

    classes: list[str]
    train_dir: Path
    train_paths: list[Path]
    train_labels: list[int]
    val_root: Path | None  # the validation folder; None for a split of the training folder
    val_paths: list[Path]
    val_labels: list[int]

    def digest(self) -> str:
        """sha256 of the split: each file's path relative to its folder, its size and its class. A resumed run must
        see the same split, or images it validated on would move into training (and the best epoch would be chosen on
        two different validation sets). Sizes catch other images under the same names (compressed images of equal
        size are rare) without reading every file; modification times are left out, so a copied folder still
        resumes."""
        import hashlib

        h = hashlib.sha256()
        for name, root, paths, labels in (
            ("train", self.train_dir, self.train_paths, self.train_labels),
            ("val", self.val_root or self.train_dir, self.val_paths, self.val_labels),
        ):
            h.update(f"{name}\n".encode())
            for path, label in zip(paths, labels):
                try:
                    size = path.stat().st_size  # one stat per file (exists() + stat() was two)
                except OSError:
                    size = -1
                h.update(f"{path.relative_to(root).as_posix()}\t{size}\t{self.classes[label]}\n".encode())
        return h.hexdigest()


def _real_paths(paths: list[Path]) -> set[str]:
    """The files' real locations, links followed. Each folder is resolved once and only linked files one by one
    (os.path.realpath on every file: 1.5 s for CIFAR-10's 60,000 files here; this: 0.7 s, one lstat per file)."""
    folders: dict[Path, str] = {}
    out = set()
    for p in paths:
        folder = folders.get(p.parent)
        if folder is None:
            folder = folders[p.parent] = os.path.realpath(p.parent)
        out.add(os.path.realpath(p) if p.is_symlink() else os.path.join(folder, p.name))
    return out


def plan_data(cfg: TrainConfig, classes_from_ckpt: list[str] | None, warn: Callable[[str], None]) -> DataPlan:
    """Scan and split the folders (cheap: no decoding). Class folders without images are left out with a warning:
    the model would never learn such a class, and a user who forgot to fill a folder wants to know before the
    training time is spent."""
    train_dir, val_dir = find_training_splits(Path(cfg.data))
    folder = scan_image_folder(train_dir, min_classes=2)
    classes = folder.classes
    if folder.empty:
        warn(
            f"{len(folder.empty)} class folder(s) in {train_dir} hold no images and are not classes of this model: "
            f"{', '.join(folder.empty)}"
        )
    if folder.loose:
        warn(
            f"{len(folder.loose)} image(s) directly in {train_dir} are in no class folder and are not used "
            f"(e.g. {folder.loose[0].name})"
        )
    if classes_from_ckpt is not None and classes != classes_from_ckpt:
        raise UserInputError(
            f"--resume checkpoint was trained on classes {classes_from_ckpt}, but {train_dir} has {classes}"
        )
    paths = [p for p, _ in folder.samples]
    labels = [c for _, c in folder.samples]

    val_root = Path(cfg.val) if cfg.val is not None else val_dir if cfg.val_split is None else None
    if val_root is not None and cfg.val is None and val_dir.name in SPLIT_TEST:
        warn(
            f"validating on {val_dir} (there is no val/ beside {train_dir.name}/): the best epoch and early stopping "
            f"are chosen on it, so its accuracy is not an unseen-data score; add a val/ folder or pass --val-split "
            f"0.1 to keep {val_dir.name}/ unseen"
        )
    if val_root is not None:
        a, b = val_root.resolve(), train_dir.resolve()
        if a.is_relative_to(b) or b.is_relative_to(a):
            raise UserInputError(
                f"--val {val_root} overlaps the training images in {train_dir}: validating on "
                "images the model trains on measures nothing; give a separate folder or --val-split"
            )
        val_folder = scan_image_folder(val_root)
        unknown = [c for c in val_folder.classes if c not in classes]
        if unknown:
            raise UserInputError(
                f"Validation folder {val_folder.root} has class folder(s) {', '.join(unknown)} that the training data "
                f"{train_dir} lacks (training classes: {', '.join(classes)})"
            )
        val_paths = [p for p, _ in val_folder.samples]
        val_labels = [classes.index(val_folder.classes[c]) for _, c in val_folder.samples]
        shared = _real_paths(val_paths) & _real_paths(paths)
        if shared:  # linked folders or files: the roots differ, the images do not
            raise UserInputError(
                f"{len(shared)} validation image(s) in {val_root} are training images too (e.g. "
                f"{sorted(shared)[0]}, by a link): validating on them measures nothing"
            )
    else:
        val_paths, val_labels = [], []
        fraction = 0.1 if cfg.val_split is None else float(cfg.val_split)
        if fraction > 0:
            train_idx, val_idx = _stratified_split(labels, fraction, cfg.seed)
            if not val_idx:  # every class has a single image: each trains on it, and nothing is left to validate
                warn(
                    f"no validation images: every class in {train_dir} has one image, which it trains on; the last "
                    "epoch is kept and early stopping is off (add images, or give --val DIR)"
                )
            val_paths = [paths[i] for i in val_idx]
            val_labels = [labels[i] for i in val_idx]
            paths = [paths[i] for i in train_idx]
            labels = [labels[i] for i in train_idx]
    return DataPlan(classes, train_dir, paths, labels, val_root, val_paths, val_labels)


def decode_data(plan: DataPlan, cfg: TrainConfig, pre: PreprocessConfig, report) -> tuple:
    """Decode the planned files at the model's input size. Returns (train Split, val Split | None, corrupt counts,
    corrupt examples). No readable training image, or none of two classes, or validation images of which none is
    readable: each a clear error (training on without the validation the user asked for would silently switch
    off early stopping and best-checkpoint selection)."""
    _check_memory(len(plan.train_paths) + len(plan.val_paths), pre)
    workers = cfg.workers or os.cpu_count() or 1

    def decode(split: str, p: list[Path], lab: list[int]):
        cb = (
            (lambda done, total: report(TrainProgress("decode", step=done, steps=total, split=split)))
            if report
            else None
        )
        return decode_resized(p, pre, lab, progress=cb, workers=workers)

    train_set = decode("train", plan.train_paths, plan.train_labels)
    if len(train_set.labels) == 0:
        raise UserInputError(
            f"None of the {len(plan.train_paths)} training images in {plan.train_dir} could be decoded"
        )
    present = np.unique(train_set.labels)
    if len(present) < 2:
        raise UserInputError(
            f"Only class {plan.classes[int(present[0])]!r} has readable training images in {plan.train_dir}: need at "
            "least two classes"
        )
    val_set = decode("val", plan.val_paths, plan.val_labels) if plan.val_paths else None
    if val_set is not None and len(val_set.labels) == 0:
        raise UserInputError(
            f"None of the {len(plan.val_paths)} validation images "
            f"({plan.val_root or 'split off ' + str(plan.train_dir)}) could be decoded"
        )
    corrupt = {"train": len(train_set.corrupt), "val": len(val_set.corrupt) if val_set else 0}
    examples = [str(p) for p in (train_set.corrupt + (val_set.corrupt if val_set else []))[:5]]
    val = Split(val_set.images, val_set.labels) if val_set is not None else None
    return Split(train_set.images, train_set.labels), val, corrupt, examples
