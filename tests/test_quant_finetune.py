"""Quantization-aware fine-tuning (`quantize --finetune`): the PyTorch executor reproduces ONNX Runtime (FP32
exactly, INT8 closely), training lowers the distillation loss, the result goes back through the Q/DQ writer with the
same graph, and unsupported graphs or bad options are clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import build_tiny_onnx, make_image_folder

from edgecnn.contract import read_onnx_contract
from edgecnn.errors import UserInputError
from edgecnn.quant import QuantOptions, calibrators, graph, qdq, quantize
from edgecnn.quant.calib_data import load_calibration

torch = pytest.importorskip("torch", reason="--finetune needs PyTorch (the train extra)")

from edgecnn.quant.finetune import _GraphExecutor, finetune, quant_points  # noqa: E402


def _run(model, x):
    import onnxruntime as ort

    from edgecnn.runtime.onnxrt import session_options

    sess = ort.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )  # exact INT8 on CPUs without VNNI
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture
def setup(tmp_path):
    model_path = build_tiny_onnx(tmp_path / "m.onnx", size=(24, 24))
    folder = make_image_folder(tmp_path / "imgs", per_class=16, size=(24, 24), seed=3)
    cs = load_calibration(folder, read_onnx_contract(model_path).preprocess)
    prepared = graph.prepare(model_path)
    stats = calibrators.collect_stats(cs.batches(8), graph.tensor_runner(prepared, graph.activation_tensors(prepared)))
    ranges = calibrators.compute_ranges(stats, "minmax")
    x = np.concatenate(list(cs.batches(100)))
    return model_path, folder, prepared, ranges, x


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_executor_matches_onnxruntime(setup, target):
    _, _, prepared, ranges, x = setup
    qm = qdq.write_qdq(prepared, ranges, target)
    acts, axes = quant_points(qm)
    assert set(axes) == {"conv1.w", "conv2.w", "fc.w"}
    assert axes["fc.w"] == 0  # Gemm transB=1: one scale per output row
    assert set(acts) <= set(graph.activation_tensors(prepared))
    net = _GraphExecutor(prepared, acts, axes)
    with torch.no_grad():
        net.teacher = True
        fp = net(torch.from_numpy(x)).numpy()
        net.teacher = False
        fq = net(torch.from_numpy(x)).numpy()
    ort_fp, ort_q = _run(prepared, x), _run(qm, x)
    np.testing.assert_allclose(fp, ort_fp, atol=1e-4)
    # fake quantization emulates the INT8 model far better than the float model does
    assert np.abs(fq - ort_q).mean() < 0.25 * np.abs(ort_fp - ort_q).mean()


def test_finetune_lowers_the_loss_and_keeps_the_graph(setup):
    _, _, prepared, ranges, x = setup
    qm = qdq.write_qdq(prepared, ranges, "cpu")
    tuned, summary = finetune(prepared, qm, x, epochs=6, lr=1e-4, batch=8, threads=1)
    assert summary["steps"] == 6 * ((len(x) + 7) // 8)
    assert summary["loss_last_epoch"] < summary["loss_first_epoch"]
    assert [n.name for n in tuned.graph.node] == [n.name for n in prepared.graph.node]
    before = {i.name: onnx.numpy_helper.to_array(i) for i in prepared.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in tuned.graph.initializer}
    assert before.keys() == after.keys()
    assert not np.array_equal(before["conv2.w"], after["conv2.w"])
    np.testing.assert_array_equal(before["flat_shape"], after["flat_shape"])  # only weights and biases move
    q_tuned = qdq.write_qdq(tuned, ranges, "cpu")
    err_before = np.abs(_run(qm, x) - _run(prepared, x)).mean()
    err_after = np.abs(_run(q_tuned, x) - _run(prepared, x)).mean()
    assert err_after < 0.7 * err_before  # on the images it trained on, the INT8 model moved closer to FP32


def test_fixed_batch_graph_is_trained_at_its_own_batch_size(tmp_path):
    """A graph with its batch baked into a Reshape gets exactly that many images per step, the last step filled up."""
    prepared = graph.prepare(build_tiny_onnx(tmp_path / "fixed.onnx", batch=4, size=(24, 24)))
    folder = make_image_folder(tmp_path / "imgs", per_class=5, size=(24, 24), seed=3)
    cs = load_calibration(folder, read_onnx_contract(tmp_path / "fixed.onnx").preprocess)
    x = np.concatenate(list(cs.batches(4)))
    ranges = calibrators.compute_ranges(
        calibrators.collect_stats(cs.batches(4), graph.tensor_runner(prepared, graph.activation_tensors(prepared))),
        "minmax",
    )
    tuned, summary = finetune(prepared, qdq.write_qdq(prepared, ranges, "cpu"), x, epochs=2, lr=1e-4, batch=16)
    assert len(x) == 10 and summary["steps"] == 2 * 3  # batches of 4: 4 + 4 + (2 + 2 from the start)
    assert np.isfinite(summary["loss_last_epoch"])


def test_quantize_with_finetune_reports_it(setup, tmp_path):
    model_path, folder, *_ = setup
    val = make_image_folder(tmp_path / "val", per_class=6, size=(24, 24), seed=9)
    r = quantize(
        model_path,
        tmp_path / "q.onnx",
        folder,
        QuantOptions(target="cpu", method="minmax", finetune=2, finetune_lr=1e-4, val=val, threads=1),
    )
    assert r["finetune"]["epochs"] == 2 and r["finetune"]["images"] == 32
    contract = read_onnx_contract(tmp_path / "q.onnx")
    assert contract.provenance["quantization"]["finetune"] == {"epochs": 2, "lr": 1e-4, "images": 32}
    r2 = quantize(model_path, tmp_path / "q2.onnx", folder, QuantOptions(target="cpu", method="minmax", finetune=1))
    assert "optimistic" in r2["accuracy"]["note"]  # no --val: measured on the images it trained on


def test_unsupported_op_and_bad_options_are_clear_errors(setup, tmp_path):
    model_path, folder, prepared, ranges, x = setup
    m = onnx.ModelProto()
    m.CopyFrom(prepared)
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.op_type = "LeakyRelu"
    with pytest.raises(UserInputError, match="LeakyRelu"):
        finetune(m, qdq.write_qdq(prepared, ranges, "cpu"), x, epochs=1)
    with pytest.raises(UserInputError, match="--finetune"):
        QuantOptions(finetune=-1).validate()
    with pytest.raises(UserInputError, match="--finetune-lr"):
        QuantOptions(finetune=1, finetune_lr=0).validate()
    with pytest.raises(UserInputError, match="epoch"):
        finetune(prepared, qdq.write_qdq(prepared, ranges, "cpu"), x, epochs=0)
    out = tmp_path / "never.onnx"
    with pytest.raises(UserInputError, match="--finetune"):
        quantize(model_path, out, folder, QuantOptions(finetune=-2))
    assert not out.exists()


def test_cli_finetune_summary_and_report(setup, tmp_path):
    from typer.testing import CliRunner

    from edgecnn.cli.main import app

    model_path, folder, *_ = setup
    res = CliRunner().invoke(
        app,
        [
            "quantize",
            str(model_path),
            "--calib",
            str(folder),
            "--out",
            str(tmp_path / "q.onnx"),
            "--finetune",
            "2",
            "--finetune-lr",
            "1e-4",
            "--report",
            str(tmp_path / "rep"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "fine-tuned: 2 epoch(s) on 32 images" in res.output and "optimistic" in res.output
    assert (
        "quantization-aware fine-tuning: 2 epoch(s) on 32 images" in (tmp_path / "rep" / "quantization.md").read_text()
    )
