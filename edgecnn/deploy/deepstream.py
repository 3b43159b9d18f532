"""`edgecnn deploy deepstream`: a DeepStream `nvinfer` classifier config derived from the preprocessing contract.

nvinfer preprocesses as `y = net-scale-factor * (x - offsets[c])` on pixels already scaled to the network size in
`model-color-format` (0 RGB, 1 BGR). The contract's `(x - mean[c]) / std[c]` maps onto that exactly only when std is
the same for every channel (EfficientNet-Lite: mean 127, std 128 -> offsets 127, scale 1/128). Per-channel std
(torchvision's ImageNet 58.4/57.1/57.4, CIFAR's 63/62/67) has no nvinfer equivalent: that is an error unless the
caller accepts the mean scale (`approximate_std`), and the report says how far off it is.

nvinfer's default classifier parser reads *probabilities* (classifier-threshold compares against them), while edgecnn
models output logits, so the ONNX handed to DeepStream gets a Softmax appended (`model.softmax.onnx`).
Its label file for classifiers is one line per output layer, labels separated by ';'.

DeepStream caches the engine it builds next to the model (`model-engine-file`) and reuses it on the next run. So a
folder holding an earlier config is never written over file by file: `--out` must be new, empty, or already exactly
what this call writes; `--force` replaces a folder of edgecnn/DeepStream files as a whole (staged beside it, then
swapped), so no engine or calibration cache of an earlier model survives. Files edgecnn did not write are never removed.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecnn.deploy.model_io import ModelIO, read_model_io
from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.files import (
    atomic_path,
    atomic_write_text,
    check_output_folder,
    ensure_distinct,
    make_dirs,
    raise_storage_error,
    remove_created,
    replace_folder,
    temp_folder_beside,
)
from edgecnn.onnx_io import onnx_external_data, save_onnx
from edgecnn.trt.builder import check_calib_cache
from edgecnn.trt.int8 import check_tensorrt_qdq
from edgecnn.zoo import resolve_model

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMATS = {"rgb": 0, "bgr": 1}
# NvBufSurfTransform_Inter: 0 nearest, 1 bilinear, 2 algo1 (GPU cubic), 3 algo2 (GPU super-sampling ~ area)
SCALING_FILTERS = {"nearest": 0, "linear": 1, "cubic": 2, "area": 3}
# What `write_deepstream` writes, and the engine DeepStream caches beside the model (model-engine-file)
OWN_FILES = frozenset(
    {"model.softmax.onnx", "model.engine", "calib.cache", "labels.txt", "nvinfer_config.txt", "README.md"}
)
DEEPSTREAM_ENGINE_RE = re.compile(r"model[^/]*_b\d+_gpu\d+_[a-z0-9]+\.engine")


@dataclass
class DeepStreamOptions:
    precision: str | None = None  # None: int8 for a Q/DQ model, else fp16
    batch_size: int = 1
    calib_cache: Path | None = None
    classifier_threshold: float = 0.2
    gpu_id: int = 0
    approximate_std: bool = False
    force: bool = False  # replace an --out that holds a different (edgecnn-written) config


@dataclass
class DeepStreamReport:
    out: str
    config: str
    net_scale_factor: float
    offsets: list[float]
    model_color_format: int
    network_mode: int
    files: list[str]
    warnings: list[str] = field(default_factory=list)
    replaced: bool = False  # an earlier config in --out was replaced (--force)

    def to_dict(self) -> dict:
        return asdict(self)


def scale_and_offsets(mean, std, approximate: bool = False) -> tuple[float, list[float], list[str]]:
    """net-scale-factor and offsets for a contract's mean/std (0-255 scale), or a clear error."""
    warnings: list[str] = []
    lo, hi = min(std), max(std)
    if hi - lo > 1e-6 * hi:
        mean_std = sum(std) / 3.0
        worst = max(abs(mean_std / s - 1.0) for s in std)
        msg = (
            f"the model's std differs per channel ({', '.join(f'{s:g}' for s in std)}) but DeepStream nvinfer has a "
            f"single net-scale-factor for all channels; using 1/{mean_std:.4g} scales some channel up to "
            f"{worst:.1%} off"
        )
        if not approximate:
            raise UserInputError(
                msg + ". Pass --approximate-std to accept that, retrain/export with equal std, or normalize in a "
                "custom nvdspreprocess library"
            )
        warnings.append(msg)
        scale = 1.0 / mean_std
    else:
        scale = 1.0 / std[0]
    return scale, [float(m) for m in mean], warnings


