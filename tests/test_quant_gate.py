"""The accuracy gate's parts on a real (tiny) ONNX model: sensitivity ranking equals the models it stands for,
bounded time, the search order; layer selection by name, regex and op type; FP16 for float layers; the bounded
entropy calibrator; and the CLI options that expose them."""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime as ort
import pytest
from conftest import build_tiny_onnx, make_image_folder
from test_quant_cli import invoke

from edgecnn.contract import read_onnx_contract
from edgecnn.errors import AccuracyGateError, UserInputError
from edgecnn.quant import calibrators, fp16, gate, graph, qdq, select
from edgecnn.quant.calib_data import load_calibration
from edgecnn.quant.calibrators import TensorStats


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    model_path = build_tiny_onnx(tmp / "m.onnx")
    cs = load_calibration(make_image_folder(tmp / "imgs", per_class=6), read_onnx_contract(model_path).preprocess)
    prepared = graph.prepare(model_path)
    stats = calibrators.collect_stats(cs.batches(8), graph.tensor_runner(prepared, graph.activation_tensors(prepared)))
    return prepared, calibrators.compute_ranges(stats, "minmax"), list(cs.batches(8))


def _logits(model, batches):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: b})[0] for b in batches])


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_sensitivity_is_the_kl_of_a_model_with_only_that_layer_quantized(tiny, target):
    prepared, ranges, batches = tiny
    qmodel = qdq.write_qdq(prepared, ranges, target, pad_stem=False)
    nodes = qdq.quantized_nodes(qmodel)
    ranked = gate.rank_layers(prepared, qmodel, nodes, batches)
    assert sorted(r["node"] for r in ranked) == sorted(nodes)
    assert all(r["kl"] > 0 for r in ranked)  # never degenerate: every quantized layer changes the output
    assert [r["kl"] for r in ranked] == sorted((r["kl"] for r in ranked), reverse=True)
    ref = _logits(prepared, batches)
    compared = []
    for row in ranked:
        alone = qdq.write_qdq(prepared, ranges, target, exclude=[n for n in nodes if n != row["node"]], pad_stem=False)
        if row["op"] not in ("Conv", "Gemm"):
            continue  # alone, the writer quantizes a pooling or Reshape differently (its output too, or not at all)
        compared.append(row["node"])
        assert gate._kl(ref, _logits(alone, batches)) == pytest.approx(row["kl"], rel=0.05, abs=1e-9), row["node"]
    assert compared == [r["node"] for r in ranked if r["op"] in ("Conv", "Gemm")] and len(compared) == 3


def test_ranking_stops_at_its_deadline_and_keeps_graph_order(tiny):
    prepared, ranges, batches = tiny
    qmodel = qdq.write_qdq(prepared, ranges, "tensorrt")
    nodes = qdq.quantized_nodes(qmodel)
    ranked = gate.rank_layers(prepared, qmodel, nodes, batches, deadline=time.monotonic() - 1)
    assert [r["node"] for r in ranked] == nodes and all(r["kl"] is None for r in ranked)


def test_search_doubles_then_bisects_to_the_fewest_layers():
    ranked = [{"node": f"n{i}", "kl": 1.0 / (i + 1)} for i in range(10)]
    built = []

    def build(extra):  # the drop falls by one point per layer kept in float
        built.append(len(extra))
        return extra, {"drop": 6.0 - len(extra)}

    (chosen, measured), steps, extra = gate.search(build, ([], {"drop": 6.0}), ranked, 0.5, 10, time.monotonic() + 60)
    assert built == [1, 2, 4, 8, 6, 5] and extra == [f"n{i}" for i in range(6)] and measured["drop"] == 0.0
    with pytest.raises(AccuracyGateError, match="max-steps") as err:
        gate.search(build, ([], {"drop": 6.0}), ranked, 0.5, 3, time.monotonic() + 60)
    assert [s["layers_in_float"] for s in err.value.details["steps"]] == [0, 1, 2, 3]
    with pytest.raises(AccuracyGateError, match="gate-seconds"):
        gate.search(build, ([], {"drop": 6.0}), ranked, 0.5, 10, time.monotonic() - 1)


