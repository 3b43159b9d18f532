"""`edgecnn predict`: top-k classes for image files (or folders of images) with any model."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.markup import escape

from edgecnn.cli.common import cli_command, console, print_json


def predict(
    model: str = typer.Argument(..., help="Model file (.pt, .onnx, .engine) or a pretrained name."),
    images: List[str] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to show per image."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Force a backend (onnxrt, torch, tensorrt, ...)."),
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON only."),
):
    """Classify images. Unreadable files are reported and make the exit code 2; the rest are still classified."""
    from edgecnn.predict import predict_files
    from edgecnn.runtime import load

    with load(model, backend=backend) as runner:
        results = predict_files(runner, images, top_k=top_k)
    failed = [r for r in results if "error" in r]

    if json_out:
        print_json({"model": str(model), "results": results})
    else:
        for r in results:
            if "error" in r:
                console.print(f"[red]✗[/] {escape(str(r['path']))}: {escape(str(r['error']))}")
                continue
            best = ", ".join(f"{t['label']} {t['score']:.1%}" for t in r["top_k"])
            typer.echo(f"{r['path']}: {best}")
    if failed:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("predict")(cli_command(predict))
