"""GPTQ rounding of INT8 weights (edgecnn.quant.rounding): the patch sampler and H against a plain im2col, the
rounding itself (on the writer's grid, lower layer-output error than round-to-nearest, blocking changes nothing),
and the pipeline (the Q/DQ model carries exactly the GPTQ integers; --rounding nearest still available)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import build_tiny_onnx, make_image_folder
from onnx import numpy_helper

from edgecnn.errors import UserInputError
from edgecnn.quant import QuantOptions, qdq, quantize, rounding
from edgecnn.quant.weights import fake_quant_per_channel


def im2col(x, kernel, pads, strides, dilations):
    """Reference: every patch of a 2-D convolution, (N * OH * OW, C, kh, kw), from an explicitly padded input."""
    (kh, kw), (pt, pl, pb, pr), (sy, sx), (dy, dx) = kernel, pads, strides, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, w = xp.shape
    oh, ow = (h - dy * (kh - 1) - 1) // sy + 1, (w - dx * (kw - 1) - 1) // sx + 1
    out = np.empty((n, oh, ow, c, kh, kw), np.float32)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = xp[:, :, i * sy : i * sy + dy * (kh - 1) + 1 : dy, j * sx : j * sx + dx * (kw - 1) + 1 : dx]
    return out.reshape(-1, c, kh, kw)


@pytest.mark.parametrize(
    "group,kernel,pads,strides,dilations",
    [
        (1, (3, 3), [1, 1, 1, 1], [1, 1], [1, 1]),
        (1, (3, 3), [0, 0, 1, 1], [2, 2], [1, 1]),  # TensorFlow-style asymmetric padding, stride 2
        (6, (5, 5), [2, 2, 2, 2], [1, 1], [1, 1]),  # depthwise 5x5
        (3, (3, 3), [2, 1, 2, 1], [1, 2], [2, 1]),  # grouped, dilated, mixed strides
        (1, (1, 1), [0, 0, 0, 0], [1, 1], [1, 1]),  # pointwise
    ],
)
def test_hessian_of_sampled_patches_matches_plain_im2col(group, kernel, pads, strides, dilations, monkeypatch):
    """With a budget larger than the number of positions every patch is used once: H must equal the im2col sum."""
    monkeypatch.setattr(rounding, "SAMPLES", 10**6)
    monkeypatch.setattr(rounding, "DEPTHWISE_SAMPLES", 10**6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 11)).astype(np.float32)
    layer = {"kind": "conv", "group": group, "kernel": kernel, "pads": pads, "strides": strides, "dilations": dilations}
    got = rounding._gram(rounding._patches(x, layer, rng, 10**6), group)
    cols = im2col(x, kernel, pads, strides, dilations)  # P, C, kh, kw
    per_group = cols.reshape(len(cols), group, -1)  # P, groups, (cin_g, kh, kw): the weight's order
    want = np.einsum("pgi,pgj->gij", per_group.astype(np.float64), per_group)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-3)


def test_gptq_rows_stay_on_the_writers_grid_and_beat_round_to_nearest():
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((64, 64))
    x = rng.standard_normal((4000, 64)) @ mix  # strongly correlated inputs, as in a real layer
    w = rng.standard_normal((32, 64)).astype(np.float32)
    h = (x.T @ x)[None]
    q = rounding.gptq_rows(w, h)
    rtn = fake_quant_per_channel(w, 0)
    scale = np.abs(w).max(axis=1, keepdims=True) / 127
    ints = q / scale
    np.testing.assert_allclose(ints, np.round(ints), atol=1e-3)  # on the INT8 grid of the same scale
    assert np.abs(ints).max() <= 127 + 1e-3
    np.testing.assert_allclose(np.abs(q).max(axis=1), np.abs(w).max(axis=1), rtol=1e-6)  # amax pinned: same scale
    np.testing.assert_allclose(fake_quant_per_channel(q, 0), q, atol=1e-7)  # the writer re-derives these integers
    err = lambda m: float(np.mean(((m - w) @ x.T) ** 2))  # noqa: E731
    assert err(q) < 0.6 * err(rtn)  # measured: about half


def test_blocked_gptq_equals_column_by_column(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 300)) * rng.uniform(0.1, 3.0, 300)
    w = rng.standard_normal((40, 300))
    h = (x.T @ x)[None]
    blocked = rounding.gptq_rows(w, h)
    monkeypatch.setattr(rounding, "BLOCK", 10**6)
    np.testing.assert_array_equal(blocked, rounding.gptq_rows(w, h))


def test_per_row_hessians_and_dead_inputs():
    """Depthwise layout (one H per row) and an input that never fires (zero row/column in H) both work."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 9))
    xs = rng.standard_normal((4, 500, 9))
    xs[:, :, 4] = 0.0  # the centre tap never sees a non-zero input
    h = np.einsum("gpi,gpj->gij", xs, xs)
    q = rounding.gptq_rows(w, h, np.arange(4))
    assert np.isfinite(q).all()
    for r in range(4):
        e = (q[r] - w[r]) @ xs[r].T
        e_rtn = (fake_quant_per_channel(w, 0)[r] - w[r]) @ xs[r].T
        assert np.mean(e**2) <= np.mean(e_rtn**2) * 1.01


