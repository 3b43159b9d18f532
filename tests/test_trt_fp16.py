"""FP32 -> FP16 ONNX conversion (for TensorRT 11's strongly typed builds), verified on ONNX Runtime CPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecnn.contract import read_onnx_contract, write_onnx_contract
from edgecnn.data import list_images, read_image
from edgecnn.errors import UserInputError
from edgecnn.files import sha256_file
from edgecnn.onnx_io import save_onnx
from edgecnn.preprocess import preprocess
from edgecnn.runtime.onnxrt import OnnxRuntimeRunner
from edgecnn.trt.fp16 import convert_fp16
from edgecnn.trt.plan import inspect_onnx

pytest.importorskip("onnxconverter_common", reason="FP16 conversion needs onnxconverter-common ('edgecnn[tensorrt]')")


def make_qdq_onnx(src: Path, dst: Path, batches: int = 4) -> Path:
    """A Q/DQ (explicitly quantized) copy of `src` made with ONNX Runtime's quantize_static, contract re-attached.
    Symmetric INT8 with float bias: ONNX Runtime's defaults (asymmetric activations, nonzero zero points, int32
    bias) are not something TensorRT builds, and build-engine refuses them (edgecnn.trt.int8)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    contract = read_onnx_contract(src)
    h, w = contract.preprocess.input_size
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": rng.normal(0, 1, (1, 3, h, w)).astype(np.float32)} for _ in range(batches)])

        def get_next(self):
            return next(self.items, None)

    tmp = dst.with_name(dst.stem + ".raw.onnx")
    # the form TensorRT's explicit quantization takes: symmetric INT8 (zero point 0), float bias
    quantize_static(
        str(src),
        str(tmp),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    model = onnx.load(str(tmp))
    write_onnx_contract(model, replace(contract, precision="int8"))
    tmp.unlink()
    return save_onnx(model, dst)


def _real_batch(folder: Path, contract, n: int) -> np.ndarray:
    frames = [read_image(p) for p in list_images(folder)[:n]]
    return preprocess(frames, contract.preprocess)


def test_fp16_copy_keeps_fp32_io_contract_and_agrees_with_fp32_on_ort(tiny_onnx, image_folder, tmp_path):
    before = sha256_file(tiny_onnx)
    out = convert_fp16(tiny_onnx, tmp_path / "tiny.fp16.onnx")
    assert sha256_file(tiny_onnx) == before  # input untouched

    model = onnx.load(str(out))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    weights = [i for i in model.graph.initializer if i.name.endswith(".w")]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    facts = inspect_onnx(out)
    assert facts.fp16 and not inspect_onnx(tiny_onnx).fp16

    c32, c16 = read_onnx_contract(tiny_onnx), read_onnx_contract(out)
    assert c16.labels == c32.labels and c16.preprocess == c32.preprocess
    assert c16.precision == "fp16" and c16.provenance["fp16_from"] == "tiny.onnx"

    x = _real_batch(image_folder, c32, 12)
    with OnnxRuntimeRunner(tiny_onnx) as r32, OnnxRuntimeRunner(out) as r16:
        a, b = r32.infer(x), r16.infer(x)
    assert b.dtype == np.float32 and b.shape == a.shape
    scale = np.abs(a).max()
    assert np.abs(a - b).max() <= 5e-3 * max(scale, 1.0)
    assert (a.argmax(1) == b.argmax(1)).mean() == 1.0


def test_fp16_conversion_refuses_bad_requests(tiny_onnx, tmp_path):
    with pytest.raises(UserInputError, match="is the input file"):
        convert_fp16(tiny_onnx, tiny_onnx)
    half = convert_fp16(tiny_onnx, tmp_path / "half.onnx")
    with pytest.raises(UserInputError, match="already computes in FP16"):
        convert_fp16(half, tmp_path / "again.onnx")
    qdq = make_qdq_onnx(tiny_onnx, tmp_path / "tiny.qdq.onnx")
    assert inspect_onnx(qdq).has_qdq
    with pytest.raises(UserInputError, match="Q/DQ"):
        convert_fp16(qdq, tmp_path / "qdq16.onnx")
    with pytest.raises(UserInputError, match="does not exist"):
        convert_fp16(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "qdq16.onnx").exists() and not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_fp16_efficientnet_lite0_agrees_with_fp32_on_real_photos(scenes_dir, tmp_path):
    pytest.importorskip("torch", reason="materialising the pretrained ONNX needs PyTorch once")
    from edgecnn.zoo import pretrained_onnx

    try:
        src = pretrained_onnx("efficientnet-lite0")
    except ImportError as exc:  # export not available in this checkout
        pytest.skip(f"pretrained ONNX export unavailable: {exc}")
    out = convert_fp16(src, tmp_path / "lite0.fp16.onnx")
    contract = read_onnx_contract(src)
    files = list_images(scenes_dir)[::60][:20]
    x = preprocess([read_image(p) for p in files], contract.preprocess)
    with OnnxRuntimeRunner(src) as r32, OnnxRuntimeRunner(out) as r16:
        a, b = r32.infer(x), r16.infer(x)
    agree = (a.argmax(1) == b.argmax(1)).mean()
    assert agree >= 0.95, agree
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    assert out.stat().st_size < 0.6 * src.stat().st_size  # weights really are half size
