"""`edgecnn profile`: latency of one or more models side by side, with ratios to the first."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgecnn.cli.common import (
    add_command,
    console,
    force_option,
    json_option,
    print_json,
    progress_bar,
    results,
    threads_option,
)


def _batches(text: str) -> tuple[int, ...]:
    from edgecnn.errors import UserInputError

    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UserInputError(f"--batch takes comma-separated integers like 1,4,8, got {text!r}") from None
    if not values:
        raise UserInputError("--batch needs at least one batch size")
    return values


def profile_command(
    models: List[str] = typer.Argument(
        ...,
        help="Model files (.pt, .onnx, .engine, .xml) or pretrained names; MODEL@BACKEND forces a backend "
        "(e.g. model.onnx@openvino). The first one is the baseline for ratios.",
    ),
    batch: str = typer.Option("1", "--batch", "-b", help="Batch sizes, comma-separated (e.g. 1,4,8)."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Warm-up runs per model and batch (not timed)."),
    iterations: int = typer.Option(100, "--iterations", "-n", min=1, help="Timed runs per model and batch."),
    duration: Optional[float] = typer.Option(
        None,
        "--duration",
        help="Seconds of timed runs per model and batch (replaces --iterations); overrun by at most one call.",
    ),
    threads: Optional[int] = threads_option("CPU threads per model (default: the backend's)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also time each layer/node and list the slowest."),
    top: int = typer.Option(10, "--top", min=1, help="How many slowest layers to list with --per-layer."),
    end_to_end: bool = typer.Option(
        False, "--end-to-end", help="Also time a BGR 640x480 frame -> preprocessing -> model -> top-5."
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Write profile.json, profile.md and PNG plots here."),
    force: bool = force_option("Replace an existing --report folder's report."),
    json_out: bool = json_option("Print the results as JSON only, on stdout (no raw samples)."),
):
    """Latency (min/mean/p50/p90/p95/p99/max), throughput, memory and file size of models, timed interleaved."""
    from edgecnn.profiling.latency import ProfileOptions, profile_models
    from edgecnn.profiling.report import check_report_dir, write_report

    if report is not None:
        check_report_dir(report, force)  # fail before minutes of timing, not after
    options = ProfileOptions(
        batches=_batches(batch),
        warmup=warmup,
        iterations=iterations,
        duration=duration,
        threads=threads,
        per_layer=per_layer,
        top_layers=top,
        end_to_end=end_to_end,
    )
    options.validate()
    with progress_bar("profiling", disable=json_out) as update:
        result = profile_models(models, options, progress=update)
    written = write_report(result, report, force) if report is not None else {}
    if json_out:
        out = result.to_dict(samples=False)
        if written:
            out["report"] = {k: str(v) for k, v in written.items()}
        print_json(out)
        return
    _print_tables(result)
    for kind, path in written.items():
        console.print(f"{kind}: {path}", markup=False)


def _print_tables(result) -> None:
    """The result on stdout (`results`), like eval's and compare's tables; model labels, layer names and notes are
    text, never rich markup."""
    from rich.markup import escape
    from rich.table import Table

    from edgecnn.profiling.report import SHORT_HEADERS, measurement_rows

    env = result.environment
    cpu = env.get("cpu", {})
    gpus = ", ".join(g["name"] for g in env.get("gpus") or []) or "none"
    results.print(
        f"[bold]{escape(str(cpu.get('model')))}[/] ({cpu.get('usable_cores')} cores usable), threads: "
        f"{env.get('threads')}, GPU: {escape(gpus)}"
    )
    models = Table(title="models")
    for h in ("model", "backend", "precision", "input", "file MB", "RSS delta MB"):
        models.add_column(h, justify="left" if h in ("model", "backend", "precision", "input") else "right")
    for m in result.models:
        models.add_row(
            escape(m.label),
            m.backend,
            m.precision,
            "x".join(map(str, m.input_shape)),
            f"{m.file_size_mb:.2f}",
            "-" if m.rss_delta_mb is None else f"{m.rss_delta_mb:.1f}",
        )
    results.print(models)
    table = Table(title="latency in ms; 'x 1st' = p50 / the first model's p50 (< 1 is faster)")
    for h in SHORT_HEADERS:
        table.add_column(h, justify="left" if h in ("model", "mode") else "right", overflow="fold")
    for row in measurement_rows(result):
        table.add_row(*(escape(str(cell)) for cell in row))
    results.print(table)
    for m in result.measurements:
        if m.stages:
            split = ", ".join(f"{k} {v['mean_ms']:.3f}" for k, v in m.stages.items())
            results.print(f"{m.label} batch {m.batch} {m.mode} stages (mean ms): {split}", markup=False)
    for info in result.models:
        if info.layers:
            lt = Table(title=escape(f"slowest layers: {info.label} ({info.layers_note})"))
            for h in ("layer", "op", "mean ms", "share"):
                lt.add_column(h, justify="right" if h in ("mean ms", "share") else "left")
            for r in info.layers:
                share = f"{100 * r['share']:.1f}%" if "share" in r else "-"
                lt.add_row(escape(str(r["name"])), escape(str(r.get("op", "?"))), f"{r['mean_ms']:.4f}", share)
            results.print(lt)
        elif info.layers_note and result.options.per_layer:
            console.print(f"[yellow]{escape(f'{info.label}: {info.layers_note}')}[/]")
    if result.peak_rss_mb is not None:
        results.print(f"process peak RSS {result.peak_rss_mb:.1f} MB")
    if result.timing and len(result.models) > 1:
        results.print(f"timing: {result.timing}", markup=False)


def register(app: typer.Typer) -> None:
    add_command(app, "profile", profile_command)
