"""INT8 quantization library: calibrator ranges vs numpy references, TensorRT table byte-exact, Q/DQ structure per
target, INT8 runs on ONNX Runtime and agrees with FP32, bias correction, calibration sources."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import onnx
import pytest
from conftest import build_tiny_onnx, make_image_folder, write_video
from onnx import numpy_helper

from edgecnn.contract import read_onnx_contract
from edgecnn.quant import calibrators, graph, qdq, weights
from edgecnn.quant.calib_data import load_calibration
from edgecnn.quant.calibrators import HIST_BINS, TensorStats
from edgecnn.trt import calib_cache

# ---------------------------------------------------------------- calibrators vs numpy


def test_histogram_matches_numpy_across_batches():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 50_000).astype(np.float32)
    b = (rng.normal(0, 1, 50_000) * 1.7).astype(np.float32)  # wider: the histogram must grow
    s = TensorStats()
    s.update(a)
    s.update(b)
    width = float(np.abs(a).max()) / HIST_BINS
    edges = np.arange(0, s.hist.size + 1) * width
    ref, _ = np.histogram(np.abs(np.concatenate([a, b])), bins=edges.astype(np.float64))
    assert s.hist.sum() == a.size + b.size
    # float32 bin index rounding may move a handful of values across an edge, never more
    assert np.abs(s.hist - ref).sum() <= 10
    assert s.low == pytest.approx(min(a.min(), b.min())) and s.high == pytest.approx(max(a.max(), b.max()))


def test_percentile_within_one_bin_of_numpy():
    x = np.random.default_rng(2).standard_t(3, 200_000).astype(np.float32)
    s = TensorStats()
    s.update(x)
    for p in (99.0, 99.9, 99.99):
        ref = np.percentile(np.abs(x), p)
        assert abs(calibrators.percentile_amax(s, p) - ref) <= 1.01 * s.width


def _kl_loop(hist, start=128, levels=128):
    """Straightforward per-candidate TensorRT/pytorch-quantization KL search (the reference)."""
    out = []
    total = hist.sum()
    for i in range(start, len(hist) + 1):
        p = hist[:i].astype(np.float64).copy()
        p[i - 1] += hist[i:].sum()
        q = np.zeros(i)
        level = (np.arange(i) * levels) // i
        for j in range(levels):
            idx = np.flatnonzero((level == j) & (hist[:i] > 0))
            if idx.size:
                q[idx] = hist[:i][idx].sum() / idx.size
        pn, qn = p / total, q / q.sum()
        mask = pn > 0
        with np.errstate(divide="ignore"):
            out.append(np.inf if np.any(qn[mask] == 0) else float(np.sum(pn[mask] * np.log(pn[mask] / qn[mask]))))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_kl_matches_loop(seed):
    rng = np.random.default_rng(seed)
    x = np.abs(np.concatenate([rng.normal(0, 1, 30_000), rng.normal(0, 6, 300)]))
    hist = np.histogram(x, bins=600)[0]
    hist[[350, 351, 352]] = 0  # empty bins inside the range, and a candidate where P has mass Q lacks
    cand, kl = calibrators.kl_divergences(hist)
    ref = _kl_loop(hist)
    assert cand[0] == 128 and cand[-1] == len(hist)
    np.testing.assert_array_equal(np.isinf(kl), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(kl[finite], ref[finite], rtol=1e-7, atol=1e-10)
    assert calibrators.kl_argmin(hist) == cand[np.flatnonzero(ref == ref[finite].min())[-1]]


def test_entropy_clips_rare_outliers_but_keeps_the_bulk():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 1, 400_000), [40.0, -38.0]]).astype(np.float32)
    s = TensorStats()
    s.update(x)
    t = calibrators.entropy_amax(s)
    assert 3.0 < t < 20.0
    lo, hi = calibrators.compute_ranges({"x": s}, "entropy")["x"]
    assert (lo, hi) == (pytest.approx(-t), pytest.approx(t))
    assert calibrators.compute_ranges({"x": s}, "minmax")["x"] == (pytest.approx(-38.0), pytest.approx(40.0))


def test_large_tensors_are_sampled_with_a_prime_stride():
    assert calibrators.sample_stride(10, 100) == 2
    stride = calibrators.sample_stride(4_000_000, 1 << 19)
    assert stride >= 8 and all(stride % p for p in range(2, stride))


def calibrate_tiny(tmp_path, per_class: int, batch: int):
    """The tiny model, its prepared graph, a calibration set of `per_class` images per class, and the statistics of
    every activation tensor over it in batches of `batch`."""
    model_path = build_tiny_onnx(tmp_path / "m.onnx")
    cs = load_calibration(
        make_image_folder(tmp_path / "imgs", per_class=per_class), read_onnx_contract(model_path).preprocess
    )
    prepared = graph.prepare(model_path)
    stats = calibrators.collect_stats(
        cs.batches(batch), graph.tensor_runner(prepared, graph.activation_tensors(prepared))
    )
    return model_path, prepared, cs, stats


def test_ranges_on_a_real_model_match_reference_evaluator(tmp_path):
    """Activation min/max collected through ORT equal onnx's own reference implementation, tensor by tensor."""
    from onnx.reference import ReferenceEvaluator

    model_path, prepared, cs, stats = calibrate_tiny(tmp_path, per_class=4, batch=3)
    names = graph.activation_tensors(prepared)
    ranges = calibrators.compute_ranges(stats, "minmax")

    ref = ReferenceEvaluator(onnx.load(str(model_path)))
    inner = [n for n in names if n != "input"]
    x = np.concatenate(list(cs.batches(100)))
    values = dict(zip(inner, ref.run(inner, {"input": x})))
    values["input"] = x
    assert set(ranges) == set(names)
    for name in names:
        lo, hi = ranges[name]
        assert lo == pytest.approx(float(values[name].min()), rel=1e-4, abs=1e-5), name
        assert hi == pytest.approx(float(values[name].max()), rel=1e-4, abs=1e-5), name


