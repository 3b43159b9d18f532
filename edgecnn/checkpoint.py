"""`.pt` checkpoints: arch name + kwargs, state_dict, the model contract and the training summary.

Loaded with `torch.load(..., weights_only=True)`: a checkpoint is data, never code. Written atomically.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from edgecnn.contract import ModelContract, contract_from_checkpoint, imagenet_labels
from edgecnn.errors import ArtifactError, UserInputError, require_torch
from edgecnn.files import atomic_path
from edgecnn.models.registry import create_model, get_entry

FORMAT = "edgecnn.checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    model,
    arch: str,
    arch_kwargs: dict,
    contract: ModelContract,
    training: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically. `extra` holds resumable state (optimizer, scheduler, epoch)."""
    torch = require_torch()
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "contract": contract.to_dict(),
        "training": training or {},
    }
    if extra:
        payload["extra"] = extra
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return Path(path)


RESAVE_HINT = (
    "re-save it with edgecnn.checkpoint.save_checkpoint(), or as plain data: torch.save({'format': '%s', "
    "'version': %d, 'arch': <registry name>, 'arch_kwargs': {...}, 'state_dict': model.state_dict(), "
    "'contract': ModelContract(...).to_dict()}, path)" % (FORMAT, VERSION)
)


def _load_error(path: Path, exc: Exception) -> ArtifactError:
    """edgecnn's own one-line reason why `torch.load(weights_only=True)` could not read `path` (never PyTorch's
    advice to retry with weights_only=False: that would run code from the file)."""
    text = str(exc)
    if "Weights only load failed" in text or exc.__class__.__name__ == "UnpicklingError":
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it references {found.group(1)})" if found else ""
        if found or "Unsupported global" in text:
            return ArtifactError(
                f"{path} holds Python objects beyond tensors and plain data{what}; edgecnn loads checkpoints "
                f"weights-only and never runs code from a file: {RESAVE_HINT}"
            )
        return ArtifactError(
            f"{path} is not a torch.save checkpoint of tensors and plain data (a plain pickle, or objects a "
            f"weights-only load cannot read); edgecnn never runs code from a file: {RESAVE_HINT}"
        )
    if isinstance(exc, EOFError) or path.stat().st_size == 0:
        return ArtifactError(f"{path} is empty or truncated: not a loadable edgecnn checkpoint")
    if "zip archive" in text or "central directory" in text:
        return ArtifactError(f"{path} is truncated or corrupt (its zip archive cannot be read): re-copy or re-save it")
    return ArtifactError(
        f"{path} is not a readable PyTorch checkpoint ({exc.__class__.__name__}): "
        "expected a file written by `edgecnn train` or torch.save"
    )


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; never executes code from the file."""
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4" on a plain pickle: the error says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, weights_only refusals
        raise _load_error(path, exc) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an edgecnn checkpoint (no '{FORMAT}' marker)")
    for key in ("arch", "arch_kwargs", "state_dict", "contract"):
        if key not in ckpt:
            raise ArtifactError(f"{path}: checkpoint is missing '{key}'")
    if not isinstance(ckpt["arch"], str) or not ckpt["arch"]:
        raise ArtifactError(f"checkpoint {path}: 'arch' is {ckpt['arch']!r}, expected a registered architecture name")
    kwargs = ckpt["arch_kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ArtifactError(
            f"checkpoint {path}: arch_kwargs {_short(kwargs)} do not fit arch {ckpt['arch']}: "
            "expected a dict of keyword arguments"
        )
    if not isinstance(ckpt["state_dict"], dict):
        raise ArtifactError(
            f"checkpoint {path}: 'state_dict' is a {type(ckpt['state_dict']).__name__}, expected a "
            "dict of tensors (model.state_dict())"
        )
    if not isinstance(ckpt["contract"], dict):
        raise ArtifactError(
            f"checkpoint {path}: 'contract' is a {type(ckpt['contract']).__name__}, expected a dict "
            "(ModelContract.to_dict(): labels, preprocess, ...)"
        )
    return ckpt


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _state_dict_problems(exc: Exception, limit: int = 3) -> str:
    """PyTorch's load_state_dict error is a headline plus one tab-indented line per problem: keep the problems."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    if not lines:
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
    shown = []
    for line in lines[:limit]:
        line = re.sub(r"torch\.Size\((\[[^\]]*\])\)", r"\1", line).rstrip(".")
        shown.append(line if len(line) <= 200 else line[:197] + "...")
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(shown) + more


