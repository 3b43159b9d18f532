"""Turn what a user typed as MODEL into a file: an existing path, or a registered pretrained name.

A pretrained name (e.g. `efficientnet-lite0`) is materialised once into the cache folder
($EDGECNN_CACHE, default ~/.cache/edgecnn), keyed by the edgecnn version so an upgrade that changes the model's
contract never reuses a stale file: an ONNX file for the default ONNX Runtime path, a checkpoint for the
torch backend. Making it needs PyTorch (once); using the cached ONNX afterwards does not.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgecnn import __version__
from edgecnn.errors import UserInputError
from edgecnn.models.catalog import PRETRAINED


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECNN_CACHE") or Path.home() / ".cache" / "edgecnn")


def resolve_model(model: str | os.PathLike, backend: str | None = None) -> Path:
    """A path to a model file for `model` (a file path or a registered pretrained name)."""
    path = Path(model)
    if path.exists():
        if path.is_dir():
            raise UserInputError(f"{path} is a folder; expected a model file (.pt, .onnx, .engine)")
        return path
    name = str(model)
    if name in PRETRAINED:
        if backend == "torch":
            return pretrained_checkpoint(name)
        return pretrained_onnx(name)
    hint = f" Registered pretrained names: {', '.join(sorted(PRETRAINED))}." if PRETRAINED else ""
    raise UserInputError(f"Model {name} not found: no such file.{hint}")


def _writable_cache(target: Path) -> None:
    """The cache folder made and probed before a model is materialised into it: an unwritable $EDGECNN_CACHE (/proc,
    a read-only mount) is one line naming the variable, not an internal error from deep inside torch.save."""
    from edgecnn.errors import StorageError
    from edgecnn.files import prepare_output_folder

    try:
        prepare_output_folder(target, "model cache file")
    except StorageError as exc:  # a read-only or forbidden cache folder, a full disk: exit 74, with the fix
        fix = "set EDGECNN_CACHE to a writable folder (default ~/.cache/edgecnn)"
        raise StorageError(exc.what, exc.why, f"{exc.kept}; {fix}") from exc
    except UserInputError as exc:
        raise UserInputError(f"{exc}: set EDGECNN_CACHE to a writable folder (default ~/.cache/edgecnn)") from exc


def pretrained_checkpoint(name: str) -> Path:
    """The pretrained model as an edgecnn checkpoint in the cache (made once, needs PyTorch)."""
    target = cache_dir() / f"{name}-{__version__}.pt"
    if not target.exists():
        _writable_cache(target)
        from edgecnn.checkpoint import save_pretrained_checkpoint

        save_pretrained_checkpoint(name, target)
    return target


def pretrained_onnx(name: str) -> Path:
    """The pretrained model as ONNX (dynamic batch) in the cache (made once, needs PyTorch)."""
    target = cache_dir() / f"{name}-{__version__}.onnx"
    if not target.exists():
        _writable_cache(target)
        from edgecnn.export import ExportOptions, export_onnx

        export_onnx(pretrained_checkpoint(name), target, ExportOptions(dynamic_batch=True))
    return target
