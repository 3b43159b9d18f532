"""One step from a checkpoint (or a registered name, or an ONNX) to a TensorRT engine: export -> quantize -> build.

Each intermediate is kept beside the engine (`NAME.fp32.onnx`, `NAME.int8.onnx`, `NAME.calib`) and a small record
(`NAME.steps.json`) says what it was made from: a step whose inputs (file digests, image folder listing, options,
edgecnn version) are unchanged is reused instead of redone. Without TensorRT (`print_trtexec`), the steps before the
build still run, so the Q/DQ ONNX is there for the printed trtexec command.

The steps are the library functions the separate commands call (`export_onnx`, `quantize`, `build_engine`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgecnn import __version__
from edgecnn.errors import UserInputError
from edgecnn.files import atomic_write_json, check_output_file, sha256_file
from edgecnn.onnx_io import onnx_sha256
from edgecnn.trt.plan import BuildOptions

# progress(step, message): step is 'export', 'quantize' or 'build'
StepProgress = Callable[[str, str], None]


@dataclass
class OneStepOptions:
    build: BuildOptions = field(default_factory=BuildOptions)
    calib: Path | None = None  # calibration images (int8)
    val: Path | None = None  # labelled images for the INT8 accuracy gate
    max_drop: float | None = None  # percentage points of top-1 INT8 may lose on `val`
    num_images: int | None = 500  # calibration images used
    print_trtexec: bool = False  # stop before the build; the caller prints the trtexec command for the last ONNX
    trt_version: str | None = None


@dataclass
class StepRecord:
    step: str
    output: str
    reused: bool
    seconds: float
    details: dict = field(default_factory=dict)


@dataclass
class OneStepReport:
    engine: str
    onnx: str  # the ONNX the engine is (or would be) built from
    steps: list[StepRecord]
    build: dict | None = None  # build_engine's report (None with print_trtexec)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "onnx": self.onnx, "steps": [asdict(s) for s in self.steps], "build": self.build}


def intermediates(out: Path) -> dict[str, Path]:
    """Where the steps keep their outputs, beside `out` (the engine, or a deploy bundle)."""
    name = out.name
    for suffix in (".tar.gz", ".tgz", ".engine", ".plan"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = out.with_name(name)
    return {
        "fp32": Path(f"{stem}.fp32.onnx"),
        "int8": Path(f"{stem}.int8.onnx"),
        "calib": Path(f"{stem}.calib"),
        "record": Path(f"{stem}.steps.json"),
    }


def folder_fingerprint(folder: Path | None) -> str | None:
    """sha256 of a folder's file listing (relative path, size, modification time): changes when any image does."""
    if folder is None:
        return None
    folder = Path(folder)
    h = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder) if p != folder else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _reusable(record: dict, step: str, inputs: dict, output: Path, digest) -> bool:
    """The step's recorded inputs equal `inputs` and its output is still the file it wrote."""
    entry = record.get(step)
    if not isinstance(entry, dict) or entry.get("inputs") != inputs or not output.is_file():
        return False
    try:
        return entry.get("output_sha256") == digest(output)
    except OSError:
        return False


def build_from_source(
    model: str | os.PathLike,
    out: str | os.PathLike,
    options: OneStepOptions | None = None,
    progress: StepProgress | None = None,
) -> OneStepReport:
    """Export (a .pt or a registered name), quantize (int8), then build `out`, reusing unchanged intermediates."""
    from edgecnn.trt.builder import ENGINE_SUFFIXES

    options = options or OneStepOptions()
    say = progress or (lambda step, msg: None)
    out = Path(out)
    check_output_file(out, "--out")
    if out.suffix.lower() not in ENGINE_SUFFIXES:
        raise UserInputError(f"--out {out}: an engine file ends in {' or '.join(ENGINE_SUFFIXES)}")
    precision = options.build.precision.lower()
    if precision == "int8" and options.calib is None:
        raise UserInputError("--precision int8 from a checkpoint or FP32 ONNX needs calibration images: --calib DIR")
    if options.calib is not None and precision != "int8":
        raise UserInputError("--calib is for --precision int8")
    if options.build.calib_cache:
        raise UserInputError("--calib-cache and --calib exclude each other: the one-step build writes its own Q/DQ")
    steps, fp32, int8 = prepare_models(model, out, options, say)
    onnx_path = int8 or fp32
    report = OneStepReport(engine=str(out), onnx=str(onnx_path), steps=steps)
    if options.print_trtexec:
        return report

    from edgecnn.trt.builder import build_engine

    say("build", f"building {out.name} from {onnx_path.name}")
    t0 = time.perf_counter()
    built = build_engine(onnx_path, out, options.build, progress=lambda phase, d, t: say("build", phase))
    steps.append(StepRecord("build", str(out), False, round(time.perf_counter() - t0, 2)))
    report.build = built.to_dict()
    return report


