"""FP16 for the layers kept in float (--high-precision fp16, the TensorRT target), simulated for measuring.

On TensorRT, a layer without Q/DQ runs in whatever float precision the builder allows; with FP16 enabled (what
ModelOpt's high_precision_dtype=fp16 asks for) it is FP16, about twice as fast as FP32 and still far more precise
than INT8. The written model stays plain float ONNX (the engine builder picks the precision); to measure on a CPU
what TensorRT will run, a copy rounds those layers' weights to FP16 values and passes their activation inputs
through a Cast to FP16 and back.
"""

from __future__ import annotations

import numpy as np


def simulate(qmodel, nodes: set[str]):
    """A copy of `qmodel` in which the nodes named in `nodes` see FP16-rounded weights and inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    inits = {i.name: i for i in m.graph.initializer}
    typed = onnx.shape_inference.infer_shapes(m).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input, *typed.output)}
    rounded: set[str] = set()
    cast: dict[str, str] = {}
    out_nodes = []
    for node in m.graph.node:
        if node.name in nodes:
            for j, name in enumerate(node.input):
                if not name:
                    continue
                init = inits.get(name)
                if init is not None:
                    if init.data_type == TensorProto.FLOAT and name not in rounded:
                        value = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
                        init.CopyFrom(numpy_helper.from_array(value, name))
                        rounded.add(name)
                    continue
                if types.get(name) != TensorProto.FLOAT:  # shapes, indices, or a type shape inference left open
                    continue
                if name not in cast:
                    half, back = f"{name}_edgecnn_fp16", f"{name}_edgecnn_fp16_fp32"
                    out_nodes += [
                        helper.make_node("Cast", [name], [half], to=TensorProto.FLOAT16),
                        helper.make_node("Cast", [half], [back], to=TensorProto.FLOAT),
                    ]
                    cast[name] = back
                node.input[j] = cast[name]
        out_nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(out_nodes)
    return m
