"""OpenVINO backend (optional, x86 CPUs): `load("model.onnx", backend="openvino")` or an OpenVINO IR `.xml`.

Why: on Intel CPUs OpenVINO's INT8 kernels (VNNI/AMX) can beat ONNX Runtime on the same Q/DQ model; ONNX Runtime stays
the default. `openvino` is imported only when a model is opened (`pip install 'edgecnn[openvino]'`).

Choices:
- Precision is the artifact's: OpenVINO would run FP32 layers in bf16 on AMX CPUs by default, which changes outputs;
  we ask for f32 (`INFERENCE_PRECISION_HINT`) unless `precision="bf16"` is passed. Q/DQ INT8 layers run in INT8.
- A dynamic-batch model is compiled once per batch size it sees (static shapes are OpenVINO's fast path).
- The contract comes from the ONNX metadata, or for an IR from the `edgecnn_contract` rt_info entry that
  `save_ir()` writes.
- `layer_profile(batch, iterations)` reports OpenVINO's performance counters per executed node (the hook
  `edgecnn.profiling.latency` reads).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgecnn.contract import ModelContract, read_onnx_contract
from edgecnn.errors import ArtifactError, UserInputError, require
from edgecnn.files import atomic_path
from edgecnn.runtime.base import Backend, InputSpec, Runner
from edgecnn.runtime.onnxrt import external_data_problem

HINT = "The OpenVINO backend needs openvino: pip install 'edgecnn[openvino]' (x86-64 CPUs)."
RT_KEY = "edgecnn_contract"
PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}


def _ov():
    return require("openvino", HINT)


def available() -> bool:
    try:
        _ov()
    except Exception:
        return False
    return True


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: Path, threads: int | None = None, device: str = "CPU", precision: str = "fp32"):
        ov = _ov()
        path = Path(path)
        if precision.lower() not in PRECISIONS:
            raise UserInputError(f"OpenVINO precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.core = ov.Core()
        if device not in self.core.available_devices:
            raise UserInputError(f"OpenVINO device {device} not found (have: {', '.join(self.core.available_devices)})")
        try:
            self.model = self.core.read_model(str(path))
        except Exception as exc:
            if path.suffix.lower() == ".onnx":
                external_data_problem(path)  # its weights files missing, truncated or outside: say that, in one line
            raise ArtifactError(f"OpenVINO cannot read {path}: {str(exc).strip().splitlines()[0][:300]}") from exc
        contract = _contract(path, self.model)
        if len(self.model.inputs) != 1:
            raise ArtifactError(f"{path} has {len(self.model.inputs)} inputs; edgecnn runs single-input classifiers")
        pshape = self.model.inputs[0].get_partial_shape()
        shape = tuple(d.get_length() if d.is_static else None for d in pshape)
        spec = InputSpec(name=self.model.inputs[0].any_name, shape=shape, min_batch=shape[0] or 1, max_batch=shape[0])
        last = self.model.outputs[0].get_partial_shape()[-1]
        super().__init__(path, contract, spec, last.get_length() if last.is_static else None)
        self.device = device
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": PRECISIONS[precision.lower()]}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests: dict[int, object] = {}

    def _request(self, batch: int, perf_count: bool = False):
        """An infer request for a model compiled at this batch size (cached unless profiling)."""
        if not perf_count and batch in self._requests:
            return self._requests[batch]
        model = self.model
        if self.input_spec.shape[0] is None:
            model = self.model.clone()
            model.reshape({0: [batch] + [d if d is not None else -1 for d in self.input_spec.shape[1:]]})
        config = dict(self.config, PERF_COUNT=perf_count)
        try:
            compiled = self.core.compile_model(model, self.device, config)
        except Exception as exc:
            raise ArtifactError(
                f"OpenVINO cannot compile {self.path.name}: {str(exc).strip().splitlines()[0][:300]}"
            ) from exc
        request = compiled.create_infer_request()
        if not perf_count:
            self._requests[batch] = request
        return request

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        request = self._request(batch.shape[0])
        request.infer({0: batch}, share_inputs=True)  # infer() already made it contiguous: no extra copy
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def layer_profile(self, batch: int, iterations: int = 20, warmup: int = 3) -> list[dict]:
        """Mean time per executed node (ms per run) from OpenVINO's performance counters, slowest first."""
        request = self._request(batch, perf_count=True)
        x = np.zeros(
            [batch]
            + [d or s for d, s in zip(self.input_spec.shape[1:], self.preprocess_config.input_shape(batch)[1:])],
            self.preprocess_config.dtype,
        )
        total: dict[str, float] = defaultdict(float)
        meta: dict[str, tuple[str, str]] = {}
        for i in range(warmup + iterations):
            request.infer({0: x})
            if i < warmup:
                continue
            for info in request.get_profiling_info():
                if str(info.status).endswith("EXECUTED") and "NOT_RUN" not in str(info.status):
                    total[info.node_name] += info.real_time.total_seconds() * 1000.0
                    meta[info.node_name] = (info.node_type, info.exec_type)
        grand = sum(total.values()) or 1.0
        rows = [
            {"name": n, "op": meta[n][0], "provider": meta[n][1], "mean_ms": t / iterations, "share": t / grand}
            for n, t in total.items()
        ]
        return sorted(rows, key=lambda r: r["mean_ms"], reverse=True)

    def describe(self) -> dict:
        return {**super().describe(), "device": self.device, "config": self.config}

    def close(self) -> None:
        self._requests = {}


