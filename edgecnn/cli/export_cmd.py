"""`edgecnn export`: checkpoint (or pretrained name) -> ONNX with the contract inside, checked for parity."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import add_command, console, force_option, json_option, print_json


def export(
    model: str = typer.Argument(
        ..., help="A .pt checkpoint or a registered pretrained name (e.g. efficientnet-lite0)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the .onnx file."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version (the PyTorch exporter writes 7-20)."),
    batch: int = typer.Option(1, "--batch", help="Fixed batch size of the exported model (not with --dynamic-batch)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Export with a dynamic batch dimension."),
    data: Optional[Path] = typer.Option(
        None,
        "--data",
        help="Images for the parity check; when given they must be readable (default: training data or calibration/).",
    ),
    tolerance: float = typer.Option(
        1e-3, "--tolerance", help="Max abs logit difference allowed vs PyTorch (a finite number > 0)."
    ),
    force: bool = force_option("Replace an existing --out file."),
    json_out: bool = json_option("Print the export report as JSON only, on stdout."),
):
    """Export to ONNX: labels and preprocessing go into the model's metadata; parity vs PyTorch is checked."""
    from edgecnn.export import ExportOptions, export_onnx
    from edgecnn.zoo import resolve_model

    options = ExportOptions(
        opset=opset, batch=batch, dynamic_batch=dynamic_batch, tolerance=tolerance, data=data, force=force
    )
    with (
        _sigterm_interrupts(),
        console.status("exporting", spinner="dots") if not json_out else _nullcontext() as status,
    ):
        report = export_onnx(
            resolve_model(model, backend="torch"),
            out,
            options,
            progress=(lambda m: status.update(m)) if status else None,
        )
    if json_out:
        print_json(report.to_dict())
        return
    console.print(
        f"[green]✓[/] wrote {report.out} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, input "
        f"{tuple(report.input_shape)}, {report.classes} classes)\n"
        f"  parity vs PyTorch: max abs diff {report.max_abs_diff:.2e} (tolerance {report.tolerance:g}), "
        f"top-1 agreement {report.top1_agreement:.0%} on {report.parity_inputs}"
    )


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (`timeout`, `kill`, systemd, docker stop) interrupts the export like Ctrl-C does, so the staging folder
    beside --out (it holds the whole model) is removed on the way out instead of being left behind."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live on the main thread only
        yield
        return

    def on_term(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def register(app: typer.Typer) -> None:
    add_command(app, "export", export)
