"""The `trtexec` command equivalent to a build plan (`edgecnn build-engine --print-trtexec`).

Useful where edgecnn cannot run the build itself (no Python TensorRT bindings in a container, a CI log), and as a
cross-check of what the builder does. Works without TensorRT installed. Flags per trtexec's own help text:
`--memPoolSize=workspace:N` is in MiB (8.4+); `--skipInference` is 8.6+ (8.5 has `--buildOnly`);
`--versionCompatible` and `--hardwareCompatibilityLevel=ampere+` are 8.6+, `sameComputeCapability` 10.9+;
11.x has no precision flags (`--fp16`, `--int8`, `--best`, `--calib` were removed with weak typing).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from edgecnn.trt.plan import BuildPlan, TrtVersion, capabilities

_HW = {"AMPERE_PLUS": "ampere+", "SAME_COMPUTE_CAPABILITY": "sameComputeCapability"}


def fp16_onnx_path(onnx_path: str | Path) -> Path:
    """Where the FP16 copy of an ONNX goes when a TensorRT 11 FP16 build needs one."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".fp16.onnx")


def trtexec_argv(plan: BuildPlan, onnx_path: str | Path, engine_path: str | Path) -> list[str]:
    """trtexec arguments that build the same engine as `plan` (for the ONNX the builder would parse)."""
    caps = capabilities(TrtVersion.parse(plan.tensorrt))
    onnx_in = fp16_onnx_path(onnx_path) if plan.convert_fp16 else Path(onnx_path)
    argv = ["trtexec", f"--onnx={onnx_in}", f"--saveEngine={engine_path}"]
    name = plan.input_name
    shapes = {k: "x".join(str(d) for d in plan.profile[k]) for k in ("min", "opt", "max")}
    if plan.dynamic_batch:  # a static ONNX takes no shapes (trtexec would ignore them with a warning)
        argv += [
            f"--minShapes={name}:{shapes['min']}",
            f"--optShapes={name}:{shapes['opt']}",
            f"--maxShapes={name}:{shapes['max']}",
        ]
    if "FP16" in plan.builder_flags:
        argv.append("--fp16")
    if "INT8" in plan.builder_flags:
        argv.append("--int8")
    if plan.int8_source == "calib_cache" and plan.calib_cache:
        argv.append(f"--calib={plan.calib_cache}")
    if plan.workspace_bytes:
        argv.append(f"--memPoolSize=workspace:{max(1, plan.workspace_bytes >> 20)}")
    if plan.dla_core is not None:
        argv.append(f"--useDLACore={plan.dla_core}")
        if plan.gpu_fallback:
            argv.append("--allowGPUFallback")
    if plan.version_compatible:
        argv.append("--versionCompatible")
    if plan.hardware_compat in _HW:
        argv.append(f"--hardwareCompatibilityLevel={_HW[plan.hardware_compat]}")
    if plan.timing_cache:
        argv.append(f"--timingCacheFile={plan.timing_cache}")
    argv.append(caps.trtexec_build_only)
    return argv


def trtexec_script(plan: BuildPlan, onnx_path: str | Path, engine_path: str | Path) -> str:
    """Shell text: the trtexec command, preceded by the FP16 conversion step when TensorRT 11 needs it."""
    lines = []
    if plan.convert_fp16:
        src, dst = str(onnx_path), str(fp16_onnx_path(onnx_path))
        code = f"from edgecnn.trt.fp16 import convert_fp16; convert_fp16({json.dumps(src)}, {json.dumps(dst)})"
        lines.append("# TensorRT 11 is strongly typed: make the FP16 ONNX first (inputs/outputs stay FP32)")
        lines.append(shlex.join(["python3", "-c", code]))
    lines.append(shlex.join(trtexec_argv(plan, onnx_path, engine_path)))
    return "\n".join(lines)