def _contract(path: Path, model) -> ModelContract:
    if path.suffix.lower() == ".onnx":
        return read_onnx_contract(path)
    rt = model.get_rt_info()
    if RT_KEY not in rt:
        raise ArtifactError(
            f"{path} has no edgecnn contract (labels, preprocessing); write IR with "
            "edgecnn.runtime.openvino.save_ir(model.onnx, model.xml), or run the .onnx with backend='openvino'"
        )
    try:
        value = rt[RT_KEY]
        return ModelContract.from_dict(json.loads(value.astype(str) if hasattr(value, "astype") else str(value)))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: the edgecnn contract in its rt_info is not valid JSON") from exc


def save_ir(onnx_path: str | Path, xml_path: str | Path, compress_to_fp16: bool = False) -> Path:
    """Convert an edgecnn ONNX model to OpenVINO IR (.xml + .bin) with its contract in rt_info, written atomically."""
    ov = _ov()
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if xml_path.suffix.lower() != ".xml":
        raise UserInputError(f"OpenVINO IR must be named *.xml, got {xml_path.name}")
    contract = read_onnx_contract(onnx_path)
    model = ov.Core().read_model(str(onnx_path))
    model.set_rt_info(json.dumps(contract.to_dict(), sort_keys=True), RT_KEY)
    bin_path = xml_path.with_suffix(".bin")
    # The .xml names its .bin by stem, so both are written under temporary names of the same stem, then moved.
    with atomic_path(xml_path, suffix=".xml") as tmp_xml:
        tmp_bin = tmp_xml.with_suffix(".bin")
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
            xml_text = tmp_xml.read_text()
            if tmp_bin.name in xml_text:  # the IR does not reference its .bin by name today; be safe if it ever does
                tmp_xml.write_text(xml_text.replace(tmp_bin.name, bin_path.name))
            tmp_bin.replace(bin_path)
        finally:
            if tmp_bin.exists():
                tmp_bin.unlink()
    return xml_path


def _open(path: Path, **options) -> Runner:
    return OpenVinoRunner(path, **options)


BACKEND = Backend(
    name="openvino",
    suffixes=(".xml",),
    open=_open,
    description="OpenVINO on Intel CPUs (optional; .xml IR, or .onnx with backend='openvino')",
    available=available,
)
