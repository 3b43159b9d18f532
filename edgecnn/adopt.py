"""Bring your own model: give a classifier ONNX made elsewhere (PyTorch, timm, tf2onnx, Ultralytics, ...) the edgecnn
contract once, checked, so every command then runs it without preprocessing flags.

What is decided, and from where (a command-line option wins over what the model says, which wins over the preset):
- which input and output: the only ones, or `input`/`output` (the graph is cut down to them);
- input size, layout (NCHW/NHWC) and dtype (float32, or uint8 for models that normalise inside): read from the graph
  where it is unambiguous;
- resize policy, crop ratio, interpolation, colour order, mean/std: a preset (`PRESETS`), timm's pretrained config
  (a JSON beside the model), Ultralytics' metadata (`names`, `imgsz`), or options;
- whether the output is logits or probabilities: a Softmax at the end of the graph means probabilities;
- labels: a file (names, ImageNet wnids, or `wnid name` lines), or Ultralytics' `names`.

Checks before writing: onnx.checker and strict shape inference, labels count against a real run's class dimension,
the input shape against the size, and a dynamic batch kept, or added when a batch of 2 gives the same outputs as two
batches of 1. With labelled `data` the top-1 is measured; `check_preprocessing` scores every preset on it and refuses
a preprocessing that a preset beats by far, naming that preset.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.contract import ModelContract, imagenet_labels, read_labels_file, write_onnx_contract
from edgecnn.errors import AccuracyGateError, ArtifactError, UserInputError
from edgecnn.files import (
    check_output_file,
    ensure_distinct,
    prepare_output_folder,
    refuse_existing,
    remove_created,
    sha256_file,
)
from edgecnn.onnx_io import save_onnx
from edgecnn.preprocess import PreprocessConfig

_IMAGENET_MEAN = tuple(round(v * 255, 4) for v in (0.485, 0.456, 0.406))
_IMAGENET_STD = tuple(round(v * 255, 4) for v in (0.229, 0.224, 0.225))

# Each preset is a complete preprocessing (size and layout come from the graph). Values on the 0-255 scale.
PRESETS: dict[str, dict] = {
    # torchvision / timm ImageNet models: resize the short side to size/0.875, centre crop, (x/255 - mean) / std
    "imagenet": dict(
        resize="shorter_crop",
        crop_ratio=0.875,
        interpolation="linear",
        channel_order="rgb",
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
    ),
    # Inception / TF-slim / many Keras applications: x/127.5 - 1
    "inception": dict(
        resize="shorter_crop",
        crop_ratio=0.875,
        interpolation="linear",
        channel_order="rgb",
        mean=(127.5,) * 3,
        std=(127.5,) * 3,
    ),
    # EfficientNet-Lite and MobileNet TFLite ports: (x - 127) / 128 on 0-255, bicubic as the TF reference evaluates
    "tf-lite": dict(
        resize="shorter_crop",
        crop_ratio=0.875,
        interpolation="cubic",
        channel_order="rgb",
        mean=(127.0,) * 3,
        std=(128.0,) * 3,
    ),
    # x / 255, nothing else
    "raw-0-1": dict(
        resize="shorter_crop",
        crop_ratio=0.875,
        interpolation="linear",
        channel_order="rgb",
        mean=(0.0,) * 3,
        std=(255.0,) * 3,
    ),
    # Ultralytics classify_transforms (8.1+): short side to size, centre crop (crop fraction 1.0), bilinear, x / 255
    "ultralytics-cls": dict(
        resize="shorter_crop",
        crop_ratio=1.0,
        interpolation="linear",
        channel_order="rgb",
        mean=(0.0,) * 3,
        std=(255.0,) * 3,
    ),
}

Progress = Callable[[str], None]
_WNID = re.compile(r"^n\d{8}$")
_TIMM_INTERP = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest", "area": "area"}


@dataclass
class AdoptOptions:
    """What the command line can say; None: decided from the graph, the model's own metadata or the preset."""

    labels: Path | None = None
    preset: str | None = None
    size: tuple[int, int] | None = None
    resize: str | None = None
    crop_ratio: float | None = None
    interpolation: str | None = None
    channel_order: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    scale: str | None = None  # '0-1' or '0-255': the scale mean/std are given on (default: 0-1 when every std < 1)
    layout: str | None = None
    dtype: str | None = None
    input: str | None = None
    output: str | None = None
    output_kind: str | None = None  # 'logits' or 'probabilities'
    dynamic_batch: bool = True  # keep a dynamic batch, or add one where the graph allows it
    data: Path | None = None  # a labelled folder: top-1 is reported
    check_preprocessing: bool = False  # score every preset on `data`
    limit: int = 200  # images of `data` used (spread over the folder)
    force: bool = False