def test_tensor_runner_reuses_buffers_and_stays_exact_across_batch_sizes(tmp_path):
    """The runner writes into reused buffers (first batch's outputs, then leading rows for a smaller batch); every
    call must still return exactly what a plain ONNX Runtime run returns for that batch."""
    prepared = graph.prepare(build_tiny_onnx(tmp_path / "m.onnx"))
    names = [n for n in graph.activation_tensors(prepared) if n != "input"]
    run = graph.tensor_runner(prepared, names)
    plain = graph.augmented_session(prepared, names)
    rng = np.random.default_rng(0)
    seen = {}
    for n in (4, 4, 2, 6, 2, 4, 1):
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        got = run(x)
        want = dict(zip(names, plain.run(names, {"input": x})))
        for name in names:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
            assert got[name].shape[0] == n
        seen.setdefault(n, {name: got[name].ctypes.data for name in names})
        assert {name: got[name].ctypes.data for name in names} == seen[n]  # same memory for the same batch size


def test_fixed_batch_model_is_run_at_its_own_batch_size(tmp_path):
    """`edgecnn export` fixes the batch (1 by default) and bakes it into Reshape shapes: calibration must feed such a
    model exactly its batch size (a padded last chunk, padded rows dropped) and get what the dynamic model gets."""
    fixed = graph.prepare(build_tiny_onnx(tmp_path / "fixed.onnx", batch=4))
    dynamic = graph.prepare(build_tiny_onnx(tmp_path / "dynamic.onnx"))
    assert graph.fixed_batch(fixed) == 4 and graph.fixed_batch(dynamic) is None
    names = [n for n in graph.activation_tensors(dynamic) if n != "input"]
    run_fixed, run_dynamic = graph.tensor_runner(fixed, names), graph.tensor_runner(dynamic, names)
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    with pytest.raises(InvalidArgument):  # the baked batch size really refuses another one
        graph.augmented_session(fixed, names).run(names, {"input": x[:3]})
    for n in (4, 3, 9, 1):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
        got, want = run_fixed(x), run_dynamic(x)
        for name in names:
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_fixed_batch_model_calibrates_in_real_batches_when_its_graph_allows(tmp_path):
    """A fixed-batch graph with its batch baked into a Reshape (as a static torch export writes `x.view(bs, -1)`) is
    calibrated through a free-batch copy that computes the same values; a graph where that rewrite would be wrong is
    refused by the check (None); a dynamic model is used as it is."""
    baked = graph.prepare(build_tiny_onnx(tmp_path / "baked.onnx", batch=2))
    dynamic = graph.prepare(build_tiny_onnx(tmp_path / "dynamic.onnx"))
    assert graph.batch_agnostic(dynamic) is dynamic
    copy = graph.batch_agnostic(baked)
    assert graph.fixed_batch(copy) is None and graph.fixed_batch(baked) == 2  # the original is left as it was
    assert numpy_helper.to_array(next(i for i in baked.graph.initializer if i.name == "flat_shape")).tolist() == [2, -1]
    names = [n for n in graph.activation_tensors(dynamic) if n != "input"]
    x = np.random.default_rng(2).standard_normal((5, 3, 32, 32)).astype(np.float32)
    got, want = graph.tensor_runner(copy, names)(x), graph.tensor_runner(dynamic, names)(x)
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    literal = onnx.ModelProto()  # allowzero=1: the 2 in [2, -1] is literal, so the batch cannot be freed
    literal.CopyFrom(baked)
    next(n for n in literal.graph.node if n.op_type == "Reshape").attribute.append(
        onnx.helper.make_attribute("allowzero", 1)
    )
    assert graph.batch_agnostic(literal) is None


