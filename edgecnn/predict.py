"""Classify image files with any runner: top-k labels and probabilities per image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgecnn.data import is_image, list_images, read_image
from edgecnn.errors import UserInputError
from edgecnn.postprocess import topk
from edgecnn.preprocess import preprocess


def expand_inputs(items: list[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their images (recursive). Missing paths are a clear error."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise UserInputError(f"No images in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserInputError(f"Image {p} does not exist")
    return out


def predict_files(runner, images: list[str | os.PathLike], top_k: int = 5, batch: int = 16) -> list[dict]:
    """One result per image: {'path', 'top_k': [{'index', 'label', 'score'}]} or {'path', 'error'}."""
    paths = expand_inputs(images)
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
                "top_k": [{"index": int(c), "label": runner.labels[c], "score": float(s)} for c, s in zip(row_i, row_p)],
            }
        pending.clear()

    for i, p in enumerate(paths):
        frame = read_image(p)
        if frame is None:
            kind = "not an image file" if not is_image(p) else "corrupt or unreadable image"
            results[i] = {"path": str(p), "error": kind}
            continue
        pending.append((i, frame))
        if len(pending) >= batch:
            flush()
    flush()
    return results  # type: ignore[return-value]
