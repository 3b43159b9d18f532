"""`edgecnn compare`: do two builds of a model (backends, precisions) give the same answers on real images?"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import add_command, console, json_option, print_json, progress_bar, results


def compare_command(
    model_a: str = typer.Argument(
        ..., help="Reference model (.pt, .onnx, .engine, .xml or pretrained name); A@BACKEND forces a backend."
    ),
    model_b: str = typer.Argument(
        ..., help="Model to check against A (e.g. the INT8 build); B@BACKEND forces a backend."
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Folder of real images (recursive). Default: ./calibration/ when it has images."
    ),
    batch: int = typer.Option(16, "--batch", min=1, help="Images per inference call."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Compare on the first N images only."),
    show: int = typer.Option(10, "--show", min=0, help="How many disagreeing images to list (all in --json)."),
    min_agreement: Optional[float] = typer.Option(
        None, "--min-agreement", min=0.0, max=1.0, help="Fail (exit 5) below this top-1 agreement, e.g. 0.99."
    ),
    max_diff: Optional[float] = typer.Option(
        None, "--max-diff", min=0.0, help="Fail (exit 5) above this max abs logit diff."
    ),
    json_out: bool = json_option("Print the comparison as JSON only, on stdout."),
):
    """Max/mean abs difference, cosine similarity, top-1 agreement, and the images where A and B disagree."""
    from edgecnn.errors import EdgeCNNError
    from edgecnn.profiling.latency import ModelSpec
    from edgecnn.profiling.parity import check_gate, compare_runners, gate_failures, resolve_data
    from edgecnn.zoo import open_model

    root, images = resolve_data(data)
    spec_a, spec_b = ModelSpec.parse(model_a), ModelSpec.parse(model_b)
    with (
        open_model(spec_a.model, backend=spec_a.backend) as ra,
        open_model(spec_b.model, backend=spec_b.backend) as rb,
    ):
        with progress_bar("comparing", total=len(images[:limit] if limit else images), disable=json_out) as update:
            result = compare_runners(ra, rb, images, batch=batch, limit=limit, progress=update, root=root)
    result["data"] = str(root)
    if min_agreement is not None or max_diff is not None:  # scripts read the verdict, not only the exit code (5)
        failures = gate_failures(result, min_agreement, max_diff)
        result["gate"] = {
            "min_agreement": min_agreement,
            "max_abs_diff": max_diff,
            "passed": not failures,
            "failures": failures,
        }
    if not json_out:
        _print(result, spec_a.display, spec_b.display, show)
        check_gate(result, min_agreement, max_diff)
        return
    try:
        check_gate(result, min_agreement, max_diff)
    except EdgeCNNError as exc:  # one JSON document: the comparison with the error object in it
        exc.json_result = result
        raise
    print_json(result)


def _print(r: dict, name_a: str, name_b: str, show: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{name_a} vs {name_b} on {r['images']} images from {r['data']}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1 agreement", f"{r['top1_agreement']:.2%}")
    table.add_row("B's top-1 in A's top-5", f"{r['top1_in_top5']:.2%}")
    table.add_row("max abs diff (logits)", f"{r['max_abs_diff']:.4g}")
    table.add_row("mean abs diff (logits)", f"{r['mean_abs_diff']:.4g}")
    table.add_row("max abs diff (probabilities)", f"{r['max_prob_diff']:.4g}")
    table.add_row("cosine similarity (min / mean)", f"{r['cosine_min']:.6f} / {r['cosine_mean']:.6f}")
    results.print(table)
    dis = r["disagreements"]
    if dis and show:
        dt = Table(title=f"{len(dis)} image(s) where top-1 differs" + (f" (first {show})" if len(dis) > show else ""))
        for h in ("image", "A", "B"):
            dt.add_column(h)
        for d in dis[:show]:
            dt.add_row(
                escape(d["image"]), escape(f"{d['a']} ({d['a_prob']:.2f})"), escape(f"{d['b']} ({d['b_prob']:.2f})")
            )
        results.print(dt)
    for note in r["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if r["unreadable"]:
        console.print(f"[yellow]skipped {len(r['unreadable'])} unreadable file(s)[/]")
    typer.echo(
        f"top-1 agreement {r['top1_agreement']:.2%}, max abs diff {r['max_abs_diff']:.4g}, {len(dis)} disagreement(s)"
    )


def register(app: typer.Typer) -> None:
    add_command(app, "compare", compare_command)
