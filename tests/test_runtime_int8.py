"""INT8 models must compute the same numbers on every CPU, through every edgecnn ONNX Runtime session.

On x86 CPUs without VNNI, ONNX Runtime's fast uint8 x int8 kernels sum pairs of products in int16 (VPMADDUBSW) and
saturate when weights use all 8 bits. The model below is built so that every pair saturates: inputs at 255 and
weights at 127. A session with edgecnn's options must still give the exact result (on CPUs with VNNI, or on ARM,
there is nothing to saturate and the test holds trivially)."""

from __future__ import annotations

import numpy as np


def _saturating_model(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.artifacts import ModelContract, save_onnx, write_onnx_contract
    from edgecnn.preprocess import PreprocessConfig

    cout = 2
    inits = [
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), "x_zp"),
        numpy_helper.from_array(np.full((cout, 3, 3, 3), 127, dtype=np.int8), "w_q"),
        numpy_helper.from_array(np.full((cout,), 1 / 127, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros((cout,), dtype=np.int8), "w_zp"),
        numpy_helper.from_array(np.array(27 / 200, dtype=np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wf"], axis=0),
        helper.make_node("Conv", ["xf", "wf"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zp"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["yf"]),
        helper.make_node("GlobalAveragePool", ["yf"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "saturating", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", cout])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    contract = ModelContract(labels=["a", "b"], arch="saturation-test", precision="int8",
                             preprocess=PreprocessConfig(input_size=(8, 8), resize="resize", mean=(0, 0, 0),
                                                         std=(255, 255, 255)))
    write_onnx_contract(model, contract)
    return save_onnx(model, path)


def _exact(x: np.ndarray) -> np.ndarray:
    """The model in float64: 3x3 all-ones convolution (zero padding), output grid of 27/200, global mean."""
    xq = np.clip(np.round(x * 255), 0, 255) / 255
    p = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = x.shape[2:]
    y = sum(p[:, :, i : i + h, j : j + w].sum(axis=1) for i in range(3) for j in range(3))
    y = np.clip(np.round(y / (27 / 200)), 0, 255) * (27 / 200)
    return np.repeat(y.mean(axis=(1, 2))[:, None], 2, axis=1)


def test_int8_runner_does_not_saturate_on_any_x86_cpu(tmp_path):
    from edgecnn.runtime.onnxrt import EXACT_INT8, OnnxRuntimeRunner, session_options

    assert session_options().get_session_config_entry(EXACT_INT8[0]) == EXACT_INT8[1]
    path = _saturating_model(tmp_path / "sat.onnx")
    x = np.ones((2, 3, 8, 8), dtype=np.float32)
    x[1, :, ::2] = 0.5  # a second, different image: rows at 128 instead of 255
    with OnnxRuntimeRunner(path) as runner:
        got = runner.infer(x)
    np.testing.assert_allclose(got, _exact(x), atol=0.14)  # within one output step (27/200)


def test_x86_without_vnni_reads_the_cpu_flags(tmp_path):
    from edgecnn.runtime.onnxrt import x86_without_vnni

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 avx2 fma\n")
    assert x86_without_vnni(info, "x86_64")
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8\n")
    assert not x86_without_vnni(info, "x86_64")
    info.write_text("flags\t\t: fpu avx2 avx_vnni\n")
    assert not x86_without_vnni(info, "x86_64")
    assert not x86_without_vnni(info, "aarch64")  # ARM: no VPMADDUBSW, nothing to warn about
    assert not x86_without_vnni(tmp_path / "missing", "x86_64")  # cannot tell: no warning
