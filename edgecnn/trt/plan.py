"""The TensorRT build plan: plain data derived from the options, the TensorRT version and the target device.

Every difference between TensorRT releases that edgecnn cares about is decided here, so it can be unit-tested on a
machine without TensorRT, printed as a `trtexec` command, and applied by the thin `builder.py` without any `if
version` logic of its own. Version facts (NVIDIA TensorRT Python API docs and migration guides):

- 8.5 is the oldest supported release: I/O by tensor name (`num_io_tensors`, `set_input_shape`, `set_tensor_address`,
  `execute_async_v3`, `get_tensor_profile_shape`) arrived in 8.5. `set_memory_pool_limit` is 8.4+,
  `build_serialized_network` 8.0+.
- 8.x parses ONNX only into an EXPLICIT_BATCH network; 10.0 made explicit batch the only mode (the flag is
  ignored, deprecated), so it is passed on 8.x only.
- Version-compatible engines (BuilderFlag.VERSION_COMPATIBLE) and hardware compatibility (AMPERE_PLUS) are 8.6+;
  SAME_COMPUTE_CAPABILITY is newer (10.9+). Hardware compatibility needs an Ampere-or-newer GPU and is not supported
  on JetPack or DRIVE OS.
- IProgressMonitor (build progress) is 10.0+.
- Implicit INT8 calibrators are deprecated in 10.1 and removed in 11.0, with every precision builder flag (FP16,
  INT8, BF16, FP8, best): 11.x networks are always strongly typed. So on 11.x FP16 comes from an FP16 ONNX
  (see `edgecnn.trt.fp16`) and INT8 from a Q/DQ ONNX (`edgecnn quantize --target tensorrt`).
- 10.x builds stay weakly typed here (FP16/INT8 builder flags: TensorRT may pick faster per-layer precisions);
  NVIDIA's strong-typing migration notes deprecate those flags from 10.12. BuilderFlag.STRONGLY_TYPED is never
  used; strong typing is a network-creation flag, and always on in 11.x (no flag needed).
- 9.x was an LLM-only limited release: not supported.
- DLA: JetPack TensorRT 8.5/8.6/10.x; on 11.x only from 11.4.1 (AGX Orin, JetPack 7.2.2+), and strongly typed there.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecnn.errors import UserInputError, format_shape
from edgecnn.onnx_io import load_onnx
from edgecnn.trt.devices import DEVICES, DevicePreset
from edgecnn.trt.int8 import tensorrt_qdq_problem

PRECISIONS = ("fp32", "fp16", "int8", "best")
HARDWARE_COMPAT = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
DESKTOP_DEFAULT_TRT = "10.13"  # what a plan for `--device desktop` assumes when TensorRT is not installed here
QUANTIZE_HINT = "edgecnn quantize MODEL.onnx --target tensorrt"


# ---------------------------------------------------------------- versions


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version compared as numbers (never as strings: '10.0' < '8.6' as text)."""

    major: int
    minor: int = 0
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> "TrtVersion":
        m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
        if not m:
            raise UserInputError(f"Not a TensorRT version: {text!r} (expected e.g. 10.3 or 8.6.2)")
        return cls(int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def __getitem__(self, index):
        return (self.major, self.minor, self.patch)[index]

    def at_least(self, major: int, minor: int = 0, patch: int = 0) -> bool:
        return self >= TrtVersion(major, minor, patch)


def check_supported(version: TrtVersion) -> None:
    if version.major == 8 and version.minor >= 5 or version.major in (10, 11):
        return
    raise UserInputError(
        f"TensorRT {version} is not supported: edgecnn builds and runs engines with TensorRT 8.5/8.6 (JetPack 5.1, "
        "6.0), 10.x (JetPack 6.1+, 7, desktop) and 11.x"
    )


@dataclass(frozen=True)
class Capabilities:
    """What a TensorRT version offers, as booleans the builder and runner follow."""

    explicit_batch_flag: bool  # pass NetworkDefinitionCreationFlag.EXPLICIT_BATCH (8.x)
    weak_typing: bool  # precision builder flags exist (< 11)
    implicit_int8: bool  # IInt8Calibrator / config.int8_calibrator exist (< 11; deprecated 10.1)
    progress_monitor: bool  # IProgressMonitor (10.0+)
    version_compatible: bool  # BuilderFlag.VERSION_COMPATIBLE (8.6+)
    ampere_plus: bool  # HardwareCompatibilityLevel.AMPERE_PLUS (8.6+)
    same_compute_capability: bool  # HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY (10.9+)
    dla: bool  # DLA builds possible with this release on JetPack
    trtexec_build_only: str  # flag that makes trtexec build without timing inference


def capabilities(version: TrtVersion) -> Capabilities:
    check_supported(version)
    return Capabilities(
        explicit_batch_flag=version.major < 10,
        weak_typing=version.major < 11,
        implicit_int8=version.major < 11,
        progress_monitor=version.major >= 10,
        version_compatible=version.at_least(8, 6),
        ampere_plus=version.at_least(8, 6),
        same_compute_capability=version.at_least(10, 9),
        dla=version.major < 11 or version.at_least(11, 4, 1),
        trtexec_build_only="--skipInference" if version.at_least(8, 6) else "--buildOnly",
    )


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class BatchRange:
    min: int
    opt: int
    max: int

    @property
    def fixed(self) -> bool:
        return self.min == self.max


def parse_batch(text: str | int | None) -> BatchRange | None:
    """'8' -> 8:8:8 (a fixed batch); '1:8:16' -> MIN:OPT:MAX for a dynamic-batch engine."""
    if text is None or text == "":
        return None
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserInputError(f"--batch {text!r}: expected N or MIN:OPT:MAX (integers)") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise UserInputError(f"--batch {text!r}: expected N or MIN:OPT:MAX")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise UserInputError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return BatchRange(lo, opt, hi)


_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str | int | None) -> int | None:
    """'512M', '2G', '1536' (MiB) -> bytes."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise UserInputError(f"--workspace {text!r}: expected a size such as 512M, 2G or 1024 (MiB)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < 1 << 20:
        raise UserInputError(f"--workspace {text!r} is below 1 MiB")
    return size


@dataclass(frozen=True)
class BuildOptions:
    """What the user asked for (`edgecnn build-engine` options), before it is checked against version and device."""

    precision: str = "fp32"
    device: str | None = None  # a preset name; None: the Jetson this runs on, else desktop
    dla_core: int | None = None
    gpu_fallback: bool = False
    workspace: int | None = None  # bytes
    batch: BatchRange | None = None
    timing_cache: str | None = None
    calib_cache: str | None = None
    version_compatible: bool = False
    hardware_compat: str | None = None  # None | 'ampere+' | 'same-cc'

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = f"{self.batch.min}:{self.batch.opt}:{self.batch.max}" if self.batch else None
        return d


# ---------------------------------------------------------------- the ONNX side


@dataclass(frozen=True)
class OnnxFacts:
    """What the plan needs from the ONNX file (read on CPU, weights not loaded)."""

    input_name: str
    input_shape: tuple  # ints, None for a dynamic dimension
    output_names: tuple[str, ...]
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear
    fp16: bool  # the graph already computes in FP16 (made by edgecnn.trt.fp16 or similar)
    qdq_problem: str | None = None  # why TensorRT cannot build its Q/DQ nodes (edgecnn.trt.int8), None if it can
    input_dtype: str = "float32"  # 'uint8' for an adopted model that normalises inside

    @property
    def has_qdq(self) -> bool:
        return self.qdq_nodes > 0


def inspect_onnx(path: str | Path) -> OnnxFacts:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path} does not exist")
    model = load_onnx(path, external_data=False)
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise UserInputError(f"{path} has {len(inputs)} inputs; edgecnn builds single-input classifiers")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    qdq = sum(1 for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in graph.node
    )

    problem = tensorrt_qdq_problem(model, str(path)) if qdq else None
    dtype = "uint8" if inputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 else "float32"
    return OnnxFacts(inputs[0].name, shape, tuple(o.name for o in graph.output), qdq, fp16, problem, dtype)


# ---------------------------------------------------------------- the plan


@dataclass
class BuildPlan:
    """Everything the builder applies, as plain data. `notes` are warnings worth showing the user."""

    tensorrt: str
    device: str
    precision: str  # what was asked for
    typing: str  # 'weak' (precision builder flags) or 'strong' (types come from the ONNX)
    network_flags: list[str]
    builder_flags: list[str]
    convert_fp16: bool  # convert the ONNX to FP16 (inputs/outputs kept FP32) before parsing
    int8_source: str | None  # 'qdq' | 'calib_cache' | None
    calib_cache: str | None
    workspace_bytes: int | None
    input_name: str
    profile: dict[str, list[int]]  # min/opt/max input shapes
    dynamic_batch: bool  # the ONNX batch dimension is dynamic (so the build adds an optimization profile)
    dla_core: int | None
    gpu_fallback: bool
    hardware_compat: str  # 'NONE' | 'AMPERE_PLUS' | 'SAME_COMPUTE_CAPABILITY'
    version_compatible: bool
    timing_cache: str | None
    progress_monitor: bool
    notes: list[str] = field(default_factory=list)

    @property
    def batch_range(self) -> tuple[int, int, int]:
        return tuple(self.profile[k][0] for k in ("min", "opt", "max"))

    @property
    def engine_precision(self) -> str:
        """The precision recorded in the manifest and the engine's contract."""
        if self.int8_source:
            return "int8"
        if self.convert_fp16 or "FP16" in self.builder_flags:
            return "fp16"
        return self.precision if self.precision != "best" else "fp16"

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(
    options: BuildOptions,
    onnx: OnnxFacts,
    tensorrt: str | TrtVersion,
    device: DevicePreset,
    gpu_compute_capability: str | None = None,
) -> BuildPlan:
    """Check the options against the TensorRT version and the device, and decide everything the build applies.

    `gpu_compute_capability` is the real GPU's when building (None when only planning / printing trtexec).
    Raises UserInputError naming the fix for every combination that cannot work.
    """
    version = tensorrt if isinstance(tensorrt, TrtVersion) else TrtVersion.parse(tensorrt)
    if device.name == "nano":
        raise UserInputError(f"--device nano: {device.notes[0]}")
    caps = capabilities(version)
    precision = options.precision.lower()
    if precision not in PRECISIONS:
        raise UserInputError(f"--precision {options.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if onnx.qdq_problem:  # e.g. an `edgecnn quantize --target cpu` model: asymmetric UINT8, never right on TensorRT
        raise UserInputError(onnx.qdq_problem)
    if onnx.input_dtype == "uint8" and (version.major, version.minor) < (8, 6):
        raise UserInputError(
            f"The model takes uint8 pixels (it normalises inside); TensorRT {version} has no uint8 network inputs "
            "(8.6+ has: JetPack 6 on Orin): export it with a float32 input and adopt that with its --mean/--std"
        )
    notes: list[str] = _jetpack_notes(version, device)

    int8_source, calib_cache = _int8_source(precision, onnx, options.calib_cache, version, caps, notes)
    builder_flags, convert_fp16 = _precision_flags(precision, onnx, int8_source, caps, notes)
    batch, profile = _batch_profile(onnx, options.batch, notes)
    if options.dla_core is not None:
        _check_dla(options.dla_core, precision, version, caps, device)
        if options.gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
        else:
            notes.append("DLA without --gpu-fallback: the build fails if a layer cannot run on the DLA")
        if not batch.fixed:
            notes.append("DLA needs static shapes: with a dynamic batch, layers fall back to the GPU")
    elif options.gpu_fallback:
        raise UserInputError("--gpu-fallback only applies with --dla N")
    hardware = _hardware_level(options, version, caps, device, gpu_compute_capability)
    if options.version_compatible:
        if not caps.version_compatible:
            raise UserInputError(f"--version-compatible needs TensorRT 8.6+, this is {version}")
        builder_flags.append("VERSION_COMPATIBLE")
        notes.append("version-compatible engines run on later TensorRT releases but can be slower")

    workspace = options.workspace
    if workspace is None and device.workspace_mib:
        workspace = device.workspace_mib << 20

    return BuildPlan(
        tensorrt=str(version),
        device=device.name,
        precision=precision,
        typing="weak" if caps.weak_typing else "strong",
        network_flags=["EXPLICIT_BATCH"] if caps.explicit_batch_flag else [],
        builder_flags=builder_flags,
        convert_fp16=convert_fp16,
        int8_source=int8_source,
        calib_cache=calib_cache,
        workspace_bytes=workspace,
        input_name=onnx.input_name,
        profile=profile,
        dynamic_batch=onnx.input_shape[0] is None,
        dla_core=options.dla_core,
        gpu_fallback=bool(options.gpu_fallback and options.dla_core is not None),
        hardware_compat=hardware,
        version_compatible=options.version_compatible,
        timing_cache=options.timing_cache,
        progress_monitor=caps.progress_monitor,
        notes=notes,
    )


def _jetpack_notes(version: TrtVersion, device: DevicePreset) -> list[str]:
    """A warning when planning a Jetson build for a TensorRT its JetPack releases do not ship."""
    if not device.jetson or not device.jetpack:
        return []
    shipped = {TrtVersion.parse(r.tensorrt)[:2] for r in device.jetpack}
    # JetPack 7.2.2+ ships TensorRT 11.4.1+ on these two; 11.0-11.4.0 support no JetPack at all
    later_11 = version.major == 11 and version.at_least(11, 4, 1) and device.name in ("agx-orin", "thor")
    if (version.major, version.minor) in shipped or later_11:
        return []
    versions = ", ".join(sorted({r.tensorrt for r in device.jetpack}))
    return [f"{device.title} JetPack releases ship TensorRT {versions}, not {version}: build on the device"]


def _int8_source(precision, onnx: OnnxFacts, calib_cache, version, caps: Capabilities, notes: list[str]):
    """Where INT8 scales come from: the ONNX's Q/DQ nodes (every version) or a calibration cache (implicit, <= 10)."""
    if precision not in ("int8", "best"):
        if calib_cache:
            raise UserInputError(f"--calib-cache only applies to --precision int8/best, not {precision}")
        return None, None
    if onnx.has_qdq:
        if calib_cache:
            notes.append("--calib-cache ignored: the ONNX carries Q/DQ scales (explicit quantization)")
        return "qdq", None
    if calib_cache:
        if not caps.implicit_int8:
            raise UserInputError(
                f"TensorRT {version} removed implicit INT8 calibration (--calib-cache): make a Q/DQ ONNX with "
                f"`{QUANTIZE_HINT}` and build that"
            )
        if version.at_least(10, 1):
            notes.append(f"implicit INT8 calibration is deprecated since TensorRT 10.1; prefer `{QUANTIZE_HINT}`")
        return "calib_cache", calib_cache
    if precision == "int8":
        raise UserInputError(
            f"--precision int8 needs a Q/DQ ONNX (make one with `{QUANTIZE_HINT}`)"
            + (" or a --calib-cache" if caps.implicit_int8 else "")
        )
    notes.append("best: no Q/DQ nodes and no --calib-cache, so no INT8 layers (FP16 + FP32 only)")
    return None, None


def _precision_flags(precision, onnx: OnnxFacts, int8_source, caps: Capabilities, notes: list[str]):
    """(builder flags, convert the ONNX to FP16?): flags on weakly typed releases, ONNX types on 11.x."""
    if caps.weak_typing:
        flags = (["FP16"] if precision in ("fp16", "best") else []) + (["INT8"] if int8_source else [])
        return flags, False
    if precision == "fp32" and onnx.fp16:
        raise UserInputError("--precision fp32 on TensorRT 11 needs an FP32 ONNX: this one computes in FP16")
    convert = False
    if precision == "fp16" or (precision == "best" and not int8_source):
        convert = not onnx.fp16
        notes.append(
            "TensorRT 11 has no FP16 builder flag: "
            + (
                "the ONNX is converted to FP16 (inputs/outputs stay FP32) before the build"
                if convert
                else "the ONNX already computes in FP16"
            )
        )
    if precision == "best" and int8_source:
        notes.append("best on TensorRT 11 = the Q/DQ ONNX as typed (strongly typed network)")
    return [], convert


def _batch_profile(onnx: OnnxFacts, batch: BatchRange | None, notes: list[str]):
    """The optimization profile: batch only (edgecnn models have a fixed C, H, W)."""
    shape = onnx.input_shape
    if len(shape) < 2 or any(d is None for d in shape[1:]):
        raise UserInputError(
            f"Input {onnx.input_name!r} has shape {format_shape(shape)}: only the batch dimension may be dynamic; "
            "re-export with a fixed image size"
        )
    if shape[0] is not None:
        if batch and (batch.min, batch.max) != (shape[0], shape[0]):
            raise UserInputError(
                f"The ONNX has a fixed batch of {shape[0]}; --batch {batch.min}:{batch.opt}:{batch.max} needs an ONNX "
                "exported with a dynamic batch (edgecnn export --dynamic-batch)"
            )
        batch = BatchRange(shape[0], shape[0], shape[0])
    elif batch is None:
        batch = BatchRange(1, 1, 1)
        notes.append("dynamic-batch ONNX and no --batch: building for batch 1 (use --batch MIN:OPT:MAX for more)")
    rest = list(shape[1:])
    return batch, {k: [b] + rest for k, b in (("min", batch.min), ("opt", batch.opt), ("max", batch.max))}


def _check_dla(core: int, precision, version: TrtVersion, caps: Capabilities, device: DevicePreset) -> None:
    if device.dla_cores == 0:
        have = ", ".join(name for name, d in DEVICES.items() if d.dla_cores)
        raise UserInputError(f"--dla: {device.title} has no DLA (DLA devices: {have}); drop --dla to build for the GPU")
    if not 0 <= core < device.dla_cores:
        raise UserInputError(f"--dla {core}: {device.title} has DLA cores 0..{device.dla_cores - 1}")
    if precision == "fp32":
        raise UserInputError("DLA runs FP16 or INT8 only: add --precision fp16 (or int8 with a Q/DQ ONNX)")
    if not caps.dla:
        raise UserInputError(
            f"TensorRT {version} cannot build for DLA (DLA returned in 11.4.1, AGX Orin with JetPack 7.2.2+): "
            "drop --dla or use the JetPack's TensorRT 10.x"
        )
    if version.major >= 11 and device.name != "agx-orin":
        raise UserInputError(f"TensorRT {version} supports DLA on Jetson AGX Orin only")


def _hardware_level(options: BuildOptions, version, caps: Capabilities, device: DevicePreset, gpu_cc) -> str:
    if not options.hardware_compat:
        return "NONE"
    key = options.hardware_compat.lower()
    if key not in HARDWARE_COMPAT:
        raise UserInputError(f"--hardware-compat {options.hardware_compat!r}: choose {' or '.join(HARDWARE_COMPAT)}")
    if device.jetson:
        raise UserInputError(
            "--hardware-compat is not supported on JetPack (TensorRT docs): build the engine on the Jetson itself"
        )
    if options.dla_core is not None:
        raise UserInputError("--hardware-compat cannot be combined with --dla")
    level = HARDWARE_COMPAT[key]
    supported = caps.ampere_plus if level == "AMPERE_PLUS" else caps.same_compute_capability
    if not supported:
        raise UserInputError(
            f"--hardware-compat {key} needs TensorRT {'8.6' if level == 'AMPERE_PLUS' else '10.9'}+, this is {version}"
        )
    if level == "AMPERE_PLUS" and gpu_cc and int(str(gpu_cc).split(".")[0]) < 8:
        raise UserInputError(
            f"--hardware-compat ampere+ must be built on an Ampere or newer GPU (this one is sm_{gpu_cc})"
        )
    return level
