"""Model registry: `@register_model`, `create_model(name, **kw)`, `list_models()` (after timm's _registry/_factory).

A registered builder is `fn(num_classes: int, **kwargs) -> torch.nn.Module`. Each entry also names the default
preprocessing (input size, mean/std, resize policy) that travels with the model into every artifact.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig

FAMILY_MODULES = ("cifar_cnn", "lenet", "mobilenetv2", "resnet", "efficientnet_lite")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    preprocess: PreprocessConfig
    description: str = ""
    pretrained: bool = False  # True: weights ship offline and `pretrained=True` loads them
    default_kwargs: dict = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, preprocess: PreprocessConfig, description: str = "", pretrained: bool = False, **default_kwargs
):
    """Decorator registering a builder under `name`."""

    def wrap(fn):
        if name in _MODELS and _MODELS[name].builder is not fn:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = ModelEntry(
            name, fn, preprocess, description or (fn.__doc__ or "").strip().split("\n")[0], pretrained, default_kwargs
        )
        return fn

    return wrap


def _load_families() -> None:
    for mod in FAMILY_MODULES:
        importlib.import_module(f"edgecnn.models.{mod}")


def get_entry(name: str) -> ModelEntry:
    _load_families()
    if name not in _MODELS:
        raise UserInputError(
            f"Unknown architecture {name!r}. Known: {', '.join(sorted(_MODELS))} (see `edgecnn models`)"
        )
    return _MODELS[name]


def create_model(name: str, num_classes: int | None = None, pretrained: bool = False, **kwargs):
    """Build a registered model. `pretrained=True` loads its offline weights (replacing the classifier when
    `num_classes` differs from the pretrained head: transfer learning)."""
    entry = get_entry(name)
    if pretrained and not entry.pretrained:
        raise UserInputError(f"{name} has no pretrained weights; pretrained models: {', '.join(pretrained_models())}")
    args = {**entry.default_kwargs, **kwargs}
    if num_classes is not None:
        args["num_classes"] = num_classes
    _check_builder_args(name, args)
    if entry.pretrained:
        args["pretrained"] = pretrained
    return entry.builder(**args)


def _check_builder_args(name: str, args: dict) -> None:
    """The shared builder options, checked by value: a zero width or a dropout of 1.5 would otherwise build a broken
    network (or fail deep inside torch) only after the data was decoded."""

    def number(key):
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserInputError(f"{name}: {key} must be a number, got {value!r}")
        return value

    if "width_mult" in args and not number("width_mult") > 0:
        raise UserInputError(f"{name}: width_mult must be positive, got {args['width_mult']}")
    if "dropout" in args and not 0 <= number("dropout") < 1:
        raise UserInputError(f"{name}: dropout must be in [0, 1), got {args['dropout']}")
    classes = args.get("num_classes", 1)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise UserInputError(f"{name}: num_classes must be a positive integer, got {classes!r}")


def list_models() -> list[ModelEntry]:
    _load_families()
    return [_MODELS[k] for k in sorted(_MODELS)]


def pretrained_models() -> list[str]:
    return [e.name for e in list_models() if e.pretrained]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
