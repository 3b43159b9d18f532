"""FP32 -> FP16 ONNX conversion, inputs and outputs kept FP32.

TensorRT 11 builds strongly typed networks only: the FP16 builder flag is gone, so an FP16 engine needs an ONNX whose
weights and activations are FP16. Keeping the graph inputs/outputs FP32 (Cast nodes at the edges) means every runner
and `preprocess()` keep feeding float32 and reading float32 logits. Built on onnxconverter-common's
`convert_float_to_float16` (the converter ONNX Runtime's docs point to) rather than a hand-written pass; the result is
checked on ONNX Runtime CPU in the tests (agreement with the FP32 model).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from edgecnn.contract import read_onnx_contract, write_onnx_contract
from edgecnn.errors import UserInputError, require
from edgecnn.files import ensure_distinct
from edgecnn.onnx_io import save_onnx
from edgecnn.trt.plan import inspect_onnx

HINT = "FP16 ONNX conversion needs onnxconverter-common: pip install onnxconverter-common (part of 'edgecnn[tensorrt]')"


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write an FP16 copy of the ONNX model `src` to `dst` (atomically); the edgecnn contract is kept,
    precision=fp16."""
    import onnx

    src, dst = Path(src), Path(dst)
    ensure_distinct(src, dst)
    facts = inspect_onnx(src)
    if facts.has_qdq:
        raise UserInputError(f"{src} is a Q/DQ (INT8) model: build it as is, FP16 conversion is for FP32 models")
    if facts.fp16:
        raise UserInputError(f"{src} already computes in FP16")
    float16 = require("onnxconverter_common.float16", HINT)
    model = onnx.load(str(src))
    contract = read_onnx_contract(src)
    with warnings.catch_warnings():  # it warns once per weight below FP16's range (clamped to 1e-7): expected, not news
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    write_onnx_contract(converted, replace(contract, precision="fp16").with_provenance(fp16_from=src.name))
    onnx.checker.check_model(converted)
    return save_onnx(converted, dst)
