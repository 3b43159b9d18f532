"""What the graph says: inputs and outputs, layout, dtype, a Softmax at the end; cutting it down to one input and
one output; making a fixed batch of 1 dynamic where the graph allows it."""

from __future__ import annotations

import copy

import numpy as np

from edgecnn.adopt.options import Progress
from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig

# ---------------------------------------------------------------- the graph


def graph_inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def dims_of(value_info) -> list:
    """int for a fixed dimension, the symbol (or None) for a dynamic one."""
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None))
    return out


def input_dtype(value_info) -> str:
    from onnx import TensorProto

    kind = value_info.type.tensor_type.elem_type
    names = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8"}
    if kind not in names:
        raise UserInputError(
            f"input {value_info.name!r} is {TensorProto.DataType.Name(kind).lower()}: edgecnn feeds float32 "
            "(normalised) or uint8 (pixels) inputs; re-export the model with one of those"
        )
    return names[kind]


def select_one(kind: str, names: list[str], wanted: str | None) -> str:
    flag = f"--{kind}"
    if wanted is not None:
        if wanted not in names:
            raise UserInputError(f"{flag} {wanted!r} is not one of the model's {kind}s: {', '.join(names)}")
        return wanted
    if len(names) != 1:
        raise UserInputError(f"The model has {len(names)} {kind}s ({', '.join(names)}): choose one with {flag} NAME")
    return names[0]


def cut_to(model, input_name: str, output_name: str):
    """The model reduced to one input and one output (onnx.utils.Extractor); refused when the output needs another
    input too."""
    from onnx.utils import Extractor

    try:
        return Extractor(model).extract_model([input_name], [output_name])
    except Exception as exc:
        raise UserInputError(
            f"Cannot cut the model down to input {input_name!r} and output {output_name!r}: "
            f"{str(exc).splitlines()[0][:200] or exc.__class__.__name__} (does the output need another input?)"
        ) from exc


def detect_layout(dims: list) -> str | None:
    """'nchw' for (N, 3, H, W), 'nhwc' for (N, H, W, 3); None when both or neither fit (e.g. dynamic dims)."""
    if len(dims) != 4:
        return None
    nchw, nhwc = dims[1] == 3, dims[3] == 3
    return None if nchw == nhwc else ("nchw" if nchw else "nhwc")


def _producer(model, tensor: str):
    return next((n for n in model.graph.node if tensor in n.output), None)


def ends_in_softmax(model, output_name: str) -> bool:
    """A Softmax produces the output (through shape-only ops): the model gives probabilities, not logits."""
    node = _producer(model, output_name)
    while node is not None and node.op_type in ("Identity", "Flatten", "Reshape", "Squeeze", "Cast"):
        node = _producer(model, node.input[0])
    return node is not None and node.op_type == "Softmax"


def keep_or_add_dynamic_batch(proto, batch_dim, dynamic: bool, cfg: PreprocessConfig, notes: list[str], say: Progress):
    """(model, 'dynamic' or the fixed batch): a dynamic batch is kept; a fixed batch of 1 is made dynamic when the
    graph gives the same outputs for a batch of 2 as for two batches of 1 (a batch baked into a Reshape does not)."""
    if not isinstance(batch_dim, int):
        return proto, "dynamic"
    if not dynamic or batch_dim != 1:
        return proto, str(batch_dim)
    say("trying a dynamic batch")
    trial = copy.deepcopy(proto)
    for vi in (graph_inputs(trial)[0], trial.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_value")
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del trial.graph.value_info[:]  # shapes inferred for batch 1 would contradict the new batch
    try:
        import onnxruntime as ort

        from edgecnn.runtime.onnxrt import session_options

        session = ort.InferenceSession(trial.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        x = probe_batch(cfg, 2)
        name = session.get_inputs()[0].name
        both = session.run(None, {name: x})[0]
        one = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(2)])
        if both.shape != one.shape or not np.allclose(both, one, atol=1e-4, rtol=1e-4):
            raise ValueError("outputs differ")
    except Exception:
        notes.append("the batch stays fixed at 1: the graph bakes it in (e.g. a Reshape to [1, -1])")
        return proto, "1"
    notes.append("batch dimension made dynamic (the graph gives the same outputs for any batch)")
    return trial, "dynamic"


def probe_batch(cfg: PreprocessConfig, n: int) -> np.ndarray:
    """n different, image-like inputs in the model's format (made by preprocess() from made frames)."""
    from edgecnn.preprocess import preprocess

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (cfg.height + 7, cfg.width + 5, 3), dtype=np.uint8) for _ in range(n)]
    return preprocess(frames, cfg)
