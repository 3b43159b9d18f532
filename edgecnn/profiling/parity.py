"""Output parity between two builds of a model (backends or precisions) on the same real images.

Each image is decoded once and goes through each model's *own* preprocessing contract (a build that changed its
preprocessing should show up as disagreement, not be hidden). Labels are not needed: the metric is agreement between
the two outputs (`edgecnn.evaluate.agreement`: max/mean absolute logit difference, cosine similarity, top-1 agreement),
plus the list of images where the top-1 classes differ.

Data: a folder of images (searched recursively, labelled or not). Without one we use `./calibration/` when it holds
images, since that is the folder meant to represent the deployment camera; otherwise the caller must name one
(random tensors would hide the very INT8 range problems a comparison is for).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.data import list_images, read_image
from edgecnn.errors import AccuracyGateError, UserInputError
from edgecnn.evaluate import agreement
from edgecnn.postprocess import softmax
from edgecnn.preprocess import preprocess

DEFAULT_DATA = Path("calibration")
Progress = Callable[..., None]


def resolve_data(data_dir: str | os.PathLike | None) -> tuple[Path, list[Path]]:
    """The image folder to compare on and its images (sorted), or a clear error naming --data."""
    if data_dir is None:
        if DEFAULT_DATA.is_dir() and list_images(DEFAULT_DATA):
            data_dir = DEFAULT_DATA
        else:
            raise UserInputError(
                "No images to compare on: pass --data DIR (a folder of real images, e.g. your calibration set); "
                f"./{DEFAULT_DATA}/ is missing or empty"
            )
    root = Path(data_dir)
    if not root.exists():
        raise UserInputError(f"--data {root} does not exist")
    images = list_images(root)
    if not images:
        raise UserInputError(f"No images found in {root} (looked for .jpg, .png, ... recursively)")
    return root, images


def compare_runners(
    runner_a,
    runner_b,
    images: list[Path],
    batch: int = 32,
    limit: int | None = None,
    progress: Progress | None = None,
    root: Path | None = None,
) -> dict:
    """Run both models on `images` and measure how closely they agree (see the module docstring)."""
    if batch < 1:
        raise UserInputError(f"--batch must be >= 1, got {batch}")
    if len(runner_a.labels) != len(runner_b.labels):
        raise UserInputError(
            f"The models have different outputs: {len(runner_a.labels)} vs {len(runner_b.labels)} classes; "
            "compare two builds of the same model"
        )
    if limit:
        images = images[:limit]
    logits_a, logits_b, used, unreadable = [], [], [], []
    for start in range(0, len(images), batch):
        frames = []
        for p in images[start : start + batch]:
            img = read_image(p)
            if img is None:
                unreadable.append(p)
            else:
                frames.append(img)
                used.append(p)
        if frames:
            logits_a.append(runner_a.infer(preprocess(frames, runner_a.preprocess_config)))
            logits_b.append(runner_b.infer(preprocess(frames, runner_b.preprocess_config)))
        if progress:
            progress(min(start + batch, len(images)), len(images))
    if not used:
        raise UserInputError(f"None of the {len(images)} image(s) could be decoded")
    a, b = np.concatenate(logits_a), np.concatenate(logits_b)
    metrics = agreement(a, b)
    pa, pb = softmax(a), softmax(b)
    la, lb = runner_a.labels, runner_b.labels

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root)) if root and root.is_dir() else str(p)
        except ValueError:
            return str(p)

    disagreements = []
    for i in metrics.pop("disagreements"):
        ia, ib = int(a[i].argmax()), int(b[i].argmax())
        disagreements.append(
            {
                "image": rel(used[i]),
                "a": la[ia],
                "a_prob": float(pa[i, ia]),
                "b": lb[ib],
                "b_prob": float(pb[i, ib]),
            }
        )
    notes = []
    if la != lb:
        notes.append("the two models name their classes differently; indices are compared")
    if runner_a.preprocess_config != runner_b.preprocess_config:
        notes.append("the two models' preprocessing differs; each ran its own")
    return {
        "a": {"path": str(runner_a.path), "backend": runner_a.backend, "precision": runner_a.contract.precision},
        "b": {"path": str(runner_b.path), "backend": runner_b.backend, "precision": runner_b.contract.precision},
        **metrics,
        "max_prob_diff": float(np.abs(pa - pb).max()),
        "unreadable": [rel(p) for p in unreadable],
        "disagreements": disagreements,
        "notes": notes,
    }


def check_gate(result: dict, min_agreement: float | None = None, max_abs_diff: float | None = None) -> None:
    """Raise AccuracyGateError (exit 5) when the comparison misses a bound: for CI around quantization/builds."""
    failures = gate_failures(result, min_agreement, max_abs_diff)
    if failures:
        raise AccuracyGateError("Parity check failed: " + "; ".join(failures))


def gate_failures(result: dict, min_agreement: float | None = None, max_abs_diff: float | None = None) -> list[str]:
    """The bounds the comparison misses, each in words (empty: it passes, or no bound was given)."""
    import math

    failures = []
    if (min_agreement is not None or max_abs_diff is not None) and not math.isfinite(result["max_abs_diff"]):
        failures.append(
            f"non-finite outputs (max abs diff {result['max_abs_diff']})"
        )  # NaN compares False with any bound
    if min_agreement is not None and result["top1_agreement"] < min_agreement:
        failures.append(f"top-1 agreement {result['top1_agreement']:.2%} < {min_agreement:.2%}")
    if max_abs_diff is not None and result["max_abs_diff"] > max_abs_diff:
        failures.append(f"max abs diff {result['max_abs_diff']:.4g} > {max_abs_diff:.4g}")
    return failures
