"""`.pt` checkpoints: arch name + kwargs, state_dict, the model contract and the training summary.

Loaded with `torch.load(..., weights_only=True)`: a checkpoint is data, never code. Written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgecnn.artifacts import ModelContract, atomic_path
from edgecnn.errors import ArtifactError, UserInputError, require_torch

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


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; never executes code from the file."""
    torch = require_torch()
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, weights_only refusals
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ArtifactError(f"{path} is not a loadable edgecnn checkpoint (weights-only load refused or failed: {first})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an edgecnn checkpoint (no '{FORMAT}' marker)")
    for key in ("arch", "arch_kwargs", "state_dict", "contract"):
        if key not in ckpt:
            raise ArtifactError(f"{path}: checkpoint is missing '{key}'")
    return ckpt


def load_checkpoint(path: str | os.PathLike):
    """(model in eval mode, contract, raw checkpoint dict)."""
    from edgecnn.models.registry import create_model

    ckpt = read_checkpoint(path)
    contract = ModelContract.from_dict(ckpt["contract"])
    model = create_model(ckpt["arch"], **ckpt["arch_kwargs"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit architecture {ckpt['arch']} ({str(exc).splitlines()[0][:200]})") from exc
    model.eval()
    return model, contract, ckpt


def pretrained_contract(name: str) -> ModelContract:
    """Contract of a registered pretrained model (labels and preprocessing of its training)."""
    from edgecnn.artifacts import imagenet_labels
    from edgecnn.models.registry import get_entry

    entry = get_entry(name)
    names, wnids = imagenet_labels()
    return ModelContract(labels=names, label_keys=wnids, preprocess=entry.preprocess, arch=name,
                         provenance={"source": f"pretrained:{name}"})


def save_pretrained_checkpoint(name: str, target: str | os.PathLike) -> Path:
    """Materialise a registered pretrained model as a checkpoint (the cache entry for `name`)."""
    from edgecnn.models.registry import create_model

    model = create_model(name, pretrained=True)
    return save_checkpoint(target, model, name, {"num_classes": 1000}, pretrained_contract(name),
                           training={"pretrained": True})