def load_checkpoint(path: str | os.PathLike):
    """(model in eval mode, contract, raw checkpoint dict)."""
    ckpt = read_checkpoint(path)
    contract = contract_from_checkpoint(path, ckpt)
    arch, kwargs = ckpt["arch"], ckpt["arch_kwargs"]
    try:
        model = create_model(arch, **kwargs)
    except UserInputError as exc:  # unknown architecture (a file from a newer edgecnn, or a damaged one)
        raise ArtifactError(f"checkpoint {path}: {exc}") from exc
    except (TypeError, ValueError) as exc:  # unknown keyword, wrong type or value for the builder
        raise ArtifactError(f"checkpoint {path}: arch_kwargs {_short(kwargs)} do not fit arch {arch}: {exc}") from exc
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(
            f"checkpoint {path}: weights do not fit architecture {arch} with arch_kwargs {_short(kwargs)}: "
            f"{_state_dict_problems(exc)}"
        ) from exc
    classes = kwargs.get("num_classes")
    if isinstance(classes, int) and classes != contract.num_classes:
        raise ArtifactError(
            f"checkpoint {path}: the model has {classes} outputs (arch_kwargs num_classes) but the contract has "
            f"{contract.num_classes} labels {_short(contract.labels, 80)}: each output needs exactly one label"
        )
    model.eval()
    check_finite_weights(path, model.state_dict())
    _check_forward(path, model, contract, arch)
    return model, contract, ckpt


def check_finite_weights(path: str | os.PathLike, state_dict: dict) -> None:
    """NaN/inf weights give NaN scores ('ship nan%') and a meaningless accuracy: refuse them at load, for every
    command alike (export used to be the only one that noticed), and before a --resume spends time decoding data only
    to report 'training diverged'."""
    torch = require_torch()
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtifactError(
                f"checkpoint {path}: weights {name} are not finite (NaN/inf): the file is damaged or "
                "its training diverged; use an earlier checkpoint or retrain"
            )


def _check_forward(path: Path, model, contract: ModelContract, arch: str) -> None:
    """One forward pass at the contract's input size: the output must be (batch, one score per label). The
    arch_kwargs may lack num_classes (a hand-made file) and the input size may not fit the architecture (lenet5 at
    64×64): without this, predict, eval and export met such a file on the first batch, as an internal error or (9
    labels for 10 outputs) an IndexError or a silently wrong accuracy."""
    torch = require_torch()
    pre = contract.preprocess
    try:
        with torch.no_grad():
            out = model(torch.zeros(pre.input_shape(1), dtype=torch.float32))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ArtifactError(
            f"checkpoint {path}: {arch} cannot take the {pre.height}×{pre.width} input its contract names "
            f"({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__}): the "
            "contract's preprocess input_size does not fit the weights"
        ) from exc
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2:
        raise ArtifactError(f"checkpoint {path}: {arch} outputs shape {list(shape)}, not (batch, classes)")
    if shape[1] != contract.num_classes:
        raise ArtifactError(
            f"checkpoint {path}: the model has {shape[1]} outputs but the contract has {contract.num_classes} labels "
            f"{_short(contract.labels, 80)}: each output needs exactly one label"
        )


def pretrained_contract(name: str) -> ModelContract:
    """Contract of a registered pretrained model (labels and preprocessing of its training)."""
    entry = get_entry(name)
    names, wnids = imagenet_labels()
    return ModelContract(
        labels=names,
        label_keys=wnids,
        preprocess=entry.preprocess,
        arch=name,
        provenance={"source": f"pretrained:{name}"},
    )


def save_pretrained_checkpoint(name: str, target: str | os.PathLike) -> Path:
    """Materialise a registered pretrained model as a checkpoint (the cache entry for `name`)."""
    model = create_model(name, pretrained=True)
    return save_checkpoint(
        target, model, name, {"num_classes": 1000}, pretrained_contract(name), training={"pretrained": True}
    )
