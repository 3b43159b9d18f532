"""Training augmentation on uint8 BGR batches, between `preprocess.geometric()` and `preprocess.normalize()`.

Working on the already-resized uint8 images keeps the evaluation path exactly `preprocess()` (augmentation is the
only thing training adds) and is cheap: a random crop of a padded copy plus a horizontal flip is a few slices.
"""

from __future__ import annotations

import numpy as np


def default_pad(height: int, width: int) -> int:
    """Padding for random crops: 4 px at 32×32 (the CIFAR standard), scaled with the image (1/8 of the side)."""
    return max(1, round(min(height, width) / 8))


def random_crop_flip(
    batch: np.ndarray, rng: np.random.Generator, pad: int | None = None, flip: bool = True
) -> np.ndarray:
    """uint8 N×H×W×3 -> a new N×H×W×3: each image shifted by up to `pad` px (reflect-padded) and flipped with p=0.5."""
    if batch.ndim != 4:
        raise ValueError(f"expected N×H×W×C, got {batch.shape}")
    n, h, w, _ = batch.shape
    pad = default_pad(h, w) if pad is None else pad
    if pad > 0:
        padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        tops = rng.integers(0, 2 * pad + 1, size=n)
        lefts = rng.integers(0, 2 * pad + 1, size=n)
        out = np.empty_like(batch)
        for i in range(n):
            out[i] = padded[i, tops[i] : tops[i] + h, lefts[i] : lefts[i] + w]
    else:
        out = batch.copy()
    if flip:
        mask = rng.random(n) < 0.5
        out[mask] = out[mask, :, ::-1]
    return out