def test_buffered_patches_give_the_same_hessian(tmp_path, monkeypatch):
    """Patches are folded into H a few batches at a time (a batch-1 model would otherwise pay a d x d sum per image):
    the buffering must not change H."""
    from edgecnn.quant import graph

    model = graph.prepare(build_tiny_onnx(tmp_path / "tiny.onnx"))
    run = graph.tensor_runner(model, rounding.HessianAccumulator(model, 1).inputs)
    batches = [run(np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)) for i in range(12)]
    hs = []
    for flush in (1, 10**9):
        monkeypatch.setattr(rounding, "FLUSH", flush)
        acc = rounding.HessianAccumulator(model, total=12, seed=0)
        for values in batches:
            acc.add(values)
        acc.round()
        hs.append(acc.h)
    assert hs[0].keys() == hs[1].keys() == {"conv1", "conv2", "fc"}
    for name in hs[0]:
        scale = np.abs(hs[1][name]).max()  # float32 products summed in another order: equal to rounding
        np.testing.assert_allclose(hs[0][name], hs[1][name], rtol=1e-5, atol=1e-6 * scale, err_msg=name)


@pytest.fixture
def tiny(tmp_path):
    return build_tiny_onnx(tmp_path / "tiny.onnx"), make_image_folder(tmp_path / "calib", per_class=8, seed=1), tmp_path


