"""Errors a user can act on.

Library code raises these; the CLI turns them into one line on stderr and a non-zero exit code (no traceback unless
`--debug`). The message should name the fix, not just the fault.
"""

from __future__ import annotations


class EdgeCNNError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the CLI exits with."""

    exit_code = 1


class UserInputError(EdgeCNNError):
    """Bad arguments, missing or unreadable files, wrong formats, shape mismatches."""

    exit_code = 2


class MissingDependencyError(EdgeCNNError):
    """An optional package (torch, tensorrt, cuda-python, openvino, ...) is not installed."""

    exit_code = 3


class ArtifactError(EdgeCNNError):
    """An artifact is corrupt, tampered with, or incompatible with this machine."""

    exit_code = 4


class ExternalDataError(ArtifactError):
    """An ONNX model's external data (weights in files beside it) is missing, truncated, or outside its folder."""


class AccuracyGateError(EdgeCNNError):
    """A measured accuracy or parity check failed its bound. `details`: what was measured (JSON-able), so a
    `--json` caller gets the numbers as well as the exit code."""

    exit_code = 5

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


class SourceError(EdgeCNNError):
    """A camera, stream or video source cannot be opened or was lost for good."""

    exit_code = 6


def require(module: str, install_hint: str):
    """Import an optional module lazily, or raise MissingDependencyError naming how to get it.

    The single place optional heavy imports go through (tensorrt, cuda-python, openvino, torch on the inference path).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # includes ModuleNotFoundError and broken installs
        raise MissingDependencyError(
            f"{module} is not available ({exc.__class__.__name__}: {exc}). {install_hint}"
        ) from exc


TORCH_HINT = (
    "Training, export and .pt checkpoints need PyTorch: pip install 'edgecnn[train]' (CPU: pip install torch==2.13.0)."
)


def require_torch():
    """PyTorch, or a clear error: the inference path never needs it, training and export do."""
    return require("torch", TORCH_HINT)


def caused_by_ctrl_c(exc: BaseException) -> bool:
    """Whether Ctrl-C is behind `exc`: a library (an import interrupted half-way, ...) may turn KeyboardInterrupt into
    its own error, which is then an interruption (exit 130), not a bug."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