def test_selection_by_name_regex_and_op_type_says_why(tiny):
    prepared = tiny[0]
    names = [n.name for n in prepared.graph.node]
    ops = {n.name: n.op_type for n in prepared.graph.node}
    conv = next(n for n in names if ops[n] == "Conv")
    got = select.resolve(prepared, prepared, [conv], ["^" + conv[:2]], ["Gemm"])
    reasons = {e["node"]: e["reason"] for e in got}
    assert reasons[conv] == f"--exclude {conv}"  # the first selection that names a node is its reason
    assert all(
        ops[n] == "Gemm" and "--exclude-op-type Gemm" in r for n, r in reasons.items() if n != conv and ops[n] == "Gemm"
    )
    assert [e["node"] for e in got] == [n for n in names if n in reasons]  # graph order
    for bad, flag in (
        ({"patterns": ["("]}, "--exclude-pattern"),
        ({"patterns": ["^nothing$"]}, "--exclude-pattern"),
        ({"op_types": ["Softmax"]}, "--exclude-op-type"),
        ({"names": ["nope"]}, "--exclude"),
    ):
        with pytest.raises(UserInputError, match=flag):
            select.resolve(prepared, prepared, **bad)


def test_fp16_simulation_rounds_only_the_float_layers(tiny):
    prepared, ranges, batches = tiny
    floats = {n.name for n in prepared.graph.node if n.op_type == "Gemm"}
    qmodel = qdq.write_qdq(prepared, ranges, "tensorrt", exclude=sorted(floats))
    sim = fp16.simulate(qmodel, floats)
    casts = [n for n in sim.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 * len(floats)  # each float layer's activation input: to FP16 and back
    a, b = _logits(qmodel, batches), _logits(sim, batches)
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 1e-2 * np.abs(a).max()


def test_entropy_never_clips_more_than_the_bound():
    """A dense head with a thin, spread tail (0.1 % of the values, up to 6): the KL threshold alone cuts the whole
    tail off; entropy stops at the 99.99th percentile. A Gaussian keeps its (wider) KL threshold."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 2_000_000).astype(np.float32)
    x[:2000] = rng.uniform(1, 6, 2000)
    s = TensorStats()
    s.update(x, max_samples=None)
    kl, bounded = calibrators.kl_amax(s), calibrators.entropy_amax(s)
    assert kl < bounded == pytest.approx(calibrators.percentile_amax(s, 99.99))
    assert np.mean(x > bounded) <= calibrators.ENTROPY_MAX_CLIPPED
    g = TensorStats()
    g.update(rng.normal(0, 1, 400_000).astype(np.float32))
    assert calibrators.entropy_amax(g) == calibrators.kl_amax(g) > calibrators.percentile_amax(g, 99.99)
    row = calibrators.range_comparison({"x": s})["x"]
    assert row["kl"] == kl and row["entropy"] == bounded and row["minmax"] == pytest.approx(float(x.max()))


def test_cli_exclusions_by_pattern_and_op_type_are_reported(tmp_path):
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    calib = make_image_folder(tmp_path / "calib", per_class=4, seed=1)
    out, report = tmp_path / "q.onnx", tmp_path / "report"
    res = invoke(
        "quantize",
        model,
        "--calib",
        calib,
        "--out",
        out,
        "--exclude-op-type",
        "Gemm",
        "--exclude-pattern",
        "^nomatch|^conv2$",
        "--report",
        report,
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {e["node"]: e["reason"] for e in data["exclusions"]} == {
        "conv2": "--exclude-pattern ^nomatch|^conv2$",
        "fc": "--exclude-op-type Gemm",
    }
    assert data["excluded"] == [e["node"] for e in data["exclusions"]]
    assert "--exclude-op-type Gemm" in (report / "quantization.md").read_text()
    assert data["range_comparison"] and data["accuracy"]["kl"] >= 0 and data["accuracy"]["drop_metric"]
    res = invoke("quantize", model, "--calib", calib, "--out", tmp_path / "x.onnx", "--exclude-pattern", "(")
    assert res.exit_code == 2 and "--exclude-pattern" in res.output and not (tmp_path / "x.onnx").exists()
    res = invoke(
        "quantize", model, "--calib", calib, "--out", tmp_path / "x.onnx", "--target", "cpu", "--high-precision", "fp16"
    )
    assert res.exit_code == 2 and "--high-precision" in res.output
