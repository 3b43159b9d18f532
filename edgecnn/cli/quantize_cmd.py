"""`edgecnn quantize`: FP32 ONNX + calibration images -> INT8 Q/DQ ONNX (+ TensorRT calibration table, report)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from edgecnn.cli.common import (
    add_command,
    console,
    force_option,
    json_option,
    print_json,
    progress_bar,
    threads_option,
    warn,
)

STAGES = {
    "decode": "decoding calibration images",
    "calibrate": "calibrating",
    "round": "rounding weights (GPTQ)",
    "evaluate": "FP32 reference",
    "sensitivity": "ranking layer sensitivity",
    "gate": "keeping sensitive layers in float",
    "finetune": "fine-tuning through INT8 rounding",
}


def _floats(text: Optional[str], n: int, flag: str) -> Optional[tuple]:
    if text is None:
        return None
    from edgecnn.errors import UserInputError

    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise UserInputError(f"{flag} expects {n} comma-separated numbers, got {text!r}") from None
    if len(values) == 1 and n == 3:
        values = values * 3
    if len(values) != n:
        raise UserInputError(f"{flag} expects {n} comma-separated numbers, got {text!r}")
    return values


def quantize(
    model: str = typer.Argument(..., help="FP32 .onnx model (exported by edgecnn) or a registered pretrained name."),
    calib: Path = typer.Option(
        Path("calibration"), "--calib", help="Calibration image folder (recursive) or video file."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the INT8 Q/DQ .onnx model."),
    target: str = typer.Option(
        "tensorrt",
        "--target",
        help="tensorrt: INT8 symmetric activations, per-channel weights "
        "(TensorRT explicit quantization). cpu: uint8 activations + int8 weights (fast on ORT CPU).",
    ),
    method: str = typer.Option(
        "percentile", "--method", help="Calibrator: minmax, percentile or entropy (KL, TensorRT-style)."
    ),
    percentile: float = typer.Option(99.99, "--percentile", help="Percentile of |x| kept by --method percentile."),
    num_images: int = typer.Option(
        500, "--num-images", help="Use at most this many calibration images (random subset)."
    ),
    every: Optional[int] = typer.Option(
        None, "--every", help="Video source: take every k-th frame (default: spread over the video)."
    ),
    batch: int = typer.Option(
        16, "--batch", help="Calibration batch size (a model exported with a fixed batch always runs at its own)."
    ),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Node name to keep in float (repeatable)."),
    exclude_pattern: Optional[List[str]] = typer.Option(
        None, "--exclude-pattern", help="Regular expression: nodes whose name it matches stay in float (repeatable)."
    ),
    exclude_op_type: Optional[List[str]] = typer.Option(
        None, "--exclude-op-type", help="ONNX op type whose nodes stay in float, e.g. Softmax (repeatable)."
    ),
    cache: Optional[Path] = typer.Option(
        None, "--cache", help="Also write the ranges as a TensorRT calibration table."
    ),
    trt_version: Optional[str] = typer.Option(
        None,
        "--trt-version",
        help="TensorRT version for the table header (e.g. 8.6.2, 10.3.0; default: installed TensorRT, else 8.6.1).",
    ),
    val: Optional[Path] = typer.Option(
        None, "--val", help="Labelled folder for FP32 vs INT8 accuracy (unlabelled: agreement)."
    ),
    max_drop: Optional[float] = typer.Option(
        None,
        "--max-drop",
        help="Max top-1 drop in points (agreement loss when "
        "unlabelled); keeps sensitive layers in float until met, or fails.",
    ),
    max_steps: int = typer.Option(8, "--max-steps", help="Most layers --max-drop may move back to float."),
    sensitivity_images: int = typer.Option(
        32, "--sensitivity-images", min=1, help="Evaluation images --max-drop ranks layer sensitivity on."
    ),
    gate_seconds: float = typer.Option(
        120.0, "--gate-seconds", help="Time for --max-drop's sensitivity ranking and search; it stops there."
    ),
    high_precision: Optional[str] = typer.Option(
        None,
        "--high-precision",
        help="Precision of the layers kept in float: fp16 (default for --target tensorrt: TensorRT builds them "
        "in FP16, simulated when measuring) or fp32.",
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Folder for quantization.json + quantization.md."),
    no_bias_correction: bool = typer.Option(
        False, "--no-bias-correction", help="Skip correcting biases for INT8 weight error."
    ),
    rounding: str = typer.Option(
        "gptq",
        "--rounding",
        help="INT8 weight rounding: gptq (each rounding error compensated on the calibration images) or nearest.",
    ),
    reduce_range: Optional[bool] = typer.Option(
        None,
        "--reduce-range/--full-range",
        help="INT8 weights on [-64, 64] instead of [-127, 127]. Default: reduced "
        "for --target cpu (fast and exact on every CPU; full-range weights saturate ONNX Runtime's fast kernels on x86 "
        "CPUs without VNNI), full for tensorrt.",
    ),
    finetune: int = typer.Option(
        0,
        "--finetune",
        help="Epochs of quantization-aware fine-tuning on the calibration "
        "images, with the FP32 model as teacher (needs PyTorch; 0: plain post-training).",
    ),
    finetune_lr: float = typer.Option(1e-5, "--finetune-lr", help="Adam learning rate for --finetune."),
    threads: Optional[int] = threads_option("ONNX Runtime threads (default: all cores)."),
    input_size: Optional[str] = typer.Option(
        None, "--input-size", help="ONLY for a model without edgecnn metadata: H,W."
    ),
    mean: Optional[str] = typer.Option(
        None, "--mean", help="ONLY without metadata: per-channel mean, 0-255 scale (R,G,B)."
    ),
    std: Optional[str] = typer.Option(
        None, "--std", help="ONLY without metadata: per-channel std, 0-255 scale (R,G,B)."
    ),
    resize: Optional[str] = typer.Option(
        None, "--resize", help="ONLY without metadata: shorter_crop (default), resize or letterbox."
    ),
    interpolation: Optional[str] = typer.Option(
        None,
        "--interpolation",
        help="ONLY without metadata: linear (default), cubic, area or nearest (as the model was trained).",
    ),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="ONLY without metadata: class names file, one per line."
    ),
    force: bool = force_option("Replace an existing --out (and --cache) file."),
    json_out: bool = json_option(),
):
    """Quantize to INT8 with calibration images: Q/DQ ONNX for TensorRT or CPU, accuracy measured on this machine."""
    from edgecnn.contract import read_labels_file
    from edgecnn.errors import UserInputError
    from edgecnn.preprocess import PreprocessConfig
    from edgecnn.quant import OutputPolicy, QuantOptions
    from edgecnn.quant import quantize as run_quantize

    if Path(model).suffix.lower() in (".pt", ".pth"):  # quantization works on the ONNX graph, not on PyTorch
        import shlex

        onnx_path = shlex.quote(str(Path(model).with_suffix(".onnx")))
        raise UserInputError(
            f"quantize takes an ONNX model, and {model} is a PyTorch checkpoint: export it first with "
            f"`edgecnn export {shlex.quote(str(model))} --out {onnx_path}`, then quantize {onnx_path}"
        )
    pre = None
    if input_size or mean or std:
        if not (input_size and mean and std):
            raise UserInputError("--input-size, --mean and --std go together (for a model without edgecnn metadata)")
        pre = PreprocessConfig(
            input_size=_floats(input_size, 2, "--input-size"),
            mean=_floats(mean, 3, "--mean"),
            std=_floats(std, 3, "--std"),
            resize=resize or "shorter_crop",
            interpolation=interpolation or "linear",
        )
    elif resize or interpolation:
        raise UserInputError(
            "--resize and --interpolation describe a model without edgecnn metadata: give them with "
            "--input-size, --mean and --std (a model with metadata brings its own preprocessing)"
        )
    options = QuantOptions(
        target=target,
        method=method,
        percentile=percentile,
        num_images=num_images,
        batch=batch,
        every=every,
        exclude=tuple(exclude or ()),
        exclude_patterns=tuple(exclude_pattern or ()),
        exclude_op_types=tuple(exclude_op_type or ()),
        val=val,
        max_drop=max_drop,
        max_steps=max_steps,
        gate_seconds=gate_seconds,
        sensitivity_images=sensitivity_images,
        high_precision=high_precision,
        threads=threads,
        bias_correction=not no_bias_correction,
        rounding=rounding,
        reduce_range=reduce_range,
        finetune=finetune,
        finetune_lr=finetune_lr,
        preprocess=pre,
        labels=read_labels_file(labels) if labels else None,
    )
    output = OutputPolicy(cache=cache, trt_version=trt_version, report=report, force=force)
    with progress_bar("quantizing", disable=json_out) as update:

        def progress(stage: str, done: int, total: int) -> None:
            update(done, total, description=STAGES.get(stage, stage))

        # an AccuracyGateError carries the measured steps: with --json they are in the error object (cli_command)
        result = run_quantize(model, out, calib, options, progress=progress, output=output)
    if json_out:
        print_json(result)
        return
    _print_summary(result)


def _print_summary(r: dict) -> None:
    cal, acc = r["calibration"], r["accuracy"]
    for w in cal["warnings"]:
        warn(w)
    per_class = ""
    if cal.get("per_class"):
        per_class = " (" + ", ".join(f"{k}: {v}" for k, v in list(cal["per_class"].items())[:8]) + ")"
    b = cal["brightness"]
    console.print(
        f"calibration: {cal['images']} images{per_class} from {cal['source']}, {cal['corrupt']} unreadable skipped, "
        f"brightness {b['mean']:.0f} ± {b['std']:.0f} (range {b['min']:.0f}–{b['max']:.0f}); "
        f"{len(r['ranges'])} tensors in {r['timings']['calibration_s']:.1f} s"
    )
    ag = acc["agreement"]
    line = f"accuracy on {acc['images']} images ({acc['source']}): top-1 agreement {100 * ag['top1_agreement']:.2f}%"
    if acc["kind"] == "labelled":
        line += (
            f", top-1 {100 * acc['fp32']['top1']:.2f}% -> {100 * acc['int8']['top1']:.2f}%, "
            f"top-5 {100 * acc['fp32']['top5']:.2f}% -> {100 * acc['int8']['top5']:.2f}%"
        )
    line += f", mean |logit diff| {ag['mean_abs_diff']:.4f}, KL {acc['kl']:.4g}"
    console.print(line)
    if acc.get("note"):
        console.print(f"  ({acc['note']})", markup=False)
    if ag.get("by_fp32_confidence"):
        from edgecnn.quant.report import confidence_summary

        console.print(f"  {confidence_summary(ag['by_fp32_confidence'])} images")
    if acc.get("per_class"):
        worst = sorted(acc["per_class"].items(), key=lambda kv: kv[1]["delta"])[:5]
        console.print("  per-class top-1 delta: " + ", ".join(f"{k} {100 * v['delta']:+.1f}" for k, v in worst))
    if r.get("finetune"):
        from edgecnn.quant.report import finetune_summary

        console.print(f"fine-tuned: {finetune_summary(r['finetune'])}")
    if acc.get("kind") != "labelled" and acc.get("drop_metric"):
        console.print(f"  drop {acc['drop']:.2f} points = {acc['drop_metric']}", markup=False)
    if r.get("fallback"):
        fb = r["fallback"]
        console.print(
            f"accuracy gate: drop {fb['steps'][0]['drop']:.2f} -> {acc['drop']:.2f} points (bound {r['max_drop']}) "
            f"with {len(fb['excluded'])} layer(s) in {r['high_precision']}, {fb['seconds']:.0f} s",
            markup=False,
        )
    for e in r.get("exclusions") or []:
        console.print(f"kept in float: {e['node']} ({e['op']}; {e['reason']})", markup=False)
    console.print(
        f"[green]✓[/] wrote {r['output']} ({r['sizes']['int8_bytes'] / 1e6:.2f} MB, "
        f"was {r['sizes']['fp32_bytes'] / 1e6:.2f} MB; "
        f"target {r['target']}, method {r['method']}, {r['rounding']['method']} rounding, "
        f"{'7-bit' if r['weights']['reduce_range'] else '8-bit'} weights)"
    )
    if r["weights"].get("note"):
        warn(r["weights"]["note"])
    if r.get("cache"):
        c = r["cache"]
        console.print(f"[green]✓[/] wrote {escape(str(c['path']))} ({c['header']}, {c['tensors']} tensors)")
    if r.get("latency"):
        lat = r["latency"]
        console.print(
            f"latency (batch {lat['batch']}, this machine): FP32 {lat['fp32']['median_ms']:.2f} ms, INT8 "
            f"{lat['int8']['median_ms']:.2f} ms ({lat['speedup']:.2f}x)"
        )
    if r["target"] == "tensorrt":  # the default: a first-time user on a laptop sees it run slower than FP32 here
        console.print(
            "  (--target tensorrt is for TensorRT engines, where it is fast; ONNX Runtime on a CPU runs it "
            "slower than FP32: --target cpu makes the model for CPUs)",
            markup=False,
        )
    if r.get("report"):
        console.print(f"[green]✓[/] report: {escape(str(r['report']['markdown']))}")


def register(app: typer.Typer) -> None:
    add_command(app, "quantize", quantize)