def labels_line(labels: list[str]) -> tuple[str, list[str]]:
    """nvinfer's classifier label file: one ';'-separated line (';' inside a label becomes ',')."""
    warnings = []
    clean = []
    for label in labels:
        if ";" in label:
            warnings.append(f"label {label!r} contains ';' (nvinfer's separator): written with ',' instead")
            label = label.replace(";", ",")
        clean.append(label.replace("\n", " "))
    return ";".join(clean) + "\n", warnings


def add_softmax(src: Path, dst: Path, notes: list[str] | None = None) -> str:
    """Copy of the ONNX `src` with Softmax(axis=1) after its output, as one file (external data taken inline);
    returns the new output name.

    A graph whose nodes are out of order (Q/DQ models from older edgecnn versions) is written sorted (TensorRT's
    ONNX parser, and the ONNX checker, need that); `notes` gets a line saying so."""
    import onnx
    from onnx import helper
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(src), load_external_data=False)
    # Weights in external data files (checked first: missing, truncated or outside src's folder fails clearly) go
    # inline: the copy is the one file nvinfer's onnx-file names, and a classifier is far below protobuf's 2 GB.
    external = bool(onnx_external_data(src, model))
    if external:
        load_external_data_for_model(model, str(src.parent))
    graph = model.graph
    unsorted = not _is_sorted(graph)
    if unsorted:
        _topological_sort(model, src)
        if notes is not None:
            notes.append(
                f"{src.name}'s nodes were not in topological order (made by an older edgecnn): {dst.name} has them "
                "sorted; re-quantize/re-export with this edgecnn to fix the source model too"
            )
    logits = graph.output[0]
    last = next((n for n in graph.node if logits.name in n.output), None)
    if last is not None and last.op_type == "Softmax":
        if unsorted or external:
            _check(model, src)
            save_onnx(model, dst)
        else:
            shutil.copyfile(src, dst)
        return logits.name
    probs = "probs"
    graph.node.append(helper.make_node("Softmax", [logits.name], [probs], name="edgecnn_softmax", axis=1))
    out = onnx.ValueInfoProto()
    out.CopyFrom(logits)
    out.name = probs
    del graph.output[:]
    graph.output.append(out)
    _check(model, src)
    save_onnx(model, dst)
    return probs


