"""Activation statistics in one pass, and the three calibrators that turn them into ranges.

Why not ONNX Runtime's own calibrators: its entropy calibrator re-bins a symmetric histogram in Python for every
batch and every tensor (about 70 s for 200 images of EfficientNet-Lite0 on 2 cores). Here every activation tensor is
an extra output of ONE session, and each batch updates, per tensor:
  - the exact min and max (minmax),
  - a histogram of |x| with a fixed bin width taken from the first batch (amax / 2048), extended with more bins of the
    same width when a later batch goes further (the scheme of NVIDIA's pytorch-quantization HistogramCalibrator),
    computed with one vectorised `np.bincount`.
Percentile reads the cumulative histogram; entropy is TensorRT's KL-divergence search (2048 bins -> 128 levels) with
every candidate threshold evaluated at once in numpy instead of a Python loop per candidate, never clipping more than
the share of values that `percentile` keeps out (ENTROPY_MAX_CLIPPED).

Ranges are (low, high) per tensor. For symmetric INT8 (TensorRT) only amax = max(|low|, |high|) matters; for the
uint8 CPU target, percentile and entropy clip both ends at +-threshold and keep the real min/max inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from edgecnn.errors import UserInputError

METHODS = ("minmax", "percentile", "entropy")
HIST_BINS = 2048  # initial number of histogram bins over [0, amax of the first batch]
MAX_HIST_BINS = 2048 * 32  # beyond this a histogram is coarsened 2:1 (pathological outliers)
HIST_SAMPLES = 1 << 19  # histogram values per tensor and batch; larger tensors are sampled with a prime stride
QUANT_LEVELS = 128  # positive levels of signed INT8
ENTROPY_START_BIN = 128
# Entropy never clips more than this share of a tensor's values. Why: on sparse ReLU6 outputs (EfficientNet-Lite0's
# late depthwise layers: 75-80 % exact zeros, a long thin tail, a spike of saturated 6.0s) the KL divergence is
# dominated by how finely the levels resolve the dense head, and moving 0.1-0.5 % of the values, the strongest
# activations, from up to 6.0 down to 3-4 costs it almost nothing; TensorRT's documented algorithm (and NVIDIA's
# pytorch-quantization, which this one matches bin for bin) picks 3.0-4.2 there, and those clips alone cost 6
# points of agreement. Bounded at the 99.99th percentile, entropy keeps its choice wherever that choice is wider
# (most signed tensors) and stops short of cutting into the tail.
ENTROPY_MAX_CLIPPED = 1e-4

Progress = Callable[[int, int], None]


@dataclass
class TensorStats:
    """Running statistics of one activation tensor over all calibration batches."""

    low: float = float("inf")
    high: float = float("-inf")
    width: float = 0.0  # histogram bin width (0 until the first non-zero batch)
    edge: float = 0.0  # amax of the first non-zero batch: the right edge of the first 2048 bins (closed)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    count: int = 0
    channel_sum: np.ndarray | None = None  # per-channel sums (axis 1), for bias correction
    channel_count: int = 0

    @property
    def channel_mean(self) -> np.ndarray | None:
        return None if self.channel_sum is None else self.channel_sum / max(1, self.channel_count)

    @property
    def amax(self) -> float:
        return max(abs(self.low), abs(self.high))

    def update(
        self, x: np.ndarray, histogram: bool = True, max_samples: int | None = HIST_SAMPLES, channel_mean: bool = False
    ) -> None:
        """Add one batch. min/max see every value; the histogram sees at most `max_samples` values, taken with a
        prime stride (no aliasing with channel or row sizes), which keeps 200 images of a real network within
        seconds while every tensor still gets millions of histogram samples."""
        if channel_mean and x.ndim >= 2 and x.size:
            axes = (0,) + tuple(range(2, x.ndim))
            sums = x.sum(axis=axes, dtype=np.float64)
            self.channel_sum = sums if self.channel_sum is None else self.channel_sum + sums
            self.channel_count += x.size // x.shape[1]
        x = x.reshape(-1)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.low, self.high = min(self.low, lo), max(self.high, hi)
        self.count += x.size
        if not histogram:
            return
        amax = max(abs(lo), abs(hi))
        if self.width == 0.0:
            if amax == 0.0:  # all zeros so far: they belong to bin 0 whatever the width turns out to be
                self.hist = self.hist if self.hist.size else np.zeros(1, dtype=np.int64)
                self.hist[0] += x.size
                return
            self.width, self.edge = amax / HIST_BINS, amax
        if max_samples and x.size > max_samples:
            x = x[:: sample_stride(x.size, max_samples)]
        a = np.abs(x)
        a *= np.float32(1.0 / self.width)
        idx = a.astype(np.intp)
        if amax <= self.edge:  # like np.histogram, the last of the first 2048 bins is closed: |x| == edge goes in it
            np.minimum(idx, HIST_BINS - 1, out=idx)
        counts = np.bincount(idx)
        if counts.size > self.hist.size:
            counts[: self.hist.size] += self.hist
            self.hist = counts
        else:
            self.hist[: counts.size] += counts
        while self.hist.size > MAX_HIST_BINS:  # keep memory bounded: merge pairs of bins
            if self.hist.size % 2:
                self.hist = np.append(self.hist, 0)
            self.hist = self.hist.reshape(-1, 2).sum(axis=1)
            self.width *= 2.0
            self.edge = 0.0  # bins no longer line up with the first edge


def sample_stride(size: int, max_samples: int) -> int:
    """The smallest prime stride that leaves at most `max_samples` of `size` values."""
    n = max(2, -(-size // max_samples))
    while any(n % p == 0 for p in range(2, int(n**0.5) + 1)):
        n += 1
    return n


def collect_stats(
    batches: Iterable[np.ndarray],
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    histogram: bool = True,
    total: int | None = None,
    progress: Progress | None = None,
    channel_means: Iterable[str] = (),
) -> dict[str, TensorStats]:
    """Feed every batch through `run` (returns {tensor: array}) and accumulate per-tensor statistics; per-channel
    means too for the tensors in `channel_means` (inputs of layers to bias-correct)."""
    channel_means = set(channel_means)
    stats: dict[str, TensorStats] = {}
    done = 0
    for batch in batches:
        outputs = run(batch)
        for name, value in outputs.items():
            stats.setdefault(name, TensorStats()).update(
                np.asarray(value, dtype=np.float32), histogram, channel_mean=name in channel_means
            )
        done += len(batch)
        if progress:
            progress(done, total or done)
    return stats


# ---------------------------------------------------------------- calibrators


def minmax_range(s: TensorStats) -> tuple[float, float]:
    return s.low, s.high


def percentile_amax(s: TensorStats, percentile: float) -> float:
    """The |x| value below which `percentile` % of the values lie (upper edge of that histogram bin)."""
    if s.width == 0.0 or s.hist.sum() == 0:
        return s.amax
    cdf = np.cumsum(s.hist, dtype=np.float64) / float(s.hist.sum())
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return min(s.amax, (idx + 1) * s.width)


def entropy_amax(
    s: TensorStats,
    start_bin: int = ENTROPY_START_BIN,
    levels: int = QUANT_LEVELS,
    max_clipped: float | None = ENTROPY_MAX_CLIPPED,
) -> float:
    """Entropy calibration: kl_amax, but at least the threshold that clips `max_clipped` of the values (None: the
    plain KL threshold, as TensorRT computes it)."""
    t = kl_amax(s, start_bin, levels)
    if max_clipped is None:
        return t
    return max(t, percentile_amax(s, 100.0 * (1.0 - max_clipped)))


def kl_amax(s: TensorStats, start_bin: int = ENTROPY_START_BIN, levels: int = QUANT_LEVELS) -> float:
    """TensorRT's entropy calibration (EntropyCalibration2): the clipping threshold minimising KL(P || Q), where P is
    the |x| histogram clipped at candidate bin i (outliers folded into the last kept bin) and Q is the first i bins
    merged into `levels` quantization levels and expanded back over their non-empty bins. Returns i * bin width."""
    hist = np.trim_zeros(s.hist, "b").astype(np.float64)
    if s.width == 0.0 or hist.size <= start_bin:
        return s.amax
    # The first bin holds the exact zeros (half of every ReLU output, represented exactly by any INT8 scale); left
    # in, it dominates the divergence and drives the threshold down to start_bin. Like NVIDIA's
    # pytorch-quantization, give it the count of its neighbour.
    hist[0] = hist[1]
    i_best = kl_argmin(hist, start_bin, levels)
    return min(s.amax, i_best * s.width)


def kl_divergences(
    hist: np.ndarray, start_bin: int = ENTROPY_START_BIN, levels: int = QUANT_LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """KL(P_i || Q_i) for every candidate i in [start_bin, len(hist)], all candidates at once.

    For candidate i, bin k < i belongs to level j = floor(k * levels / i); level j covers bins [b_j, b_{j+1}) with
    b_j = ceil(j * i / levels). With prefix sums of counts, of non-empty-bin counts and of h*log(h), every level's
    mass C_j and support n_j is two lookups, so the whole search is a (candidates x levels) array expression.
    """
    h = np.asarray(hist, dtype=np.float64)
    n = h.size
    total = h.sum()
    cand = np.arange(start_bin, n + 1)  # number of bins kept
    c_sum = np.concatenate([[0.0], np.cumsum(h)])  # c_sum[k] = sum h[:k]
    nz_sum = np.concatenate([[0], np.cumsum(h > 0)])
    hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    hl_sum = np.concatenate([[0.0], np.cumsum(hlogh)])

    j = np.arange(levels + 1)
    bounds = -((-j[None, :] * cand[:, None]) // levels)  # ceil(j*i/levels), shape (C, levels+1)
    mass = c_sum[bounds[:, 1:]] - c_sum[bounds[:, :-1]]  # C_j: counts of bins < i in level j
    support = nz_sum[bounds[:, 1:]] - nz_sum[bounds[:, :-1]]  # n_j: non-empty bins in level j
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q_level = np.where(support > 0, np.log(np.where(mass > 0, mass, 1.0)) - np.log(np.maximum(support, 1)), 0.0)

    outliers = total - c_sum[cand]  # mass beyond the kept bins, folded into bin i-1
    last = h[cand - 1]
    ref_last = last + outliers
    # sum_k ref_k log ref_k  (ref = h with the last kept bin holding the outliers)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = hl_sum[cand - 1] + np.where(ref_last > 0, ref_last * np.log(np.where(ref_last > 0, ref_last, 1.0)), 0.0)
        # sum_k ref_k log q_k: every level contributes its mass times log(C_j / n_j); the outliers sit in the last level
        plogq = (mass * log_q_level).sum(axis=1) + outliers * log_q_level[:, -1]
    s_q = c_sum[cand]  # Q's total mass (bins < i)
    # KL = (1/T) * sum ref log ref - log T - [(1/T) * sum ref log q_unnormalised - log S]
    kl = (plogp - plogq) / total - np.log(total) + np.log(np.where(s_q > 0, s_q, 1.0))
    kl = np.where((last == 0) & (outliers > 0), np.inf, kl)  # P has mass where Q has none
    return cand, kl


def kl_argmin(hist: np.ndarray, start_bin: int = ENTROPY_START_BIN, levels: int = QUANT_LEVELS) -> int:
    """Number of bins to keep; the largest one among equal minima (as TensorRT and pytorch-quantization pick)."""
    cand, kl = kl_divergences(hist, start_bin, levels)
    best = np.flatnonzero(kl <= kl.min() + 1e-12 * max(1.0, abs(kl.min())))
    return int(cand[best[-1]])


def range_comparison(stats: dict[str, TensorStats], percentile: float = 99.99) -> dict[str, dict[str, float]]:
    """Per tensor, the amax each calibrator would choose from the same statistics (the report's comparison):
    {tensor: {minmax, percentile, entropy, kl}} where kl is the unbounded KL threshold."""
    out = {}
    for name, s in stats.items():
        if not np.isfinite(s.low):
            continue
        has_hist = s.width > 0.0
        out[name] = {
            "minmax": float(s.amax),
            "percentile": float(percentile_amax(s, percentile)) if has_hist else None,
            "entropy": float(entropy_amax(s, max_clipped=ENTROPY_MAX_CLIPPED)) if has_hist else None,
            "kl": float(kl_amax(s)) if has_hist else None,
        }
    return out


def compute_ranges(
    stats: dict[str, TensorStats], method: str, percentile: float = 99.99
) -> dict[str, tuple[float, float]]:
    """Per-tensor (low, high) ranges by `method`; percentile and entropy clip at +-threshold inside the real range."""
    if method not in METHODS:
        raise UserInputError(f"Unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    ranges = {}
    for name, s in stats.items():
        if not np.isfinite(s.low):
            continue
        if method == "minmax":
            ranges[name] = minmax_range(s)
            continue
        t = (
            percentile_amax(s, percentile)
            if method == "percentile"
            else entropy_amax(s, max_clipped=ENTROPY_MAX_CLIPPED)
        )
        ranges[name] = (max(s.low, -t), min(s.high, t))
    return ranges
