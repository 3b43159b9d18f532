"""Q/DQ writer: calibrated ranges -> an explicitly quantized ONNX model, in the form each target runs best.

Built on ONNX Runtime's QDQ quantizer (it knows, per op type, which inputs/outputs to quantize, how to quantize
weights per channel and bias in int32), fed with OUR ranges instead of its own calibrators. Two targets:

- tensorrt: INT8 symmetric activations (zero point 0) and per-channel symmetric INT8 weights: the explicit-quantization
  form TensorRT consumes (TensorRT 8.x-11). Q/DQ pairs sit on the INPUTS of quantized ops only (no output Q/DQ on
  Conv/Gemm), so TensorRT fuses Conv+bias+ReLU6 and requantizes where it decides; bias stays float (TensorRT has no
  int32 DequantizeLinear); each consumer gets its own Q/DQ pair, as TensorRT's own ONNX tooling emits.
- cpu: uint8 activations (asymmetric) with per-channel INT8 weights and int32 bias: ONNX Runtime fuses
  DQ->Conv->Q into QLinearConv (u8s8 kernels on x86 AVX2/VNNI and ARM NEON/dot), which is where the speed comes from.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from edgecnn.errors import ArtifactError, UserInputError

TARGETS = ("tensorrt", "cpu")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    activation_signed: bool
    per_channel: bool
    extra_options: dict

    def quant_types(self):
        from onnxruntime.quantization import QuantType

        act = QuantType.QInt8 if self.activation_signed else QuantType.QUInt8
        return act, QuantType.QInt8


def target_spec(target: str) -> TargetSpec:
    if target == "tensorrt":
        return TargetSpec(
            "tensorrt",
            activation_signed=True,
            per_channel=True,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "DedicatedQDQPair": True,
                "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm", "MatMul", "ConvTranspose"],
            },
        )
    if target == "cpu":
        return TargetSpec(
            "cpu",
            activation_signed=False,
            per_channel=True,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    raise UserInputError(f"Unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def _tensors_data(ranges: dict[str, tuple[float, float]]):
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    data = {}
    for name, (lo, hi) in ranges.items():
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)  # a quantized range always contains 0
        data[name] = TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
    return TensorsData(CalibrationMethod.MinMax, data)


def write_qdq(
    model,
    ranges: dict[str, tuple[float, float]],
    target: str,
    exclude: list[str] | tuple = (),
    dry_run: bool = False,
    reduce_range: bool = False,
    pad_stem: bool = True,
):
    """A new onnx.ModelProto with Q/DQ nodes for `target`, using `ranges` for activations; nodes in `exclude` stay
    float. `model` must be prepared (see graph.prepare) and is not modified. `dry_run` allows missing ranges (used
    to find out which tensors need one). `reduce_range`: weights on [-64, 64] instead of [-127, 127] (ORT applies
    it to weights only; see weights.REDUCED_WEIGHT_QMAX for why). `pad_stem` (cpu target): see
    pad_conv_input_channels."""
    import onnx
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgecnn.quant.graph import activation_tensors

    spec = target_spec(target)
    act_type, weight_type = spec.quant_types()
    # ORT's quantizer wants a range for every tensor it looks at, including ones it then drops (a Conv output whose
    # Clip it folds away): those get a placeholder, and the check below proves no placeholder reached the model.
    placeholder = {t: (-1.0, 1.0) for t in activation_tensors(model) if t not in ranges}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    quantizer = QDQQuantizer(
        m,
        spec.per_channel,
        reduce_range,
        weight_type,
        act_type,
        _tensors_data({**placeholder, **ranges}),
        [],
        list(exclude),
        op_types,
        dict(spec.extra_options),
    )
    with _quiet_root_logger():  # ORT's quantizer logs advice through the root logger; our caller reports instead
        quantizer.quantize_model()
    qmodel = _float_graph_outputs(quantizer.model.model)
    if exclude:
        qmodel = _float_inputs_for_excluded(qmodel, set(exclude))
    missing = [t for t in quantized_tensors(qmodel) if t in placeholder]
    if missing and not dry_run:
        raise ArtifactError(f"Internal error: no calibrated range for quantized tensor(s) {', '.join(missing[:5])}")
    if spec.name == "cpu" and pad_stem:
        qmodel = pad_conv_input_channels(qmodel)
    # ORT's quantizer appends its Q/DQ nodes at the end of the graph. ONNX requires producers before consumers
    # (onnx.checker, shape inference) and TensorRT's ONNX parser reads nodes in order; ONNX Runtime alone re-sorts.
    ONNXModel(qmodel).topological_sort()
    return qmodel


def _float_graph_outputs(qmodel):
    """Drop the Q/DQ pair ORT puts on graph outputs: logits stay float (quantizing them to 256 levels only adds
    error and ties, and every consumer wants float scores)."""
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    remove = []
    for out in qmodel.graph.output:
        dq = producers.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        origin = producers.get(q.input[0])
        consumers = [n for n in qmodel.graph.node if q.input[0] in n.input]
        if origin is None or len(consumers) != 1:
            continue
        origin.output[list(origin.output).index(q.input[0])] = out.name
        remove += [q, dq]
    for node in remove:
        qmodel.graph.node.remove(node)
    used = {i for n in qmodel.graph.node for i in n.input}
    for init in [i for i in qmodel.graph.initializer if i.name not in used]:
        qmodel.graph.initializer.remove(init)
    return qmodel


# ONNX Runtime's fast symmetric INT8 convolution (MLAS ConvSym, x86 AVX2 / AVX-512 VNNI) takes group-1 convolutions
# only when the input channels are a multiple of 4; an RGB stem (3 channels) falls back to im2col + GEMM.
_CONV_SYM_CHANNEL_ALIGNMENT = 4
_PADDED_SUFFIX = f"_input_padded_to_{_CONV_SYM_CHANNEL_ALIGNMENT}_channels"


def pad_conv_input_channels(qmodel):
    """Give each INT8 convolution with 3 input channels (an RGB stem) a fourth, zero channel: a uint8 Pad on its
    quantized input and a zero weight channel, so every product is the same.

    Why: with 3 input channels ONNX Runtime's x86 CPU kernels skip their symmetric INT8 path, and EfficientNet-Lite0's
    stem ran 1.6x slower than in FP32 (769 vs 485 us, AMD EPYC with AVX-512 VNNI, 1 thread); padded it takes that path
    and the whole model went from 2.05x to 2.18x FP32 at batch 1, 1 thread (2.13x to 2.24x at 2), side by side in
    benchmarks/quant_benchmark.md. On ARM, ORT takes that path only from 64 input channels, so there the stem does
    4/3 of its (small) im2col work. Grayscale stems are left alone: 1 -> 4 channels quadruples their work, and the
    measured gain was noise (5.8 vs 6.0 ms at 1 thread, 4.6 vs 4.1 at 2)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.quant.graph import node_attrs

    inits = {i.name: i for i in qmodel.graph.initializer}
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    name_counts = Counter(n.name for n in qmodel.graph.node)
    graph_outputs = {o.name for o in qmodel.graph.output}
    consumers: dict[str, int] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    for node in list(qmodel.graph.node):
        if node.op_type != "Conv" or len(node.input) < 2 or node_attrs(node).get("group", 1) != 1:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        weight = inits.get(w_dq.input[0])
        if x_dq.input[0] in inits or weight is None or weight.data_type != TensorProto.INT8 or len(weight.dims) < 3:
            continue
        channels = weight.dims[1]
        shared = consumers.get(w_dq.input[0], 0) != 1 or consumers.get(w_dq.output[0], 0) != 1  # padding changes it
        if channels != _CONV_SYM_CHANNEL_ALIGNMENT - 1 or shared:
            continue
        w = numpy_helper.to_array(weight)
        extra = _CONV_SYM_CHANNEL_ALIGNMENT - channels
        zeros = np.zeros((w.shape[0], extra) + w.shape[2:], dtype=w.dtype)
        weight.CopyFrom(numpy_helper.from_array(np.concatenate([w, zeros], axis=1), weight.name))
        rank = len(weight.dims)
        own = node.name if node.name and name_counts[node.name] == 1 else node.output[0]  # unnamed: output is unique
        base = own + _PADDED_SUFFIX
        pad_value = x_dq.input[2] if len(x_dq.input) > 2 and x_dq.input[2] else None
        qmodel.graph.initializer.append(
            numpy_helper.from_array(np.array([0] * (rank + 1) + [extra] + [0] * (rank - 2), np.int64), base + "_pads")
        )
        pad_inputs = [x_dq.input[0], base + "_pads"] + ([pad_value] if pad_value else [])
        pad = helper.make_node("Pad", pad_inputs, [base + "_quantized"], name=base, mode="constant")
        dq = helper.make_node(
            "DequantizeLinear", [base + "_quantized", *x_dq.input[1:]], [base], name=base + "_DequantizeLinear"
        )
        dq.attribute.extend(x_dq.attribute)
        at = list(qmodel.graph.node).index(node)
        qmodel.graph.node.insert(at, dq)
        qmodel.graph.node.insert(at, pad)
        consumers[node.input[0]] -= 1
        if consumers[node.input[0]] == 0 and node.input[0] not in graph_outputs:
            qmodel.graph.node.remove(x_dq)
        node.input[0] = base
    return qmodel


