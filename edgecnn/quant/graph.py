"""The ONNX graph side of quantization: load + clean up the FP32 model, find its activation tensors, run it with every
activation as an extra output (one session, one pass), and recognise models that are already quantized."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.errors import ArtifactError, UserInputError

QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QLinearAdd",
        "QLinearMul",
        "QGemm",
        "DynamicQuantizeLinear",
        "QLinearGlobalAveragePool",
    }
)
# Ops whose float inputs/outputs get ranges (what ORT's QDQ quantizer may ask for).
NO_RANGE_OPS = frozenset({"Shape", "Constant", "ConstantOfShape", "Cast", "Size"})


def load_model(path: str | os.PathLike):
    """The model with its weights, external data included (checked first: missing, truncated or outside the model's
    folder is an ExternalDataError that says so)."""
    from edgecnn.onnx_io import load_onnx, onnx_external_data

    onnx_external_data(path)
    return load_onnx(path)


def check_not_quantized(model, source: str) -> None:
    """Refuse what is not an FP32 model clearly: quantizing twice compounds the error and breaks TensorRT, and 16-bit
    float weights would get Q/DQ on their Casts instead of per-channel INT8 weights."""
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise UserInputError(
            f"{source} is already quantized (it contains {', '.join(found)}): quantize the FP32 model it came from"
        )
    from onnx import TensorProto

    low = [
        i.name
        for i in model.graph.initializer
        if i.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16) and len(i.dims) > 1
    ]
    if low:  # its Q/DQ would sit on Casts of FP16 weights: no per-channel INT8 weights, a bigger file than the input
        raise UserInputError(
            f"{source} keeps its weights in 16-bit floats ({low[0]}{' and others' if len(low) > 1 else ''}): quantize "
            "the FP32 model it came from"
        )


def prepare(model, source: str | os.PathLike | None = None):
    """Shape inference + ORT's basic graph optimisation (constant folding, Pad/BatchNorm fusion into Conv), the
    clean-up ORT recommends before quantization. `model`: an onnx.ModelProto already loaded (load_model; its
    external data inside), or a path; `source` names it in errors. Returns the onnx.ModelProto (metadata_props
    kept)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if isinstance(model, (str, os.PathLike)):
        source = source or model
        model = load_model(model)
    with tempfile.TemporaryDirectory(prefix="edgecnn-quant-") as tmp:
        out = Path(tmp) / "prepared.onnx"
        # quant_pre_process works on files: hand it one file with the weights inside (the INT8 model edgecnn
        # writes is one file too)
        path = Path(tmp) / "source.onnx"
        onnx.save(model, str(path))
        try:
            quant_pre_process(str(path), str(out), skip_symbolic_shape=True)
        except Exception as exc:  # shape inference or ORT optimiser failure on an odd model
            raise ArtifactError(f"Cannot prepare {source} for quantization: {str(exc).splitlines()[0][:300]}") from exc
        return _at_least_opset(onnx.load(str(out)), QDQ_MIN_OPSET, source)


# Per-channel QuantizeLinear/DequantizeLinear (their `axis`) exist from ONNX opset 13; an older model (opset 10-12,
# common from older exporters) would get Q/DQ nodes ONNX Runtime refuses to load.
QDQ_MIN_OPSET = 13


