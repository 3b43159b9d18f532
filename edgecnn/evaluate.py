"""Accuracy on a labelled folder, and agreement between two sets of outputs (FP32 vs INT8, ONNX vs engine, ...)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.data import decode_resized, find_splits, map_classes, scan_image_folder
from edgecnn.errors import UserInputError
from edgecnn.postprocess import topk
from edgecnn.preprocess import normalize

Progress = Callable[[int, int], None]


@dataclass
class LabelledLogits:
    """Model outputs on a labelled folder, kept so callers (quantization gate, compare) can reuse them."""

    logits: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    corrupt: list[Path]
    class_names: list[str]  # model class name per dataset folder, in folder order
    folder_to_class: list[int]
    ignored: int = 0  # files in the class folders that are not images (by suffix)
    loose: int = 0  # images directly in the folder, in no class folder: not scored
    folder: str = ""  # the folder scored: test/ (else val/) of a train/ pair, else the folder given


def run_labelled(
    runner, data_dir: str | os.PathLike, batch: int = 32, progress: Progress | None = None, limit: int | None = None
) -> LabelledLogits:
    """Decode a labelled folder in chunks (memory stays bounded) and run the model on it."""
    root, test = find_splits(data_dir)
    folder = scan_image_folder(test or root)
    mapping = map_classes(folder.classes, runner.labels, runner.contract.label_keys)
    samples = folder.samples
    if limit:
        rng = np.random.default_rng(0)
        samples = [samples[i] for i in sorted(rng.permutation(len(samples))[:limit])]
    cfg = runner.preprocess_config
    logits, labels, paths, corrupt = [], [], [], []
    chunk = max(batch, 1) * 8
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk]
        decoded = decode_resized([p for p, _ in part], cfg, [mapping[i] for _, i in part])
        corrupt += decoded.corrupt
        for b in range(0, len(decoded.images), batch):
            logits.append(runner.infer(normalize(decoded.images[b : b + batch], cfg)))
        labels.append(decoded.labels)
        paths += decoded.paths
        if progress:
            progress(min(start + chunk, len(samples)), len(samples))
    if samples and not paths:  # scoring nothing would print no accuracy at all (or null in --json) with exit 0
        raise UserInputError(f"None of the {len(samples)} images in {test or root} could be decoded")
    num_classes = len(runner.labels)
    return LabelledLogits(
        logits=np.concatenate(logits) if logits else np.zeros((0, num_classes), np.float32),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        paths=paths,
        corrupt=corrupt,
        class_names=[runner.labels[i] for i in mapping],
        folder_to_class=mapping,
        ignored=len(folder.ignored),
        loose=len(folder.loose),
        folder=str(folder.root),
    )


def accuracy(logits: np.ndarray, labels: np.ndarray, class_names: dict[int, str]) -> dict:
    """top-1, top-5 and per-class accuracy (classes keyed by model label)."""
    if len(labels) == 0:
        return {"images": 0, "top1": None, "top5": None, "per_class": {}}
    idx, _ = topk(logits, 5)
    hit1 = idx[:, 0] == labels
    hit5 = (idx == labels[:, None]).any(axis=1)
    per_class = {}
    for cls, name in class_names.items():
        mask = labels == cls
        if mask.any():
            per_class[name] = {"images": int(mask.sum()), "top1": float(hit1[mask].mean())}
    return {"images": int(len(labels)), "top1": float(hit1.mean()), "top5": float(hit5.mean()), "per_class": per_class}


def class_display_name(runner, cls: int, counts: Counter) -> str:
    """The label, made unique where the model repeats it (ImageNet's two 'crane's): 'crane (n02012849)', else
    'crane (#134)'; a per-class table keyed by plain names would merge such classes into one row."""
    label = runner.labels[cls]
    if counts[label] == 1:  # counted once per evaluation (1,000 ImageNet labels x 1,000 folders was a million)
        return label
    keys = runner.contract.label_keys
    return f"{label} ({keys[cls]})" if keys else f"{label} (#{cls})"


def evaluate(
    runner, data_dir: str | os.PathLike, batch: int = 32, progress: Progress | None = None, limit: int | None = None
) -> dict:
    """Accuracy of `runner` on a labelled folder (folders map to classes by name, id or wnid)."""
    res = run_labelled(runner, data_dir, batch=batch, progress=progress, limit=limit)
    counts = Counter(runner.labels)
    names = {cls: class_display_name(runner, cls, counts) for cls in res.folder_to_class}
    out = accuracy(res.logits, res.labels, names)
    out.update(
        {
            "corrupt": len(res.corrupt),
            "corrupt_files": [str(p) for p in res.corrupt[:20]],
            "ignored": res.ignored,
            "not_in_a_class_folder": res.loose,
            "model": str(runner.path),
            "backend": runner.backend,
            "data": str(data_dir),
            "scored": res.folder,
        }
    )
    return out


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> dict:
    """How closely two models' outputs match on the same inputs. top1_in_top5: how often b's top-1 class is among
    a's top-5 (a is the reference, b the model under test)."""
    a = np.asarray(logits_a, dtype=np.float64)
    b = np.asarray(logits_b, dtype=np.float64)
    if a.shape != b.shape:
        raise UserInputError(f"Outputs differ in shape: {a.shape} vs {b.shape} (different label sets?)")
    diff = np.abs(a - b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-12)
    top1_a, top1_b = a.argmax(1), b.argmax(1)
    top5_a = np.argsort(-a, axis=1)[:, :5]
    return {
        "images": int(len(a)),
        "top1_agreement": float(np.mean(top1_a == top1_b)) if len(a) else None,
        "top1_in_top5": float(np.mean((top5_a == top1_b[:, None]).any(1))) if len(a) else None,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "cosine_min": float(cos.min()) if len(a) else None,
        "cosine_mean": float(cos.mean()) if len(a) else None,
        "disagreements": [int(i) for i in np.flatnonzero(top1_a != top1_b)],
    }
