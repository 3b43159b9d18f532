"""`edgecnn deploy deepstream`: a DeepStream `nvinfer` classifier config derived from the preprocessing contract.

nvinfer preprocesses as `y = net-scale-factor * (x - offsets[c])` on pixels already scaled to the network size in
`model-color-format` (0 RGB, 1 BGR). The contract's `(x - mean[c]) / std[c]` maps onto that exactly only when std is
the same for every channel (EfficientNet-Lite: mean 127, std 128 -> offsets 127, scale 1/128). Per-channel std
(torchvision's ImageNet 58.4/57.1/57.4, CIFAR's 63/62/67) has no nvinfer equivalent: that is an error unless the
caller accepts the mean scale (`approximate_std`), and the report says how far off it is.

nvinfer's default classifier parser reads *probabilities* (classifier-threshold compares against them), while edgecnn
models output logits, so the ONNX handed to DeepStream gets a Softmax appended (`model.softmax.onnx`).
Its label file for classifiers is one line per output layer, labels separated by ';'.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecnn.artifacts import atomic_path, atomic_write_text, ensure_distinct
from edgecnn.deploy.model_io import ModelIO, read_model_io
from edgecnn.errors import UserInputError

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
COLOR_FORMATS = {"rgb": 0, "bgr": 1}
# NvBufSurfTransform_Inter: 0 nearest, 1 bilinear, 2 algo1 (GPU cubic), 3 algo2 (GPU super-sampling ~ area)
SCALING_FILTERS = {"nearest": 0, "linear": 1, "cubic": 2, "area": 3}


@dataclass
class DeepStreamOptions:
    precision: str | None = None  # None: int8 for a Q/DQ model, else fp16
    batch_size: int = 1
    calib_cache: Path | None = None
    classifier_threshold: float = 0.2
    gpu_id: int = 0
    approximate_std: bool = False


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


def add_softmax(src: Path, dst: Path) -> str:
    """Copy of the ONNX `src` with Softmax(axis=1) after its output; returns the new output name."""
    import onnx
    from onnx import helper

    from edgecnn.artifacts import save_onnx

    model = onnx.load(str(src))
    graph = model.graph
    logits = graph.output[0]
    last = next((n for n in graph.node if logits.name in n.output), None)
    if last is not None and last.op_type == "Softmax":
        shutil.copyfile(src, dst)
        return logits.name
    probs = "probs"
    graph.node.append(helper.make_node("Softmax", [logits.name], [probs], name="edgecnn_softmax", axis=1))
    out = onnx.ValueInfoProto()
    out.CopyFrom(logits)
    out.name = probs
    del graph.output[:]
    graph.output.append(out)
    onnx.checker.check_model(model)
    save_onnx(model, dst)
    return probs


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
            "--precision int8 needs a Q/DQ ONNX (edgecnn quantize) or --calib-cache (edgecnn calibrate) for nvinfer"
        )
    if options.batch_size < 1:
        raise UserInputError("--batch-size must be >= 1")
    if io.fixed_batch is not None and io.fixed_batch != options.batch_size:
        raise UserInputError(
            f"{io.path.name} takes a fixed batch of {io.fixed_batch}: use --batch-size {io.fixed_batch} or export "
            "with --dynamic-batch"
        )
    if io.max_batch is not None and options.batch_size > io.max_batch:
        raise UserInputError(f"--batch-size {options.batch_size} exceeds the model's maximum batch {io.max_batch}")
    if not 0.0 <= options.classifier_threshold <= 1.0:
        raise UserInputError("--classifier-threshold is a probability in [0, 1]")

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
        warnings.append(
            "a prebuilt engine outputs logits (no Softmax): classifier-threshold compares against logits; pass the "
            "ONNX instead to get probabilities"
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
        "\n".join(lines) + "\n", scale, offsets, COLOR_FORMATS[cfg.channel_order], NETWORK_MODES[precision],
        label_text, warnings,
    )


def write_deepstream(model: str | Path, out_dir: str | Path, options: DeepStreamOptions | None = None) -> DeepStreamReport:
    """Write `nvinfer_config.txt`, `labels.txt`, the model (+ calib cache) and a README into `out_dir`."""
    from edgecnn.runtime.resolve import resolve_model

    options = options or DeepStreamOptions()
    path = resolve_model(model)
    io = read_model_io(path)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"--out {out_dir} is a file; expected a folder")
    calib = Path(options.calib_cache) if options.calib_cache else None
    if calib is not None and not calib.is_file():
        raise UserInputError(f"--calib-cache {calib} does not exist")
    model_file = "model.engine" if io.kind == "engine" else "model.softmax.onnx"
    # validate everything (and fail) before writing anything
    config = nvinfer_config(io, options, model_file, io.output_name, "calib.cache" if calib else None)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [model_file]
    if io.kind == "engine":
        _copy(path, out_dir / model_file, [path])
        output_name = io.output_name
    else:
        ensure_distinct([path], out_dir / model_file)
        output_name = add_softmax(path, out_dir / model_file)
        if output_name != io.output_name:
            config = nvinfer_config(io, options, model_file, output_name, "calib.cache" if calib else None)
    if calib is not None and config.network_mode == NETWORK_MODES["int8"]:
        _copy(calib, out_dir / "calib.cache", [path])
        files.append("calib.cache")
    atomic_write_text(out_dir / "labels.txt", config.labels_text)
    atomic_write_text(out_dir / "nvinfer_config.txt", config.text)
    atomic_write_text(out_dir / "README.md", readme(path.name, config.warnings))
    files += ["labels.txt", "nvinfer_config.txt", "README.md"]
    return DeepStreamReport(
        out=str(out_dir), config=config.text, net_scale_factor=config.net_scale_factor, offsets=config.offsets,
        model_color_format=config.model_color_format, network_mode=config.network_mode, files=sorted(files),
        warnings=config.warnings,
    )


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
