"""Errors a user can act on.

Library code raises these; the CLI turns them into one line on stderr and a non-zero exit code (no traceback unless
`--debug`). The message should name the fix, not just the fault.
"""

from __future__ import annotations

import errno
import os


class EdgeCNNError(Exception):
    """Base class: a problem the user can fix. `exit_code` is what the CLI exits with."""

    exit_code = 1


class UserInputError(EdgeCNNError):
    """Bad arguments, missing or unreadable files, wrong formats, shape mismatches."""

    exit_code = 2


class MissingDependencyError(EdgeCNNError):
    """An optional package (torch, tensorrt, cuda-python, openvino, ...) is not installed: exit code 3 for every one
    of them, PyTorch included (`require_torch`)."""

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


class StorageError(EdgeCNNError):
    """The environment refused a write: disk full, quota, read-only file system, no permission, an I/O error.

    Not the user's arguments and not a bug: one class, one exit code (74, EX_IOERR), one message shape, "Cannot
    write WHAT: WHY; KEPT" (what could not be written, the cause in words, and what is still there), whichever
    command met it. Raised by the writing helpers (edgecnn.files) and, for writes outside them, by the CLI from
    the OSError (`storage_error`)."""

    exit_code = 74

    def __init__(self, what: str, why: str, kept: str = "nothing was replaced", verb: str = "write"):
        super().__init__(f"Cannot {verb} {what}: {why}; {kept}")
        self.what, self.why, self.kept = what, why, kept
        self.details = {"what": what, "why": why, "kept": kept}


# errno -> the cause in words (the fix follows from it); these are the environment's failures, not the input's.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (failing disk or storage)",
}
# Text of the same failures where a library turned the OSError into its own error (torch's zip writer says
# "unexpected pos"/"file write failed" on a full disk; onnx and protobuf say "No space left on device").
_STORAGE_TEXT = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "file write failed": errno.ENOSPC,
    "unexpected pos": errno.ENOSPC,
}


def storage_errno(exc: BaseException | None) -> int | None:
    """The environment errno behind `exc` (its cause/context chain included), or None: a full disk, a read-only file
    system, ... met by a library that re-raised it as its own error still counts."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc.errno
        text = str(exc).lower()
        for needle, code in _STORAGE_TEXT.items():
            if needle in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def storage_error(
    exc: BaseException,
    what: str | os.PathLike | None = None,
    kept: str = "nothing was replaced",
    verb: str | None = None,
) -> StorageError | None:
    """A StorageError for `exc` when an environment failure is behind it (else None): names `what` (default: the
    file the OSError names), the cause in words, and `kept`. `verb`: 'write' where the caller knows it was a write;
    by default 'access' for a refusal that may have been a read (permission denied, an I/O error)."""
    code = storage_errno(exc)
    if code is None:
        return None
    if what is None:
        what = getattr(exc, "filename", None) or "the output"
    if verb is None:
        verb = "write" if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "access"
    return StorageError(str(what), STORAGE_ERRNOS[code], kept, verb=verb)


def format_shape(shape) -> str:
    """A tensor shape as messages write it: (N, 3, 224, 224), N for a dynamic dimension (None)."""
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


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


def require_torch(hint: str = TORCH_HINT):
    """PyTorch, or MissingDependencyError: the inference path never needs it, training and export do. The one
    "torch is missing" helper; `hint` says what needs it and how to get it."""
    return require("torch", hint)


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