def prepare_models(
    model: str | os.PathLike, out: Path, options: OneStepOptions, say: StepProgress
) -> tuple[list[StepRecord], Path, Path | None]:
    """(steps, FP32 ONNX, Q/DQ INT8 ONNX or None): `model` exported when it is a .pt or a name, quantized when
    `options.calib` is given; intermediates beside `out`, reused when their inputs are unchanged. Shared by the
    one-step build-engine and `deploy bundle --calib`."""
    out = Path(out)
    if options.calib is not None and not Path(options.calib).exists():
        raise UserInputError(f"--calib {options.calib} does not exist")
    if options.val is not None and not Path(options.val).exists():
        raise UserInputError(f"--val {options.val} does not exist")
    if options.max_drop is not None and options.val is None:
        raise UserInputError("--max-drop needs --val DIR (labelled images to measure the drop on)")
    paths = intermediates(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = _read_record(paths["record"])
    steps: list[StepRecord] = []
    fp32 = _export_step(model, paths, record, options, steps, say)
    int8 = _quantize_step(fp32, paths, record, options, steps, say) if options.calib is not None else None
    return steps, fp32, int8


def _export_step(model, paths, record, options: OneStepOptions, steps, say) -> Path:
    """The FP32 ONNX: `model` itself when it is one, else exported (or reused) into NAME.fp32.onnx."""
    from edgecnn.zoo import resolve_model

    given = Path(str(model))
    if given.suffix.lower() == ".onnx":
        if not given.is_file():
            raise UserInputError(f"{given} does not exist")
        from edgecnn.contract import read_onnx_contract

        read_onnx_contract(given)  # a foreign ONNX fails here with the `edgecnn adopt` command to run
        return given
    src = resolve_model(model, backend="torch")
    if src.suffix.lower() not in (".pt", ".pth"):
        raise UserInputError(f"build-engine takes a .pt checkpoint, a registered name or an .onnx, got {src.name}")
    batch = options.build.batch
    dynamic = batch is not None and batch.min != batch.max
    inputs = {
        "source_sha256": sha256_file(src),
        "dynamic_batch": dynamic,
        "batch": 1 if dynamic or batch is None else batch.min,
        "edgecnn": __version__,
    }
    target = paths["fp32"]
    if _reusable(record, "export", inputs, target, onnx_sha256):
        say("export", f"reusing {target.name} (same checkpoint and options)")
        steps.append(StepRecord("export", str(target), True, 0.0))
        return target
    from edgecnn.export import ExportOptions, export_onnx

    say("export", f"exporting {src.name} to {target.name}")
    t0 = time.perf_counter()
    rep = export_onnx(
        src,
        target,
        ExportOptions(dynamic_batch=dynamic, batch=inputs["batch"], force=True),
        progress=lambda msg: say("export", msg),
    )
    record["export"] = {"inputs": inputs, "output_sha256": onnx_sha256(target)}
    atomic_write_json(paths["record"], record)
    steps.append(
        StepRecord("export", str(target), False, round(time.perf_counter() - t0, 2), {"max_abs_diff": rep.max_abs_diff})
    )
    return target


def _quantize_step(fp32: Path, paths, record, options: OneStepOptions, steps, say) -> Path:
    """The Q/DQ ONNX for TensorRT (and its calibration table), quantized (or reused) into NAME.int8.onnx."""
    from edgecnn.quant import OutputPolicy, QuantOptions, quantize

    inputs = {
        "onnx_sha256": onnx_sha256(fp32),
        "calib": folder_fingerprint(options.calib),
        "val": folder_fingerprint(options.val),
        "max_drop": options.max_drop,
        "num_images": options.num_images,
        "trt_version": options.trt_version,
        "edgecnn": __version__,
    }
    target = paths["int8"]
    if paths["calib"].is_file() and _reusable(record, "quantize", inputs, target, onnx_sha256):
        say("quantize", f"reusing {target.name} (same model, calibration images and options)")
        steps.append(StepRecord("quantize", str(target), True, 0.0, record["quantize"].get("details", {})))
        return target
    say("quantize", f"quantizing {fp32.name} on {options.calib}")
    t0 = time.perf_counter()
    result = quantize(
        fp32,
        target,
        options.calib,
        QuantOptions(target="tensorrt", num_images=options.num_images, val=options.val, max_drop=options.max_drop),
        progress=lambda stage, done, total: say("quantize", f"{stage} {done}/{total}"),
        output=OutputPolicy(cache=paths["calib"], trt_version=options.trt_version, force=True),
    )
    details = {k: result[k] for k in ("accuracy", "excluded") if k in result}
    record["quantize"] = {"inputs": inputs, "output_sha256": onnx_sha256(target), "details": details}
    atomic_write_json(paths["record"], record)
    steps.append(StepRecord("quantize", str(target), False, round(time.perf_counter() - t0, 2), details))
    return target
