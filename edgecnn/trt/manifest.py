"""The engine's sidecar manifest: `model.engine` + `model.engine.json`.

A TensorRT engine is opaque and not portable: it only runs with the TensorRT release and the GPU architecture it was
built for (unless built version-/hardware-compatible). The manifest records what it was built with, its I/O and
profiles, the sha256 of the engine, the ONNX and the calibration cache, and the ModelContract (labels,
preprocessing) copied from the ONNX metadata, so the runner can

1. refuse a truncated or tampered engine (size + sha256) before TensorRT ever deserializes it, and
2. refuse an engine built for another TensorRT version or GPU with a message that says how to rebuild,

all of which is plain JSON + hashing: testable without TensorRT. The sidecar is named `<engine file>.json` (the
full engine name plus `.json`), so `model.engine` and `model.plan` next to each other never share one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from edgecnn.contract import ModelContract
from edgecnn.errors import ArtifactError
from edgecnn.files import atomic_write_json, sha256_file
from edgecnn.trt.plan import TrtVersion

FORMAT = "edgecnn-engine-manifest"
FORMAT_VERSION = 1


def manifest_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def file_record(path: str | os.PathLike | None) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(engine: str | os.PathLike, manifest: dict) -> Path:
    """Write the sidecar atomically (after the engine, so a manifest never describes a missing engine)."""
    return atomic_write_json(manifest_path(engine), {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest})


def read_manifest(engine: str | os.PathLike) -> dict:
    engine = Path(engine)
    path = manifest_path(engine)
    if not path.is_file():
        raise ArtifactError(
            f"{engine.name} has no manifest ({path.name} next to it): edgecnn only runs engines it can check; "
            f"rebuild with `edgecnn build-engine MODEL.onnx --out {engine}`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{path} is not valid JSON ({exc.__class__.__name__}): {rebuild_hint(None, engine)}"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an edgecnn engine manifest: {rebuild_hint(None, engine)}")
    version = data.get("format_version", 0)
    if not _is_int(version):
        raise ArtifactError(f"{path} is damaged (format_version {version!r}): {rebuild_hint(None, engine)}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} was written by a newer edgecnn (manifest format {version})")
    for key in ("engine", "built_with", "contract", "io"):
        if key not in data:
            raise ArtifactError(f"{path} lacks {key!r}: {rebuild_hint(data, engine)}")
    problem = _structure_problem(data)
    if problem:
        raise ArtifactError(f"{path} is damaged ({problem}): {rebuild_hint(None, engine)}")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_dims(value) -> bool:
    return isinstance(value, list) and all(_is_int(d) for d in value)


def _structure_problem(data: dict) -> str | None:
    """What in a manifest has the wrong type, or None. Every reader indexes these fields directly, so a hand-edited
    or damaged manifest must be refused here with one line, not surface later as an AttributeError."""
    rec = data["engine"]
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or not _is_int(rec.get("bytes")):
        return "'engine' must hold the engine file's sha256 and bytes"
    for key in ("built_with", "contract"):
        if not isinstance(data[key], dict):
            return f"{key!r} must be an object"
    for key in ("compatibility", "calib_cache", "onnx"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"{key!r} must be an object"
    if data.get("dla_core") is not None and not _is_int(data["dla_core"]):
        return "'dla_core' must be a whole number"
    io = data["io"]
    if not isinstance(io, dict):
        return "'io' must be an object"
    for side in ("inputs", "outputs"):
        tensors = io.get(side)
        if not isinstance(tensors, list) or not tensors:
            return f"io.{side} must be a non-empty list"
        for t in tensors:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not _is_dims(t.get("shape")):
                return f"each of io.{side} needs a name and a shape (a list of whole numbers)"
            profile = t.get("profile")
            if profile is not None and not (
                isinstance(profile, dict) and all(_is_dims(profile.get(k)) for k in ("min", "opt", "max"))
            ):
                return f"io.{side} {t['name']!r}: the profile needs min, opt and max shapes"
    return None


def contract_of(manifest: dict) -> ModelContract:
    return ModelContract.from_dict(manifest["contract"])


_SAFE_NAME = re.compile(r"^[\w.+-]+\.onnx$")


def rebuild_hint(manifest: dict | None, engine: str | os.PathLike) -> str:
    """The `edgecnn build-engine` line that rebuilds `engine`, made from trusted facts only: the engine's path as
    given here, and from the manifest only values checked against what they can be (a plain .onnx file name, a known
    precision, device preset or DLA core). The manifest's stored `rebuild_command` is never shown: a tampered
    manifest could hold any shell line (`curl ... | sudo sh`), and the hint is printed for a person to run."""
    from edgecnn.trt.devices import DEVICES
    from edgecnn.trt.plan import PRECISIONS

    manifest = manifest if isinstance(manifest, dict) else {}
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    onnx = manifest.get("onnx") if isinstance(manifest.get("onnx"), dict) else {}
    name = onnx.get("file")
    argv = ["edgecnn", "build-engine", name if isinstance(name, str) and _SAFE_NAME.match(name) else "MODEL.onnx"]
    argv += ["--out", str(engine)]
    precision = options.get("precision", manifest.get("precision"))
    if precision in PRECISIONS:
        argv += ["--precision", precision]
    device = options.get("device")
    if isinstance(device, str) and device in DEVICES:
        argv += ["--device", device]
    dla = manifest.get("dla_core")
    if _is_int(dla) and 0 <= dla <= 1:
        argv += ["--dla", str(dla)]
    return f"rebuild it on this machine: {shlex.join(argv)}"


def verify_engine_file(engine: str | os.PathLike, manifest: dict) -> None:
    """Size and sha256 of the engine against the manifest (no TensorRT needed). Raises ArtifactError."""
    engine = Path(engine)
    rec = manifest["engine"]
    if not engine.is_file():
        raise ArtifactError(f"{engine} does not exist")
    size = engine.stat().st_size
    if "bytes" in rec and size != int(rec["bytes"]):
        raise ArtifactError(
            f"{engine.name} is {size} bytes, its manifest says {rec['bytes']}: "
            "the engine is truncated or was replaced; " + rebuild_hint(manifest, engine)
        )
    if sha256_file(engine) != rec.get("sha256"):
        raise ArtifactError(
            f"{engine.name} does not match the sha256 in {manifest_path(engine).name}: the engine was modified or "
            "damaged and will not be loaded; " + rebuild_hint(manifest, engine)
        )


def check_compatibility(manifest: dict, here: dict, engine: str | os.PathLike = "model.engine") -> list[str]:
    """Compare the build facts with `here` (env.runtime_facts()). Raise ArtifactError on a mismatch; return warnings.

    Rules (TensorRT "Engine Compatibility"): a plain engine needs exactly the TensorRT version it was built with and
    a GPU of the same compute capability. A version-compatible one (8.6+) runs on the same or a later TensorRT.
    Hardware compatibility AMPERE_PLUS runs on any compute capability >= 8.0, SAME_COMPUTE_CAPABILITY on the same
    compute capability as the build GPU (other models of it included).
    """
    built = manifest["built_with"]
    compat = manifest.get("compatibility") or {}
    warnings: list[str] = []
    fix = rebuild_hint(manifest, engine)

    built_v, here_v = str(built.get("tensorrt")), str(here.get("tensorrt"))
    if compat.get("version_compatible"):
        if TrtVersion.parse(here_v) < TrtVersion.parse(built_v):
            raise ArtifactError(
                f"{Path(engine).name} was built with TensorRT {built_v} (version-compatible: runs on {built_v} or "
                f"later), this machine has {here_v}; {fix}"
            )
    elif _norm(built_v) != _norm(here_v):
        raise ArtifactError(
            f"{Path(engine).name} was built with TensorRT {built_v}, this machine has {here_v}: engines only run "
            f"on the TensorRT release that built them (unless built with --version-compatible); {fix}"
        )

    level = compat.get("hardware", "NONE")
    built_cc, here_cc = str(built.get("compute_capability")), str(here.get("compute_capability"))
    if level == "AMPERE_PLUS":
        if _cc(here_cc) < (8, 0):
            raise ArtifactError(
                f"{Path(engine).name} was built for Ampere and newer GPUs; "
                f"this GPU ({here.get('gpu')}) is sm_{here_cc}; {fix}"
            )
    elif built_cc != here_cc:
        raise ArtifactError(
            f"{Path(engine).name} was built for a {built.get('gpu')} (compute capability {built_cc}); this GPU is a "
            f"{here.get('gpu')} ({here_cc}): engines do not travel between GPU architectures; {fix}"
        )
    elif level == "NONE" and built.get("gpu") and here.get("gpu") and built.get("gpu") != here.get("gpu"):
        warnings.append(
            f"engine built on a {built['gpu']}, running on a {here['gpu']} (same compute capability): it loads, but "
            "TensorRT tuned it for the other GPU; rebuild for best latency"
        )

    dla = manifest.get("dla_core")
    jetson = here.get("jetson")
    if dla is not None and not jetson:
        raise ArtifactError(f"{Path(engine).name} runs on DLA core {dla}: it needs the Jetson it was built for; {fix}")
    return warnings


def _norm(version: str) -> tuple:
    """'10.3.0.30' and '10.3.0' are the same release for this check (build numbers differ between packagings)."""
    v = TrtVersion.parse(version)
    return (v.major, v.minor, v.patch)


def _cc(text: str) -> tuple[int, int]:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)
