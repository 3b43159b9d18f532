"""The overlay drawn on live frames: top-k labels with confidence bars, then FPS, latency, frame age and drops."""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def annotate(image: np.ndarray, result) -> np.ndarray:
    """Draw `result` (a FrameResult) on `image` in place and return it. Scales with the frame width."""
    h, w = image.shape[:2]
    scale = max(0.35, min(1.2, w / 1000.0))
    thick = 1 if scale < 0.8 else 2
    line = int(26 * scale) + 4
    pad = int(8 * scale) + 2
    rows = len(result.top) + 1
    box_w = min(w, int(360 * scale) + 2 * pad)
    box_h = min(h, rows * line + 2 * pad)
    roi = image[:box_h, :box_w]
    roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken 60 %: readable on any scene
    y = pad + line - int(8 * scale)
    bar_w = int(90 * scale)
    for i, (name, score) in enumerate(result.top):
        shown = result.label if i == 0 else name
        colour = (80, 230, 80) if i == 0 and shown == name else (0, 200, 255) if i == 0 else (230, 230, 230)
        x0 = pad
        cv2.rectangle(image, (x0, y - int(14 * scale)), (x0 + int(bar_w * _bar(score)), y), colour, -1)
        cv2.rectangle(image, (x0, y - int(14 * scale)), (x0 + bar_w, y), (160, 160, 160), 1)
        text = f"{shown[:28]} {score * 100:5.1f}%"
        cv2.putText(image, text, (x0 + bar_w + pad, y), FONT, 0.55 * scale, colour, thick, cv2.LINE_AA)
        y += line
    t = result.timings
    status = (
        f"{result.fps:4.1f} FPS  infer {t.get('inference', 0) * 1e3:.1f} ms  "
        f"age {result.frame_age * 1e3:.0f} ms  drops {result.dropped}"
    )
    cv2.putText(image, status, (pad, y), FONT, 0.5 * scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image


def _bar(score: float) -> float:
    """A score as a bar length in [0, 1]: a NaN-producing model draws an empty bar (int(nan) would raise)."""
    return min(1.0, max(0.0, score)) if np.isfinite(score) else 0.0
