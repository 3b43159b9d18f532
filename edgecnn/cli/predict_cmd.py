"""`edgecnn predict`: top-k classes for image files (or folders of images) with any model."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.markup import escape

from edgecnn.cli.common import add_command, backend_option, console, error_object, json_option, print_json

UNREADABLE_EXIT = 2  # some inputs could not be read (the rest were classified): UserInputError's code


def predict(
    model: str = typer.Argument(..., help="Model file (.pt, .onnx, .engine) or a pretrained name."),
    images: List[str] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to show per image."),
    backend: Optional[str] = backend_option(),
    json_out: bool = json_option(),
):
    """Classify images. Unreadable files are reported and make the exit code 2; the rest are still classified."""
    from edgecnn.predict import predict_files
    from edgecnn.zoo import open_model

    with open_model(model, backend=backend) as runner:
        results = predict_files(runner, images, top_k=top_k)
    failed = [r for r in results if "error" in r]

    if json_out:
        doc = {"model": str(model), "results": results}
        if failed:  # a failure, so the error object is there too (the classified images are in `results`)
            message = f"{len(failed)} of {len(results)} input(s) could not be classified"
            doc.update(error_object(message, UNREADABLE_EXIT, "UserInputError"))
        print_json(doc)
    else:
        for r in results:
            if "error" in r:
                console.print(f"[red]✗[/] {escape(str(r['path']))}: {escape(str(r['error']))}")
                continue
            best = ", ".join(f"{t['label']} {t['score']:.1%}" for t in r["top_k"])
            typer.echo(f"{r['path']}: {best}")
    if failed:
        raise typer.Exit(UNREADABLE_EXIT)


def register(app: typer.Typer) -> None:
    add_command(app, "predict", predict)
