"""Quantization-aware fine-tuning by distillation (`edgecnn quantize --finetune N`).

Why: post-training INT8 rounds every weight and activation on its own; the errors add up, and on a network that is
unsure of an image (two classes within a few hundredths of probability) they flip the top-1 class. Fine-tuning the
FP32 weights THROUGH the INT8 rounding, with the FP32 model's own logits as the target, lets the weights compensate
for the rounding they will meet (quantization-aware training with a teacher, as in Jacob et al. 2018 and
Polino et al. 2018). It needs no labels: the calibration images and the FP32 model are the whole training set.

How: the prepared FP32 ONNX graph is executed with PyTorch ops (the common CNN op set; anything else is a clear
error), with fake quantization exactly where the Q/DQ model quantizes: each activation tensor with the scale and
zero point the Q/DQ writer chose (fixed, from calibration), and each INT8 weight per output channel, symmetric, with
the scale recomputed from the current weight (what the writer will do with the fine-tuned weights). Gradients pass
through the rounding (straight-through estimator). Only Conv/Gemm/MatMul weights and biases change; the graph, its
names and the activation ranges stay, so the result goes back through the same Q/DQ writer.

PyTorch is imported lazily (the `train` extra): quantizing without --finetune needs no PyTorch.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgecnn.errors import UserInputError, require_torch
from edgecnn.quant import qdq
from edgecnn.quant.graph import fixed_batch, node_attrs
from edgecnn.quant.qdq import weight_qmax_of

SUPPORTED_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "Add",
        "Sub",
        "Mul",
        "Relu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "GlobalAveragePool",
        "MaxPool",
        "AveragePool",
        "Flatten",
        "Reshape",
        "Concat",
        "Identity",
    }
)
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


FINETUNE_TORCH_HINT = "--finetune needs PyTorch: pip install 'edgecnn[train]' (quantizing without --finetune does not)"


class _GraphExecutor:
    """Runs an FP32 ONNX graph with PyTorch ops, optionally with fake quantization at the Q/DQ model's points."""

    def __init__(self, model, act_quant: dict[str, tuple], weight_axes: dict[str, int], weight_qmax: int = 127):
        torch = require_torch(FINETUNE_TORCH_HINT)
        from onnx import numpy_helper

        unsupported = sorted({n.op_type for n in model.graph.node} - SUPPORTED_OPS)
        if unsupported:
            raise UserInputError(
                f"--finetune runs the model with PyTorch ops and does not know {', '.join(unsupported)}; "
                "quantize without --finetune"
            )
        self.torch = torch
        self.nodes = [(node, node_attrs(node)) for node in model.graph.node]  # attributes parsed once, not every step
        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        self.consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
        trainable = []
        for node, _ in self.nodes:
            if node.op_type in WEIGHT_OPS:
                trainable += [name for name in node.input[1:3] if name in self.consts]
        self.params = {}
        for name in dict.fromkeys(trainable):
            if self.consts[name].dtype == torch.float32:
                self.params[name] = torch.nn.Parameter(self.consts[name].clone())
        self.act_quant = act_quant
        self.weight_axes = weight_axes
        self.weight_qmax = int(weight_qmax)  # 127, or 64 for a --reduce-range model
        self.teacher = False  # True: the original FP32 weights, no fake quantization (the distillation target)

    def parameters(self):
        return list(self.params.values())

    def _value(self, name: str):
        return self.params[name] if name in self.params and not self.teacher else self.consts[name]

    def _weight(self, name: str):
        w = self._value(name)
        axis = self.weight_axes.get(name)
        if self.teacher or axis is None:
            return w
        torch = self.torch
        dims = [d for d in range(w.dim()) if d != axis]
        amax = w.detach().abs().amax(dim=dims)
        qmax = self.weight_qmax
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, axis, -qmax, qmax)

    def _fake_quant(self, name: str, x):
        q = self.act_quant.get(name)
        if self.teacher or q is None:
            return x
        scale, zero, lo, hi = q
        return self.torch.fake_quantize_per_tensor_affine(x, scale, zero, lo, hi)

    def _input(self, node, k: int, name: str, env: dict):
        if not name:  # an omitted optional input
            return None
        if name in env:
            return env[name]
        return self._weight(name) if k == 1 and node.op_type in WEIGHT_OPS else self._value(name)

    def __call__(self, x):
        env = {self.input_name: self._fake_quant(self.input_name, x)}
        for node, attrs in self.nodes:
            ins = [self._input(node, k, name, env) for k, name in enumerate(node.input)]
            env[node.output[0]] = self._fake_quant(node.output[0], self._run(node, attrs, ins))
        return env[self.output_name]

    def _run(self, node, a: dict, ins):
        torch = self.torch
        F = torch.nn.functional
        op = node.op_type
        if op == "Conv":
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise UserInputError(f"--finetune: Conv {node.name} uses auto_pad; quantize without --finetune")
            x, w = ins[0], ins[1]
            if w.dim() != 4:
                raise UserInputError(f"--finetune supports 2-D convolutions only ({node.name})")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[0] != pads[2] or pads[1] != pads[3]:
                x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
                pads = [0, 0, 0, 0]
            return F.conv2d(
                x,
                w,
                ins[2] if len(ins) > 2 else None,
                stride=tuple(a.get("strides", [1, 1])),
                padding=(pads[0], pads[1]),
                dilation=tuple(a.get("dilations", [1, 1])),
                groups=int(a.get("group", 1)),
            )
        if op == "Gemm":
            x, w = ins[0], ins[1]
            x = x.t() if a.get("transA", 0) else x
            w = w.t() if a.get("transB", 0) else w
            y = a.get("alpha", 1.0) * (x @ w)
            return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 and ins[2] is not None else y
        if op == "MatMul":
            return ins[0] @ ins[1]
        if op == "Add":
            return ins[0] + ins[1]
        if op == "Sub":
            return ins[0] - ins[1]
        if op == "Mul":
            return ins[0] * ins[1]
        if op == "Relu":
            return F.relu(ins[0])
        if op == "Sigmoid":
            return torch.sigmoid(ins[0])
        if op == "HardSigmoid":
            return torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0.0, 1.0)
        if op == "HardSwish":
            return F.hardswish(ins[0])
        if op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
            lo = float(lo) if lo is not None else None
            hi = float(hi) if hi is not None else None
            return torch.clamp(ins[0], lo, hi)
        if op == "GlobalAveragePool":
            return ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)
        if op in ("MaxPool", "AveragePool"):
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[0] != pads[2] or pads[1] != pads[3] or a.get("ceil_mode", 0):
                raise UserInputError(f"--finetune: {node.name} has asymmetric pads or ceil_mode")
            kernel, strides = tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
            if op == "MaxPool":
                return F.max_pool2d(ins[0], kernel, strides, (pads[0], pads[1]))
            return F.avg_pool2d(
                ins[0], kernel, strides, (pads[0], pads[1]), count_include_pad=bool(a.get("count_include_pad", 0))
            )
        if op == "Flatten":
            axis = int(a.get("axis", 1))
            return ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)
        if op == "Reshape":
            shape = [int(s) for s in ins[1].tolist()]
            shape = [ins[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
            return ins[0].reshape(shape)
        if op == "Concat":
            return torch.cat(ins, dim=int(a["axis"]))
        if op == "Identity":
            return ins[0]
        raise UserInputError(f"--finetune does not know op {op}")  # pragma: no cover (checked in __init__)


def quant_points(qmodel) -> tuple[dict[str, tuple], dict[str, int]]:
    """(activation tensor -> (scale, zero point, qmin, qmax), weight name -> per-channel axis) of a Q/DQ model,
    for the tensors and weights it quantizes (names as in the float model it was written from)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qmodel.graph.initializer}
    acts = {}
    for node in qmodel.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[0] in acts:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.array(0, dtype=np.uint8)
        if scale.size != 1:
            continue
        info = np.iinfo(zp.dtype)
        acts[node.input[0]] = (float(scale), int(zp), int(info.min), int(info.max))
    int8 = set(qdq.quantized_nodes(qmodel))
    axes = {}
    dq_source = {n.output[0]: n.input[0] for n in qmodel.graph.node if n.op_type == "DequantizeLinear"}
    for node in qmodel.graph.node:
        if node.name not in int8 or node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        w = dq_source.get(node.input[1], node.input[1])
        original = w[: -len("_quantized")] if w.endswith("_quantized") else w
        trans_b = node_attrs(node).get("transB", 0)
        axes[original] = 1 if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b) else 0
    return acts, axes


def _augment(torch, x, rng: np.random.Generator):
    """Horizontal flips and shifts of up to 1/16 of the side: more distinct views of few calibration images."""
    if rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    h, w = x.shape[2:]
    dy, dx = (int(v) for v in rng.integers(-(h // 16), h // 16 + 1, size=2))
    if dy or dx:
        pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
        x = torch.nn.functional.pad(x, pad, mode="replicate")[
            :, :, max(-dy, 0) : max(-dy, 0) + h, max(-dx, 0) : max(-dx, 0) + w
        ]
    return x


def finetune(
    model,
    qmodel,
    inputs: np.ndarray,
    epochs: int,
    lr: float = 1e-5,
    batch: int = 16,
    threads: int | None = None,
    seed: int = 0,
    start=None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[object, dict]:
    """Fine-tune the float weights so the fake-quantized network, quantized as in `qmodel`, matches `model` (the
    prepared FP32 ONNX: the teacher) on `inputs` (N,C,H,W preprocessed). Training starts from the weights of `start`
    (the same graph with, say, bias-corrected biases; default `model`). Returns (new model, summary)."""
    torch = require_torch(FINETUNE_TORCH_HINT)
    import onnx
    from onnx import numpy_helper

    if epochs < 1:
        raise UserInputError(f"--finetune must be at least 1 epoch, got {epochs}")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    acts, axes = quant_points(qmodel)
    net = _GraphExecutor(model, acts, axes, weight_qmax_of(qmodel))
    if start is not None:
        for init in start.graph.initializer:
            if init.name in net.params:
                net.params[init.name].data.copy_(torch.from_numpy(numpy_helper.to_array(init).astype(np.float32)))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    data = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    fixed = fixed_batch(model)  # a fixed-batch graph may bake its batch size into Reshape shapes: feed exactly that
    batch = fixed or batch
    steps_per_epoch = (len(data) + batch - 1) // batch
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    losses = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(data)))
        for i in range(0, len(data), batch):
            idx = order[i : i + batch]
            if fixed and len(idx) < batch:  # fill the last batch from the start of this epoch's order
                idx = torch.cat([idx, order[: batch - len(idx)]])
            x = _augment(torch, data[idx], rng)
            with torch.no_grad():
                net.teacher = True
                target = net(x)
                net.teacher = False
            out = net(x)
            loss = torch.nn.functional.mse_loss(out, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if progress:
                progress(len(losses), total)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.name in net.params:
            init.CopyFrom(numpy_helper.from_array(net.params[init.name].detach().numpy().astype(np.float32), init.name))
    k = max(1, steps_per_epoch)
    summary = {
        "epochs": epochs,
        "steps": len(losses),
        "lr": lr,
        "images": int(len(data)),
        "loss_first_epoch": float(np.mean(losses[:k])),
        "loss_last_epoch": float(np.mean(losses[-k:])),
        "seconds": round(time.perf_counter() - t0, 2),
        "quantized_tensors": len(acts),
        "quantized_weights": len(axes),
    }
    return m, summary