# ---------------------------------------------------------------- TensorRT calibration table


def test_scale_hex_known_values():
    assert calib_cache.scale_hex(1.0 / 127) == "3c010204"
    assert calib_cache.scale_hex(1.0) == "3f800000"
    assert calib_cache.hex_scale("3c010204") == pytest.approx(1.0 / 127, rel=1e-7)
    assert calib_cache.version_number("8.6.1") == 8601
    assert calib_cache.version_number("10.3.0") == 100300
    assert calib_cache.version_number("8502") == 8502


def test_table_is_byte_exact_and_round_trips(tmp_path):
    amax = {"input": 1.0, "/conv1/Conv_output_0": 2.54, "zero": 0.0}
    path = calib_cache.write_table(tmp_path / "m.calib", amax, version="8.6.1")
    s = struct.pack(">f", np.float32(2.54) / 127).hex()
    expected = f"TRT-8601-EntropyCalibration2\ninput: 3c010204\n/conv1/Conv_output_0: {s}\nzero: 3f800000\n".encode()
    assert path.read_bytes() == expected
    version, algo, scales = calib_cache.read_table(path)
    assert (version, algo) == (8601, "EntropyCalibration2")
    assert scales["input"] == pytest.approx(1 / 127, rel=1e-7)
    assert scales["/conv1/Conv_output_0"] == pytest.approx(2.54 / 127, rel=1e-6)
    # a table as TensorRT itself writes it (unpadded zero) reads too
    (tmp_path / "trt.calib").write_text(
        "TRT-100300-EntropyCalibration2\ndata: 3c008912\n(Unnamed Layer* 64) [Shuffle]_output: 0\n"
    )
    v, _, sc = calib_cache.read_table(tmp_path / "trt.calib")
    assert v == 100300 and sc["(Unnamed Layer* 64) [Shuffle]_output"] == 0.0 and sc["data"] > 0


def test_table_reader_rejects_garbage(tmp_path):
    from edgecnn.errors import ArtifactError

    (tmp_path / "bad.calib").write_text("hello\n")
    with pytest.raises(ArtifactError):
        calib_cache.read_table(tmp_path / "bad.calib")


# ---------------------------------------------------------------- Q/DQ writer


@pytest.fixture
def calibrated(tmp_path):
    _, prepared, cs, stats = calibrate_tiny(tmp_path, per_class=6, batch=4)
    return prepared, calibrators.compute_ranges(stats, "percentile"), cs


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _logits(model, x):
    import onnxruntime as ort

    from edgecnn.runtime.onnxrt import session_options

    sess = ort.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )  # exact INT8 on CPUs without VNNI
    return sess.run(None, {"input": x})[0]


