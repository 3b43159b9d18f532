"""`edgecnn deploy bundle`: one checksummed tar.gz that turns a Jetson into a running classifier.

The bundle is a single folder `<name>/`:

    model.onnx / model.int8.onnx   the FP32 ONNX and/or the Q/DQ INT8 ONNX (engines are built on the device:
    model.calib                    they do not travel between TensorRT versions or GPUs), the calibration cache,
    (their external data files)    weights a model keeps beside itself, at the locations it names (in SHA256SUMS),
    contract.json, labels.txt      the labels + preprocessing manifest (the ModelContract),
    bundle.json                    what was bundled and how it runs (source redacted),
    start.sh                       build the engine on first start, then `edgecnn live`; ONNX Runtime fallback,
    <name>.service                 a systemd unit, a Dockerfile on NVIDIA's L4T JetPack image + run-docker.sh,
    Dockerfile, run-docker.sh      requirements.txt without PyTorch (no pip OpenCV on aarch64, numpy < 2 there),
    requirements.txt, README.md    a short README,
    lib/edgecnn/                   the edgecnn that made the bundle (pure Python), so both ends agree on the contract,
    SHA256SUMS                     `sha256sum -c`-compatible list of every other file.

The archive is written atomically and never over an input; `<out>.sha256` beside it lets `install` (or
`sha256sum -c`) check the whole archive after the copy. The two are committed together (files.staged_files): after a
crash they are both old, both new, or finished by the next run. Both are integrity checks, not signatures: whoever can
replace the bundle and its .sha256 can replace both.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgecnn import __version__
from edgecnn.contract import ModelContract, read_onnx_contract
from edgecnn.deploy.templates import render
from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.files import check_output_file, ensure_distinct, sha256_file, staged_files
from edgecnn.onnx_io import onnx_external_data, onnx_sha256
from edgecnn.platform import DEFAULT_L4T, jetpack_for_l4t, jetpacks_for_l4t_series

BUNDLE_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8", "best")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DEFAULT_PREFIX = "/opt/edgecnn"

# NVIDIA L4T JetPack base images per Jetson Linux release (nvcr.io/nvidia/l4t-jetpack tags). JetPack 6 only:
# JetPack 5 images ship Python 3.8 (TensorRT bindings for 3.8 only), older than the 3.9 edgecnn needs.
L4T_BASE_IMAGES = {
    "36.2.0": "nvcr.io/nvidia/l4t-jetpack:r36.2.0",
    "36.3.0": "nvcr.io/nvidia/l4t-jetpack:r36.3.0",
    "36.4.0": "nvcr.io/nvidia/l4t-jetpack:r36.4.0",
}
# What a JetPack 5 board (Xavier stops there) can do instead of running a bundle.
JETPACK5_WAY_OUT = (
    "Orin boards: upgrade to JetPack 6 and bundle for --l4t 36.x. Xavier boards stop at JetPack 5.1.x: build an engine "
    "for DeepStream/Triton with JetPack's trtexec (`edgecnn build-engine MODEL.onnx --device xavier-nx "
    "--print-trtexec` prints the command), or run the ONNX model on ONNX Runtime from a Python >= 3.9"
)

# Everything the bundled package needs at run time (pure Python + its data files and templates).
_PACKAGE_SUFFIXES = (".py", ".tsv", ".in")


@dataclass
class BundleOptions:
    """What goes into a bundle and how the device runs it.

    precision:   what the engine is built with on the device. 'int8' needs `int8_model` (a Q/DQ ONNX from
                 `edgecnn quantize`) or `calib_cache` (a TensorRT calibration table from `edgecnn quantize --cache`;
                 `edgecnn calibrate` only captures images); 'best' lets TensorRT pick per layer.
    device:      a `build-engine --device` preset (orin-nano, agx-orin, ...) passed to the on-device build.
    source:      the `edgecnn live` source (overridable on the device with EDGECNN_SOURCE).
    sinks:       where results go, see SINKS (default json: JSON lines on stdout, i.e. the journal under systemd).
    l4t:         the Jetson Linux release of the target: the Dockerfile's JetPack image (see L4T_BASE_IMAGES) and the
                 CUDA that requirements.txt pins cuda-python to.
    service_args: extra `edgecnn live` options the systemd unit passes (e.g. --headless).
    """

    precision: str = "fp16"
    device: str | None = None
    calib_cache: Path | None = None
    int8_model: Path | None = None
    source: str = "0"
    sinks: tuple[str, ...] = ("json",)
    name: str | None = None
    l4t: str = DEFAULT_L4T
    base_image: str | None = None
    service_args: tuple[str, ...] = ()
    user: str = "root"
    force: bool = False  # replace an existing --out (and its .sha256); without it they are refused, as other writers do


@dataclass
class BundleReport:
    out: str
    name: str
    sha256: str | None  # None for a dry run: nothing was written, and the real run's archive has its own
    size_bytes: int
    precision: str
    build_onnx: str
    run_onnx: str
    files: list[dict]
    warnings: list[str] = field(default_factory=list)
    written: bool = True  # False for a dry run: the archive was built and checked in a temporary folder only

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- small pieces (pure, unit-tested)


def default_name(model: str | Path) -> str:
    """A readable default name from what the user typed: a pretrained name as is, else the file name without its
    model suffixes (model.int8.onnx -> model)."""
    text = Path(str(model)).name
    for suffix in (".onnx", ".pt", ".engine", ".plan", ".int8", ".fp16"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-._")[:63] or "edgecnn-app"


def bundle_name(model: str | Path, name: str | None = None) -> str:
    """A name usable as folder, systemd unit and Docker image name."""
    if name is not None:
        if not NAME_RE.match(name):
            raise UserInputError(f"--name {name!r}: use lowercase letters, digits, '-', '_' or '.' (max 63 chars)")
        return name
    return default_name(model)


SINKS = {
    "display": "an overlay window (needs a desktop session)",
    "headless": "no output but the logs",
    "json": "one JSON line per frame on stdout (the journal under systemd)",
    "record:PATH": "the annotated video written to PATH (.mp4/.avi/.mkv) on the device",
}


def sink_args(sinks) -> list[str]:
    """`edgecnn live` options for the chosen sinks (display is live's default; the others imply --headless)."""
    sinks = list(sinks) or ["display"]
    args: list[str] = []
    for sink in sinks:
        if sink == "display":
            continue
        if sink == "headless":
            args.append("--headless")
        elif sink == "json":
            args += ["--headless", "--json"]
        elif sink.startswith("record:") and len(sink) > len("record:"):
            args += [
                "--headless",
                "--record",
                sink.split(":", 1)[1],
                "--force",
            ]  # a service restarts: replace its own recording
        else:
            raise UserInputError(f"Unknown --sink {sink!r}: choose from {', '.join(SINKS)}")
    if "display" in sinks and "--headless" in args:
        raise UserInputError("--sink display cannot be combined with headless sinks (json, record:PATH, headless)")
    deduped: list[str] = []
    for a in args:
        if a == "--headless" and "--headless" in deduped:
            continue
        deduped.append(a)
    return deduped


def redact_source(source: str) -> str:
    """The source as logs and manifests may show it (credentials removed)."""
    from edgecnn.camera.sources import redact

    return redact(source)


def docker_device_flags(source: str) -> list[str]:
    """`docker run` flags that pass the bundled source's camera into the container."""
    text = str(source).strip()
    if re.fullmatch(r"[0-9]+", text):
        return ["--device", f"/dev/video{int(text)}"]
    if re.fullmatch(r"/dev/video\d+", text):
        return ["--device", text]
    if text.startswith("csi://") or "nvarguscamerasrc" in text:
        # CSI cameras are reached through the Argus daemon on the host.
        return ["-v", "/tmp/argus_socket:/tmp/argus_socket"]
    return []


def cuda_python_requirement(l4t: str) -> str | None:
    """cuda-python pinned to the CUDA of the JetPack with Jetson Linux `l4t` (exact release, else its major.minor),
    for aarch64 only; None when that CUDA is unknown.

    The TensorRT runner and `build-engine` need cuda-python (edgecnn.trt.cudart), which JetPack does not ship: without
    it the device silently falls back to ONNX Runtime on the CPU. Pinned to the JetPack's CUDA major.minor because that
    is the runtime the board's driver provides (cudart takes both `cuda.cudart`, <= 12.5, and `cuda.bindings.runtime`,
    12.6+). Off aarch64 (a desktop test of the bundle) `edgecnn[tensorrt]` is the way to get it.
    """

    release = jetpack_for_l4t(l4t)
    if release is None:
        return None
    return f'cuda-python=={release.cuda}.*; platform_machine == "aarch64"'


def runtime_requirements(l4t: str | None = None) -> list[str]:
    """The pip requirements for the device, from edgecnn's own package metadata minus every extra (no PyTorch),
    plus cuda-python for the CUDA of `l4t`'s JetPack when given and known (see cuda_python_requirement).

    On Jetson (aarch64) OpenCV stays JetPack's (the metadata already marks opencv-python-headless off there), and
    numpy stays < 2: JetPack's OpenCV and TensorRT Python bindings are built against numpy 1.x.
    """
    from importlib import metadata

    try:
        reqs = metadata.requires("edgecnn") or []
    except metadata.PackageNotFoundError as exc:
        raise ArtifactError(
            "edgecnn is not installed as a package, so its requirements are unknown: pip install -e . first"
        ) from exc
    out: list[str] = []
    for req in reqs:
        if "extra ==" in req:
            continue
        spec, _, marker = (part.strip() for part in req.partition(";"))
        name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()
        if name == "numpy" and not marker:
            out.append(f'{spec},<2; platform_machine == "aarch64"')
            out.append(f'{spec}; platform_machine != "aarch64"')
        elif name in ("torch", "torchvision"):
            continue
        else:
            out.append(f"{spec}; {marker}" if marker else spec)
    cuda = cuda_python_requirement(l4t) if l4t else None
    if cuda:
        out.append(cuda)
    return out


def _package_files() -> dict[str, Path]:
    """The edgecnn package's run-time files, keyed by their path under lib/."""
    import edgecnn

    root = Path(edgecnn.__file__).resolve().parent
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in _PACKAGE_SUFFIXES and "__pycache__" not in path.parts:
            files["lib/edgecnn/" + path.relative_to(root).as_posix()] = path
    return files


def sha256sums_text(digests: dict[str, str]) -> str:
    """`sha256sum`-compatible lines ("<hex>  <path>"), sorted by path."""
    return "".join(f"{digests[p]}  {p}\n" for p in sorted(digests))


def parse_sha256sums(text: str) -> dict[str, str]:
    """The inverse of sha256sums_text; raises ArtifactError on a malformed line."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not m or m.group(2) in out:
            raise ArtifactError(f"SHA256SUMS line {n} is malformed or repeated: {line[:80]!r}")
        out[m.group(2)] = m.group(1)
    return out


@dataclass(frozen=True)
class _Plan:
    """Which ONNX the device builds from and which it falls back to, and the build-engine arguments."""

    build_onnx: str
    run_onnx: str
    build_args: list[str]
    warnings: list[str]


def plan_models(precision: str, has_fp32: bool, has_int8: bool, has_calib: bool, device: str | None) -> _Plan:
    """Decide the on-device build from what the bundle holds (pure; unit-tested for every combination)."""
    if precision not in PRECISIONS:
        raise UserInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    warnings: list[str] = []
    if precision == "int8" and not (has_int8 or has_calib):
        raise UserInputError(
            "--precision int8 needs INT8 material: --int8-model model.int8.onnx (from `edgecnn quantize`) or "
            "--calib-cache model.calib (from `edgecnn quantize MODEL.onnx --cache model.calib`)"
        )
    if precision == "best" and not (has_int8 or has_calib):
        warnings.append("--precision best without --int8-model/--calib-cache: TensorRT will choose FP16/FP32 only")
    if precision in ("fp32", "fp16") and has_int8:
        warnings.append(f"--int8-model is bundled but --precision {precision} builds from the FP32 ONNX")
    use_int8_onnx = precision in ("int8", "best") and has_int8
    if not has_fp32 and not use_int8_onnx:
        raise UserInputError(f"--precision {precision} needs the FP32 ONNX; the model given is already INT8 (Q/DQ)")
    build = "model.int8.onnx" if use_int8_onnx else "model.onnx"
    run = "model.onnx" if has_fp32 else "model.int8.onnx"  # ONNX Runtime fallback: FP32 when we have it
    args = ["--precision", precision]
    if has_calib and precision in ("int8", "best") and not use_int8_onnx:
        args += ["--calib-cache", "model.calib"]
    elif has_calib:
        why = (
            "the Q/DQ INT8 ONNX carries its own scales" if use_int8_onnx else f"--precision {precision} builds no INT8"
        )
        warnings.append(f"--calib-cache is bundled but unused: {why}")
    if device:
        args += ["--device", device]
    return _Plan(build, run, args, warnings)


# ---------------------------------------------------------------- the bundle


def _onnx_model(model: str | Path, workdir: Path) -> Path:
    """MODEL as an ONNX file: an .onnx as is, a pretrained name via the cache, a checkpoint exported (needs torch)."""
    from edgecnn.zoo import resolve_model

    path = resolve_model(model)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return path
    if suffix in (".engine", ".plan", ".trt"):
        raise UserInputError(
            f"{path.name} is a TensorRT engine: engines do not travel between TensorRT versions or GPUs. Bundle the "
            "ONNX it was built from; the device builds its own engine on first start"
        )
    if suffix == ".pt":
        from edgecnn.export import ExportOptions, export_onnx

        out = workdir / f"{path.stem}.onnx"
        export_onnx(path, out, ExportOptions(force=True))  # our own work folder
        return out
    raise UserInputError(f"Cannot bundle {path.name}: expected an .onnx model, a .pt checkpoint or a pretrained name")


def _external_data(model: Path, found: dict[str, Path]) -> dict[str, Path]:
    """`found` plus the external data files of the ONNX `model` (bundle path -> file): they sit beside model.onnx in
    the bundle at the locations the model names, so SHA256SUMS covers them and the device finds them. Two models of a
    bundle naming the same data file with different contents are refused: one file cannot serve both."""
    found = dict(found)
    for rel in onnx_external_data(model):
        path = model.parent / rel
        if rel in found and sha256_file(found[rel]) != sha256_file(path):
            raise UserInputError(
                f"MODEL and --int8-model both keep weights in external data files named {rel!r}, with different "
                "contents: re-save one with another location, or without external data: onnx.save(onnx.load(SRC), DST)"
            )
        found[rel] = path
    return found


def _check_tensorrt_int8(path: Path, contract: ModelContract) -> None:
    """An INT8 ONNX the device builds its engine from (--int8-model, or MODEL itself when it is INT8) must be a Q/DQ
    model in TensorRT's form: a `--target cpu` model would fail, or build a wrong engine, only on the device."""
    if contract.precision != "int8":
        raise UserInputError(
            f"--int8-model {path.name} is not an INT8 model (precision {contract.precision}): make "
            "one with `edgecnn quantize MODEL --target tensorrt`"
        )
    from edgecnn.trt.int8 import check_tensorrt_qdq

    check_tensorrt_qdq(path)  # e.g. a --target cpu model (uint8 activations): TensorRT cannot build it as meant


def _calib_cache_warnings(plan: _Plan, options: BundleOptions) -> list[str]:
    """build-engine's warning for a calibration table written for another TensorRT than the target JetPack's (TensorRT
    may skip it there, and a cache-only build has no images to fall back on), given now rather than on the device."""
    if "--calib-cache" not in plan.build_args:
        return []
    from edgecnn.trt.builder import calib_cache_version_note

    release = jetpack_for_l4t(options.l4t)
    if release is None:
        return []
    note = calib_cache_version_note(
        options.calib_cache, release.tensorrt, f"JetPack {release.jetpack} (L4T {options.l4t}) has"
    )
    return [note] if note else []


def _same_contract(a: ModelContract, b: ModelContract, what: str) -> None:
    if a.labels != b.labels or a.preprocess != b.preprocess:
        raise UserInputError(
            f"{what} has different labels or preprocessing than MODEL: quantize the same model you bundle "
            "(edgecnn quantize MODEL.onnx)"
        )


def create_bundle(
    model: str | Path,
    out: str | Path,
    options: BundleOptions | None = None,
    progress: Callable[..., None] | None = None,
    dry_run: bool = False,
) -> BundleReport:
    """Write the deployment bundle for `model` to `out` (a .tar.gz) and its `<out>.sha256`, as one crash-consistent
    pair; returns what the bundle holds.

    An existing `out` (or its .sha256) is replaced only with `options.force`. `dry_run` makes and checks the whole
    archive in a temporary folder and reports it, but writes nothing at `out`: a preview never changes a file (it still
    fails where the real run would, e.g. on an existing `out` without force). The real run's archive has its own
    sha256 (it records when it was made)."""
    options = options or BundleOptions()
    out, sidecar, base_image = _check_request(out, options)
    with tempfile.TemporaryDirectory(prefix="edgecnn-bundle-") as tmp:
        models = _collect_models(model, options, Path(tmp))
        ensure_distinct(models.inputs, out)
        ensure_distinct(models.inputs, sidecar, "--out")  # the .sha256 written beside the bundle must not hit an input
        name = bundle_name(model, options.name)
        plan, warnings = _plan_and_warnings(models, options, name)
        payload = dict(models.payload)
        payload.update(_app_payload(name, models, options, plan, base_image, out.name))
        _refuse_data_clash(models.data_files, payload)
        payload.update({rel: (path, 0o644) for rel, path in models.data_files.items()})
        files = _add_sha256sums(payload, progress)
        target = Path(tmp) / "dry-run" / out.name if dry_run else out
        digest, size = _write_archive_and_checksum(target, name, payload, sidecar=None if dry_run else sidecar)
    return BundleReport(
        out=str(out),
        name=name,
        sha256=None if dry_run else digest,  # a dry run's archive is thrown away; the real one records its own time
        size_bytes=size,
        precision=options.precision,
        build_onnx=plan.build_onnx,
        run_onnx=plan.run_onnx,
        files=files,
        warnings=warnings,
        written=not dry_run,
    )


# ---------------------------------------------------------------- the stages of create_bundle


def _check_request(out: str | Path, options: BundleOptions) -> tuple[Path, Path, str]:
    """Everything decidable before reading the model: the output pair, the target L4T / device, the base image.
    Returns (out, its .sha256, base image)."""
    out = Path(out)
    if not (out.name.endswith(".tar.gz") or out.name.endswith(".tgz")):
        raise UserInputError(f"--out should end in .tar.gz, got {out.name}")
    check_output_file(out, "--out")
    sidecar = out.with_name(out.name + ".sha256")
    existing = [p for p in (out, sidecar) if p.exists() or p.is_symlink()]
    if existing and not options.force:
        raise UserInputError(
            f"--out: {existing[0]} already exists: pass --force to replace it, or choose another --out "
            "(nothing was written)"
        )
    major = options.l4t.split(".")[0]
    if major.isdigit() and int(major) < 36:  # JetPack 5 and older: even with --base-image, edgecnn cannot run there
        release = jetpack_for_l4t(options.l4t)
        jetpack = f"JetPack {release.jetpack}" if release else "a JetPack older than 6"
        raise UserInputError(
            f"--l4t {options.l4t}: L4T {options.l4t} is {jetpack}, whose Python (3.8 on JetPack 5, with TensorRT's "
            "bindings built for it) is older than the 3.9 edgecnn needs, so a bundle cannot run there. "
            f"{JETPACK5_WAY_OUT}"
        )
    if options.device:
        _check_device(options)
    base_image = options.base_image or L4T_BASE_IMAGES.get(options.l4t)
    if base_image is None:
        raise UserInputError(
            f"No JetPack base image known for L4T {options.l4t}: use one of {', '.join(L4T_BASE_IMAGES)} "
            "(JetPack 6; JetPack 5's Python 3.8 is too old for edgecnn) or pass --base-image"
        )
    return out, sidecar, base_image


def _check_device(options: BundleOptions) -> None:
    from edgecnn.trt.devices import get_device

    preset = get_device(options.device)  # unknown preset: a clear error now, not on the device
    if not preset.jetson:
        raise UserInputError(
            f"--device {preset.name}: a bundle is for a Jetson; for a desktop GPU build the engine "
            "with `edgecnn build-engine` or serve with `edgecnn deploy triton`"
        )
    major = options.l4t.split(".")[0]
    if not any(r.l4t.split(".")[0] == major for r in preset.jetpack):
        runs = ", ".join(sorted({f"JetPack {r.jetpack} (L4T {r.l4t})" for r in preset.jetpack}))
        jetpack5_only = {r.l4t.split(".")[0] for r in preset.jetpack} == {"35"}  # Xavier: no JetPack 6
        raise UserInputError(
            f"--device {preset.name} does not run L4T {options.l4t}, which this bundle's base "
            f"image needs; the {preset.title} runs {runs}"
            + (f", too old for edgecnn (Python 3.8). {JETPACK5_WAY_OUT}" if jetpack5_only else "")
        )


@dataclass
class _Models:
    """The model files a bundle carries: bundle path -> (file, mode), the inputs no output may overwrite, the
    external data files, and the main model's contract."""

    contract: ModelContract
    payload: dict[str, tuple[bytes | Path, int]]
    inputs: list[Path]
    data_files: dict[str, Path]
    has_fp32: bool


def _collect_models(model: str | Path, options: BundleOptions, workdir: Path) -> _Models:
    """MODEL (exported when a checkpoint), --int8-model and --calib-cache, each checked as the device will use it."""
    onnx_path = _onnx_model(model, workdir)
    contract = read_onnx_contract(onnx_path)
    inputs = [onnx_path]
    has_fp32 = contract.precision != "int8"
    if not has_fp32:  # an INT8 MODEL is what the device builds its engine from: the same check as --int8-model
        _check_tensorrt_int8(onnx_path, contract)
    payload: dict[str, tuple[bytes | Path, int]] = {"model.onnx" if has_fp32 else "model.int8.onnx": (onnx_path, 0o644)}
    data_files = _external_data(onnx_path, {})  # weights stored beside the model travel (and are hashed) with it
    if options.int8_model is not None:
        int8 = Path(options.int8_model)
        if not int8.is_file():
            raise UserInputError(f"--int8-model {int8} does not exist")
        int8_contract = read_onnx_contract(int8)
        _same_contract(contract, int8_contract, f"--int8-model {int8.name}")
        if not has_fp32:
            raise UserInputError("MODEL is already an INT8 ONNX: pass the FP32 ONNX as MODEL with --int8-model")
        _check_tensorrt_int8(int8, int8_contract)
        payload["model.int8.onnx"] = (int8, 0o644)
        inputs.append(int8)
        data_files = _external_data(int8, data_files)
    if options.calib_cache is not None:
        calib = Path(options.calib_cache)
        from edgecnn.calib_pair import check_pair
        from edgecnn.trt.builder import check_calib_cache

        check_calib_cache(calib)  # build-engine's check: garbage would only fail the engine build on the device
        int8_path = payload.get("model.int8.onnx", (None,))[0]
        if isinstance(int8_path, Path):  # the table must be the one that INT8 model was quantized with
            check_pair(int8_path, calib)
        payload["model.calib"] = (calib, 0o644)
        inputs.append(calib)
    inputs += data_files.values()
    return _Models(contract, payload, inputs, data_files, has_fp32)


def _plan_and_warnings(models: _Models, options: BundleOptions, name: str) -> tuple[_Plan, list[str]]:
    plan = plan_models(
        options.precision,
        models.has_fp32,
        "model.int8.onnx" in models.payload,
        "model.calib" in models.payload,
        options.device,
    )
    warnings = list(plan.warnings) + _calib_cache_warnings(plan, options)
    if cuda_python_requirement(options.l4t) is None:
        warnings.append(
            f"the CUDA of L4T {options.l4t} is unknown, so requirements.txt has no cuda-python: install the "
            "cuda-python matching the device's CUDA by hand (e.g. pip install 'cuda-python==12.6.*' on JetPack "
            "6.1/6.2), or the engine build fails and the app runs on ONNX Runtime"
        )
    if redact_source(options.source) != options.source:
        warnings.append(
            "the source holds credentials and is stored in start.sh; prefer EDGECNN_SOURCE in "
            f"/etc/default/{name} on the device"
        )
    return plan, warnings


def _app_payload(
    name: str, models: _Models, options: BundleOptions, plan: _Plan, base_image: str, archive: str
) -> dict[str, tuple[bytes | Path, int]]:
    """contract.json, labels.txt, the rendered app files, the edgecnn package and bundle.json."""
    contract = models.contract
    model_id = onnx_sha256(models.payload[plan.build_onnx][0])[:12]  # keys the device's engine: covers external weights
    payload: dict[str, tuple[bytes | Path, int]] = {
        "contract.json": (json.dumps(contract.to_dict(), indent=2, sort_keys=True).encode() + b"\n", 0o644),
        "labels.txt": ("".join(f"{label}\n" for label in contract.labels).encode(), 0o644),
    }
    model_files = [p for p in ("model.onnx", "model.int8.onnx", "model.calib") if p in models.payload]
    model_files += sorted(models.data_files)
    for rel, (text, mode) in app_files(
        name, contract, options, plan, model_id, base_image, model_files, archive=archive
    ).items():
        payload[rel] = (text.encode(), mode)
    for rel, path in _package_files().items():
        payload[rel] = (path, 0o644)
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "edgecnn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "precision": options.precision,
        "device": options.device,
        "source": redact_source(options.source),
        "sinks": list(options.sinks),
        "build_onnx": plan.build_onnx,
        "run_onnx": plan.run_onnx,
        "build_args": plan.build_args,
        "model_id": model_id,
        "base_image": base_image,
        "service": f"{name}.service",
        "service_args": list(options.service_args),
        "classes": contract.num_classes,
        "arch": contract.arch,
    }
    payload["bundle.json"] = (json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n", 0o644)
    return payload


def _refuse_data_clash(data_files: dict[str, Path], payload: dict) -> None:
    """An external data file may not sit where the bundle keeps a file of its own."""
    taken = set(payload) | {"SHA256SUMS", "engines"}  # engines/: where the device caches its engine
    clash = sorted(
        rel for rel in data_files if any(rel == t or t.startswith(rel + "/") or rel.startswith(t + "/") for t in taken)
    )
    if clash:
        raise UserInputError(
            f"The model keeps its weights in an external data file named {clash[0]!r}, a path the bundle uses "
            "itself: re-save it with another location, or without external data: onnx.save(onnx.load(SRC), DST)"
        )


def _add_sha256sums(payload: dict[str, tuple[bytes | Path, int]], progress: Callable[..., None] | None) -> list[dict]:
    """Hash every file into SHA256SUMS (added to `payload`); returns the model-side file list for the report."""
    digests: dict[str, str] = {}
    files = []
    total = len(payload)
    for i, (rel, (content, _)) in enumerate(sorted(payload.items())):
        if isinstance(content, Path):
            digests[rel], size = sha256_file(content), content.stat().st_size
        else:
            digests[rel], size = hashlib.sha256(content).hexdigest(), len(content)
        if not rel.startswith("lib/"):
            files.append({"path": rel, "sha256": digests[rel], "bytes": size})
        if progress:
            progress(i + 1, total)
    payload["SHA256SUMS"] = (sha256sums_text(digests).encode(), 0o644)
    return files


def _write_archive_and_checksum(
    out: Path, name: str, payload: dict[str, tuple[bytes | Path, int]], sidecar: Path | None
) -> tuple[str, int]:
    """The archive and its `.sha256` (which `install` and `sha256sum -c` check), staged and committed together by
    files.staged_files: a crash at any instant leaves the old pair, the new pair, or a commit journal the next
    edgecnn run in that folder (or `deploy install` of the bundle) finishes. Returns (sha256, size)."""
    with staged_files() as stage:
        tmp_out = stage(out, suffix=".tar.gz")
        _write_tar(tmp_out, name, payload)
        digest, size = sha256_file(tmp_out), tmp_out.stat().st_size
        if sidecar is not None:
            stage(sidecar).write_text(f"{digest}  {out.name}\n", encoding="utf-8")
    return digest, size


def app_files(
    name: str,
    contract: ModelContract,
    options: BundleOptions,
    plan: _Plan,
    model_id: str,
    base_image: str,
    model_files: list[str],
    created: str | None = None,
    archive: str | None = None,
) -> dict[str, tuple[str, int]]:
    """The rendered text files of a bundle (start.sh, unit, Dockerfile, run-docker.sh, requirements, README).
    archive: the bundle's file name, which the README's install steps name (default NAME.tar.gz).

    Also what `python -m edgecnn.deploy.examples` writes into the repository's deploy/ folder.
    """
    app_dir = f"{DEFAULT_PREFIX}/{name}"
    files: dict[str, tuple[str, int]] = {}
    start_values = dict(
        name=name,
        version=__version__,
        precision=shlex.quote(options.precision),
        model_id=shlex.quote(model_id),
        build_onnx=shlex.quote(plan.build_onnx),
        run_onnx=shlex.quote(plan.run_onnx),
        build_args=" ".join(
            f'"$APP_DIR"/{shlex.quote(a)}' if a in model_files else shlex.quote(a) for a in plan.build_args
        ),
        source=shlex.quote(options.source),
        sink_args=" ".join(shlex.quote(a) for a in sink_args(options.sinks)),
    )
    files["start.sh"] = (render("start.sh", **start_values), 0o755)
    description = unit_description(contract.arch, contract.num_classes)
    files[f"{name}.service"] = (systemd_unit(name, app_dir, options.user, options.service_args, description), 0o644)
    files["Dockerfile"] = (
        render(
            "Dockerfile",
            name=name,
            version=__version__,
            base_image=base_image,
            jetpack=jetpacks_for_l4t_series(options.l4t) or "6",
            l4t=options.l4t,
        ),
        0o644,
    )
    devices = docker_device_flags(options.source)
    files["run-docker.sh"] = (
        render("run-docker.sh", name=name, docker_devices=(" ".join(devices) + " \\\n  ") if devices else ""),
        0o755,
    )
    files["requirements.txt"] = (
        "# edgecnn run-time requirements: no PyTorch. On Jetson (aarch64) OpenCV and TensorRT come from JetPack;\n"
        "# cuda-python (for TensorRT) is pinned to the JetPack's CUDA.\n"
        + "".join(f"{r}\n" for r in runtime_requirements(options.l4t)),
        0o644,
    )
    h, w = contract.preprocess.input_size
    files["README.md"] = (
        render(
            "bundle-README.md",
            name=name,
            version=__version__,
            created=created or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            model_files=", ".join(model_files),
            classes=contract.num_classes,
            input_size=f"{h}x{w}",
            precision=options.precision,
            device_line=f", built for `{options.device}`" if options.device else "",
            source_display=redact_source(options.source),
            sink_display=", ".join(options.sinks) or "display",
            base_image=base_image,
            archive=archive or f"{name}.tar.gz",
        ),
        0o644,
    )
    return files


def systemd_unit(
    name: str, app_dir: str, user: str, service_args=(), description: str = "edgecnn app", python: str = "python3"
) -> str:
    """The systemd unit for an app installed in `app_dir` (rendered again by `install` for the real prefix)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*[$]?", user or ""):
        raise UserInputError(f"--user {user!r} is not a valid user name")
    args = "".join(" " + shlex.quote(a) for a in service_args)
    return render(
        "edgecnn-app.service",
        name=name,
        version=__version__,
        description=description,
        user=user,
        app_dir=app_dir,
        service_args=args,
        python=python,
    )


def unit_description(arch: str | None, classes: int) -> str:
    return f"{arch or 'model'}, {classes} classes"


def _write_tar(path: Path, name: str, payload: dict[str, tuple[bytes | Path, int]]) -> None:
    """Regular files only, owned by root:root, no links: exactly what `install` accepts."""
    now = int(time.time())
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(payload):
            content, mode = payload[rel]
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.mode, info.mtime = mode, now
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if isinstance(content, Path):  # models can be large: stream them
                info.size = content.stat().st_size
                with open(content, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


# ---------------------------------------------------------------- copy + install over ssh


def ssh_commands(
    bundle: str | Path,
    host: str,
    name: str,
    sha256: str,
    prefix: str = DEFAULT_PREFIX,
    service: bool = False,
    remote_dir: str = "/tmp/edgecnn-deploy",
) -> list[list[str]]:
    """The commands that copy `bundle` to `host` (user@device) and install it there, as argv lists.

    On the device: check the archive's sha256, take the bundled edgecnn (lib/) and requirements out of it, make
    PREFIX/venv with --system-site-packages (JetPack's TensorRT and OpenCV stay visible; no PEP 668 trouble),
    install the requirements there, and run `deploy install` with that venv's python (which the service then uses).
    The device needs python3-venv; sudo is used for --service or a prefix outside the user's home and /tmp.
    Returned as data so it can be shown (--dry-run), tested, or run by `push_bundle`.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.:-]+|[A-Za-z0-9_.:-]+", host):
        raise UserInputError(f"--host {host!r}: expected user@device or device")
    if not prefix.startswith("/") or ".." in prefix.split("/"):
        raise UserInputError(f"--prefix {prefix!r}: give an absolute path on the device")
    q = shlex.quote
    remote_file = f"{remote_dir}/{name}.tar.gz"
    python = f"{prefix}/venv/bin/python"
    sudo = "sudo " if service or not prefix.startswith(("/home/", "/tmp/")) else ""
    install = [python, "-m", "edgecnn", "deploy", "install", remote_file, "--sha256", sha256, "--prefix", prefix]
    install += ["--service"] if service else []
    steps = [
        f"cd {q(remote_dir)}",
        f"echo {q(sha256 + '  ' + name + '.tar.gz')} | sha256sum --check --quiet -",
        f"tar -xzf {q(name + '.tar.gz')} {q(name + '/lib')} {q(name + '/requirements.txt')}",
        f"{sudo}python3 -m venv --system-site-packages {q(prefix + '/venv')}",
        f"{sudo}{q(python)} -m pip install --quiet -r {q(name + '/requirements.txt')}",
        f"{sudo}env PYTHONPATH={q(remote_dir + '/' + name + '/lib')} " + " ".join(q(a) for a in install),
    ]
    return [
        ["ssh", host, f"mkdir -p {q(remote_dir)}"],
        ["scp", str(bundle), f"{host}:{remote_file}"],
        ["ssh", "-t", host, " && ".join(steps)],
    ]


def _python_stderr_fd() -> int:
    import sys

    try:
        sys.stderr.flush()
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a descriptor
        return 2


def push_bundle(commands: list[list[str]], run: Callable | None = None) -> None:
    """Run `ssh_commands` in order, stopping at the first failure with a one-line error."""
    import functools
    import subprocess

    # The remote side's output goes to stderr: stdout carries only edgecnn's own result (`--json` stays parseable).
    # It goes to Python's stderr, not descriptor 2, which the CLI's libjpeg filter (cli/stderr_filter.py) forwards
    # asynchronously: through that pipe ssh's last line could arrive after edgecnn's own error message about it.
    err = _python_stderr_fd()
    run = run or functools.partial(subprocess.run, stdout=err, stderr=err)
    for argv in commands:
        try:
            result = run(argv)
        except FileNotFoundError as exc:
            raise UserInputError(f"{argv[0]} is not installed here: --host needs OpenSSH (ssh, scp)") from exc
        if result.returncode != 0:
            raise UserInputError(
                f"`{argv[0]}` step failed with exit code {result.returncode}: {' '.join(argv[:3])} ..."
            )