def _at_least_opset(model, opset: int, model_path):
    """`model` converted to `opset` when its default-domain opset is older (onnx.version_converter; values are
    unchanged, which quantize's own FP32 comparison would show)."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise ArtifactError(
            f"{model_path} uses ONNX opset {current}; INT8 Q/DQ needs opset {opset} and converting it failed "
            f"({str(exc).splitlines()[0][:200]}): re-export it with opset {opset} or later"
        ) from exc


def activation_tensors(model) -> list[str]:
    """Float tensors flowing between nodes (graph input, every node output), in graph order; weights excluded."""
    from onnx import TensorProto

    inits = {i.name for i in model.graph.initializer}
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    }
    names: list[str] = []
    seen = set()

    def add(name: str) -> None:
        if name and name not in inits and name not in seen and types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT:
            seen.add(name)
            names.append(name)

    for inp in model.graph.input:
        add(inp.name)
    for node in model.graph.node:
        if node.op_type in NO_RANGE_OPS:
            continue
        for name in list(node.input) + list(node.output):
            add(name)
    return names


def node_attrs(node) -> dict:
    """A node's attributes as {name: python value}."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def fixed_batch(model) -> int | None:
    """The batch size the model's input is fixed to (`edgecnn export` fixes it at 1 unless --dynamic-batch), or None.
    Such a graph may bake the batch into its Reshape shapes, so it is only ever run at exactly that batch size."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def batch_agnostic(model):
    """`model` itself when its batch is dynamic; for a fixed-batch model, a copy with a free batch dimension if that
    copy computes exactly the same per image (calibrating 16 images a run instead of 1 is 2-3x faster), else None.
    A static torch.onnx.export bakes the batch into Reshape shapes (`x.view(bs, -1)` -> [1, -1]): the copy reads that
    leading dimension from the input instead (0), and the check on a double batch decides whether that was right."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    fixed = fixed_batch(model)
    if fixed is None:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for value in list(m.graph.input[:1]) + list(m.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = "batch"
    del m.graph.value_info[:]  # intermediate shapes inferred at the fixed batch
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        shape_init = inits.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if shape_init is None or node_attrs(node).get("allowzero", 0):
            continue
        target = numpy_helper.to_array(shape_init)
        if target.ndim == 1 and len(target) > 0 and target[0] == fixed:
            free_shape = numpy_helper.from_array(
                np.concatenate([[0], target[1:]]).astype(target.dtype), f"{shape_init.name}__free_batch_{node.name}"
            )
            m.graph.initializer.append(free_shape)
            node.input[1] = free_shape.name
    so = ort.SessionOptions()
    so.log_severity_level = 4  # a baked Reshape fails below, and that failure is the answer, not an error to show
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal([2 * fixed] + shape[1:]).astype(np.float32)
    name = model.graph.input[0].name
    try:
        free = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        own = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = free.run(None, {name: x})
        want = [np.concatenate(parts) for parts in zip(*(own.run(None, {name: x[i : i + fixed]}) for i in (0, fixed)))]
    except Exception:
        return None
    same = all(g.shape == w.shape and np.allclose(g, w, rtol=1e-4, atol=1e-5) for g, w in zip(got, want))
    return m if same else None


def node_names(model) -> list[str]:
    return [n.name for n in model.graph.node]


def augmented_session(model, tensors: list[str], threads: int | None = None):
    """An ORT session of `model` returning every tensor in `tensors` (plus the model's outputs)."""
    import onnx
    import onnxruntime as ort

    from edgecnn.runtime.onnxrt import session_options

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in tensors:
        if name not in existing and name not in {i.name for i in m.graph.input}:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = session_options(threads)  # full optimisation: ORT keeps every tensor that is a graph output
    try:
        return ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(
            f"ONNX Runtime cannot run the model for calibration: {str(exc).splitlines()[0][:300]}"
        ) from exc


def tensor_runner(
    model, tensors: list[str], threads: int | None = None
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """batch -> {tensor: value} for `tensors` (the graph input is returned as given).

    Outputs are written into buffers that are reused from batch to batch (ORT I/O binding): a real network produces
    hundreds of MB of activations per batch, and writing them into fresh memory costs more in page faults than the
    inference itself (measured: 1.7 s vs 0.14 s for EfficientNet-Lite0 at batch 20). So the first batch's own
    outputs become the buffers, and a smaller last batch writes into the leading rows of the same buffers.
    The returned arrays are overwritten by the next call. A fixed-batch model is fed exactly its batch size: other
    batches are run in chunks of it, the last one padded, and only the real rows are returned.
    """
    sess = augmented_session(model, tensors, threads)
    fixed = fixed_batch(model)
    input_name = sess.get_inputs()[0].name
    wanted = [t for t in tensors if t != input_name]
    bindings: dict[int, tuple] = {}

    def bind(buffers: dict[str, np.ndarray]):
        io = sess.io_binding()
        for name, buf in buffers.items():
            io.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        return io

    def leading_rows(n: int) -> dict[str, np.ndarray] | None:
        """Views of the first n rows of the largest bound buffers, when every tensor is batch-first."""
        big = max((size for size in bindings if size > n), default=None)
        if big is None or not all(buf.shape[:1] == (big,) for buf in bindings[big][1].values()):
            return None
        return {name: buf[:n] for name, buf in bindings[big][1].items()}

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        n = batch.shape[0]
        if fixed is not None and n != fixed:
            return run_fixed(batch)
        if n not in bindings and (views := leading_rows(n)) is not None:
            bindings[n] = (bind(views), views)
        if n in bindings:
            io, buffers = bindings[n]
            io.bind_cpu_input(input_name, batch)
            sess.run_with_iobinding(io)
            out = dict(buffers)
        else:  # first batch of this size: its outputs (memory already touched) become the buffers for the next ones
            values = sess.run(wanted, {input_name: batch})
            buffers = {
                name: v if v.flags.c_contiguous and v.flags.writeable else np.empty_like(v)
                for name, v in zip(wanted, values)
            }
            bindings[n] = (bind(buffers), buffers)
            out = dict(zip(wanted, values))
        if input_name in tensors:
            out[input_name] = batch
        return out

    def run_fixed(batch: np.ndarray) -> dict[str, np.ndarray]:
        """Chunks of the fixed batch size, the last one zero-padded; padded rows are dropped from every output."""
        from edgecnn.runtime.base import batch_chunks

        parts: dict[str, list[np.ndarray]] = {}
        for chunk, real in batch_chunks(batch, fixed, pad=True):
            for name, value in run(chunk).items():
                parts.setdefault(name, []).append(value[:real].copy())
        return {name: np.concatenate(values) for name, values in parts.items()}

    return run