def test_tensorrt_target_structure_and_parity(calibrated):
    prepared, ranges, cs = calibrated
    qm = qdq.write_qdq(prepared, ranges, "tensorrt")
    inits = _inits(qm)
    nodes = list(qm.graph.node)
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), n.name  # symmetric: zero point 0
    producers = {o: n for n in nodes for o in n.output}
    for conv in (n for n in nodes if n.op_type in ("Conv", "Gemm")):
        w_dq = producers[conv.input[1]]
        assert w_dq.op_type == "DequantizeLinear"
        scale = inits[w_dq.input[1]]
        w = inits[w_dq.input[0]]
        assert scale.size == w.shape[0] and {a.name: a.i for a in w_dq.attribute}.get("axis", 1) == 0
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 127
        assert len(conv.input) < 3 or conv.input[2] in inits  # bias stays float for TensorRT
        assert all(c.op_type != "QuantizeLinear" for c in nodes if conv.output[0] in c.input)  # no output Q/DQ
    x = np.concatenate(list(cs.batches(100)))
    fp, q8 = _logits(prepared, x), _logits(qm, x)
    assert (fp.argmax(1) == q8.argmax(1)).mean() >= 0.9
    assert np.abs(fp - q8).max() < 0.1 * np.abs(fp).max()


def test_cpu_target_structure_and_parity(calibrated):
    prepared, ranges, cs = calibrated
    qm = qdq.write_qdq(prepared, ranges, "cpu")
    inits = _inits(qm)
    producers = {o: n for n in qm.graph.node for o in n.output}
    act_zp = {
        str(inits[n.input[2]].dtype) for n in qm.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }
    assert act_zp == {"uint8"}
    conv = next(n for n in qm.graph.node if n.op_type == "Conv")
    w_dq = producers[conv.input[1]]
    assert inits[w_dq.input[0]].dtype == np.int8 and inits[w_dq.input[1]].size == inits[w_dq.input[0]].shape[0]
    bias_dq = producers[conv.input[2]]
    assert inits[bias_dq.input[0]].dtype == np.int32  # int32 bias: what QLinearConv fusion needs
    assert qm.graph.output[0].name == "logits" and producers["logits"].op_type == "Gemm"  # logits stay float
    x = np.concatenate(list(cs.batches(100)))
    fp, q8 = _logits(prepared, x), _logits(qm, x)
    assert (fp.argmax(1) == q8.argmax(1)).mean() >= 0.9
    assert np.abs(fp - q8).max() < 0.1 * np.abs(fp).max()


def test_cpu_target_pads_the_rgb_stem_to_four_channels(calibrated, tmp_path):
    """ORT's fast symmetric INT8 convolution on x86 wants input channels in multiples of 4: the 3-channel stem gets
    a zero fourth channel (uint8 Pad at the input's zero point, zero weights), which changes no product."""
    import onnxruntime as ort

    prepared, ranges, cs = calibrated
    padded, plain = qdq.write_qdq(prepared, ranges, "cpu"), qdq.write_qdq(prepared, ranges, "cpu", pad_stem=False)
    inits, producers = _inits(padded), {o: n for n in padded.graph.node for o in n.output}
    conv1 = next(n for n in padded.graph.node if n.name == "conv1")
    w = inits[producers[conv1.input[1]].input[0]]
    assert w.shape == (8, 4, 3, 3) and not w[:, 3].any()
    np.testing.assert_array_equal(w[:, :3], _inits(plain)[producers[conv1.input[1]].input[0]])
    x_dq = producers[conv1.input[0]]
    pad = producers[x_dq.input[0]]
    assert x_dq.op_type == "DequantizeLinear" and pad.op_type == "Pad"
    assert producers[pad.input[0]].op_type == "QuantizeLinear"
    assert list(inits[pad.input[1]]) == [0, 0, 0, 0, 0, 1, 0, 0]  # only the channel axis, at the end
    assert inits[pad.input[2]].dtype == np.uint8 and inits[pad.input[2]] == inits[x_dq.input[2]]  # the zero point
    assert "conv1" in qdq.quantized_nodes(padded) and qdq.quantized_tensors(padded) == qdq.quantized_tensors(plain)
    conv2 = next(n for n in padded.graph.node if n.name == "conv2")
    assert inits[producers[conv2.input[1]].input[0]].shape[1] == 8  # only 3-channel inputs are padded
    x = np.concatenate(list(cs.batches(100)))
    a, b = _logits(padded, x), _logits(plain, x)
    assert (a.argmax(1) == b.argmax(1)).all()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(padded.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node].count("QLinearConv") == 2  # still INT8
    for other in (
        qdq.write_qdq(prepared, ranges, "tensorrt"),
        qdq.write_qdq(prepared, ranges, "cpu", exclude=["conv1"]),
    ):
        assert all(n.op_type != "Pad" for n in other.graph.node)  # TensorRT takes 3 channels; a float stem stays as is


