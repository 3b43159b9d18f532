"""The one Runner protocol every backend implements, and the backend registry.

A backend is one module in `edgecnn/runtime/` that defines `BACKEND = Backend(...)`; `load(path)` picks it from the
file suffix (or `backend=`). Backend modules must import cheaply: optional packages (tensorrt, cuda, openvino, torch)
are imported inside `Backend.open`, never at module level, so `--help` and the ONNX path work without them.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgecnn.contract import ModelContract
from edgecnn.errors import ArtifactError, UserInputError, format_shape
from edgecnn.preprocess import preprocess


def batch_chunks(batch: np.ndarray, size: int, pad: bool):
    """Yield (chunk, real rows) over `batch` in pieces of `size`; with `pad`, the last piece is zero-padded to `size`
    (a fixed-batch model takes nothing else) and the caller keeps only the first `real` rows of its result."""
    for start in range(0, batch.shape[0], size):
        part = batch[start : start + size]
        real = part.shape[0]
        if pad and real < size:
            part = np.concatenate([part, np.zeros((size - real,) + part.shape[1:], dtype=part.dtype)])
        yield part, real


@dataclass(frozen=True)
class InputSpec:
    """What `infer()` accepts: name, shape (None for a dynamic dimension), dtype and the batch range."""

    name: str
    shape: tuple
    dtype: str = "float32"
    min_batch: int = 1
    max_batch: int | None = None  # None: unbounded

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when the model only takes one, else None."""
        return self.min_batch if self.max_batch == self.min_batch else None

    def check_batch(self, n: int) -> None:
        if n < self.min_batch:
            raise UserInputError(f"Batch size {n} is below the model's minimum {self.min_batch}")
        if self.max_batch is not None and self.fixed_batch is None and n > self.max_batch:
            raise UserInputError(
                f"Batch size {n} is outside the model's range {self.min_batch}..{self.max_batch}: "
                "rebuild it with a larger --batch MIN:OPT:MAX"
            )


class Runner(abc.ABC):
    """A loaded model: `infer(float32 batch) -> logits`, plus the contract it came with. Use as a context manager."""

    backend: str = "?"

    def __init__(self, path: Path, contract: ModelContract, input_spec: InputSpec, classes: int | None = None):
        """classes: the model's output size when the backend knows it; it must match the labels in the contract
        (more labels would name classes that do not exist, fewer would fail on the first prediction)."""
        self.path = Path(path)
        self.contract = contract
        self.input_spec = input_spec
        if classes is not None and classes != len(contract.labels):
            raise ArtifactError(
                f"{self.path.name} outputs {classes} classes but its metadata lists "
                f"{len(contract.labels)} labels: re-export it (`edgecnn export`)"
            )

    @property
    def labels(self) -> list[str]:
        return self.contract.labels

    @property
    def preprocess_config(self):
        return self.contract.preprocess

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch the model accepts as is; return N×C float32 outputs (logits or probabilities)."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed batch of any size (split into chunks a fixed-batch model takes).

        A model that outputs probabilities (contract output 'probabilities': a Softmax at its end) gives their
        logarithm: logits of the same probabilities, so every consumer applies softmax once and gets them back."""
        out = self._infer_any(batch)
        if self.contract.output == "probabilities":
            return np.log(np.maximum(out, np.float32(1e-30)), dtype=np.float32)
        return out

    def _infer_any(self, batch: np.ndarray) -> np.ndarray:
        dtype = np.uint8 if self.contract.preprocess.dtype == "uint8" else np.float32
        if dtype is np.uint8 and np.asarray(batch).dtype != np.uint8:
            raise UserInputError(
                f"{self.path.name} takes uint8 pixels (its normalisation is inside the model), got "
                f"{np.asarray(batch).dtype}: feed it what preprocess() makes with the model's own contract"
            )
        batch = np.ascontiguousarray(batch, dtype=dtype)
        expected = tuple(self.input_spec.shape[1:])
        if batch.ndim != len(self.input_spec.shape) or any(
            e is not None and e != g for e, g in zip(expected, batch.shape[1:])
        ):
            raise UserInputError(
                f"{self.path.name} takes input {format_shape(self.input_spec.shape)}, got {tuple(batch.shape)}"
            )
        fixed = self.input_spec.fixed_batch
        n = batch.shape[0]
        if fixed is None:
            limit = self.input_spec.max_batch
            if limit is None or n <= limit:
                self.input_spec.check_batch(n)
                return self._infer(batch)
            chunk = limit
        else:
            chunk = fixed
        return np.concatenate(
            [self._infer(part)[:real] for part, real in batch_chunks(batch, chunk, fixed is not None)]
        )

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Logits for BGR uint8 frames, through the model's own preprocessing."""
        return self.infer(preprocess(frames, self.contract.preprocess))

    def close(self) -> None:  # noqa: B027 (an optional hook: a backend with nothing to release keeps this no-op)
        """Release sessions and device memory. Safe to call twice."""

    def describe(self) -> dict:
        return {
            "backend": self.backend,
            "path": str(self.path),
            "input": {
                "name": self.input_spec.name,
                "shape": list(self.input_spec.shape),
                "dtype": self.input_spec.dtype,
            },
            "classes": len(self.labels),
            "precision": self.contract.precision,
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):  # best effort; explicit close() is the contract
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True)
class Backend:
    """A backend's registration: its name, the file suffixes it opens, and how to open one."""

    name: str
    suffixes: tuple[str, ...]
    open: Callable[..., Runner]
    description: str = ""
    available: Callable[[], bool] = field(default=lambda: True)
    # Optional: do the backend's one-time setup (import, runtime environment) without a model file, taking the same
    # options as `open`; `profile` calls it before timing loads so the first model is not charged for it.
    prime: Callable[..., None] | None = None


_REGISTRY: dict[str, Backend] = {}


def backends() -> dict[str, Backend]:
    """All backends, discovered from the modules of this package that define BACKEND."""
    if not _REGISTRY:
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package's modules
            if info.name == "base":
                continue
            module = importlib.import_module(f"edgecnn.runtime.{info.name}")
            backend = getattr(module, "BACKEND", None)
            if isinstance(backend, Backend):
                _REGISTRY[backend.name] = backend
    return _REGISTRY


def backend_for(path: Path, backend: str | None = None) -> Backend:
    regs = backends()
    if backend:
        if backend not in regs:
            raise UserInputError(f"Unknown backend {backend!r}; available: {', '.join(sorted(regs))}")
        return regs[backend]
    suffix = path.suffix.lower()
    for b in regs.values():
        if suffix in b.suffixes:
            return b
    known = sorted({s for b in regs.values() for s in b.suffixes})
    raise UserInputError(f"Don't know how to run {path.name}: expected one of {', '.join(known)}")


def model_file(model: str | Path) -> Path:
    """`model` as an existing model file, or a UserInputError naming what is wrong with it."""
    path = Path(model)
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; expected a model file (.pt, .onnx, .engine)")
    if not path.exists():
        raise UserInputError(
            f"Model {model} not found: no such file (a registered pretrained name opens with edgecnn.zoo.open_model)"
        )
    return path


def load(model: str | Path, backend: str | None = None, **options) -> Runner:
    """Open any supported model file as a Runner (a registered pretrained name: `edgecnn.zoo.open_model`, which makes
    it a file first: the torch-free runtime never builds models).

    options are backend-specific (e.g. `threads=` for ONNX Runtime, `providers=`).
    """
    path = model_file(model)
    return backend_for(path, backend).open(path, **options)
