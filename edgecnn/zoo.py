"""The model zoo as files: a registered pretrained name -> a model file, made once into the cache folder.

What the user typed as MODEL is either an existing path or a pretrained name from the model registry
(`edgecnn.models.registry`, whose `pretrained` flag is the one list of them). A name is materialised once into the
cache folder ($EDGECNN_CACHE, default ~/.cache/edgecnn), keyed by the edgecnn version so an upgrade that changes the
model's contract never reuses a stale file: an ONNX file for the default ONNX Runtime path, a checkpoint for the torch
backend. Making it needs PyTorch (once); using the cached ONNX afterwards does not.

Entry points (the CLI, `profile_models`, `quantize`, `deploy`) resolve names here first; `runtime.load` and
`export_onnx` take files. `open_model` is `runtime.load` for a name or a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgecnn import __version__
from edgecnn.errors import StorageError, UserInputError
from edgecnn.files import prepare_output_folder
from edgecnn.models.registry import pretrained_models
from edgecnn.runtime.base import Runner, load, model_file


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECNN_CACHE") or Path.home() / ".cache" / "edgecnn")


def resolve_model(model: str | os.PathLike, backend: str | None = None) -> Path:
    """A path to a model file for `model` (a file path or a registered pretrained name)."""
    if Path(model).exists():
        return model_file(model)
    name = str(model)
    pretrained = pretrained_models()
    if name in pretrained:
        if backend == "torch":
            return pretrained_checkpoint(name)
        return pretrained_onnx(name)
    hint = f" Registered pretrained names: {', '.join(sorted(pretrained))}." if pretrained else ""
    raise UserInputError(f"Model {name} not found: no such file.{hint}")


def open_model(model: str | os.PathLike, backend: str | None = None, **options) -> Runner:
    """`runtime.load` for a model file or a registered pretrained name."""
    return load(resolve_model(model, backend=backend), backend=backend, **options)


def _writable_cache(target: Path) -> None:
    """The cache folder made and probed before a model is materialised into it: an unwritable $EDGECNN_CACHE (/proc,
    a read-only mount) is one line naming the variable, not an internal error from deep inside torch.save."""
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
        from edgecnn.export import ExportOptions, export_onnx  # PyTorch: only to make the file, once

        export_onnx(pretrained_checkpoint(name), target, ExportOptions(dynamic_batch=True))
    return target
