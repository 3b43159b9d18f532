"""PyTorch -> ONNX with the model contract in `metadata_props`, `onnx.checker`, and a parity check.

The parity check runs the exported file on ONNX Runtime and the PyTorch model on the same inputs — real images when
any are at hand (`data`, else the training data recorded in the checkpoint, else the repo's calibration/ folder), random
inputs otherwise (the report says which) — and fails above `tolerance` (max abs difference of the logits). An explicit
`data` is used or the export fails; it is never silently replaced.

The TorchScript-based exporter (`dynamo=False`) is used: it needs no onnxscript, and gives the plain static graphs that
TensorRT and the quantizer handle best.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.checkpoint import load_checkpoint
from edgecnn.contract import write_onnx_contract
from edgecnn.data import list_images, read_image
from edgecnn.errors import AccuracyGateError, ArtifactError, EdgeCNNError, UserInputError, require_torch
from edgecnn.files import (
    check_output_file,
    ensure_distinct,
    prepare_output_folder,
    raise_storage_error,
    refuse_existing,
    remove_created,
    sha256_file,
    temp_folder,
)
from edgecnn.onnx_io import save_onnx
from edgecnn.preprocess import preprocess
from edgecnn.runtime.base import model_file
from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

DEFAULT_CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "calibration"


@dataclass
class ExportOptions:
    opset: int = 17  # within opset_range()
    batch: int = 1  # fixed batch size; with dynamic_batch it must stay 1
    dynamic_batch: bool = False
    tolerance: float = 1e-3  # max abs logit difference allowed between PyTorch and ONNX Runtime
    data: Path | None = None  # images for the parity check
    parity_images: int = 8
    force: bool = False  # replace an existing `out` (without it, an existing file is refused)


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


def opset_range() -> tuple[int, int]:
    """The ONNX opsets `torch.onnx.export(dynamo=False)` supports in the installed PyTorch (7..20 in torch 2.x; above
    20 it warns "not supported" and above 23 it fails). ONNX Runtime runs all of them (it has no kernels below 7)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):  # private module: fall back to torch 2.x's numbers
        return 7, 20


def check_options(options: ExportOptions) -> None:
    """Refuse options that cannot work (or would silently do something else) before any work starts."""
    low, high = opset_range()
    if isinstance(options.opset, bool) or not isinstance(options.opset, int) or not low <= options.opset <= high:
        raise UserInputError(
            f"--opset {options.opset} is not supported: the PyTorch ONNX exporter writes opsets {low} to {high} "
            "(17 is the default; TensorRT and ONNX Runtime read them all)"
        )
    if options.batch < 1:
        raise UserInputError("--batch must be >= 1")
    if options.dynamic_batch and options.batch != 1:
        raise UserInputError(
            f"--batch {options.batch} and --dynamic-batch exclude each other: --dynamic-batch exports any batch size, "
            "--batch N exports exactly N"
        )
    tol = options.tolerance
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise UserInputError(f"--tolerance must be a finite number > 0 (max abs logit difference), got {tol}")
    if options.parity_images < 1:
        raise UserInputError("parity_images must be >= 1")
    if options.data is not None and not Path(options.data).exists():
        raise UserInputError(f"--data {options.data} does not exist")


def _read_some(paths: list[Path], count: int) -> list[np.ndarray]:
    """Up to `count` decodable images, spread over `paths` (not only the first class); unreadable ones are replaced
    by the next readable ones."""
    if len(paths) > count:
        spread = [int(i) for i in np.linspace(0, len(paths) - 1, count).astype(int)]
        chosen = set(spread)
        order = [paths[i] for i in spread] + [p for i, p in enumerate(paths) if i not in chosen]
    else:
        order = list(paths)
    frames = []
    for p in order:
        frame = read_image(p)
        if frame is not None:
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


def _parity_frames(options: ExportOptions, training: dict, count: int) -> tuple[list[np.ndarray], str]:
    """Real images for the parity check, and a sentence saying where they came from.

    An explicit `data` is used or the export fails: it is never silently replaced by other images or random inputs.
    """
    if options.data is not None:
        folder = Path(options.data)
        if not folder.exists():
            raise UserInputError(f"--data {folder} does not exist")
        paths = list_images(folder)
        frames = _read_some(paths, count)
        if not frames:
            if folder.is_file():
                found = "it is not an image file" if not paths else "the image cannot be decoded"
            else:
                found = f"none of its {len(paths)} image file(s) can be decoded" if paths else "it holds no image files"
            raise UserInputError(
                f"--data {folder} has no readable images for the parity check ({found}); give a folder of images, "
                "or leave --data out to use the training data"
            )
        return frames, f"{len(frames)} real images from {folder}"
    candidates = []
    if training.get("data"):
        candidates.append(Path(training["data"]))
    candidates.append(DEFAULT_CALIBRATION_DIR)
    for folder in candidates:
        if not folder.exists():
            continue
        frames = _read_some(list_images(folder), count)
        if frames:
            return frames, f"{len(frames)} real images from {folder}"
    return [], "random inputs (pass --data DIR to check on real images)"


@contextlib.contextmanager
def _exporter_output_silenced():
    """Keep the exporter's chatter off stdout (where `--json` output goes) and off the user's screen.

    torch's TorchScript exporter always enables its C++ log (a bug in `setup_onnx_logging`), which writes e.g. the whole
    "Torch IR graph at exception" to the process's stdout (file descriptor 1) when an export fails. File descriptor 1
    and Python's sys.stdout are pointed at a scratch file for the duration and the text is dropped: the exception that
    follows says what failed.
    """
    import ctypes

    def flush_c_stdio():
        try:
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass

    with tempfile.TemporaryFile() as sink, open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        saved = None
        try:
            if sys.__stdout__ is not None:
                sys.__stdout__.flush()
            flush_c_stdio()
            saved = os.dup(1)
            os.dup2(sink.fileno(), 1)
        except (OSError, ValueError):  # no usable file descriptor 1: Python-level redirection only
            if saved is not None:
                os.close(saved)
            saved = None
        try:
            yield
        finally:
            if saved is not None:
                flush_c_stdio()
                os.dup2(saved, 1)
                os.close(saved)