@dataclass
class AdoptReport:
    out: str
    source: str
    input: dict
    output: dict
    labels: int
    preprocess: dict
    decided_by: dict  # setting -> where it came from ('graph', 'preset tf-lite', 'timm config', 'option', ...)
    batch: str  # 'dynamic' or the fixed size
    sha256: str = ""
    top1: float | None = None  # on `data` (None: no data, or its folders do not name the model's classes)
    confidence: float | None = None  # mean top-1 probability on `data`
    scored_images: int = 0
    candidates: list[dict] = field(default_factory=list)  # check_preprocessing: every preset's score, best first
    best: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the graph


def _graph_inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(value_info) -> list:
    """int for a fixed dimension, the symbol (or None) for a dynamic one."""
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None))
    return out


def _elem_dtype(value_info) -> str:
    from onnx import TensorProto

    kind = value_info.type.tensor_type.elem_type
    names = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8"}
    if kind not in names:
        raise UserInputError(
            f"input {value_info.name!r} is {TensorProto.DataType.Name(kind).lower()}: edgecnn feeds float32 "
            "(normalised) or uint8 (pixels) inputs; re-export the model with one of those"
        )
    return names[kind]


def _select(kind: str, names: list[str], wanted: str | None) -> str:
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


# ---------------------------------------------------------------- what the model says about itself


def ultralytics_facts(model) -> dict:
    """Labels, size and preset from Ultralytics' metadata_props (`names`, `imgsz`, `task`), read as data."""
    props = {p.key: p.value for p in model.metadata_props}
    if "names" not in props or props.get("task", "classify") != "classify":
        return {}
    facts: dict = {"from": "Ultralytics metadata", "preset": "ultralytics-cls"}
    try:
        names = ast.literal_eval(props["names"])
        if isinstance(names, dict):
            facts["labels"] = [str(names[k]) for k in sorted(names, key=int)]
        elif isinstance(names, (list, tuple)):
            facts["labels"] = [str(n) for n in names]
        size = ast.literal_eval(props["imgsz"]) if "imgsz" in props else None
        if isinstance(size, int):
            facts["size"] = (size, size)
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            facts["size"] = (int(size[0]), int(size[1]))
    except (ValueError, SyntaxError, TypeError, KeyError) as exc:
        raise ArtifactError(f"Ultralytics metadata (names/imgsz) cannot be read: {exc}") from exc
    return facts


def timm_config_path(path: Path) -> Path | None:
    """timm's pretrained config beside the model: MODEL.json, MODEL.config.json or config.json (Hugging Face)."""
    for cand in (path.with_suffix(".json"), path.with_name(path.stem + ".config.json"), path.with_name("config.json")):
        if cand.is_file():
            return cand
    return None


def timm_facts(path: Path) -> dict:
    """Preprocessing (and labels) from a timm pretrained config JSON (`pretrained_cfg` or its keys at the top)."""
    cfg_path = timm_config_path(path)
    if cfg_path is None:
        return {}
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{cfg_path} (beside the model) is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        return {}
    pre = data.get("pretrained_cfg", data)
    if not isinstance(pre, dict) or not {"mean", "std"} <= set(pre):
        return {}
    facts: dict = {"from": f"timm config {cfg_path.name}"}
    try:
        facts["mean"] = tuple(float(v) * 255 for v in pre["mean"])
        facts["std"] = tuple(float(v) * 255 for v in pre["std"])
        if "input_size" in pre:
            facts["size"] = (int(pre["input_size"][-2]), int(pre["input_size"][-1]))
        if "crop_pct" in pre:
            facts["crop_ratio"] = min(1.0, float(pre["crop_pct"]))
        mode = pre.get("crop_mode", "center")
        facts["resize"] = "resize" if mode == "squash" else "shorter_crop"
        if pre.get("interpolation") in _TIMM_INTERP:
            facts["interpolation"] = _TIMM_INTERP[pre["interpolation"]]
    except (TypeError, ValueError, IndexError) as exc:
        raise UserInputError(f"{cfg_path}: pretrained config values cannot be read ({exc})") from exc
    names = data.get("label_names")
    if isinstance(names, list) and names:
        facts["labels"] = [str(n) for n in names]
    return facts


