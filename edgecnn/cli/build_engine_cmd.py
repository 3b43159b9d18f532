"""`edgecnn build-engine`: ONNX -> TensorRT engine + sidecar manifest, or the equivalent trtexec command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import add_command, console, json_option, print_json, progress_bar, warn


def build_engine(
    model: str = typer.Argument(
        ...,
        help="An ONNX model (from `edgecnn export`, `quantize --target tensorrt` or `adopt`), or a .pt checkpoint or "
        "registered name: then it is exported (and with --calib quantized) first, in one step.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Engine file to write (.engine or .plan); the manifest goes to OUT.json."
    ),
    precision: str = typer.Option(
        "fp32", "--precision", "-p", help="fp32, fp16, int8 (Q/DQ ONNX or --calib-cache) or best."
    ),
    device: Optional[str] = typer.Option(
        None,
        "--device",
        help="Target preset: nano, xavier-nx, agx-xavier, orin-nano, orin-nx, agx-orin, thor, desktop "
        "(default: the Jetson this runs on, else desktop).",
    ),
    dla: Optional[int] = typer.Option(
        None, "--dla", help="Run on DLA core N (Xavier / Orin NX / AGX Orin; fp16 or int8)."
    ),
    gpu_fallback: bool = typer.Option(
        False, "--gpu-fallback", help="With --dla: let layers the DLA cannot run use the GPU."
    ),
    workspace: Optional[str] = typer.Option(
        None, "--workspace", help="Builder workspace limit, e.g. 512M or 2G (default: the preset's)."
    ),
    batch: Optional[str] = typer.Option(None, "--batch", help="N (fixed) or MIN:OPT:MAX for a dynamic-batch ONNX."),
    timing_cache: Optional[Path] = typer.Option(
        None, "--timing-cache", help="Timing cache file: read if present, saved back after the build."
    ),
    calib_cache: Optional[Path] = typer.Option(
        None, "--calib-cache", help="INT8 calibration cache (implicit INT8; TensorRT <= 10 only)."
    ),
    version_compatible: bool = typer.Option(
        False, "--version-compatible", help="Engine that also runs on later TensorRT releases (8.6+)."
    ),
    hardware_compat: Optional[str] = typer.Option(
        None, "--hardware-compat", help="ampere+ or same-cc: engine that runs on other GPUs (desktop only)."
    ),
    print_trtexec: bool = typer.Option(
        False, "--print-trtexec", help="Print the equivalent trtexec command and exit (no TensorRT needed)."
    ),
    trt_version: Optional[str] = typer.Option(
        None,
        "--trt-version",
        help="Plan for this TensorRT version (default: installed, else the device's JetPack one); a build refuses a "
        "version other than the installed one.",
    ),
    calib: Optional[Path] = typer.Option(
        None, "--calib", help="One step to INT8: calibration images; the Q/DQ ONNX is made beside --out."
    ),
    val: Optional[Path] = typer.Option(None, "--val", help="With --calib: labelled images to measure the INT8 drop."),
    max_drop: Optional[float] = typer.Option(
        None, "--max-drop", help="With --val: top-1 points INT8 may lose (layers fall back to float until it holds)."
    ),
    num_images: int = typer.Option(500, "--num-images", help="With --calib: calibration images used."),
    json_out: bool = json_option("Print the report (or the plan + trtexec command) as JSON only, on stdout."),
):
    """Build a TensorRT engine on this machine's GPU, with a manifest that lets the runner refuse a mismatched engine;
    from a .pt or a name (with --calib: INT8) it exports and quantizes first, in one step."""
    from edgecnn.errors import UserInputError
    from edgecnn.trt.builder import check_device_is_here, check_inputs, check_trt_version_matches, preview_plan
    from edgecnn.trt.env import jetson_info
    from edgecnn.trt.plan import BuildOptions, parse_batch, parse_size

    # Everything that can be checked without TensorRT is checked first, the same way with or without
    # --print-trtexec: argument and file errors (exit 2/4) come before "TensorRT is not installed" (exit 3).
    options = BuildOptions(
        precision=precision.lower(),
        device=device.lower() if device else None,
        dla_core=dla,
        gpu_fallback=gpu_fallback,
        workspace=parse_size(workspace),
        batch=parse_batch(batch),
        timing_cache=str(timing_cache) if timing_cache else None,
        calib_cache=str(calib_cache) if calib_cache else None,
        version_compatible=version_compatible,
        hardware_compat=hardware_compat,
    )
    if calib is not None or Path(model).suffix.lower() != ".onnx":
        _one_step(model, out, options, calib, val, max_drop, num_images, print_trtexec, trt_version, json_out)
        return
    if val is not None or max_drop is not None:
        raise UserInputError("--val/--max-drop go with --calib (the one-step INT8 build)")
    model = Path(model)
    _contract, facts = check_inputs(model, out, options, require_contract=not print_trtexec)
    jetson = jetson_info()
    device_preset, plan = preview_plan(options, facts, trt_version, jetson)
    if print_trtexec:
        _print_trtexec(plan, model, out, json_out)
        return
    check_device_is_here(device_preset, jetson)  # a Jetson preset on a desktop (or the reverse): needs no GPU to say

    from edgecnn.trt.builder import build_engine as build
    from edgecnn.trt.env import runtime_facts

    here = runtime_facts()  # TensorRT, cuda-python and a GPU, or one line saying what is missing (exit 3)
    check_trt_version_matches(trt_version, here["tensorrt"])
    with progress_bar("building the TensorRT engine", total=None, disable=json_out) as update:

        def progress(phase: str, done: int, total: int | None) -> None:
            update(done, total=total, description=phase)

        report = build(model, out, options, progress=progress, here=here)
    if json_out:
        print_json(report.to_dict())
        return
    for note in report.warnings:
        warn(note)
    built = report.built_with
    plan = report.plan
    lo, opt, hi = plan.batch_range
    console.print(
        f"[green]✓[/] wrote {report.engine} ({report.engine.stat().st_size / 1e6:.1f} MB) and {report.manifest.name} "
        f"in {report.seconds:.1f} s\n"
        f"  TensorRT {built['tensorrt']} on {built['gpu']} (sm_{built['compute_capability']}), "
        f"{plan.engine_precision}{f', DLA core {plan.dla_core}' if plan.dla_core is not None else ''}, "
        f"batch {lo}..{hi} (opt {opt})"
    )


def _one_step(model, out, options, calib, val, max_drop, num_images, print_trtexec, trt_version, json_out) -> None:
    """export -> quantize -> build (or print the trtexec command), intermediates kept and reused beside --out."""
    from edgecnn.trt.builder import check_device_is_here, check_inputs, preview_plan
    from edgecnn.trt.env import jetson_info
    from edgecnn.trt.onestep import OneStepOptions, build_from_source

    jetson = jetson_info()
    device = preview_plan(options, _no_facts(options), trt_version, jetson)[0]  # option errors before any work
    if not print_trtexec:
        from edgecnn.trt.env import runtime_facts

        check_device_is_here(device, jetson)
        runtime_facts()  # no TensorRT or GPU: say so now, not after the export and the quantization
    step_options = OneStepOptions(
        build=options,
        calib=calib,
        val=val,
        max_drop=max_drop,
        num_images=num_images,
        print_trtexec=print_trtexec,
        trt_version=trt_version,
    )
    with console.status("building", spinner="dots") if not json_out else _Null() as status:
        report = build_from_source(
            model, out, step_options, progress=(lambda step, msg: status.update(f"{step}: {msg}")) if status else None
        )
    if print_trtexec:
        onnx = Path(report.onnx)
        _contract, facts = check_inputs(onnx, out, options, require_contract=False)
        plan = preview_plan(options, facts, trt_version, jetson)[1]
        if json_out:
            from edgecnn.trt.trtexec import trtexec_argv, trtexec_script

            print_json(
                {
                    **report.to_dict(),
                    "plan": plan.to_dict(),
                    "trtexec": trtexec_argv(plan, onnx, out),
                    "script": trtexec_script(plan, onnx, out),
                }
            )
            return
        _print_steps(report)
        _print_trtexec(plan, onnx, out, json_out)
        return
    if json_out:
        print_json(report.to_dict())
        return
    _print_steps(report)
    console.print(f"[green]✓[/] wrote {report.engine} from {report.onnx}")


def _no_facts(options):
    """Stand-in ONNX facts for checking the options before the ONNX exists: the model the steps will make (Q/DQ for
    int8), its batch as --batch asks."""
    from edgecnn.trt.plan import OnnxFacts

    batch = options.batch
    qdq = 2 if options.precision == "int8" else 0
    return OnnxFacts("input", (None if batch and batch.min != batch.max else 1, 3, 224, 224), ("logits",), qdq, False)


def _print_steps(report) -> None:
    for step in report.steps:
        how = "reused (inputs unchanged)" if step.reused else f"done in {step.seconds:.1f} s"
        extra = ""
        acc = step.details.get("accuracy") if step.details else None
        if isinstance(acc, dict) and acc.get("fp32_top1") is not None:
            extra = f", top-1 FP32 {acc['fp32_top1']:.1%} INT8 {acc.get('int8_top1', 0):.1%}"
        console.print(f"  {step.step:<9} {step.output}: {how}{extra}")


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _print_trtexec(plan, model: Path, out: Path, json_out: bool) -> None:
    from edgecnn.trt.trtexec import trtexec_argv, trtexec_script

    if json_out:
        print_json(
            {
                "plan": plan.to_dict(),
                "trtexec": trtexec_argv(plan, model, out),
                "script": trtexec_script(plan, model, out),
            }
        )
        return
    for note in plan.notes:
        warn(note)
    if not out.parent.is_dir():
        warn(f"{out.parent} does not exist: trtexec does not create folders (mkdir -p {out.parent})")
    typer.echo(trtexec_script(plan, model, out))


def register(app: typer.Typer) -> None:
    add_command(app, "build-engine", build_engine)
