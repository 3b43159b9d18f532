"""`edgecnn deploy triton`: a Triton Inference Server model repository for an edgecnn ONNX or engine.

    <repo>/<name>/config.pbtxt          platform onnxruntime_onnx or tensorrt_plan, tensors, batching, instances,
    <repo>/<name>/labels.txt            label_filename: Triton's classification extension returns class names,
    <repo>/<name>/1/model.onnx|.plan    the model (an engine as model.plan, its manifest beside it; an ONNX's
                                        external data files beside it, at the locations the model names).

The preprocessing contract goes into config `parameters` (edgecnn.preprocess, edgecnn.labels_file) so a client can
read it from the server's model config instead of guessing. An engine whose optimization profile starts above batch 1
is refused: Triton has no minimum batch and sends a lone request as batch 1. The config is written as protobuf text
format and the tests parse it with Triton's own schema (tritonclient's model_config_pb2).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecnn.deploy.bundle import default_name
from edgecnn.deploy.model_io import ModelIO, read_model_io
from edgecnn.errors import UserInputError
from edgecnn.files import (
    check_output_folder,
    make_dirs,
    raise_storage_error,
    remove_created,
    replace_folder,
    temp_folder_beside,
)
from edgecnn.onnx_io import copy_onnx
from edgecnn.quant.qdq import weight_qmax_of
from edgecnn.quant.weights import REDUCED_WEIGHT_QMAX
from edgecnn.trt.manifest import manifest_path
from edgecnn.zoo import resolve_model

DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "int32": "TYPE_INT32"}
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_MAX_BATCH = 8


@dataclass
class TritonOptions:
    """max_batch: Triton's max_batch_size (None: 8 for a dynamic-batch model, capped by an engine's profile; a
    fixed-batch model always gets 0). kind: 'gpu' or 'cpu' instances (a TensorRT plan needs 'gpu')."""

    name: str | None = None
    max_batch: int | None = None
    instances: int = 1
    dynamic_batching: bool = False
    queue_delay_us: int = 100
    kind: str = "gpu"
    version: int = 1
    force: bool = False


@dataclass
class TritonReport:
    model_dir: str
    name: str
    platform: str
    max_batch_size: int
    config: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _pb_string(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(shape) -> str:
    return "[ " + ", ".join("-1" if d is None else str(d) for d in shape) + " ]"


def resolve_batching(io: ModelIO, options: TritonOptions) -> tuple[int, list[str]]:
    """Triton's max_batch_size for this model, or a clear error when the model cannot batch as asked."""
    notes: list[str] = []
    if not io.dynamic_batch:
        if options.max_batch not in (None, 0) or options.dynamic_batching:
            raise UserInputError(
                f"{io.path.name} takes a fixed batch of {io.fixed_batch}: Triton cannot batch it. Export with "
                "`edgecnn export --dynamic-batch` (and for an engine `build-engine --batch 1:4:8`) first"
            )
        return 0, notes
    if io.min_batch > 1:
        # Triton sends any batch from 1 to max_batch_size (a lone request is batch 1, dynamic batching or not) and has
        # no minimum: an engine whose profile starts above 1 would fail those requests. Refused, not warned.
        raise UserInputError(
            f"{io.path.name}'s optimization profile starts at batch {io.min_batch}, but Triton sends batches from 1 "
            f"up (a single request is batch 1): rebuild the engine with --batch 1:OPT:{io.max_batch}, or serve the ONNX"
        )
    limit = io.max_batch
    wanted = DEFAULT_MAX_BATCH if options.max_batch is None else options.max_batch
    if wanted < 1:
        raise UserInputError("--max-batch must be >= 1 for a dynamic-batch model")
    if limit is not None and wanted > limit:
        if options.max_batch is not None:
            raise UserInputError(
                f"--max-batch {wanted} exceeds the engine's profile maximum {limit}: rebuild it with a larger --batch"
            )
        notes.append(f"max_batch_size capped at the engine's profile maximum {limit}")
        wanted = limit
    return wanted, notes


def config_text(io: ModelIO, name: str, options: TritonOptions) -> tuple[str, int, list[str]]:
    """config.pbtxt for `io` (pure: no files written)."""
    if options.instances < 1:
        raise UserInputError("--instances must be >= 1")
    if options.kind not in ("gpu", "cpu"):
        raise UserInputError(f"instance kind must be gpu or cpu, got {options.kind!r}")
    if io.kind == "engine" and options.kind != "gpu":
        raise UserInputError("A TensorRT plan runs on the GPU only: drop --cpu")
    max_batch, notes = resolve_batching(io, options)
    platform = "tensorrt_plan" if io.kind == "engine" else "onnxruntime_onnx"
    in_shape = io.input_shape[1:] if max_batch > 0 else io.input_shape
    out_shape = io.output_shape[1:] if max_batch > 0 else io.output_shape
    if any(d is None for d in in_shape):
        raise UserInputError(
            f"{io.path.name} has dynamic non-batch input dims {in_shape}: edgecnn models take a fixed size"
        )
    cfg = io.contract.preprocess
    layout = "FORMAT_NCHW" if cfg.layout == "nchw" else "FORMAT_NHWC"
    # Triton accepts FORMAT_NCHW/NHWC only on rank-3 (batch excluded) inputs: a fixed-batch model gets none.
    fmt = [f"    format: {layout}"] if len(in_shape) == 3 else []
    lines = [
        f"name: {_pb_string(name)}",
        f"platform: {_pb_string(platform)}",
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        f"    name: {_pb_string(io.input_name)}",
        f"    data_type: {'TYPE_UINT8' if cfg.dtype == 'uint8' else 'TYPE_FP32'}",
        *fmt,
        f"    dims: {_dims(in_shape)}",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {_pb_string(io.output_name)}",
        "    data_type: TYPE_FP32",
        f"    dims: {_dims(out_shape)}",
        '    label_filename: "labels.txt"',
        "  }",
        "]",
        "instance_group [",
        "  {",
        f"    count: {options.instances}",
        f"    kind: KIND_{options.kind.upper()}",
        "  }",
        "]",
    ]
    if options.dynamic_batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {int(options.queue_delay_us)}", "}"]
    params = {
        "edgecnn.preprocess": cfg.to_json(),
        "edgecnn.precision": io.contract.precision,
        "edgecnn.arch": io.contract.arch or "",
    }
    if io.contract.output != "logits":  # a Softmax ends the model: its output is probabilities already
        params["edgecnn.output"] = io.contract.output
    for key, value in params.items():
        lines += [
            "parameters {",
            f"  key: {_pb_string(key)}",
            f"  value {{ string_value: {_pb_string(value)} }}",
            "}",
        ]
    return "\n".join(lines) + "\n", max_batch, notes


