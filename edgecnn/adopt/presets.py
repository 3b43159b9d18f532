"""The presets (complete preprocessings of the common conventions) and how the preprocessing is decided: an
option wins over what the model says about itself, which wins over the preset."""

from __future__ import annotations

from edgecnn.adopt.options import AdoptOptions
from edgecnn.errors import UserInputError
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