def test_padding_is_undone_exactly_and_keeps_the_sensitivity_ranking(calibrated):
    from edgecnn.quant import gate

    prepared, ranges, cs = calibrated
    padded, plain = qdq.write_qdq(prepared, ranges, "cpu"), qdq.write_qdq(prepared, ranges, "cpu", pad_stem=False)
    undone = qdq.without_padded_stem(padded)
    assert any(n.op_type == "Pad" for n in padded.graph.node)  # the original is left as it was
    assert _inits(undone).keys() == _inits(plain).keys()
    for name, value in _inits(plain).items():
        np.testing.assert_array_equal(_inits(undone)[name], value, err_msg=name)
    batches = list(cs.batches(8))
    nodes = qdq.quantized_nodes(plain)
    ranked = [(r["node"], r["kl"]) for r in gate.rank_layers(prepared, undone, nodes, batches)]
    assert ranked == [(r["node"], r["kl"]) for r in gate.rank_layers(prepared, plain, nodes, batches)]


def test_unnamed_rgb_convs_get_distinct_padding_names(tmp_path):
    """Two nameless 3-channel convolutions on the input (other exporters leave names empty): each padding gets
    names of its own, and the model stays valid and exact."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    graph_ = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "wa", "ba"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["input", "wb", "bb"], ["b"], pads=[1, 1, 1, 1]),
            helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
            helper.make_node("Relu", ["ab"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["logits"]),
        ],
        "two_stems",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 16, 1, 1])],
        [
            numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "wa"),
            numpy_helper.from_array(np.zeros(8, np.float32), "ba"),
            numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "wb"),
            numpy_helper.from_array(np.zeros(8, np.float32), "bb"),
        ],
    )
    model = helper.make_model(graph_, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    prepared = graph.prepare(tmp_path / "m.onnx")
    x = rng.normal(0, 1, (16, 3, 16, 16)).astype(np.float32)
    stats = calibrators.collect_stats([x], graph.tensor_runner(prepared, graph.activation_tensors(prepared)))
    ranges = calibrators.compute_ranges(stats, "minmax")
    padded, plain = qdq.write_qdq(prepared, ranges, "cpu"), qdq.write_qdq(prepared, ranges, "cpu", pad_stem=False)
    assert [n.op_type for n in padded.graph.node].count("Pad") == 2
    onnx.checker.check_model(padded, full_check=True)
    np.testing.assert_allclose(_logits(padded, x), _logits(plain, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("target,exclude", [("tensorrt", []), ("cpu", []), ("cpu", ["conv2"])])
def test_qdq_model_is_valid_onnx_in_topological_order(calibrated, target, exclude):
    """ORT's quantizer appends Q/DQ nodes at the end of the graph; ONNX (and TensorRT's parser, which reads nodes in
    order) needs producers first. ONNX Runtime alone would not notice: it sorts for itself."""
    import onnx

    prepared, ranges, _ = calibrated
    qm = qdq.write_qdq(prepared, ranges, target, exclude=exclude)
    onnx.checker.check_model(qm, full_check=True)  # full_check: strict shape inference too
    seen = {i.name for i in qm.graph.input} | {i.name for i in qm.graph.initializer}
    for node in qm.graph.node:
        assert all(not name or name in seen for name in node.input), node.name
        seen.update(node.output)


def test_exclude_keeps_a_node_in_float(calibrated):
    prepared, ranges, _ = calibrated
    qm = qdq.write_qdq(prepared, ranges, "cpu", exclude=["conv2"])
    assert "conv2" not in qdq.quantized_nodes(qm) and "conv1" in qdq.quantized_nodes(qm)
    producers = {o: n for n in qm.graph.node for o in n.output}
    conv2 = next(n for n in qm.graph.node if n.name == "conv2")
    assert conv2.input[1] not in producers  # float weight initializer, no DequantizeLinear


def test_excluded_node_stays_float_after_ort_optimisation(calibrated, tmp_path):
    """ORT re-quantizes (per tensor) a float Conv sitting between DequantizeLinear and QuantizeLinear; an excluded node
    must be fed from the float tensor so it really runs in float on ORT."""
    import onnxruntime as ort

    prepared, ranges, cs = calibrated
    qm = qdq.write_qdq(prepared, ranges, "cpu", exclude=["conv2"])
    producers = {o: n for n in qm.graph.node for o in n.output}
    conv2 = next(n for n in qm.graph.node if n.name == "conv2")
    assert producers[conv2.input[0]].op_type == "Clip"  # not a DequantizeLinear
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(qm.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 1  # conv1 still fused to INT8 ...
    assert ops.count("Conv") + ops.count("FusedConv") == 1  # ... conv2 runs in float


def test_needed_tensors_are_a_subset_and_sufficient(calibrated):
    prepared, ranges, _ = calibrated
    everything = graph.activation_tensors(prepared)
    for target in qdq.TARGETS:
        need = qdq.needed_tensors(prepared, everything, target)
        assert need and set(need) <= set(everything)
        qdq.write_qdq(prepared, {t: ranges[t] for t in need}, target)  # raises if a placeholder leaked


def test_already_quantized_model_is_refused(calibrated):
    from edgecnn.errors import UserInputError

    prepared, ranges, _ = calibrated
    with pytest.raises(UserInputError, match="already quantized"):
        graph.check_not_quantized(qdq.write_qdq(prepared, ranges, "cpu"), "m.int8.onnx")


# ---------------------------------------------------------------- bias correction


def test_fake_quant_per_channel_matches_numpy():
    w = np.random.default_rng(4).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)
    w[2] *= 50
    q = weights.fake_quant_per_channel(w, 0)
    for c in range(4):
        s = np.abs(w[c]).max() / 127
        np.testing.assert_allclose(q[c], np.round(w[c] / s) * s, rtol=1e-6)


def test_bias_correction_removes_the_mean_output_shift(calibrated):
    prepared, _, cs = calibrated
    names = list(weights.correctable_inputs(prepared).values())
    stats = calibrators.collect_stats(
        cs.batches(4), graph.tensor_runner(prepared, names), histogram=False, channel_means=names
    )
    means = {n: s.channel_mean for n, s in stats.items()}
    corrected, done = weights.bias_correct(prepared, means)
    assert set(done) == {"conv1", "conv2", "fc"}

    def fake_quant(model):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        conv_w = {n.input[1]: (0 if n.op_type == "Conv" else 0) for n in m.graph.node if n.op_type in ("Conv", "Gemm")}
        for init in m.graph.initializer:
            if init.name in conv_w:
                init.CopyFrom(
                    numpy_helper.from_array(weights.fake_quant_per_channel(numpy_helper.to_array(init), 0), init.name)
                )
        return m

    x = np.concatenate(list(cs.batches(100)))
    run = lambda m: graph.tensor_runner(m, ["c1"])(x)["c1"].mean(axis=(0, 2, 3))  # noqa: E731
    ref = run(prepared)
    shift_plain = np.abs(run(fake_quant(prepared)) - ref).mean()
    shift_corrected = np.abs(run(fake_quant(corrected)) - ref).mean()
    assert shift_corrected < 0.2 * shift_plain


# ---------------------------------------------------------------- calibration sources


def test_folder_summary_counts_classes_corrupt_and_formats(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=3)
    (folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(folder / "dog" / "gray16.png"), (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 20))
    cv2.imwrite(str(folder / "dog" / "rgba.png"), np.full((40, 48, 4), 200, np.uint8))
    contract = read_onnx_contract(build_tiny_onnx(tmp_path / "m.onnx"))
    cs = load_calibration(folder, contract.preprocess)
    summary = cs.summary()
    assert summary["images"] == 8 and summary["corrupt"] == 1
    assert summary["per_class"] == {"cat": 3, "dog": 5}
    assert summary["brightness"]["min"] < summary["brightness"]["max"]
    assert any("100" in w for w in summary["warnings"])
    assert cs.images.shape == (8, 32, 32, 3)


def test_video_source_every_kth_frame(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=30, fps=10, fourcc="MJPG")
    contract = read_onnx_contract(build_tiny_onnx(tmp_path / "m.onnx"))
    cs = load_calibration(path, contract.preprocess, every=5)
    assert cs.kind == "video" and len(cs) == 6 and cs.names[1] == "frame 5"
    cs = load_calibration(path, contract.preprocess, num_images=10)
    assert len(cs) == 10 and cs.names[1] == "frame 2" and cs.names[-1] == "frame 26"
    cs = load_calibration(path, contract.preprocess, num_images=20)  # spread over all 30 frames, not the first 20
    assert len(cs) == 20 and cs.names[:3] == ["frame 0", "frame 1", "frame 3"] and cs.names[-1] == "frame 28"
    assert len(load_calibration(path, contract.preprocess, num_images=50)) == 30  # fewer frames than asked: all


def test_video_frames_are_spread_over_the_frames_it_really_has(tmp_path):
    """A header that claims 10x the frames (a cut or re-muxed file) must not leave 4 of 40 frames: the spread counts
    the frames it reads."""
    path = write_video(tmp_path / "clip.avi", frames=100, fps=25, fourcc="MJPG")
    data = bytearray(path.read_bytes())
    for at in (data.index(b"avih") + 8 + 16, data.index(b"strh") + 8 + 32):  # dwTotalFrames, the stream's dwLength
        assert int.from_bytes(data[at : at + 4], "little") == 100
        data[at : at + 4] = (1000).to_bytes(4, "little")
    claimed = tmp_path / "claims1000.avi"
    claimed.write_bytes(bytes(data))
    assert cv2.VideoCapture(str(claimed)).get(cv2.CAP_PROP_FRAME_COUNT) == 1000  # OpenCV believes the header
    contract = read_onnx_contract(build_tiny_onnx(tmp_path / "m.onnx"))
    cs = load_calibration(claimed, contract.preprocess, num_images=40)
    indices = [int(n.split()[1]) for n in cs.names]
    assert len(cs) == 40 and indices[0] == 0 and indices[-1] >= 90 and cs.available == 100


def test_empty_and_unreadable_sources_are_clear_errors(tmp_path):
    from edgecnn.errors import UserInputError

    cfg = read_onnx_contract(build_tiny_onnx(tmp_path / "m.onnx")).preprocess
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="No images"):
        load_calibration(tmp_path / "empty", cfg)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"xx")
    with pytest.raises(UserInputError, match="could be decoded"):
        load_calibration(tmp_path / "bad", cfg)
    with pytest.raises(UserInputError, match="does not exist"):
        load_calibration(tmp_path / "missing", cfg)


@pytest.mark.gpu
def test_tensorrt_builds_the_qdq_model(calibrated, tmp_path):
    """The tensorrt-target Q/DQ model is what TensorRT's explicit-quantization path consumes: it builds an INT8
    engine."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU machine)")
    prepared, ranges, _ = calibrated
    path = tmp_path / "q.onnx"
    onnx.save(qdq.write_qdq(prepared, ranges, "tensorrt"), str(path))
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = (
        0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(path.read_bytes()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


def test_agreement_by_confidence_bins_images_by_fp32_certainty():
    from edgecnn.quant.accuracy import agreement_by_confidence

    fp32 = np.array(
        [
            [0.0, 0.01, 0.0],  # unsure (p ~ 0.34)
            [0.0, 0.02, 0.0],  # unsure
            [0.0, 9.0, 0.0],  # sure (p ~ 1.0)
            [0.0, 0.0, 1.0],
        ]
    )  # in between (p ~ 0.58)
    int8 = np.array(
        [
            [0.02, 0.01, 0.0],  # flipped
            [0.0, 0.02, 0.0],
            [0.0, 9.0, 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    rows = agreement_by_confidence(fp32, int8, bins=((0.0, 0.5), (0.5, 0.9), (0.9, 1.0)))
    assert [r["images"] for r in rows] == [2, 1, 1]
    assert [r["agreement"] for r in rows] == [0.5, 1.0, 1.0]
    assert agreement_by_confidence(fp32[:2], int8[:2], bins=((0.0, 0.5), (0.5, 1.0)))[1]["agreement"] is None
