"""PyTorch -> ONNX with the model contract in `metadata_props`, `onnx.checker`, and a parity check.

The parity check runs the exported file on ONNX Runtime and the PyTorch model on the same inputs — real images when
any are at hand (`data`, else the training data recorded in the checkpoint, else the repo's calibration/ folder), random
inputs otherwise (the report says which) — and fails above `tolerance` (max abs difference of the logits).

The TorchScript-based exporter (`dynamo=False`) is used: it needs no onnxscript, and gives the plain static graphs that
TensorRT and the quantizer handle best.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.artifacts import ensure_distinct, save_onnx, sha256_file, write_onnx_contract
from edgecnn.errors import AccuracyGateError, ArtifactError, UserInputError, require_torch

DEFAULT_CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "calibration"


@dataclass
class ExportOptions:
    opset: int = 17
    batch: int = 1  # fixed batch size (ignored with dynamic_batch)
    dynamic_batch: bool = False
    tolerance: float = 1e-3  # max abs logit difference allowed between PyTorch and ONNX Runtime
    data: Path | None = None  # images for the parity check
    parity_images: int = 8


@dataclass
class ExportReport:
    out: str
    arch: str | None
    opset: int
    input_shape: list
    classes: int
    max_abs_diff: float
    parity_inputs: str
    tolerance: float
    sha256: str
    size_bytes: int
    top1_agreement: float = 1.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _parity_frames(options: ExportOptions, training: dict, count: int) -> tuple[list[np.ndarray], str]:
    """Real images for the parity check, and a sentence saying where they came from."""
    from edgecnn.data import list_images, read_image

    candidates = []
    if options.data is not None:
        if not Path(options.data).exists():
            raise UserInputError(f"Parity data {options.data} does not exist")
        candidates.append(Path(options.data))
    if training.get("data"):
        candidates.append(Path(training["data"]))
    candidates.append(DEFAULT_CALIBRATION_DIR)
    for folder in candidates:
        if not folder.exists():
            continue
        paths = list_images(folder)
        if len(paths) > count:  # spread over the folder, not only the first class
            paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
        frames = [f for f in (read_image(p) for p in paths) if f is not None]
        if frames:
            return frames, f"{len(frames)} real images from {folder}"
    return [], "random inputs (pass --data DIR to check on real images)"


def export_onnx(
    model: str | os.PathLike,
    out: str | os.PathLike,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a checkpoint (or registered pretrained name) to ONNX with its contract; check parity; write atomically."""
    torch = require_torch()
    import onnx

    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.preprocess import preprocess
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner
    from edgecnn.runtime.resolve import resolve_model

    options = options or ExportOptions()
    say = progress or (lambda msg: None)
    out = Path(out)
    src = resolve_model(model, backend="torch")
    if src.suffix.lower() not in (".pt", ".pth"):
        raise UserInputError(f"export takes a PyTorch checkpoint (.pt) or a pretrained name, got {src.name}")
    ensure_distinct(src, out)
    if out.suffix.lower() != ".onnx":
        raise UserInputError(f"--out should end in .onnx, got {out.name}")
    if options.batch < 1:
        raise UserInputError("--batch must be >= 1")

    say(f"loading {src}")
    net, contract, ckpt = load_checkpoint(src)
    cfg = contract.preprocess
    batch = 1 if options.dynamic_batch else options.batch
    example = torch.zeros(cfg.input_shape(batch), dtype=torch.float32)
    dynamic_axes = {"input": {0: "N"}, "logits": {0: "N"}} if options.dynamic_batch else None

    say(f"exporting to ONNX opset {options.opset}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out.parent

    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=".export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    net, (example,), str(raw), dynamo=False, input_names=["input"], output_names=["logits"],
                    dynamic_axes=dynamic_axes, opset_version=options.opset, do_constant_folding=True,
                )
            except Exception as exc:
                raise ArtifactError(f"ONNX export of {contract.arch} failed at opset {options.opset}: {exc}") from exc
        proto = onnx.load(str(raw))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ArtifactError(f"onnx.checker rejected the export: {exc}") from exc
    contract = contract.with_provenance(
        source_checkpoint=str(src), source_sha256=sha256_file(src), exporter=f"torch {torch.__version__}",
        opset=options.opset, training=ckpt.get("training") or {},
    )
    write_onnx_contract(proto, contract)

    # Parity: write next to the destination first, check, then publish (a failed check leaves nothing behind).
    frames, parity_inputs = _parity_frames(options, ckpt.get("training") or {}, options.parity_images)
    if frames:
        x = preprocess(frames, cfg)
    else:
        x = np.random.default_rng(0).normal(0, 1, size=cfg.input_shape(options.parity_images)).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=".export-") as tmp:
        candidate = Path(tmp) / out.name
        save_onnx(proto, candidate)
        say("checking parity with ONNX Runtime")
        with OnnxRuntimeRunner(candidate) as runner:
            onnx_logits = runner.infer(x)
        with torch.no_grad():
            torch_logits = net(torch.from_numpy(x)).numpy()
        diff = float(np.max(np.abs(onnx_logits - torch_logits)))
        agree = float(np.mean(onnx_logits.argmax(1) == torch_logits.argmax(1)))
        if not np.isfinite(diff) or diff > options.tolerance:
            raise AccuracyGateError(
                f"Parity check failed: max abs diff {diff:.3g} > tolerance {options.tolerance:g} on {parity_inputs}; "
                "nothing written"
            )
        os.replace(candidate, out)  # same folder: an atomic rename
    return ExportReport(
        out=str(out), arch=contract.arch, opset=options.opset,
        input_shape=["N" if options.dynamic_batch else batch, *cfg.input_shape(1)[1:]],
        classes=contract.num_classes, max_abs_diff=diff, parity_inputs=parity_inputs, tolerance=options.tolerance,
        sha256=sha256_file(out), size_bytes=out.stat().st_size, top1_agreement=agree,
    )
