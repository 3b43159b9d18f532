"""The accuracy gate (--max-drop): rank INT8 layers by sensitivity, then keep the most sensitive ones in float until
the drop is within bound, in bounded time.

Sensitivity of a layer = the mean KL divergence of the model's softmax output from FP32's when ONLY that layer is
quantized (its quantized inputs through their own Q/DQ, its INT8 weights and corrected bias), on a fixed subset of
the evaluation images. It is never degenerate (a layer whose quantization changes nothing scores 0, any other > 0)
and it is measured where it matters, at the output. It is also cheap: one ONNX Runtime session of the FP32 graph
in which every candidate layer's quantization is blended in by a switch input, x + s_k * (q(x) - x); running it
with switch k on, the others off, is "only layer k quantized", and all off is FP32 exactly.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgecnn.errors import AccuracyGateError

SWITCH = "edgecnn_sensitivity_switch"


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _dequantize(values: dict, dq) -> np.ndarray:
    """The float value of DequantizeLinear(initializer) (per-tensor or per-channel)."""
    from edgecnn.quant.graph import node_attrs

    q = values[dq.input[0]].astype(np.float64)
    scale = values[dq.input[1]].astype(np.float64)
    zp = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[int(node_attrs(dq).get("axis", 1))] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q - zp) * scale).astype(np.float32)


def layer_plan(float_model, qmodel, candidates: list[str]) -> list[dict]:
    """Per candidate node: the activation inputs quantized in `qmodel` (input position -> (tensor, scale, zero
    point)) and the constant inputs whose INT8 value differs from the float model (position -> delta)."""
    fvals, qvals = _initializers(float_model), _initializers(qmodel)
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    fnodes = {n.name: n for n in float_model.graph.node}
    plan = []
    for qnode in qmodel.graph.node:
        if qnode.name not in candidates or qnode.name not in fnodes:
            continue
        fnode = fnodes[qnode.name]
        acts, consts = {}, {}
        for j, (qi, fi) in enumerate(zip(qnode.input, fnode.input)):
            dq = producers.get(qi)
            if dq is not None and dq.op_type == "DequantizeLinear":
                if dq.input[0] in qvals:  # a quantized weight or bias
                    value = _dequantize(qvals, dq)
                else:
                    q = producers.get(dq.input[0])
                    if q is not None and q.op_type == "QuantizeLinear":
                        zp = q.input[2] if len(q.input) > 2 else ""
                        acts[j] = (q.input[0], qvals[q.input[1]], qvals[zp] if zp else None)
                    continue
            elif qi in qvals:
                value = qvals[qi]
            else:
                continue
            if fi in fvals and fvals[fi].shape == value.shape and not np.array_equal(fvals[fi], value):
                consts[j] = (value.astype(np.float32) - fvals[fi].astype(np.float32)).astype(np.float32)
        plan.append({"node": qnode.name, "op": qnode.op_type, "acts": acts, "consts": consts})
    return plan


def switch_model(float_model, plan: list[dict]):
    """A copy of `float_model` with a float input SWITCH [len(plan)]: layer k's quantization is blended in by
    switch[k] (0: float, 1: as in the INT8 model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(float_model)
    m.graph.input.append(helper.make_tensor_value_info(SWITCH, TensorProto.FLOAT, [len(plan)]))
    by_name = {p["node"]: (k, p) for k, p in enumerate(plan)}
    nodes = []
    for node in m.graph.node:
        if node.name in by_name:
            k, p = by_name[node.name]
            tag = f"edgecnn_sens{k}"
            inits = [numpy_helper.from_array(np.array(k, dtype=np.int64), f"{tag}_idx")]
            nodes.append(helper.make_node("Gather", [SWITCH, f"{tag}_idx"], [f"{tag}_s"], axis=0))
            for j, (tensor, scale, zp) in p["acts"].items():
                names = [f"{tag}_in{j}_{s}" for s in ("scale", "zp", "q", "dq", "d", "m", "x")]
                inits.append(numpy_helper.from_array(np.asarray(scale, dtype=np.float32), names[0]))
                q_inputs = [tensor, names[0]]
                if zp is not None:
                    inits.append(numpy_helper.from_array(np.asarray(zp), names[1]))
                    q_inputs.append(names[1])
                nodes += [
                    helper.make_node("QuantizeLinear", q_inputs, [names[2]]),
                    helper.make_node("DequantizeLinear", [names[2], *q_inputs[1:]], [names[3]]),
                    helper.make_node("Sub", [names[3], tensor], [names[4]]),
                    helper.make_node("Mul", [names[4], f"{tag}_s"], [names[5]]),
                    helper.make_node("Add", [tensor, names[5]], [names[6]]),
                ]
                node.input[j] = names[6]
            for j, delta in p["consts"].items():
                names = [f"{tag}_c{j}_{s}" for s in ("delta", "m", "x")]
                inits.append(numpy_helper.from_array(delta, names[0]))
                nodes += [
                    helper.make_node("Mul", [names[0], f"{tag}_s"], [names[1]]),
                    helper.make_node("Add", [node.input[j], names[1]], [names[2]]),
                ]
                node.input[j] = names[2]
            m.graph.initializer.extend(inits)
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(z):
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def rank_layers(
    float_model,
    qmodel,
    candidates: list[str],
    batches: list[np.ndarray],
    threads: int | None = None,
    deadline: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """[{node, op, kl}] most sensitive first. Layers not reached before `deadline` (time.monotonic()) get kl None
    and come last, in graph order."""
    import onnxruntime as ort

    from edgecnn.runtime.onnxrt import session_options

    plan = layer_plan(float_model, qmodel, candidates)
    if not plan:
        return []
    sess = ort.InferenceSession(
        switch_model(float_model, plan).SerializeToString(),
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
    )
    input_name = next(i.name for i in sess.get_inputs() if i.name != SWITCH)
    output_name = sess.get_outputs()[0].name

    def logits(switch: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run([output_name], {input_name: b, SWITCH: switch})[0] for b in batches])

    ref = logits(np.zeros(len(plan), dtype=np.float32))
    rows = []
    for k, p in enumerate(plan):
        if deadline is not None and time.monotonic() > deadline:
            rows.append({"node": p["node"], "op": p["op"], "kl": None})
            continue
        switch = np.zeros(len(plan), dtype=np.float32)
        switch[k] = 1.0
        rows.append({"node": p["node"], "op": p["op"], "kl": _kl(ref, logits(switch))})
        if progress:
            progress(k + 1, len(plan))
    ranked = sorted((r for r in rows if r["kl"] is not None), key=lambda r: -r["kl"])
    return ranked + [r for r in rows if r["kl"] is None]


def search(
    build: Callable[[list[str]], tuple[object, dict]],
    first: tuple[object, dict],
    ranked: list[dict],
    max_drop: float,
    max_layers: int,
    deadline: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[tuple[object, dict], list[dict], list[str]]:
    """Keep the top-k ranked layers in float for k = 1, 2, 4, ... (at most `max_layers`) until the drop is within
    `max_drop`, then bisect down to the fewest layers that still meet it, while time is left.

    `build(extra)` returns (candidate, measured) with the `extra` layers in float. Returns (best candidate,
    steps, the extra layers of the best one); raises AccuracyGateError when no k met the bound."""
    names = [r["node"] for r in ranked][:max_layers]
    steps = [{"layers_in_float": 0, "excluded": [], "drop": first[1]["drop"]}]
    tried: dict[int, tuple] = {0: first}

    sizes = [1 << i for i in range(max(1, len(names)).bit_length()) if (1 << i) < len(names)] + [len(names)]

    def attempt(k: int) -> bool:
        built = build(names[:k])
        tried[k] = built
        steps.append({"layers_in_float": k, "excluded": names[:k], "drop": built[1]["drop"]})
        if progress:
            progress(len(steps) - 1, len(sizes))
        return built[1]["drop"] <= max_drop

    lo, hi = 0, None
    for k in sizes if names else []:
        if time.monotonic() >= deadline:
            break
        if attempt(k):
            hi = k
            break
        lo = k
    if hi is None:
        out_of_time = lo < len(names)
        raise _gate_error(max_drop, steps, ranked, out_of_time)
    while hi - lo > 1 and time.monotonic() < deadline:  # fewer layers in float may do
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return tried[hi], steps, names[:hi]


def _gate_error(max_drop: float, steps: list[dict], ranked: list[dict], out_of_time: bool) -> AccuracyGateError:
    tried = "; ".join(f"{s['drop']:.2f} pts with {s['layers_in_float']} layer(s) in float" for s in steps)
    why = (
        "the gate's time (--gate-seconds) ran out"
        if out_of_time
        else f"{steps[-1]['layers_in_float']} layer(s) in float (--max-steps) were not enough"
    )
    return AccuracyGateError(
        f"INT8 accuracy drop stays above --max-drop {max_drop} points: {why} ({tried}). "
        "Try more or more representative calibration images, another --method, a larger --max-steps or "
        "--gate-seconds, or a larger --max-drop. Nothing was written.",
        details={"max_drop": max_drop, "steps": steps, "sensitivity": ranked[:20]},
    )
