"""Classify image files with any runner: top-k labels and probabilities per image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgecnn.data import image_problem, list_images, read_image
from edgecnn.errors import UserInputError
from edgecnn.postprocess import topk
from edgecnn.preprocess import preprocess


def expand_inputs(items: list[str | os.PathLike]) -> tuple[list[Path], dict[Path, str]]:
    """(files, problems): files as given and folders expanded to their images (recursive), in order; a missing path
    or a folder without images is a problem to report beside the results of the others, not a reason to classify
    nothing."""
    out: list[Path] = []
    problems: dict[Path, str] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                problems[p] = "folder without images"
            out += found or [p]
        else:
            if not p.is_file():
                problems[p] = image_problem(p)  # missing, or there but not a regular file (a FIFO, a device)
            out.append(p)
    if not out:
        raise UserInputError("No images given")
    return out, problems


def predict_files(runner, images: list[str | os.PathLike], top_k: int = 5, batch: int = 16) -> list[dict]:
    """One result per image: {'path', 'top_k': [{'index', 'label', 'score'}]} or {'path', 'error'}."""
    paths, problems = expand_inputs(images)
    results: list[dict | None] = [None] * len(paths)
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        logits = runner.infer(preprocess([f for _, f in pending], runner.preprocess_config))
        idx, probs = topk(logits, top_k)
        for (i, _), row_i, row_p in zip(pending, idx, probs):
            results[i] = {
                "path": str(paths[i]),
                "top_k": [
                    {"index": int(c), "label": runner.labels[c], "score": float(s)} for c, s in zip(row_i, row_p)
                ],
            }
        pending.clear()

    for i, p in enumerate(paths):
        if p in problems:
            results[i] = {"path": str(p), "error": problems[p]}
            continue
        frame = read_image(p)
        if frame is None:
            results[i] = {"path": str(p), "error": image_problem(p)}
            continue
        pending.append((i, frame))
        if len(pending) >= batch:
            flush()
    flush()
    return results  # type: ignore[return-value]