def without_padded_stem(qmodel):
    """A copy of `qmodel` with pad_conv_input_channels undone (same values): for analyses that compare each INT8
    tensor with its FP32 twin, which has 3 channels (the --max-drop sensitivity ranking, the benchmark's timing)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    inits = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    for pad in [n for n in m.graph.node if n.op_type == "Pad" and n.name.endswith(_PADDED_SUFFIX)]:
        dq = next(n for n in m.graph.node if pad.output[0] in n.input)
        conv = next(n for n in m.graph.node if dq.output[0] in n.input)
        weight = inits[producers[conv.input[1]].input[0]]
        w = numpy_helper.to_array(weight)
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, : w.shape[1] - 1]), weight.name))
        dq.input[0] = pad.input[0]
        m.graph.node.remove(pad)
        m.graph.initializer.remove(inits[pad.input[1]])
    return m


@contextlib.contextmanager
def _quiet_root_logger():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _float_inputs_for_excluded(qmodel, exclude: set[str]):
    """Put a (numerically neutral) Clip between each excluded node and the DequantizeLinear feeding it.

    Why: ONNX Runtime's graph optimiser (its weight/bias quantization pass) sees
    DequantizeLinear -> Conv(float weights) -> QuantizeLinear and quantizes that Conv's weights itself, PER TENSOR,
    silently undoing --exclude (and wrecking depthwise layers: EfficientNet-Lite0's agreement fell from 84 % to 59 %
    when one depthwise layer was "kept in float"). With the Clip in between the pattern is gone and the node really
    runs in float; the Clip's bounds are the Q/DQ pair's own range, so it changes no value, and the producer of the
    tensor keeps its INT8 fusion."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in qmodel.graph.initializer}
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    order = []
    for node in qmodel.graph.node:
        if node.name in exclude:
            for idx, name in enumerate(list(node.input)):
                dq = producers.get(name)
                if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                    continue
                q = producers.get(dq.input[0])
                if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[2] not in inits:
                    continue
                scale = numpy_helper.to_array(inits[q.input[1]])
                zp = numpy_helper.to_array(inits[q.input[2]])
                if scale.size != 1 or zp.size != 1:
                    continue
                info = np.iinfo(zp.dtype)
                lo, hi = (info.min - int(zp)) * float(scale), (info.max - int(zp)) * float(scale)
                base = f"{q.input[0]}_float_for_{node.name}"
                qmodel.graph.initializer.extend(
                    [
                        numpy_helper.from_array(np.array(lo, dtype=np.float32), base + "_min"),
                        numpy_helper.from_array(np.array(hi, dtype=np.float32), base + "_max"),
                    ]
                )
                order.append(
                    helper.make_node("Clip", [name, base + "_min", base + "_max"], [base], name=base + "_clip")
                )
                node.input[idx] = base
        order.append(node)
    del qmodel.graph.node[:]
    qmodel.graph.node.extend(order)
    return qmodel


