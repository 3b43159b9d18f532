"""Is a Q/DQ (explicitly quantized) ONNX something TensorRT can build? Checked on CPU, before any TensorRT is needed.

TensorRT's explicit quantization is symmetric: a Q/DQ zero point must be 0, and the quantized type is signed INT8
(plus FP8 E4M3, weight-only INT4 and FP4 on the releases that have them). This holds for every release edgecnn
supports, 8.5 to 11.x (NVIDIA: the 8.x developer guide "Working with INT8", "symmetric uniform quantization, quantized
values represented in signed INT8"; the 10.x / 11.x guide "Working with Quantized Types", "TensorRT uses a symmetric
quantization scheme", types INT8, INT4, FP8E4M3, FP4E2M1). The ONNX parser enforces it differently per release: 8.x
refuses UINT8 Q/DQ and asserts "zeroPt must be all zeros"; the 10.x parser (onnx-tensorrt, as read for 10.0) still
asserts that an INT8 DequantizeLinear's zero point is 0, but for a UINT8 zero point it only WARNS and quantizes to
INT8 instead, which halves the range of a [0, 255] activation without failing. So an `edgecnn quantize --target cpu`
model (UINT8 activations, asymmetric zero points, int32 bias) either fails deep inside the build or builds an engine
that is silently wrong: refuse it here.

`tensorrt_qdq_problem()` works on an in-memory model, `check_tensorrt_qdq()` on a file (for build-engine, and for any
command that packages a model for TensorRT, e.g. a deployment bundle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgecnn.errors import UserInputError
from edgecnn.onnx_io import load_onnx

CPU_TARGET_MESSAGE = (
    "this INT8 model was quantized for ONNX Runtime CPU (--target cpu): for TensorRT quantize with --target tensorrt "
    "(edgecnn quantize MODEL.onnx --target tensorrt)"
)
# Zero-point element types (ONNX TensorProto names) TensorRT has no quantized type for. INT32 is left to the parser:
# it appears on bias DequantizeLinear nodes (ONNX Runtime's QuantizeBias), which edgecnn's tensorrt target never
# writes, and how each release treats it is not something this CPU-side check can promise.
_UNSIGNED = ("UINT8", "UINT16", "UINT4")
_NO_TRT_TYPE = ("INT16",)
_SIGNED_INT = ("INT8", "INT4")  # TensorRT types whose zero point must be 0 (FP8/FP4 zero points are 0 by definition)


def _quantization_target(model) -> str | None:
    """`quantization.target` from the edgecnn contract's provenance, if the model carries one."""
    for prop in model.metadata_props:
        if prop.key == "edgecnn.provenance":
            try:
                quant = (json.loads(prop.value) or {}).get("quantization") or {}
            except (ValueError, AttributeError):
                return None
            return quant.get("target") if isinstance(quant, dict) else None
    return None


def _constant_values(model) -> dict:
    """name -> TensorProto for initializers and Constant node outputs (where a zero point can live)."""
    values = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    values[node.output[0]] = attr.t
    return values


def tensorrt_qdq_problem(model, source: str = "model") -> str | None:
    """Why TensorRT cannot build this Q/DQ model as it is meant to run (one line naming the fix), or None if it can
    (or if the model has no Q/DQ nodes at all). `model` is an onnx.ModelProto; weights need not be loaded for the
    graph structure, but zero points must be (they are small initializers, always stored inline)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return None
    if _quantization_target(model) == "cpu":
        return f"{source}: {CPU_TARGET_MESSAGE}"
    consts = _constant_values(model)
    unsigned, other = None, None
    for node in qdq:
        if len(node.input) < 3 or not node.input[2] or node.input[2] not in consts:
            continue  # no zero point (TensorRT assumes 0) or a computed one (the parser decides)
        zp = consts[node.input[2]]
        try:
            dtype = TensorProto.DataType.Name(zp.data_type)
        except ValueError:  # an element type this onnx does not know
            dtype = f"TYPE{zp.data_type}"
        label = node.name or node.output[0]
        if dtype in _UNSIGNED:
            unsigned = unsigned or (label, dtype.lower())
        elif dtype in _NO_TRT_TYPE:
            other = other or f"{label} has a {dtype.lower()} zero point"
        elif dtype in _SIGNED_INT:
            try:
                values = numpy_helper.to_array(zp)
            except Exception:  # external data or an odd encoding: leave it to TensorRT's parser
                continue
            if np.any(np.asarray(values, dtype=np.int64) != 0):
                other = other or f"{label} has a nonzero zero point"
    if unsigned:
        return f"{source}: {CPU_TARGET_MESSAGE} ({unsigned[0]} has a {unsigned[1]} zero point)"
    if other:
        return (
            f"{source}: TensorRT takes only symmetric Q/DQ (zero point 0, INT8/FP8) and {other}: quantize the FP32 "
            "model with `edgecnn quantize MODEL.onnx --target tensorrt`"
        )
    return None


def check_tensorrt_qdq(path: str | os.PathLike) -> None:
    """Raise UserInputError if the ONNX file at `path` is a Q/DQ model TensorRT cannot build (see the module doc)."""

    path = Path(path)
    model = load_onnx(path, external_data=False)
    problem = tensorrt_qdq_problem(model, str(path))
    if problem:
        raise UserInputError(problem)
