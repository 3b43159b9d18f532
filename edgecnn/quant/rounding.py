"""GPTQ rounding of INT8 weights: choose each weight's rounding so the LAYER OUTPUT changes least.

Why: round-to-nearest rounds every weight on its own, so the errors of a depthwise channel's 9 weights or a 1x1
convolution's hundreds of inputs add up at random. GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", ICLR 2023, after Optimal Brain Quantization) rounds the weights of an
output channel one input at a time and moves each rounding error onto the inputs not yet rounded, weighted by how
the layer's inputs co-vary on the calibration images (H = sum of x x^T over input patches). On EfficientNet-Lite0 it
cuts the output error of INT8 weights by about 40 %, with numpy only (no PyTorch) and a few seconds of work.

The scale stays what the Q/DQ writer computes (per output channel, symmetric, amax / qmax, qmax 127, or 64 with
--reduce-range): each channel's largest weight is pinned to +-qmax, so the writer, which re-derives the scale from
the weights it is given, lands on exactly these integers. The result is float weights on the INT8 grid; bias
correction and the writer take them from there.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from edgecnn.quant import graph
from edgecnn.quant.graph import node_attrs
from edgecnn.quant.weights import WEIGHT_QMAX, correctable_inputs

SAMPLES = 4096  # input patches sampled per layer over all calibration images: H is well estimated long before
DEPTHWISE_SAMPLES = 1024  # a depthwise channel's H is only kh*kw square
DAMPING = 0.01  # added to H's diagonal, relative to its mean (GPTQ's default): keeps H invertible
BLOCK = 128  # columns rounded between two whole-matrix updates (GPTQ's lazy batching)
FLUSH = 256  # sampled patches buffered per layer before they are folded into H: one d x d product per flush, not
# per batch (a fixed-batch-1 model calibrates image by image, and a 576-input layer's H is 330 k numbers)


def _layer(node, inits: dict) -> dict | None:
    """How to read a Conv/Gemm node's weight as rows (output channels) x inputs; None when GPTQ does not apply."""
    a = node_attrs(node)
    if node.op_type == "Conv":
        w = inits[node.input[1]]
        if w.ndim != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        group = int(a.get("group", 1))
        if w.shape[0] % group:
            return None
        return {
            "kind": "conv",
            "group": group,
            "kernel": w.shape[2:],
            "pads": list(a.get("pads", [0, 0, 0, 0])),
            "strides": list(a.get("strides", [1, 1])),
            "dilations": list(a.get("dilations", [1, 1])),
        }
    if node.op_type == "Gemm" and not a.get("transA", 0) and inits[node.input[1]].ndim == 2:
        return {"kind": "gemm", "trans_b": int(a.get("transB", 0))}
    return None


def _patches(x: np.ndarray, layer: dict, rng: np.random.Generator, positions: int) -> np.ndarray:
    """Up to `positions` random input patches of a 2-D convolution, (C, P, kh * kw): gathered channel plane by
    channel plane (cache-friendly on NCHW), zeros where a patch reaches into the padding."""
    n, c, h, w = x.shape
    (kh, kw), (pt, pl, pb, pr) = layer["kernel"], layer["pads"]
    (sy, sx), (dy, dx) = layer["strides"], layer["dilations"]
    oh = (h + pt + pb - dy * (kh - 1) - 1) // sy + 1
    ow = (w + pl + pr - dx * (kw - 1) - 1) // sx + 1
    total = n * oh * ow
    pick = rng.choice(total, size=min(positions, total), replace=False)
    ni, rest = np.divmod(pick, oh * ow)
    oy, ox = np.divmod(rest, ow)
    rows = oy[:, None] * sy + np.arange(kh)[None] * dy - pt  # P, kh (input coordinates)
    cols = ox[:, None] * sx + np.arange(kw)[None] * dx - pl  # P, kw
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    planes = x.transpose(1, 0, 2, 3)  # C, N, H, W (a view)
    patches = planes[:, ni[:, None, None], np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]
    return (patches * inside).reshape(c, len(pick), kh * kw)