def export_onnx(
    model: str | os.PathLike,
    out: str | os.PathLike,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a checkpoint to ONNX with its contract; check parity; write atomically. (A registered pretrained name:
    `edgecnn.zoo.resolve_model(name, backend="torch")` gives its checkpoint.)"""
    require_torch()

    options = options or ExportOptions()
    say = progress or (lambda msg: None)
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UserInputError(f"--out should end in .onnx, got {out.name}")
    check_output_file(out, "--out")
    refuse_existing(out, "--out", options.force)
    check_options(options)
    src = model_file(model)
    if src.suffix.lower() not in (".pt", ".pth"):
        raise UserInputError(f"export takes a PyTorch checkpoint (.pt) or a pretrained name, got {src.name}")
    ensure_distinct(src, out)
    created = prepare_output_folder(out, "--out")  # unwritable: one clear line now, not an internal error later
    try:
        return _export(src, out, options, say)
    except BaseException as exc:  # nothing written: take back the folders made for --out too
        remove_created(created, out.parent)
        # a full disk or a read-only folder met anywhere in the export (torch's writer, onnx, the staging folder) is
        # that, not an export failure "at opset 17"
        raise_storage_error(exc.__cause__ or exc if isinstance(exc, ArtifactError) else exc, [out])
        raise


def _export(src: Path, out: Path, options: ExportOptions, say: Callable[[str], None]) -> ExportReport:
    """The export itself, into the probed folder of `out` (see `export_onnx`)."""
    torch = require_torch()
    import onnx

    say(f"loading {src}")
    net, contract, ckpt = load_checkpoint(src)
    cfg = contract.preprocess
    batch = 1 if options.dynamic_batch else options.batch
    example = torch.zeros(cfg.input_shape(batch), dtype=torch.float32)
    dynamic_axes = {"input": {0: "N"}, "logits": {0: "N"}} if options.dynamic_batch else None

    say(f"exporting to ONNX opset {options.opset}")
    with temp_folder(out, "export") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with _exporter_output_silenced():
                    torch.onnx.export(
                        net,
                        (example,),
                        str(raw),
                        dynamo=False,
                        input_names=["input"],
                        output_names=["logits"],
                        dynamic_axes=dynamic_axes,
                        opset_version=options.opset,
                        do_constant_folding=True,
                    )
            except Exception as exc:
                reason = " ".join(str(exc).replace(str(raw), out.name).split())[:300] or exc.__class__.__name__
                raise ArtifactError(
                    f"ONNX export of {contract.arch} failed at opset {options.opset}: {reason}"
                ) from exc
        proto = onnx.load(str(raw))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ArtifactError(f"onnx.checker rejected the export: {exc}") from exc
    contract = contract.with_provenance(
        source_checkpoint=str(src),
        source_sha256=sha256_file(src),
        exporter=f"torch {torch.__version__}",
        opset=options.opset,
        training=ckpt.get("training") or {},
    )
    write_onnx_contract(proto, contract)

    # Parity: write next to the destination first, check, then publish (a failed check leaves nothing behind).
    frames, parity_inputs = _parity_frames(options, ckpt.get("training") or {}, options.parity_images)
    if frames:
        x = preprocess(frames, cfg)
    else:
        x = np.random.default_rng(0).normal(0, 1, size=cfg.input_shape(options.parity_images)).astype(np.float32)
    with temp_folder(out, "export") as tmp:
        candidate = Path(tmp) / out.name
        save_onnx(proto, candidate)
        say("checking parity with ONNX Runtime")
        try:
            with OnnxRuntimeRunner(candidate) as runner:
                onnx_logits = runner.infer(x)
        except (EdgeCNNError, RuntimeError, ValueError) as exc:  # name the output, not the staging folder
            raise ArtifactError(
                f"ONNX Runtime cannot run the opset {options.opset} export of {contract.arch}: "
                + str(exc).replace(str(candidate), out.name).strip().splitlines()[0][:300]
                + "; nothing written"
            ) from exc
        with torch.no_grad():
            torch_logits = net(torch.from_numpy(x)).numpy()
        if not np.all(np.isfinite(torch_logits)):
            raise AccuracyGateError(
                f"The model's own PyTorch logits are not finite (NaN/inf) on {parity_inputs}: the checkpoint's "
                "weights are damaged or diverged in training; nothing written"
            )
        diff = float(np.max(np.abs(onnx_logits - torch_logits)))
        agree = float(np.mean(onnx_logits.argmax(1) == torch_logits.argmax(1)))
        if not np.isfinite(diff) or diff > options.tolerance:
            raise AccuracyGateError(
                f"Parity check failed: max abs diff {diff:.3g} > tolerance {options.tolerance:g} on {parity_inputs}; "
                "nothing written"
            )
        os.replace(candidate, out)  # same folder: an atomic rename
    return ExportReport(
        out=str(out),
        arch=contract.arch,
        opset=options.opset,
        input_shape=["N" if options.dynamic_batch else batch, *cfg.input_shape(1)[1:]],
        classes=contract.num_classes,
        max_abs_diff=diff,
        parity_inputs=parity_inputs,
        tolerance=options.tolerance,
        sha256=sha256_file(out),
        size_bytes=out.stat().st_size,
        top1_agreement=agree,
    )