@pytest.mark.parametrize("target,reduce_range,qmax", [("tensorrt", None, 127), ("cpu", None, 64), ("cpu", False, 127)])
def test_qdq_model_carries_exactly_the_gptq_integers(tiny, target, reduce_range, qmax):
    model, calib, tmp = tiny
    r = quantize(
        model, tmp / "q.onnx", calib, QuantOptions(target=target, bias_correction=False, reduce_range=reduce_range)
    )
    assert r["rounding"] == {"method": "gptq", "layers": 3, "seconds": r["rounding"]["seconds"]}
    assert r["weights"]["qmax"] == qmax
    from edgecnn.contract import read_onnx_contract
    from edgecnn.quant import graph
    from edgecnn.quant.calib_data import load_calibration

    cs = load_calibration(calib, read_onnx_contract(model).preprocess)
    expected = rounding.round_weights(graph.prepare(model), cs.batches(16), total=len(cs), qmax=qmax)
    qm = onnx.load(str(tmp / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    for name, wq in expected.items():
        ints = next(
            v
            for k, v in inits.items()
            if k.startswith(name) and v.dtype == np.int8 and v.shape[0] == wq.shape[0] and v.ndim == wq.ndim
        )
        if (
            target == "cpu" and wq.ndim == 4 and wq.shape[1] < 4
        ):  # the stem's zero channels (qdq.pad_conv_input_channels)
            assert ints.shape[1] == 4 and not ints[:, wq.shape[1] :].any()
            ints = ints[:, : wq.shape[1]]
        axis = 0 if wq.ndim == 4 or name == "fc.w" else 1
        scale = np.abs(np.moveaxis(wq, axis, 0)).reshape(wq.shape[axis], -1).max(axis=1) / qmax
        want = np.round(np.moveaxis(wq, axis, 0) / scale.reshape((-1,) + (1,) * (wq.ndim - 1)))
        np.testing.assert_array_equal(np.moveaxis(ints, axis, 0), want.astype(np.int8), err_msg=name)
        assert np.abs(ints.astype(int)).max() == qmax  # every channel's largest weight is on the edge of the grid
    assert qdq.weight_qmax_of(qm) == qmax
    assert read_onnx_contract(tmp / "q.onnx").provenance["quantization"]["rounding"] == "gptq"


def test_nearest_rounding_and_bad_option(tiny):
    model, calib, tmp = tiny
    r = quantize(model, tmp / "n.onnx", calib, QuantOptions(target="cpu", rounding="nearest"))
    assert r["rounding"]["method"] == "nearest" and r["rounding"]["layers"] == 0
    with pytest.raises(UserInputError, match="--rounding"):
        quantize(model, tmp / "x.onnx", calib, QuantOptions(rounding="adaround"))
    assert not (tmp / "x.onnx").exists()


def test_gptq_lowers_int8_error_on_the_real_network(tmp_path, scenes_dir):
    """EfficientNet-Lite0 on real photos: GPTQ rounding beats round-to-nearest on held-out images."""
    from edgecnn.data import list_images

    photos = list_images(scenes_dir)
    order = np.random.default_rng(0).permutation(len(photos))
    folders = {}
    for name, idx in (("cal", order[:64]), ("held", order[64:160])):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i in idx:
            (folders[name] / f"{photos[i].parent.name}_{photos[i].name}").symlink_to(photos[i].resolve())
    diff = {}
    for method in ("nearest", "gptq"):
        r = quantize(
            "efficientnet-lite0",
            tmp_path / f"{method}.onnx",
            folders["cal"],
            QuantOptions(target="cpu", rounding=method, val=folders["held"]),
        )
        diff[method] = r["accuracy"]["agreement"]["mean_abs_diff"]
    assert diff["gptq"] < 0.95 * diff["nearest"], diff


def test_quantize_reports_progress_of_every_stage_in_order(tiny):
    """The GPTQ solve gets its own progress stage (seconds per layer on a network with large dense convolutions)."""
    model, calib, tmp = tiny
    calls = []
    quantize(model, tmp / "q.onnx", calib, QuantOptions(target="cpu"), progress=lambda *c: calls.append(c))
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages[:3] == ["decode", "calibrate", "round"]
    assert [c for c in calls if c[0] == "round"] == [("round", 1, 3), ("round", 2, 3), ("round", 3, 3)]


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_an_opset_11_model_is_quantized_at_opset_13(tiny, target):
    """Per-channel Q/DQ (`axis`) needs opset 13: an older model is converted first, instead of ending in a model
    ONNX Runtime refuses ("Unrecognized attribute: axis for operator DequantizeLinear")."""
    import onnxruntime as ort

    _, calib, tmp = tiny
    old = build_tiny_onnx(tmp / "tiny11.onnx", opset=11)
    r = quantize(old, tmp / "q11.onnx", calib, QuantOptions(target=target))
    qm = onnx.load(str(tmp / "q11.onnx"))
    assert next(o.version for o in qm.opset_import if o.domain in ("", "ai.onnx")) >= 13
    onnx.checker.check_model(qm, full_check=True)
    ort.InferenceSession(str(tmp / "q11.onnx"), providers=["CPUExecutionProvider"])
    assert r["accuracy"]["agreement"]["top1_agreement"] >= 0.9