def _gram(patches: np.ndarray, group: int) -> np.ndarray:
    """(C, P, kk) patches -> per group the sum over P of x x^T, (group, d, d) with d in the weight's (cin_g, kk)
    order; float32 products through BLAS (the layouts are chosen so no large transposed copy is made)."""
    c, p, kk = patches.shape
    cin_g = c // group
    if cin_g == 1:  # depthwise: one small kk x kk matrix per channel
        return np.matmul(patches.transpose(0, 2, 1), patches)
    rows = patches.reshape(group, cin_g, p, kk).transpose(0, 1, 3, 2).reshape(group, cin_g * kk, p)
    return np.matmul(rows, rows.transpose(0, 2, 1))


class HessianAccumulator:
    """Sums x x^T over sampled input patches of every Conv/Gemm layer, per weight group (one group for a plain
    layer, one per channel for a depthwise one), batch by batch, from activations someone else computed: the
    pipeline feeds it from its calibration pass, so GPTQ costs no extra inference. `inputs` are the tensors it needs.
    """

    def __init__(self, model, total: int, seed: int = 0):
        from onnx import numpy_helper

        self.model = model
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.nodes = {n.name: n for n in model.graph.node}
        self.layers = {
            name: lay for name in correctable_inputs(model) if (lay := _layer(self.nodes[name], self.inits)) is not None
        }
        self.inputs = sorted({self.nodes[name].input[0] for name in self.layers})
        self.total = total
        self.rng = np.random.default_rng(seed)
        self.h: dict[str, np.ndarray] = {}
        self.pending: dict[str, list[np.ndarray]] = {}  # sampled (C, P, kk) patches not yet in H

    def add(self, values: dict[str, np.ndarray]) -> None:
        """One batch: {tensor: value} holding at least `inputs`."""
        for name, layer in self.layers.items():
            x = np.asarray(values[self.nodes[name].input[0]], dtype=np.float32)
            depthwise = layer["kind"] == "conv" and x.shape[1] == layer["group"]
            if layer["kind"] == "gemm":
                patches = x.T[:, :, None].copy()  # inputs as channels, images as positions
            else:
                budget = DEPTHWISE_SAMPLES if depthwise else SAMPLES
                positions = max(16, -(-budget * len(x) // max(self.total, len(x))))  # this batch's share
                patches = _patches(x, layer, self.rng, positions)
            pending = self.pending.setdefault(name, [])
            pending.append(patches)
            if depthwise or sum(p.shape[1] for p in pending) >= FLUSH:  # a depthwise H is only kk x kk: no need to wait
                self._flush(name)

    def _flush(self, name: str) -> None:
        pending = self.pending.pop(name, [])
        if pending:
            group = self.layers[name].get("group", 1)
            patches = pending[0] if len(pending) == 1 else np.concatenate(pending, axis=1)
            h = _gram(patches, group).astype(np.float64)
            self.h[name] = h if name not in self.h else self.h[name] + h

    def round(
        self, progress: Callable[[int, int], None] | None = None, qmax: int = WEIGHT_QMAX
    ) -> dict[str, np.ndarray]:
        """weight initializer name -> GPTQ-rounded weights (float32, on the [-qmax, qmax] grid), for every layer seen;
        layers GPTQ does not apply to (3-D convolutions, auto_pad, transposed A, shared weights) keep round-to-nearest.
        progress(layers done, layers): a network with large dense convolutions spends seconds per layer here."""
        uses: dict[str, int] = {}
        for n in self.model.graph.node:
            for name in n.input:
                uses[name] = uses.get(name, 0) + 1
        for name in list(self.pending):
            self._flush(name)
        out = {}
        for done, (name, h) in enumerate(self.h.items(), 1):
            node, layer = self.nodes[name], self.layers[name]
            if progress:
                progress(done, len(self.h))
            if uses[node.input[1]] > 1:  # a weight shared by two layers cannot be rounded for both inputs at once
                continue
            w = self.inits[node.input[1]].astype(np.float32)
            if layer["kind"] == "gemm":
                rows = w if layer["trans_b"] else w.T  # output channels x inputs
                q = gptq_rows(rows, h, qmax=qmax)
                out[node.input[1]] = q if layer["trans_b"] else np.ascontiguousarray(q.T)
            else:
                cout = w.shape[0]
                q = gptq_rows(w.reshape(cout, -1), h, np.arange(cout) // (cout // layer["group"]), qmax)
                out[node.input[1]] = q.reshape(w.shape)
        return out


def gptq_rows(w: np.ndarray, h: np.ndarray, row_group: np.ndarray | None = None, qmax: int = WEIGHT_QMAX) -> np.ndarray:
    """Round the rows of w (R, d) to the symmetric INT8 grid of each row (scale amax / qmax), GPTQ order: column by
    column, each column's rounding error spread over the later columns through the upper Cholesky factor of H^-1.
    h is (G, d, d); row r uses h[row_group[r]] (G == 1: all rows share one H, and row_group is not needed).
    Returns float32 weights on the grid."""
    w = np.asarray(w, dtype=np.float64)
    rows, d = w.shape
    h = np.array(h, dtype=np.float64, copy=True)
    idx = np.arange(d)
    diag = h[:, idx, idx]
    h[:, idx, idx] = np.where(diag > 0, diag, 1.0)  # an input that never fires: any rounding is as good
    h[:, idx, idx] += DAMPING * h[:, idx, idx].mean(axis=1, keepdims=True)
    u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # H^-1 = U^T U, U upper triangular
    if len(u) > 1:
        u = u[row_group]  # one factor per row
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    pinned = np.abs(w).argmax(axis=1)  # the largest weight stays +-qmax: the writer's scale is this scale
    pinned_value = np.round(w[np.arange(rows), pinned] / scale)
    work = w.copy()
    q = np.zeros_like(w)
    shared = u.shape[0] == 1
    for start in range(0, d, BLOCK):  # GPTQ's lazy batch updates: within a block column by column, then one matmul
        stop = min(start + BLOCK, d)
        errs = np.zeros((rows, stop - start))
        for j in range(start, stop):
            qj = np.clip(np.round(work[:, j] / scale), -qmax, qmax)
            qj = np.where(pinned == j, pinned_value, qj) * scale
            q[:, j] = qj
            err = (work[:, j] - qj) / (u[0, j, j] if shared else u[:, j, j])
            errs[:, j - start] = err
            if j + 1 < stop:
                work[:, j + 1 : stop] -= err[:, None] * (
                    u[0, j, j + 1 : stop][None] if shared else u[:, j, j + 1 : stop]
                )
        if stop < d:
            if shared:
                work[:, stop:] -= errs @ u[0, start:stop, stop:]
            else:
                work[:, stop:] -= np.einsum("rk,rkc->rc", errs, u[:, start:stop, stop:])
    return q.astype(np.float32)


def sampled_hessians(
    model, batches: Iterable[np.ndarray], threads: int | None = None, total: int = 0
) -> HessianAccumulator:
    """A HessianAccumulator filled by a pass of its own over `batches` (`total` images); round it as often as needed
    (e.g. for 8- and 7-bit weights) without a second pass."""
    acc = HessianAccumulator(model, total)
    if acc.inputs:
        run = graph.tensor_runner(model, acc.inputs, threads)
        for batch in batches:
            acc.add(run(batch))
    return acc


def round_weights(
    model, batches: Iterable[np.ndarray], threads: int | None = None, total: int = 0, qmax: int = WEIGHT_QMAX
) -> dict[str, np.ndarray]:
    """GPTQ-rounded weights (HessianAccumulator.round) from a pass of its own over `batches` (`total` images)."""
    return sampled_hessians(model, batches, threads, total).round(qmax=qmax)
