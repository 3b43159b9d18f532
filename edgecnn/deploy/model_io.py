"""What a serving config needs to know about a model file: tensor names, shapes, batch range and the contract.

Read from the ONNX graph (no ONNX Runtime session, no weights loaded) or from an engine's sidecar manifest (no
TensorRT needed), so Triton and DeepStream configs can be written on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecnn.contract import ModelContract, read_onnx_contract
from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.onnx_io import onnx_external_data
from edgecnn.trt.manifest import contract_of, read_manifest, verify_engine_file

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass(frozen=True)
class ModelIO:
    """kind: 'onnx' or 'engine'. Shapes include the batch dimension; None marks a dynamic one.
    max_batch: the largest batch the model takes (None: unbounded dynamic ONNX).
    min_batch: the smallest batch it takes: 1 for a dynamic ONNX, the optimization profile's minimum for an engine
    (`build-engine --batch 2:4:8` makes an engine that cannot run batch 1), the batch itself when fixed.
    onnx_model: the onnx.ModelProto read for an ONNX file (external data not loaded), kept so that later checks on the
    graph or its weights (Triton's INT8 --cpu note) need not parse the file again; None for an engine.
    data_files: the ONNX model's external data files, relative to its folder (`onnx_io.onnx_external_data`, checked
    here: missing, truncated or outside the folder fails before any config is written); they travel with the model."""

    path: Path
    kind: str
    input_name: str
    input_shape: tuple
    output_name: str
    output_shape: tuple
    contract: ModelContract
    max_batch: int | None
    onnx_model: Any = field(default=None, repr=False, compare=False)
    data_files: tuple[str, ...] = ()
    min_batch: int = 1

    @property
    def dynamic_batch(self) -> bool:
        return self.input_shape[0] is None

    @property
    def fixed_batch(self) -> int | None:
        return None if self.dynamic_batch else self.input_shape[0]


def _dims(dims) -> tuple:
    return tuple(int(d) if isinstance(d, int) and d > 0 else None for d in dims)


def read_model_io(path: str | Path) -> ModelIO:
    """ModelIO for an edgecnn ONNX or engine (with its `.json` manifest); a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Model {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_io(path)
    if suffix in ENGINE_SUFFIXES:
        return _engine_io(path)
    raise UserInputError(f"Expected an .onnx model or a TensorRT .engine, got {path.name}")


def _onnx_io(path: Path) -> ModelIO:
    import onnx

    contract = read_onnx_contract(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    init = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ArtifactError(f"{path.name} has {len(inputs)} inputs and {len(graph.output)} outputs; expected 1 and 1")

    def shape(value_info) -> tuple:
        dims = value_info.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)

    in_shape, out_shape = shape(inputs[0]), shape(graph.output[0])
    return ModelIO(
        path,
        "onnx",
        inputs[0].name,
        in_shape,
        graph.output[0].name,
        out_shape,
        contract,
        max_batch=in_shape[0] if in_shape and in_shape[0] else None,
        onnx_model=model,
        data_files=tuple(onnx_external_data(path, model)),
        min_batch=in_shape[0] if in_shape and in_shape[0] else 1,
    )


def _engine_io(path: Path) -> ModelIO:
    manifest = read_manifest(path)
    verify_engine_file(path, manifest)
    ins, outs = manifest["io"].get("inputs") or [], manifest["io"].get("outputs") or []
    if len(ins) != 1 or len(outs) != 1:
        raise ArtifactError(f"{path.name} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1")
    in_shape = _dims(ins[0]["shape"])
    profile = ins[0].get("profile") or {}
    max_batch = int(profile["max"][0]) if profile.get("max") else in_shape[0]
    min_batch = int(profile["min"][0]) if profile.get("min") else (in_shape[0] or 1)
    return ModelIO(
        path,
        "engine",
        ins[0]["name"],
        in_shape,
        outs[0]["name"],
        _dims(outs[0]["shape"]),
        contract_of(manifest),
        max_batch=max_batch,
        min_batch=min_batch,
    )
