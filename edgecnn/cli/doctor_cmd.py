"""`edgecnn doctor`: what this machine has for running models (Jetson, JetPack, TensorRT, CUDA, cameras, ...)."""

from __future__ import annotations

import typer

from edgecnn.cli.common import add_command, console, json_option, print_json


def doctor(json_out: bool = json_option("Print the checks as JSON only, on stdout.")):
    """Check this machine: platform, JetPack, TensorRT, CUDA, GPU, OpenCV, cameras, power mode.

    Each item ✓ / ✗ with the fix, or – when it does not apply here. Exits 0: it reports, it does not judge."""
    from rich.markup import escape

    from edgecnn.doctor import SYMBOLS, run_doctor

    report = run_doctor()
    if json_out:
        print_json(report.to_dict())
        return
    colours = {"ok": "green", "fail": "red", "skip": "dim"}
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        colour = colours[c.status]
        console.print(f"[{colour}]{SYMBOLS[c.status]}[/] {c.name:<{width}}  {escape(c.value)}")
        if c.fix:
            console.print(f"  {'':<{width}}  [yellow]fix:[/] {escape(c.fix)}")
    n_fail = len(report.failures)
    console.print(f"{n_fail} item(s) missing" if n_fail else "[green]everything edgecnn can use is here[/]")


def register(app: typer.Typer) -> None:
    add_command(app, "doctor", doctor)
