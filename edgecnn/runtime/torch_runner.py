"""PyTorch backend for `.pt` checkpoints: the reference the exported and quantized models are compared against.

torch is imported only when a checkpoint is opened, so the rest of runtime/ stays torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.errors import UserInputError, require_torch
from edgecnn.runtime.base import Backend, InputSpec, Runner, backends


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, path: Path, threads: int | None = None, device: str = "cpu"):
        from edgecnn.checkpoint import load_checkpoint

        torch = require_torch()
        if threads:
            torch.set_num_threads(int(threads))
        model, contract, _ = load_checkpoint(path)
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        spec = InputSpec(name="input", shape=contract.preprocess.input_shape(None))
        super().__init__(path, contract, spec)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def close(self) -> None:
        self.model = None


def _open(path: Path, **options) -> Runner:
    """A file another backend runs (--backend torch on model.onnx) is refused by its suffix: torch.load's own
    complaint about it ('a plain pickle ...') says nothing about the real mistake."""
    suffix = Path(path).suffix.lower()
    if suffix not in BACKEND.suffixes:
        other = next((b.name for b in backends().values() if suffix in b.suffixes), None)
        if other is not None:
            raise UserInputError(
                f"The torch backend runs .pt checkpoints, not {Path(path).name}: leave --backend out "
                f"(or use --backend {other}) for {suffix} files"
            )
    return TorchRunner(path, **options)


BACKEND = Backend(name="torch", suffixes=(".pt", ".pth"), open=_open, description="PyTorch eager (checkpoints)")
