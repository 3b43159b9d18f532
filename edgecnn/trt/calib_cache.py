"""TensorRT calibration table ("calibration cache"): the text file TensorRT's IInt8Calibrator reads and writes.

Layout (as TensorRT writes it, and as trtexec --calib, DeepStream's int8-calib-file and ONNX Runtime's TensorRT EP
read it):

    TRT-8601-EntropyCalibration2
    input: 3c810204
    /_conv_stem/Conv_output_0: 3d0ac1f6

- line 1: `TRT-<version>-<algorithm>`; version is TensorRT's NV_TENSORRT_VERSION number
  (8.x: major*1000 + minor*100 + patch, e.g. 8.6.1 -> 8601; 10.x: major*10000 + minor*100 + patch, e.g.
  10.3.0 -> 100300). TensorRT ignores a table whose header names another version or algorithm, so pick the version
  of the TensorRT that will build the engine (JetPack 5.1: 8.5.2, JetPack 6.0: 8.6.2, JetPack 6.1/6.2: 10.3.0);
- then one `tensor_name: <scale>` line per tensor, where <scale> is the IEEE-754 float32 bit pattern of
  scale = amax / 127 in lower-case hexadecimal, big-endian digit order (1/127 -> 3c010204), 8 digits.
Lines end with '\\n'; the file is ASCII unless tensor names are not.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.files import atomic_write_bytes

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
DEFAULT_ALGORITHM = "EntropyCalibration2"  # what trtexec --calib and DeepStream's calibrator declare
DEFAULT_VERSION = "8.6.1"
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


def version_number(version: str | int) -> int:
    """'8.6.1' -> 8601, '10.3.0' -> 100300, '8601' or 8601 -> 8601 (TensorRT's NV_TENSORRT_VERSION)."""
    if isinstance(version, int) or str(version).isdigit():
        if int(version) < 1000:  # '10' is not TensorRT 10 (that is 100000): refuse rather than write a wrong header
            raise UserInputError(
                f"TensorRT version {version!r}: give major.minor.patch such as 10.3.0, or the "
                "NV_TENSORRT_VERSION number such as 100300"
            )
        return int(version)
    parts = str(version).split(".")
    try:
        major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    except ValueError:
        raise UserInputError(f"TensorRT version must look like 8.6.1 or 10.3.0, got {version!r}") from None
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def installed_version() -> str | None:
    """The installed TensorRT's version string, or None (TensorRT is optional; never required here)."""
    try:
        import tensorrt  # noqa: F401  (optional, lazy)
    except Exception:
        return None
    return getattr(tensorrt, "__version__", None)


def scale_hex(scale: float) -> str:
    """float32 bits of `scale` as 8 lower-case hex digits, most significant first: 1/127 -> '3c010204'."""
    return struct.pack(">f", scale).hex()


def hex_scale(text: str) -> float:
    text = text.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{1,8}", text):
        raise ArtifactError(f"Calibration table scale {text!r} is not a hex float32")
    return struct.unpack(">f", bytes.fromhex(text.zfill(8)))[0]


def amax_to_scale(amax: float) -> float:
    """TensorRT's activation scale for a symmetric INT8 range [-amax, amax]. A tensor that was always 0 gets 1.0,
    as ONNX Runtime's quantizer gives it, rather than a 0 scale TensorRT would reject."""
    amax = abs(float(amax))
    return amax / 127.0 if amax > 0 else 1.0


def format_table(
    amax: dict[str, float], version: str | int = DEFAULT_VERSION, algorithm: str = DEFAULT_ALGORITHM
) -> str:
    """The calibration table text for per-tensor amax values (in the given order)."""
    if algorithm not in ALGORITHMS:
        raise UserInputError(f"Unknown TensorRT calibration algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    lines = [f"TRT-{version_number(version)}-{algorithm}"]
    for name, value in amax.items():
        if "\n" in name or "\r" in name:
            raise UserInputError(f"Tensor name {name!r} cannot be written to a calibration table")
        lines.append(f"{name}: {scale_hex(amax_to_scale(value))}")
    return "\n".join(lines) + "\n"


def write_table(
    path: str | os.PathLike,
    amax: dict[str, float],
    version: str | int = DEFAULT_VERSION,
    algorithm: str = DEFAULT_ALGORITHM,
) -> Path:
    """Write the table atomically; returns the path."""
    return atomic_write_bytes(path, format_table(amax, version, algorithm).encode("utf-8"))


def read_table(path: str | os.PathLike) -> tuple[int, str, dict[str, float]]:
    """(version number, algorithm, {tensor: scale}) from a calibration table written by TensorRT or by us."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"Cannot read calibration table {path}: {exc}") from exc
    lines = text.splitlines()
    if not lines or not _HEADER.match(lines[0].strip()):
        raise ArtifactError(
            f"{path} is not a TensorRT calibration table (first line should be TRT-<version>-<algorithm>)"
        )
    m = _HEADER.match(lines[0].strip())
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        if not sep:
            raise ArtifactError(f"{path}:{number}: expected 'tensor_name: hexscale', got {line[:80]!r}")
        scales[name] = hex_scale(value)
    return int(m.group(1)), m.group(2), scales


def carry_through_pads(model, amax: dict[str, float]) -> dict[str, float]:
    """`amax` plus a value for the output of each Pad in `model` (the FP32 ONNX TensorRT builds from) whose input has
    one: padding only adds its constant, so the output's amax is the larger of the input's and |constant|.

    Why: ranges are measured on the graph ONNX Runtime prepared for quantization, where Pads are fused into the next
    Conv, so their outputs (the Conv inputs TensorRT sees: EfficientNet-Lite0's 17 TF-style 'static_padding' Pads)
    had no scale, and TensorRT's implicit INT8 has no range for them unless it fuses the Pad away. TensorRT's own
    calibrator writes every tensor. A Pad whose constant cannot be read (computed at run time) is left out."""
    from onnx import numpy_helper

    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    wanted = {n.input[2] for n in pads if len(n.input) > 2 and n.input[2]}  # only the pad values are read
    constants = {i.name: i for i in model.graph.initializer if i.name in wanted}
    constants.update(
        {
            n.output[0]: n.attribute[0].t
            for n in model.graph.node
            if n.op_type == "Constant" and n.output[0] in wanted and n.attribute and n.attribute[0].name == "value"
        }
    )
    out = dict(amax)
    for node in pads:
        if not node.input or node.input[0] not in out or node.output[0] in out:
            continue
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in constants:
                continue
            value = float(abs(numpy_helper.to_array(constants[node.input[2]])).max())
        out[node.output[0]] = max(out[node.input[0]], value)
    return out