def int8_cpu_note(io: ModelIO, options: TritonOptions) -> str | None:
    """A warning for a full-range INT8 Q/DQ model on CPU instances. Why: Triton's ONNX Runtime backend exposes no
    session.x64quantprecision, so on x86 servers without VNNI ORT's fast uint8 x int8 kernels sum pairs of products in
    int16 and saturate with weights beyond [-64, 64]: the model answers wrongly there. Reduced-range weights (the
    `--target cpu` default) cannot saturate.

    The weights are read from the model `read_model_io` already parsed (`io.onnx_model`); the file is loaded again
    only when that is missing or its weights live in external data files, which it did not load."""
    if io.kind != "onnx" or options.kind != "cpu" or io.contract.precision != "int8":
        return None
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = io.onnx_model
    if model is None or any(uses_external_data(t) for t in model.graph.initializer):
        model = onnx.load(str(io.path))
    qmax = weight_qmax_of(model)
    if qmax <= REDUCED_WEIGHT_QMAX:
        return None
    return (
        f"{io.path.name} has full-range INT8 weights (up to {qmax}): on x86 Triton servers without VNNI (AMD Zen 2/3, "
        "Intel before Cascade Lake) ONNX Runtime's fast kernels saturate on them and Triton's ONNX Runtime backend "
        "cannot set session.x64quantprecision, so results there are wrong. For KIND_CPU serving, quantize with "
        "`edgecnn quantize --target cpu` (reduced-range weights, the default)"
    )


def model_name(model: str | Path, name: str | None) -> str:
    if name is None:
        name = default_name(model)
    if not MODEL_NAME_RE.match(name):
        raise UserInputError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def write_repository(model: str | Path, repo: str | Path, options: TritonOptions | None = None) -> TritonReport:
    """Write (or with force, replace) `<repo>/<name>/` for `model`; everything lands at once via one rename."""
    options = options or TritonOptions()
    path = resolve_model(model)
    io = read_model_io(path)
    name = model_name(model, options.name)
    text, max_batch, notes = config_text(io, name, options)
    note = int8_cpu_note(io, options)
    if note:
        notes.append(note)
    repo = Path(repo)
    check_output_folder(repo, "--repo")
    target = repo / name
    if target.exists() and not options.force:
        raise UserInputError(f"{target} already exists: pass --force to replace it (or choose another --name)")
    for source in [path] + [path.parent / rel for rel in io.data_files]:  # the model and its weights files
        if source.resolve().is_relative_to(target.resolve()):
            raise UserInputError(
                f"{source} is inside {target}: the input would be replaced; choose another --repo or --name"
            )
    created = make_dirs(repo)  # taken back below if writing fails, as deploy install/deepstream do
    staging = None
    try:
        staging = temp_folder_beside(target, "staging")  # PID-named: a dead run's is removed by the next
        version_dir = staging / str(options.version)
        version_dir.mkdir()
        model_file = "model.plan" if io.kind == "engine" else "model.onnx"
        # an ONNX with external data: its weights files go beside model.onnx, where the model looks for them
        copy_onnx(path, version_dir / model_file, list(io.data_files))
        if io.kind == "engine":
            shutil.copyfile(manifest_path(path), version_dir / (model_file + ".json"))
        (staging / "labels.txt").write_text("".join(f"{label}\n" for label in io.contract.labels), encoding="utf-8")
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        (staging / "edgecnn-contract.json").write_text(
            json.dumps(io.contract.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        os.chmod(staging, 0o755)
        replace_folder(staging, target)  # a crash between its renames is finished by the next run
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_created(created, repo)
        if isinstance(exc, OSError):
            raise_storage_error(exc, [target], "the repository was left as it was")
            raise UserInputError(f"Cannot write the Triton repository in {repo}: {exc.strerror or exc}") from exc
        raise
    files = sorted(p.relative_to(repo).as_posix() for p in target.rglob("*") if p.is_file())
    return TritonReport(
        str(target), name, "tensorrt_plan" if io.kind == "engine" else "onnxruntime_onnx", max_batch, text, files, notes
    )