# ---------------------------------------------------------------- labels


def read_adopt_labels(path: Path) -> tuple[list[str], list[str] | None]:
    """(labels, label keys) from a labels file: one name per line; or ImageNet wnids (named from edgecnn's ImageNet
    table); or `wnid name, other names` lines (synset_words.txt): the wnids become the keys."""
    lines = read_labels_file(path)
    if all(_WNID.match(line) for line in lines):
        names, wnids = imagenet_labels()
        by_wnid = dict(zip(wnids, names))
        return [by_wnid.get(w, w) for w in lines], list(lines)
    split = [line.split(None, 1) for line in lines]
    if all(len(parts) == 2 and _WNID.match(parts[0]) for parts in split):
        return [parts[1].split(",")[0].strip() for parts in split], [parts[0] for parts in split]
    return lines, None


# ---------------------------------------------------------------- preprocessing


def preset_config(name: str, size: tuple[int, int], layout: str, dtype: str) -> PreprocessConfig:
    if name not in PRESETS:
        raise UserInputError(f"--preset {name!r} is not one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    if dtype == "uint8":  # the model normalises: pixels go in unchanged
        values.update(mean=(0.0,) * 3, std=(1.0,) * 3)
    return PreprocessConfig(input_size=size, layout=layout, dtype=dtype, **values)


def _on_255(values, scale: str | None, std: tuple | None) -> tuple[float, ...]:
    factor = 255.0 if (scale == "0-1" or (scale is None and std is not None and max(std) < 1.0)) else 1.0
    return tuple(float(v) * factor for v in values)


def decide_preprocess(
    options: AdoptOptions, graph: dict, found: dict, notes: list[str]
) -> tuple[PreprocessConfig, dict]:
    """The preprocessing, and where each setting came from. `graph`: size/layout/dtype read from the input;
    `found`: what the model's own metadata (timm config, Ultralytics) says."""
    decided: dict[str, str] = {}

    def pick(key: str, option, default=None, default_from="default"):
        if option is not None:
            decided[key] = "option"
            return option
        if key in graph and graph[key] is not None:
            decided[key] = "graph"
            return graph[key]
        if key in found:
            decided[key] = found["from"]
            return found[key]
        decided[key] = default_from
        return default

    size = pick("size", options.size)
    if graph.get("size") and options.size and tuple(options.size) != tuple(graph["size"]):
        raise UserInputError(
            f"--size {options.size[0]},{options.size[1]} does not fit the model's input, which is fixed at "
            f"{graph['size'][0]}x{graph['size'][1]}"
        )
    if graph.get("size") and found.get("size") and tuple(found["size"]) != tuple(graph["size"]):
        notes.append(f"{found['from']} says size {found['size']}, the graph is {graph['size']}: the graph's is used")
    if size is None:
        raise UserInputError("The model's input height and width are dynamic: give the size with --size H,W")
    layout = pick("layout", options.layout)
    if layout is None:
        raise UserInputError(
            f"Cannot tell the layout from the input shape {graph['shape']}: give --layout nchw or --layout nhwc"
        )
    dtype = pick("dtype", options.dtype)
    if options.dtype is not None and graph.get("dtype") and options.dtype != graph["dtype"]:
        raise UserInputError(f"--dtype {options.dtype}, but the model's input is {graph['dtype']}")

    preset = options.preset or found.get("preset")
    base_from = f"preset {preset}" if options.preset else (found.get("from") if preset else None)
    has_numbers = (options.mean is not None and options.std is not None) or dtype == "uint8"
    if preset is None and "mean" not in found and not has_numbers:
        raise UserInputError(
            f"How were this model's inputs made? Give --preset ({', '.join(PRESETS)}) or --mean R,G,B --std R,G,B "
            "(add --data DIR --check-preprocessing to find the preset)"
        )
    if preset and preset not in PRESETS:
        raise UserInputError(f"--preset {preset!r} is not one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else PRESETS["raw-0-1"]  # numbers given (or timm's): the rest as x / 255 has it
    values = {}
    for key in ("resize", "crop_ratio", "interpolation", "channel_order", "mean", "std"):
        option = getattr(options, key)
        if key in ("mean", "std") and option is not None:
            option = _on_255(option, options.scale, options.std)
        if option is not None:
            values[key], decided[key] = option, "option"
        elif key in found and not options.preset:
            values[key], decided[key] = found[key], found["from"]
        else:
            values[key], decided[key] = base[key], base_from or "default"
    if (options.mean is None) != (options.std is None) and dtype != "uint8":
        notes.append(
            "only one of --mean/--std given: the other comes from " + decided["mean" if options.std else "std"]
        )
    if dtype == "uint8":
        if options.mean is not None or options.std is not None:
            raise UserInputError("The model takes uint8 pixels (it normalises inside): --mean/--std do not apply")
        values.update(mean=(0.0,) * 3, std=(1.0,) * 3)
        decided["mean"] = decided["std"] = "uint8 input: normalised inside the model"
    cfg = PreprocessConfig(input_size=tuple(size), layout=layout, dtype=dtype, **values)
    return cfg, decided


# ---------------------------------------------------------------- adopt


def adopt(
    model: str | os.PathLike,
    out: str | os.PathLike,
    options: AdoptOptions | None = None,
    progress: Progress | None = None,
) -> AdoptReport:
    """Write `out`: the ONNX `model` with the edgecnn contract in its metadata, after the checks (module docstring).
    Raises UserInputError for what the user can fix (nothing written), AccuracyGateError when check_preprocessing
    finds a preset that scores far better than the chosen preprocessing."""
    import onnx

    options = options or AdoptOptions()
    say = progress or (lambda msg: None)
    src, out = Path(model), Path(out)
    if not src.is_file():
        raise UserInputError(f"{src} does not exist" + (" (it is a folder)" if src.is_dir() else ""))
    for p, flag in ((src, "MODEL"), (out, "--out")):
        if p.suffix.lower() != ".onnx":
            raise UserInputError(f"{flag} {p.name}: adopt reads and writes ONNX files (.onnx)")
    check_output_file(out, "--out")
    ensure_distinct(src, out)
    refuse_existing(out, "--out", options.force)
    if options.check_preprocessing and options.data is None:
        raise UserInputError("--check-preprocessing scores the presets on images: give --data DIR")
    if options.data is not None and not Path(options.data).exists():
        raise UserInputError(f"--data {options.data} does not exist")
    if options.output_kind not in (None, "logits", "probabilities"):
        raise UserInputError(f"--output-kind must be logits or probabilities, got {options.output_kind!r}")

    say(f"reading {src}")
    try:
        proto = onnx.load(str(src))
    except Exception as exc:
        raise ArtifactError(f"{src} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    notes: list[str] = []
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ArtifactError(f"{src}: onnx.checker rejects the graph: {str(exc).splitlines()[0][:300]}") from exc

    in_name = _select("input", [i.name for i in _graph_inputs(proto)], options.input)
    out_name = _select("output", [o.name for o in proto.graph.output], options.output)
    if len(_graph_inputs(proto)) > 1 or len(proto.graph.output) > 1:
        say(f"cutting the graph down to {in_name} -> {out_name}")
        kept_props = list(proto.metadata_props)
        proto = cut_to(proto, in_name, out_name)
        proto.metadata_props.extend(kept_props)
        notes.append(f"graph cut down to input {in_name!r} and output {out_name!r}")
    inp = _graph_inputs(proto)[0]
    dims = _dims(inp)
    if len(dims) != 4:
        raise UserInputError(f"input {in_name!r} has shape {dims}: edgecnn runs image classifiers (a 4-D input)")
    layout = detect_layout(dims)
    if options.layout and layout and options.layout != layout:
        notes.append(f"--layout {options.layout} overrides the graph's look ({layout})")
    hw = (dims[1], dims[2]) if (options.layout or layout) == "nhwc" else (dims[2], dims[3])
    graph = {
        "shape": dims,
        "layout": layout,
        "dtype": _elem_dtype(inp),
        "size": tuple(hw) if all(isinstance(d, int) for d in hw) else None,
    }
    found = {**timm_facts(src), **ultralytics_facts(proto)}
    cfg, decided = decide_preprocess(options, graph, found, notes)
    channels = dims[1] if cfg.layout == "nchw" else dims[3]
    if isinstance(channels, int) and channels != 3:
        raise UserInputError(
            f"input {in_name!r} {dims} has {channels} channel(s) in {cfg.layout.upper()}: edgecnn feeds 3-channel "
            "images (wrong --layout?)"
        )

    if options.labels is not None:
        labels, keys = read_adopt_labels(Path(options.labels))
        decided["labels"] = f"--labels {Path(options.labels).name}"
    elif found.get("labels"):
        labels, keys = found["labels"], None
        decided["labels"] = found["from"]
    else:
        raise UserInputError("Give the class names with --labels FILE (one per line, in output order)")

    out_dims = _dims(proto.graph.output[0])
    if out_dims and isinstance(out_dims[-1], int) and out_dims[-1] != len(labels):
        raise UserInputError(
            f"The labels list {len(labels)} classes but the model outputs {out_dims[-1]} scores per image "
            f"(output {out_name!r} {out_dims}): give the labels file of this model"
        )
    kind = options.output_kind or ("probabilities" if ends_in_softmax(proto, out_name) else "logits")
    decided["output"] = "option" if options.output_kind else "graph"
    batch_dim = dims[0]
    proto, batch = _batch(proto, batch_dim, options.dynamic_batch, cfg, notes, say)

    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ArtifactError(f"{src}: ONNX shape inference fails: {str(exc).splitlines()[0][:300]}") from exc

    contract = ModelContract(
        labels=list(labels),
        preprocess=cfg,
        arch=None,
        label_keys=keys,
        output=kind,
        provenance={
            "adopted_from": src.name,
            "source_sha256": sha256_file(src),
            "producer": f"{proto.producer_name} {proto.producer_version}".strip() or None,
            "input": in_name,
            "output": out_name,
            "decided_by": decided,
        },
    )
    write_onnx_contract(proto, contract)
    created = prepare_output_folder(out, "--out")
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".adopt-") as tmp:
            candidate = Path(tmp) / out.name
            save_onnx(proto, candidate)
            report = _check_and_score(candidate, contract, options, notes, say)
            report.input = {"name": in_name, "shape": dims, "layout": cfg.layout, "dtype": cfg.dtype}
            report.output = {"name": out_name, "kind": kind}
            report.preprocess, report.decided_by, report.batch = cfg.to_dict(), decided, batch
            report.source = str(src)
            os.replace(candidate, out)
    except BaseException:
        remove_created(created, out.parent)
        raise
    report.out, report.sha256 = str(out), sha256_file(out)
    return report


def _batch(proto, batch_dim, dynamic: bool, cfg: PreprocessConfig, notes: list[str], say: Progress):
    """(model, 'dynamic' or the fixed batch): a dynamic batch is kept; a fixed batch of 1 is made dynamic when the
    graph gives the same outputs for a batch of 2 as for two batches of 1 (a batch baked into a Reshape does not)."""
    if not isinstance(batch_dim, int):
        return proto, "dynamic"
    if not dynamic or batch_dim != 1:
        return proto, str(batch_dim)
    say("trying a dynamic batch")
    trial = copy.deepcopy(proto)
    for vi in (_graph_inputs(trial)[0], trial.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_value")
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del trial.graph.value_info[:]  # shapes inferred for batch 1 would contradict the new batch
    try:
        import onnxruntime as ort

        from edgecnn.runtime.onnxrt import session_options

        session = ort.InferenceSession(trial.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        x = _probe_batch(cfg, 2)
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


def _probe_batch(cfg: PreprocessConfig, n: int) -> np.ndarray:
    """n different, image-like inputs in the model's format (made by preprocess() from made frames)."""
    from edgecnn.preprocess import preprocess

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (cfg.height + 7, cfg.width + 5, 3), dtype=np.uint8) for _ in range(n)]
    return preprocess(frames, cfg)


def _check_and_score(path: Path, contract: ModelContract, options: AdoptOptions, notes, say) -> AdoptReport:
    """Open the written candidate as edgecnn will (ONNX Runtime runner: contract, input shape, class count), and
    score it on `data` when given."""
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

    report = AdoptReport(
        out="",
        source="",
        input={},
        output={},
        labels=len(contract.labels),
        preprocess={},
        decided_by={},
        batch="",
        notes=notes,
    )
    say("checking the adopted model with ONNX Runtime")
    with OnnxRuntimeRunner(path) as runner:
        logits = runner.infer(_probe_batch(contract.preprocess, 1))
        if logits.ndim != 2 or logits.shape[1] != len(contract.labels):
            raise UserInputError(
                f"The labels list {len(contract.labels)} classes but the model outputs "
                f"{logits.shape[1] if logits.ndim == 2 else tuple(logits.shape)} scores per image: give the labels "
                "file of this model"
            )
        if not np.all(np.isfinite(logits)):
            raise ArtifactError("The model's outputs are not finite (NaN/inf) on a test input")
        if options.data is None:
            return report
        frames, truth, labelled = _read_data(Path(options.data), contract, options.limit, notes)
        say(f"scoring on {len(frames)} images of {options.data}")
        top1, conf = _score(runner, frames, truth, contract.preprocess)
        report.top1, report.confidence, report.scored_images = top1, conf, len(frames)
        if not options.check_preprocessing:
            return report
        base = contract.preprocess
        results = []
        for name, cand in _candidates(base):
            say(f"trying preset {name}")
            runner.contract = replace(contract, preprocess=cand)
            t, c = _score(runner, frames, truth, cand)
            results.append({"preset": name, "top1": t, "confidence": c, "preprocess": cand.to_dict()})
        runner.contract = contract
    # top-1 first, confidence breaks ties (presets close to each other often tie on top-1)
    key = (lambda r: (r["top1"], r["confidence"])) if labelled else (lambda r: (r["confidence"],))
    results.sort(key=key, reverse=True)
    report.candidates, report.best = results, results[0]["preset"]
    if not labelled:  # confidence on photos of other classes says little: ranked, never refused
        notes.append(
            "presets ranked by confidence only, which is not conclusive: give --data a folder labelled with the "
            "model's classes to check the preprocessing"
        )
        return report
    best = results[0]["top1"]
    # Far behind the best preset: the commonest mistake (colour order, 0-1 vs 0-255, mean/std), refused.
    if best - top1 > 0.05:
        ties = [r["preset"] for r in results[1:] if r["top1"] >= best - 0.005]
        also = f" (so does {', '.join(ties)})" if ties else ""
        fix = f"--preset {report.best.split('+')[0]}" + (" --channel-order bgr" if report.best.endswith("+bgr") else "")
        raise AccuracyGateError(
            f"The preprocessing chosen scores {top1:.1%} top-1 on {options.data}, preset {report.best} scores "
            f"{best:.1%}{also}: re-run with {fix}; nothing written",
            details=report.to_dict(),
        )
    return report


def _candidates(base: PreprocessConfig):
    """Every preset in both colour orders, at the model's size, layout and dtype."""
    for name in PRESETS:
        cfg = preset_config(name, base.input_size, base.layout, base.dtype)
        yield name, cfg
        yield name + "+bgr", replace(cfg, channel_order="bgr")


def _read_data(folder: Path, contract: ModelContract, limit: int, notes: list[str]):
    """(frames, true class per frame or None, labelled?): decoded once, spread over the folder. The folders score
    top-1 when they name the model's classes (names, wnids or ids); otherwise only the confidence is measured."""
    from edgecnn.data import find_splits, list_images, map_classes, read_image, scan_image_folder

    truth = None
    try:
        root, test = find_splits(folder)
        scanned = scan_image_folder(test or root)
        mapping = map_classes(scanned.classes, contract.labels, contract.label_keys)
        samples = [(p, mapping[i]) for p, i in scanned.samples]
    except UserInputError:
        samples = [(p, -1) for p in list_images(folder)]
        notes.append(f"the folders of {folder} do not name the model's classes: scored by confidence only")
    if not samples:
        raise UserInputError(f"--data {folder} holds no images")
    if len(samples) > limit:
        samples = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, limit).astype(int)]
    frames, classes = [], []
    for p, c in samples:
        frame = read_image(p)
        if frame is not None:
            frames.append(frame)
            classes.append(c)
    if not frames:
        raise UserInputError(f"--data {folder}: none of its images can be decoded")
    labelled = all(c >= 0 for c in classes)
    if labelled:
        truth = np.asarray(classes)
    return frames, truth, labelled


def _score(runner, frames, truth, cfg: PreprocessConfig, batch: int = 16) -> tuple[float | None, float]:
    """(top-1 or None, mean top-1 probability) of `runner` on `frames` through `cfg`."""
    from edgecnn.postprocess import softmax
    from edgecnn.preprocess import preprocess

    logits = np.concatenate(
        [runner.infer(preprocess(frames[i : i + batch], cfg)) for i in range(0, len(frames), batch)]
    )
    probs = softmax(logits)
    top1 = float(np.mean(probs.argmax(1) == truth)) if truth is not None else None
    return top1, float(np.mean(probs.max(1)))
