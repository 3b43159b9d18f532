"""`edgecnn adopt`: a classifier ONNX made elsewhere gets the edgecnn contract (labels, preprocessing) once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import add_command, console, force_option, json_option, print_json, warn

RESIZE_NAMES = {"crop": "shorter_crop", "shorter-crop": "shorter_crop", "stretch": "resize", "letterbox": "letterbox"}


def _numbers(text: str | None, count: int, flag: str, kind=float) -> tuple | None:
    from edgecnn.errors import UserInputError

    if text is None:
        return None
    try:
        values = [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserInputError(f"{flag} {text!r}: expected {count} comma-separated numbers") from None
    if len(values) == 1 and count > 1:
        values = values * count
    if len(values) != count:
        raise UserInputError(f"{flag} {text!r}: expected {count} comma-separated numbers (or one for all)")
    return tuple(values)


def adopt(
    model: Path = typer.Argument(..., help="The classifier ONNX to adopt (exported by any tool)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the adopted .onnx (the input is never changed)."),
    labels: Optional[Path] = typer.Option(
        None,
        "--labels",
        help="Class names, one per line in output order; ImageNet wnids or 'wnid name' lines work too "
        "(default: the model's own, e.g. Ultralytics' names).",
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="imagenet, inception, tf-lite, raw-0-1 or ultralytics-cls: a complete preprocessing."
    ),
    size: Optional[str] = typer.Option(None, "--size", help="Input H,W (or one number); read from the graph if fixed."),
    resize: Optional[str] = typer.Option(
        None, "--resize", help="crop (short side + centre crop), stretch or letterbox."
    ),
    crop_ratio: Optional[float] = typer.Option(None, "--crop-ratio", help="Part of the short side kept by crop."),
    interpolation: Optional[str] = typer.Option(None, "--interpolation", help="nearest, linear, area or cubic."),
    channel_order: Optional[str] = typer.Option(None, "--channel-order", help="rgb or bgr: what the model expects."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean R,G,B (see --scale)."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std R,G,B (see --scale)."),
    scale: Optional[str] = typer.Option(
        None, "--scale", help="0-1 or 0-255: the scale --mean/--std are on (default: 0-1 when every std < 1)."
    ),
    layout: Optional[str] = typer.Option(None, "--layout", help="nchw or nhwc (default: read from the graph)."),
    input_name: Optional[str] = typer.Option(None, "--input", help="Which input, when the model has several."),
    output_name: Optional[str] = typer.Option(None, "--output", help="Which output, when the model has several."),
    output_kind: Optional[str] = typer.Option(
        None, "--output-kind", help="logits or probabilities (default: probabilities when a Softmax ends the graph)."
    ),
    fixed_batch: bool = typer.Option(
        False, "--fixed-batch", help="Keep a fixed batch (default: keep or add a dynamic batch where it works)."
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Labelled image folder (class sub-folders): report top-1 with this preprocessing."
    ),
    check_preprocessing: bool = typer.Option(
        False, "--check-preprocessing", help="With --data: score every preset, refuse one far behind the best."
    ),
    limit: int = typer.Option(200, "--limit", help="Images of --data used (spread over the folder)."),
    force: bool = force_option("Replace an existing --out file."),
    json_out: bool = json_option("Print the report as JSON only, on stdout."),
):
    """Give a foreign classifier ONNX the edgecnn contract: every command then runs it with the right preprocessing."""
    from edgecnn.adopt import AdoptOptions
    from edgecnn.adopt import adopt as run
    from edgecnn.errors import UserInputError

    if resize is not None and resize not in RESIZE_NAMES:
        raise UserInputError(f"--resize {resize!r}: expected one of {', '.join(RESIZE_NAMES)}")
    for flag, value, allowed in (
        ("--layout", layout, ("nchw", "nhwc")),
        ("--channel-order", channel_order, ("rgb", "bgr")),
        ("--scale", scale, ("0-1", "0-255")),
    ):
        if value is not None and value.lower() not in allowed:
            raise UserInputError(f"{flag} {value!r}: expected {' or '.join(allowed)}")
    if limit < 1:
        raise UserInputError("--limit must be at least 1")
    options = AdoptOptions(
        labels=labels,
        preset=preset,
        size=_numbers(size, 2, "--size", int),
        resize=RESIZE_NAMES.get(resize) if resize else None,
        crop_ratio=crop_ratio,
        interpolation=interpolation,
        channel_order=channel_order.lower() if channel_order else None,
        mean=_numbers(mean, 3, "--mean"),
        std=_numbers(std, 3, "--std"),
        scale=scale,
        layout=layout.lower() if layout else None,
        input=input_name,
        output=output_name,
        output_kind=output_kind,
        dynamic_batch=not fixed_batch,
        data=data,
        check_preprocessing=check_preprocessing,
        limit=limit,
        force=force,
    )
    with console.status("adopting", spinner="dots") if not json_out else _Null() as status:
        report = run(model, out, options, progress=(lambda m: status.update(m)) if status else None)
    if json_out:
        print_json(report.to_dict())
        return
    for note in report.notes:
        warn(note)
    pre = report.preprocess
    console.print(
        f"[green]✓[/] wrote {report.out}: {report.labels} classes, input {report.input['name']} "
        f"{report.input['layout'].upper()} {report.input['dtype']} {pre['input_size'][0]}x{pre['input_size'][1]}, "
        f"batch {report.batch}, output {report.output['kind']}\n"
        f"  preprocessing: {pre['resize']} (crop {pre['crop_ratio']:g}, {pre['interpolation']}), "
        f"{pre['channel_order'].upper()}, mean {_fmt(pre['mean'])}, std {_fmt(pre['std'])} (0-255 scale)"
    )
    if report.scored_images:
        score = f"top-1 {report.top1:.1%}" if report.top1 is not None else "no top-1 (folders are not its classes)"
        console.print(f"  on {report.scored_images} images: {score}, mean top-1 probability {report.confidence:.3f}")
    for cand in report.candidates:
        t = f"top-1 {cand['top1']:.1%}, " if cand["top1"] is not None else ""
        console.print(f"    {cand['preset']:<20} {t}confidence {cand['confidence']:.3f}")
    if report.best:
        console.print(f"  best preset on this data: {report.best}")


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def register(app: typer.Typer) -> None:
    add_command(app, "adopt", adopt)
