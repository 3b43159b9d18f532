"""Logits -> probabilities -> top-k: the one implementation evaluation, prediction, profiling and the live loop
share."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (numerically stable), float32 in, same shape out."""
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row (last axis), best first; argpartition keeps 1000 classes cheap."""
    scores = np.asarray(scores)
    k = max(1, min(k, scores.shape[-1]))
    idx = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(scores, idx, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(idx, order, axis=-1)


def topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the k most probable classes per row, best first."""
    probs = softmax(logits)
    idx = top_indices(probs, k)
    return idx, np.take_along_axis(probs, idx, axis=-1)