def quantized_tensors(qmodel) -> list[str]:
    """Activation tensors a Q/DQ model quantizes (inputs of its QuantizeLinear nodes that are not weights)."""
    inits = {i.name for i in qmodel.graph.initializer}
    out, seen = [], set()
    for node in qmodel.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[0] not in seen:
            seen.add(node.input[0])
            out.append(node.input[0])
    return out


def quantized_nodes(qmodel) -> list[str]:
    """Names of compute nodes that run in INT8, in graph order: nodes with a dequantized weight, or weightless
    nodes (Add, pooling, ...) whose float inputs all come from DequantizeLinear and whose output is quantized."""
    inits = {i.name for i in qmodel.graph.initializer}
    dq_nodes = {o: n for n in qmodel.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_inputs = {n.input[0] for n in qmodel.graph.node if n.op_type == "QuantizeLinear"}
    out = []
    for n in qmodel.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        weight_dq = [i for i in n.input if i in dq_nodes and dq_nodes[i].input[0] in inits]
        acts = [i for i in n.input if i and i not in inits and (i not in dq_nodes or dq_nodes[i].input[0] not in inits)]
        if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            if weight_dq:
                out.append(n.name)
        elif acts and all(i in dq_nodes for i in acts) and any(o in q_inputs for o in n.output):
            out.append(n.name)
    return out


def needed_tensors(model, candidates: list[str], target: str, exclude=()) -> list[str]:
    """Which activation tensors the writer will ask ranges for (a dry run with placeholder ranges), so calibration
    only measures those: on EfficientNet-Lite0 about half of all activations."""
    needed = set(quantized_tensors(write_qdq(model, {}, target, exclude, dry_run=True)))
    return [t for t in candidates if t in needed]


def weight_qmax_of(qmodel) -> int:
    """The largest |integer| among a Q/DQ model's INT8 weights: 127 for full-range weights, 64 with reduce_range
    (every channel's largest weight sits on the edge of the grid, since its scale is amax / qmax)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in qmodel.graph.initializer}
    qmax = 0
    for n in qmodel.graph.node:
        w = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if w is not None and w.data_type == TensorProto.INT8 and len(w.dims) > 1:
            qmax = max(qmax, int(np.abs(numpy_helper.to_array(w).astype(np.int16)).max()))
    return qmax or 127


def qdq_summary(qmodel) -> dict:
    """Counts and zero-point/axis facts of a Q/DQ model (for the report and tests)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qmodel.graph.initializer}
    q = [n for n in qmodel.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in qmodel.graph.node if n.op_type == "DequantizeLinear"]
    per_channel = sum(
        1
        for n in dq
        if any(a.name == "axis" for a in n.attribute)
        and n.input[1] in inits
        and numpy_helper.to_array(inits[n.input[1]]).size > 1
    )
    zp_types = sorted(
        {
            str(numpy_helper.to_array(inits[n.input[2]]).dtype)
            for n in q + dq
            if len(n.input) > 2 and n.input[2] in inits
        }
    )
    return {
        "quantize_nodes": len(q),
        "dequantize_nodes": len(dq),
        "per_channel_weights": per_channel,
        "zero_point_types": zp_types,
        "int8_nodes": len(quantized_nodes(qmodel)),
    }
