"""`edgecnn eval`: top-1 / top-5 / per-class accuracy of any model on a labelled image folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import add_command, backend_option, console, json_option, print_json, progress_bar, results


def eval_command(
    model: str = typer.Argument(..., help="Model file (.pt, .onnx, .engine) or a pretrained name."),
    data_dir: Path = typer.Argument(..., help="Labelled folder: one sub-folder per class (names, ids or wnids)."),
    batch: int = typer.Option(32, "--batch", min=1, help="Batch size."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate a fixed random subset of N images."),
    backend: Optional[str] = backend_option(),
    json_out: bool = json_option("Print the metrics as JSON only, on stdout."),
):
    """Accuracy on a labelled folder. A train/ + test/ pair evaluates test/."""
    from edgecnn.evaluate import evaluate
    from edgecnn.zoo import open_model

    with open_model(model, backend=backend) as runner, progress_bar("evaluating", disable=json_out) as update:
        metrics = evaluate(runner, data_dir, batch=batch, progress=update, limit=limit)
    if json_out:
        print_json(metrics)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{Path(str(model)).name} on {metrics['scored']} ({metrics['images']} images)"))
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("top-1", justify="right")
    for name, row in metrics["per_class"].items():
        table.add_row(escape(name), str(row["images"]), f"{row['top1']:.1%}")
    results.print(table)
    if metrics["corrupt"]:
        console.print(f"[yellow]skipped {metrics['corrupt']} unreadable file(s)[/]")
    if metrics["not_in_a_class_folder"]:
        console.print(
            f"[yellow]not scored: {metrics['not_in_a_class_folder']} image(s) directly in the data folder, "
            "in no class folder[/]"
        )
    if metrics["ignored"]:
        console.print(f"[yellow]ignored {metrics['ignored']} file(s) that are not images (by their suffix)[/]")
    typer.echo(f"top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  images {metrics['images']}")


def register(app: typer.Typer) -> None:
    add_command(app, "eval", eval_command)
