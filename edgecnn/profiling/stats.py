"""Latency statistics from raw per-iteration samples.

Percentiles use numpy's default linear interpolation (the same definition as `numpy.percentile`), so a reader can
recompute every number from the samples stored in a report's JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from edgecnn.errors import UserInputError

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one (model, batch, mode) measurement. Times in milliseconds, throughput in images per second."""

    iterations: int
    batch: int
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput: float  # images/s at the mean latency: batch * 1000 / mean_ms

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(samples_ms: Sequence[float], batch: int = 1) -> LatencyStats:
    """Statistics of per-iteration latencies (ms) for batches of `batch` images."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise UserInputError("latency_stats() needs at least one sample")
    if batch < 1:
        raise UserInputError(f"batch must be >= 1, got {batch}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise UserInputError("latency samples must be finite and non-negative")
    p50, p90, p95, p99 = np.percentile(x, PERCENTILES)
    mean = float(x.mean())
    return LatencyStats(
        iterations=int(x.size),
        batch=int(batch),
        min_ms=float(x.min()),
        mean_ms=mean,
        std_ms=float(x.std()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(x.max()),
        throughput=float(batch * 1000.0 / mean) if mean > 0 else float("inf"),
    )


def stage_means(stage_samples: dict[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Mean and median of each stage (e.g. h2d/compute/d2h from a GPU runner), in ms."""
    out = {}
    for name, values in stage_samples.items():
        v = np.asarray(values, dtype=np.float64)
        if v.size:
            out[name] = {"mean_ms": float(v.mean()), "p50_ms": float(np.median(v))}
    return out