def _is_sorted(graph) -> bool:
    """Every node input is a graph input, an initializer or the output of an earlier node."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    known |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        if any(name not in known for name in node.input):
            return False
        known.update(node.output)
    return True


def _topological_sort(model, src: Path) -> None:
    from onnxruntime.quantization.onnx_model import ONNXModel

    try:
        ONNXModel(model).topological_sort()
    except Exception as exc:  # AssertionError "Graph is not a DAG", or inputs nothing produces
        raise ArtifactError(
            f"{src.name}: its nodes are out of order and cannot be sorted ({exc.__class__.__name__}: {exc}); "
            "re-quantize (edgecnn quantize) or re-export it with this edgecnn"
        ) from exc
    if not _is_sorted(model.graph):
        raise ArtifactError(
            f"{src.name}: some node inputs are produced by no node (the graph is incomplete); re-quantize (edgecnn "
            "quantize) or re-export it with this edgecnn"
        )


def _check(model, src: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = (str(exc).strip().splitlines() or ["invalid"])[0]
        raise ArtifactError(
            f"{src.name} is not a valid ONNX model ({first}); re-quantize (edgecnn quantize) or re-export it with "
            "this edgecnn"
        ) from exc


@dataclass(frozen=True)
class NvinferConfig:
    text: str
    net_scale_factor: float
    offsets: list[float]
    model_color_format: int
    network_mode: int
    labels_text: str
    warnings: list[str]


def nvinfer_config(
    io: ModelIO, options: DeepStreamOptions, model_file: str, output_name: str, calib_file: str | None = None
) -> NvinferConfig:
    """The nvinfer config text for `io` (pure: no files). `model_file` is the ONNX (or engine) name beside it."""
    contract, cfg = io.contract, io.contract.preprocess
    warnings: list[str] = []
    precision = options.precision or ("int8" if contract.precision == "int8" else "fp16")
    if precision not in NETWORK_MODES:
        raise UserInputError(f"--precision must be one of {', '.join(NETWORK_MODES)}, got {precision!r}")
    if precision == "int8" and io.kind == "onnx" and contract.precision != "int8" and calib_file is None:
        raise UserInputError(
            "--precision int8 needs a Q/DQ ONNX (edgecnn quantize --target tensorrt) or --calib-cache (edgecnn "
            "quantize --cache) for nvinfer"
        )
    if options.batch_size < 1:
        raise UserInputError("--batch-size must be >= 1")
    if io.fixed_batch is not None and io.fixed_batch != options.batch_size:
        raise UserInputError(
            f"{io.path.name} takes a fixed batch of {io.fixed_batch}: use --batch-size {io.fixed_batch} or export "
            "with --dynamic-batch"
        )
    if io.kind == "engine" and io.fixed_batch is None and io.min_batch > 1:
        # nvinfer runs partly filled batches (fewer sources than batch-size, the end of a stream) at their real size,
        # down to 1: an engine whose profile starts above 1 fails on them. Refused, not warned.
        raise UserInputError(
            f"{io.path.name}'s optimization profile starts at batch {io.min_batch}, but nvinfer runs partly filled "
            f"batches down to 1: rebuild the engine with --batch 1:OPT:{io.max_batch}, or pass the ONNX (DeepStream "
            "builds its own engine)"
        )
    if io.max_batch is not None and options.batch_size > io.max_batch:
        raise UserInputError(f"--batch-size {options.batch_size} exceeds the model's maximum batch {io.max_batch}")
    if not 0.0 <= options.classifier_threshold <= 1.0:
        raise UserInputError("--classifier-threshold is a probability in [0, 1]")

    if cfg.dtype == "uint8":
        raise UserInputError(
            f"{io.path.name} takes uint8 pixels (it normalises inside), but nvinfer always feeds a float tensor "
            "(net-scale-factor, offsets): export the model with a float32 input and its normalisation outside, then "
            "adopt that with the matching --mean/--std"
        )
    scale, offsets, w = scale_and_offsets(cfg.mean, cfg.std, options.approximate_std)
    warnings += w
    label_text, w = labels_line(contract.labels)
    warnings += w
    if cfg.resize == "shorter_crop":
        warnings.append(
            f"the model was trained on a central crop ({cfg.crop_ratio:g} of the shorter side) but nvinfer scales the "
            "whole frame (or object) to the network size: crop upstream (nvvideoconvert src-crop, nvdspreprocess "
            "ROIs) to match exactly"
        )
    if cfg.resize == "letterbox" and cfg.pad_value != 0:
        warnings.append(f"nvinfer pads letterboxed frames with black, the model with {cfg.pad_value}")

    lines = [
        f"# DeepStream nvinfer config for {contract.arch or 'model'} ({contract.num_classes} classes), written by",
        "# `edgecnn deploy deepstream` from the model's preprocessing contract:",
        f"#   {cfg.channel_order.upper()}, (x - mean {list(cfg.mean)}) / std {list(cfg.std)}, "
        f"{cfg.resize} to {cfg.height}x{cfg.width}, {cfg.interpolation} interpolation",
        "[property]",
        f"gpu-id={options.gpu_id}",
        f"net-scale-factor={scale:.10g}",
        "offsets=" + ";".join(f"{o:g}" for o in offsets),
        "# 0 = RGB, 1 = BGR",
        f"model-color-format={COLOR_FORMATS[cfg.channel_order]}",
        f"network-input-order={0 if cfg.layout == 'nchw' else 1}",
        "infer-dims=" + (f"3;{cfg.height};{cfg.width}" if cfg.layout == "nchw" else f"{cfg.height};{cfg.width};3"),
        f"maintain-aspect-ratio={1 if cfg.resize == 'letterbox' else 0}",
    ]
    if cfg.resize == "letterbox":
        lines.append("symmetric-padding=1")
    lines += [
        f"scaling-filter={SCALING_FILTERS[cfg.interpolation]}",
        "# 1 = GPU scaling: its filters follow OpenCV's more closely than the Jetson VIC's",
        "scaling-compute-hw=1",
    ]
    if io.kind == "engine":
        lines.append(f"model-engine-file={model_file}")
        if contract.output == "logits":
            warnings.append(
                "a prebuilt engine outputs logits (no Softmax): classifier-threshold compares against logits; pass "
                "the ONNX instead to get probabilities"
            )
    else:
        lines += [
            f"onnx-file={model_file}",
            "# DeepStream builds this engine on first run and reuses it afterwards",
            f"model-engine-file={model_file}_b{options.batch_size}_gpu{options.gpu_id}_{precision}.engine",
        ]
    if calib_file is not None and precision == "int8":
        lines.append(f"int8-calib-file={calib_file}")
    lines += [
        "labelfile-path=labels.txt",
        f"batch-size={options.batch_size}",
        "# 0 = FP32, 1 = INT8, 2 = FP16",
        f"network-mode={NETWORK_MODES[precision]}",
        f"num-detected-classes={contract.num_classes}",
        f"output-blob-names={output_name}",
        "interval=0",
        "gie-unique-id=1",
        "# 1 = primary (whole frames); use 2 with operate-on-gie-id to classify a detector's objects",
        "process-mode=1",
        "# 1 = classifier",
        "network-type=1",
        f"classifier-threshold={options.classifier_threshold:g}",
    ]
    return NvinferConfig(
        "\n".join(lines) + "\n",
        scale,
        offsets,
        COLOR_FORMATS[cfg.channel_order],
        NETWORK_MODES[precision],
        label_text,
        warnings,
    )


def write_deepstream(
    model: str | Path, out_dir: str | Path, options: DeepStreamOptions | None = None
) -> DeepStreamReport:
    """Write `nvinfer_config.txt`, `labels.txt`, the model (+ calib cache) and a README into `out_dir`.

    Everything is written into a staging folder beside `out_dir` first; `out_dir` then gets it at once (see the module
    docstring for when an existing `out_dir` is refused or, with `force`, replaced as a whole)."""
    options = options or DeepStreamOptions()
    path = resolve_model(model)
    io = read_model_io(path)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    calib = Path(options.calib_cache) if options.calib_cache else None
    if calib is not None:
        check_calib_cache(calib)  # build-engine's and bundle's check: nvinfer would only fail on it at first run
    model_file = "model.engine" if io.kind == "engine" else "model.softmax.onnx"
    # validate everything (and fail) before writing anything
    config = nvinfer_config(io, options, model_file, io.output_name, "calib.cache" if calib else None)
    notes: list[str] = []
    if calib is not None and config.network_mode != NETWORK_MODES["int8"]:
        mode = next(k for k, v in NETWORK_MODES.items() if v == config.network_mode)
        notes.append(
            f"--calib-cache is not used: nvinfer reads int8-calib-file only with --precision int8, this "
            f"config is {mode}"
        )
    if io.kind == "onnx" and io.contract.precision == "int8":
        check_tensorrt_qdq(path)  # nvinfer builds it with TensorRT: a --target cpu model (uint8) would be built wrong
    target = Path(os.path.realpath(out_dir))  # "." works, and a symlinked --out keeps its link
    existing = _existing_entries(target)
    if existing and path.resolve().is_relative_to(target):
        raise UserInputError(f"{path} is inside --out {out_dir}: choose another --out (inputs are never overwritten)")
    foreign = sorted(n for n in existing if n not in OWN_FILES and not DEEPSTREAM_ENGINE_RE.fullmatch(n))
    if foreign:
        raise UserInputError(
            f"--out {out_dir} holds files `edgecnn deploy deepstream` did not write ({', '.join(foreign[:5])}): "
            "choose a new or empty folder (nothing was changed)"
        )

    created = make_dirs(target.parent)
    try:
        try:
            staging = temp_folder_beside(target, "deepstream")  # PID-named: a dead run's is removed by the next
        except OSError:
            if not target.is_dir():
                raise
            staging = Path(tempfile.mkdtemp(prefix=".deepstream-", dir=target))  # a folder whose parent is read-only
    except OSError as exc:
        remove_created(created, target.parent)
        raise_storage_error(exc, [Path(out_dir)], "nothing was written")
        raise UserInputError(f"Cannot write to {out_dir}: {exc.strerror or exc}") from exc
    replaced = False
    try:
        os.chmod(staging, 0o777 & ~_umask())
        files = [model_file]
        if io.kind == "engine":
            _copy(path, staging / model_file, [path])
        else:
            output_name = add_softmax(path, staging / model_file, notes)
            if output_name != io.output_name:
                config = nvinfer_config(io, options, model_file, output_name, "calib.cache" if calib else None)
        if calib is not None and config.network_mode == NETWORK_MODES["int8"]:
            _copy(calib, staging / "calib.cache", [path])
            files.append("calib.cache")
        atomic_write_text(staging / "labels.txt", config.labels_text)
        atomic_write_text(staging / "nvinfer_config.txt", config.text)
        atomic_write_text(staging / "README.md", readme(path.name, config.warnings))
        files += ["labels.txt", "nvinfer_config.txt", "README.md"]
        replaced = _publish(staging, target, existing, _engine_name(config.text), options.force, out_dir)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created(created, target.parent)
        # a full disk while staging: name --out, not the staging folder (an earlier config there is as it was)
        raise_storage_error(exc, [Path(out_dir)], "nothing was replaced" if existing else "nothing was written")
        raise
    return DeepStreamReport(
        out=str(out_dir),
        config=config.text,
        net_scale_factor=config.net_scale_factor,
        offsets=config.offsets,
        model_color_format=config.model_color_format,
        network_mode=config.network_mode,
        files=sorted(files),
        warnings=config.warnings + notes,
        replaced=replaced,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_out_dir(out_dir: Path) -> None:
    """Refuse, before any work, an --out that cannot be a folder: a file, or a path under a file."""
    check_output_folder(out_dir, "--out")


def _existing_entries(out_dir: Path) -> list[str]:
    try:
        return sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    except OSError as exc:
        raise UserInputError(f"Cannot read --out {out_dir}: {exc.strerror or exc}") from exc


def _engine_name(config_text: str) -> str | None:
    m = re.search(r"^model-engine-file=(.+)$", config_text, re.M)
    return m.group(1) if m else None


def _publish(staging: Path, out_dir: Path, existing: list[str], engine: str | None, force: bool, shown: Path) -> bool:
    """Move the staged files to `out_dir` (a real path; `shown` is how the user named it). Returns True when an
    earlier, different config was replaced."""
    staged = sorted(p.name for p in staging.iterdir())
    if not existing:  # new or empty folder
        if out_dir.is_dir():
            for name in staged:
                os.replace(staging / name, out_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
        return False
    differs = [n for n in existing if n not in staged and n != engine]  # stale files: another model's engine, cache
    differs += [n for n in staged if n in existing and not filecmp.cmp(staging / n, out_dir / n, shallow=False)]
    if not differs:  # the same config again: the engine DeepStream built from this very model stays valid
        for name in staged:
            if name not in existing:
                os.replace(staging / name, out_dir / name)
        shutil.rmtree(staging, ignore_errors=True)
        return False
    if not force:
        raise UserInputError(
            f"--out {shown} already holds a DeepStream config for another model or other options "
            f"({', '.join(sorted(differs)[:5])} differ): pass --force to replace that folder as a whole (with "
            "the engine DeepStream cached for the earlier model), or choose another --out (nothing was changed)"
        )
    if staging.parent == out_dir:  # staged inside (read-only parent): no swap possible, so clear, then move in
        for name in existing:
            old = out_dir / name
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for name in staged:
            os.replace(staging / name, out_dir / name)
        shutil.rmtree(staging, ignore_errors=True)
        return True
    os.chmod(staging, out_dir.stat().st_mode & 0o7777)
    replace_folder(staging, out_dir)  # a crash between its renames is finished by the next run, never a lost --out
    return True


def _copy(src: Path, dst: Path, inputs: list[Path]) -> None:
    ensure_distinct(inputs + [src], dst)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def readme(model: str, warnings: list[str]) -> str:
    notes = "".join(f"- {w}\n" for w in warnings) or "- none: the config reproduces the contract exactly\n"
    return (
        f"# DeepStream nvinfer config for {model}\n\n"
        "Written by `edgecnn deploy deepstream`. Try it on a video file (DeepStream 6.x/7.x on Jetson):\n\n"
        "    gst-launch-1.0 filesrc location=clip.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! mux.sink_0 \\\n"
        "      nvstreammux name=mux batch-size=1 width=1280 height=720 ! \\\n"
        "      nvinfer config-file-path=nvinfer_config.txt ! nvvideoconvert ! nvdsosd ! nv3dsink\n\n"
        "The class of each frame is attached as NvDsClassifierMeta (read it in a pad probe, or with\n"
        "`output-tensor-meta=1` get the raw probabilities).\n\n"
        f"## Differences from the model's own preprocessing\n\n{notes}"
    )
