"""ONNX Runtime backend: the embedded default (CPU), with other execution providers when installed."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from edgecnn.contract import ModelContract
from edgecnn.errors import ArtifactError, EdgeCNNError, ExternalDataError, UserInputError, format_shape
from edgecnn.onnx_io import onnx_external_data
from edgecnn.platform import x86_with_vnni
from edgecnn.runtime.base import Backend, InputSpec, Runner

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


# On x86 CPUs without VNNI, ONNX Runtime's fast uint8 x int8 kernels add pairs of products in int16 and saturate when
# INT8 weights use more than 7 bits; this option makes ORT use exact (slower) kernels for such layers. It is set
# everywhere except where the CPU flags show VNNI, where the fast kernels are exact already and the option only costs
# time; on ARM it changes nothing. Measurements: docs/quantize.md (`--target cpu`) and benchmarks/.
EXACT_INT8 = ("session.x64quantprecision", "1")


@functools.lru_cache(maxsize=1)
def _needs_exact_int8() -> bool:
    return not x86_with_vnni()


def external_data_problem(path: Path) -> None:
    """Raise the clear ExternalDataError of `onnx_io.onnx_external_data` when the model's external data is what
    stopped ONNX Runtime or OpenVINO (their own messages name C++ source lines and get cut short). Called only after a
    failed load, so a model that loads pays nothing for it."""
    try:
        onnx_external_data(path)
    except ExternalDataError:
        raise
    except EdgeCNNError:
        pass  # not an ONNX file at all, ...: ONNX Runtime's own message says enough


def session_options(threads: int | None = None, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4  # errors come back as exceptions, reported in one line; ORT's log would repeat them
    if _needs_exact_int8():
        so.add_session_config_entry(*EXACT_INT8)
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def resolve_providers(providers) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not providers:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    chosen = []
    for p in providers:
        full = PROVIDER_ALIASES.get(p.lower(), p)
        if full not in available:
            raise UserInputError(f"ONNX Runtime provider {p} is not available here (have: {', '.join(available)})")
        chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRuntimeRunner(Runner):
    backend = "onnxrt"

    def __init__(self, path: Path, threads: int | None = None, providers=None, profile_prefix: str | None = None):
        import onnxruntime as ort

        path = Path(path)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options(threads, profile_prefix), providers=resolve_providers(providers)
            )
        except UserInputError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            external_data_problem(path)  # weights beside the model missing, truncated or outside its folder: say so
            raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        contract = ModelContract.from_onnx_props(meta, source=str(path))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ArtifactError(f"{path} has {len(inputs)} inputs; edgecnn runs single-input classifiers")
        inp = inputs[0]
        want = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}[contract.preprocess.dtype]
        if inp.type != want:  # infer() feeds preprocess() output: the contract's dtype, nothing else
            raise ArtifactError(
                f"{path} takes {inp.type.replace('tensor(', '').rstrip(')')} input but its metadata's preprocessing "
                f"makes {contract.preprocess.dtype}: adopt it again with `edgecnn adopt` (it reads the input type)"
            )
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in inp.shape)
        _check_input_shape(path, shape, contract)
        fixed = shape[0]
        spec = InputSpec(name=inp.name, shape=shape, min_batch=fixed or 1, max_batch=fixed)
        output = self.session.get_outputs()[0]
        if output.shape is not None and len(output.shape) not in (0, 2):  # rank 0 here: ORT does not know it
            out_shape = ", ".join(d if isinstance(d, str) else str(d) for d in output.shape)
            raise ArtifactError(
                f"{path}: its output {output.name!r} has shape ({out_shape}), not (batch, classes): "
                "edgecnn runs classifiers that output one score per class (flatten the output)"
            )
        classes = (
            output.shape[-1] if output.shape and isinstance(output.shape[-1], int) and output.shape[-1] > 0 else None
        )
        super().__init__(path, contract, spec, classes)
        self.output_name = output.name
        self.providers = self.session.get_providers()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_spec.name: batch})[0]

    def end_profiling(self) -> str | None:
        """Stop ONNX Runtime's profiler (if enabled) and return the trace file path."""
        return self.session.end_profiling() if getattr(self, "session", None) is not None else None

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers}

    def close(self) -> None:
        self.session = None


def _check_input_shape(path: Path, shape: tuple, contract: ModelContract) -> None:
    """The graph's input must be the shape the contract's preprocessing produces: a mismatch (metadata for 64×64 on
    a 32×32 graph) is a damaged artifact, refused at load instead of failing at the first inference as if the user's
    images were wrong."""
    want = contract.preprocess.input_shape(None)
    if len(shape) != len(want) or any(g is not None and w is not None and g != w for g, w in zip(shape, want)):
        raise ArtifactError(
            f"{path}: its input is {format_shape(shape)} but its metadata's preprocessing makes "
            f"{format_shape(want)} ({contract.preprocess.layout.upper()}, input_size "
            f"{list(contract.preprocess.input_size)}): re-export it (`edgecnn export`)"
        )


def _open(path: Path, **options) -> Runner:
    return OnnxRuntimeRunner(path, **options)


def _prime(threads: int | None = None, providers=None, **_ignored) -> None:
    """ONNX Runtime's one-time setup (import, its environment, the execution providers): one run of a one-node
    Identity model built in memory, with the same session options and providers a runner would use."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "prime",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=session_options(threads), providers=resolve_providers(providers)
    )
    session.run(None, {"x": np.zeros(1, np.float32)})


BACKEND = Backend(
    name="onnxrt",
    suffixes=(".onnx",),
    open=_open,
    description="ONNX Runtime (CPU default; CUDA/TensorRT EPs if installed)",
    prime=_prime,
)
