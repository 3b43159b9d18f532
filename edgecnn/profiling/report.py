"""A profile as files: `profile.json` (everything, raw samples included), `profile.md` (environment + tables) and PNG
plots (latency distribution per model, batch size vs throughput, slowest layers), each written atomically.

matplotlib is used with the Agg backend (no display needed) through its object API, so a report never touches pyplot's
global state.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgecnn.errors import UserInputError
from edgecnn.files import check_output_folder, staged_files
from edgecnn.jsonout import strict_json

REPORT_FILES = ("profile.json", "profile.md", "latency.png", "throughput.png", "layers.png")


def check_report_dir(folder: str | Path, force: bool = False) -> Path:
    """The report folder, or a clear error when the path is a file, or holds a report already and `force` is not
    set (checked before any timing starts): like every other output, an earlier report is replaced only when asked."""
    folder = check_output_folder(folder, "--report")
    earlier = [name for name in REPORT_FILES if (folder / name).exists()]
    if earlier and not force:
        raise UserInputError(
            f"--report {folder} already holds a report ({', '.join(earlier)}): pass --force to replace it, or "
            "choose another --report folder"
        )
    return folder


def write_report(result, folder: str | Path, force: bool = False) -> dict[str, Path]:
    """Write JSON, Markdown and PNG plots for a `ProfileResult` into `folder`; returns {kind: path}. The files are
    staged and put in place together: a full disk or a read-only folder leaves no part of a report (and the
    earlier report, if any, as it was)."""
    folder = check_report_dir(folder, force)
    figures = {
        "latency_plot": ("latency.png", _latency_figure),
        "throughput_plot": ("throughput.png", _throughput_figure),
    }
    if any(m.layers for m in result.models):
        figures["layers_plot"] = ("layers.png", _layers_figure)
    paths: dict[str, Path] = {}
    with staged_files() as stage:
        for kind, name, text in (
            ("json", "profile.json", json.dumps(strict_json(result.to_dict()), indent=2, default=str) + "\n"),
            ("markdown", "profile.md", markdown(result)),
        ):
            stage(folder / name).write_text(text, encoding="utf-8")
            paths[kind] = folder / name
        for kind, (name, make) in figures.items():
            make(result).savefig(stage(folder / name, suffix=".png"), format="png", bbox_inches="tight")
            paths[kind] = folder / name
    return paths


# ---------------------------------------------------------------- markdown


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ms(v: float) -> str:
    """Three significant digits, enough for latencies from microseconds to seconds."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _ratio(v: float | None) -> str:
    """A latency ratio: two decimals from 0.1 up, two significant digits below (0.0014, not 0.00)."""
    if v is None:
        return "-"
    return f"{v:.2f}" if v >= 0.1 else f"{v:.2g}"


def measurement_rows(result) -> list[list[str]]:
    """One row per (model, batch, mode): the table shown in the terminal and in the Markdown."""
    rows = []
    for m in result.measurements:
        s = m.stats
        rows.append(
            [
                m.label,
                str(m.batch),
                m.mode,
                _ms(s.min_ms),
                _ms(s.mean_ms),
                _ms(s.p50_ms),
                _ms(s.p90_ms),
                _ms(s.p95_ms),
                _ms(s.p99_ms),
                _ms(s.max_ms),
                f"{s.throughput:.1f}",
                _ratio(m.latency_ratio),
            ]
        )
    return rows


HEADERS = [
    "model",
    "batch",
    "mode",
    "min ms",
    "mean ms",
    "p50 ms",
    "p90 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "img/s",
    "p50 / first",
]
SHORT_HEADERS = ["model", "b", "mode", "min", "mean", "p50", "p90", "p95", "p99", "max", "img/s", "x 1st"]


def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result) -> str:
    env = result.environment
    cpu = env.get("cpu", {})
    o = result.options
    how = f"{o.duration} s per model" if o.duration else f"{o.iterations} iterations"
    parts = [
        "# edgecnn profile",
        "",
        f"Timing: {how}, {o.warmup} warm-up runs, "
        + (result.timing or f"interleaved in blocks of {o.block} calls (round-robin, rotating first model)")
        + "; `p50 / first` is the median latency relative to the first model (< 1 = faster).",
        "",
        "## Environment",
        "",
        f"- CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable of {cpu.get('logical_cores')} logical cores, "
        f"governor {cpu.get('governor') or 'n/a'})",
        f"- Threads: {env.get('threads')}; load average (1/5/15 min) at the end: {env.get('load_average')}",
        f"- Platform: {env.get('platform')}, Python {env.get('python')}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(env.get("packages", {}).items())),
    ]
    for g in env.get("gpus") or []:
        parts.append(
            f"- GPU: {g['name']} (driver {g['driver']}, SM clock {g['sm_clock']} of {g['sm_clock_max']}, "
            f"memory clock {g['mem_clock']})"
        )
    if env.get("jetson"):
        j = env["jetson"]
        parts.append(
            f"- Jetson: {j.get('model')}, {j.get('l4t')}, power mode {j.get('power_mode')}, "
            f"clocks locked: {j.get('clocks_locked')}"
        )
    parts += ["", "## Models", ""]
    parts.append(
        _md_table(
            ["model", "backend", "precision", "input", "file MB", "load s", "RSS delta MB"],
            [
                [
                    m.label,
                    m.backend,
                    m.precision,
                    "x".join(map(str, m.input_shape)),
                    _fmt(m.file_size_mb, 2),
                    _fmt(m.load_s, 2),
                    _fmt(m.rss_delta_mb, 1),
                ]
                for m in result.models
            ],
        )
    )
    parts += [
        "",
        "`load s` and `RSS delta MB` are per model, measured after each backend's one-time setup (done first, "
        "untimed), so they do not depend on the order; memory deltas of a few MB are allocator noise.",
        "",
        f"Process peak RSS: {_fmt(result.peak_rss_mb, 1)} MB",
        "",
        "## Latency",
        "",
    ]
    parts.append(_md_table(HEADERS, measurement_rows(result)))
    staged = [m for m in result.measurements if m.stages]
    if staged:
        parts += ["", "## Stages (mean ms)", ""]
        names = sorted({k for m in staged for k in m.stages})
        parts.append(
            _md_table(
                ["model", "batch", "mode"] + names,
                [
                    [m.label, m.batch, m.mode] + [_fmt(m.stages.get(k, {}).get("mean_ms")) for k in names]
                    for m in staged
                ],
            )
        )
    for info in result.models:
        if info.layers:
            parts += ["", f"## Slowest layers: {info.label} ({info.layers_note})", ""]
            parts.append(
                _md_table(
                    ["layer", "op", "mean ms", "share"],
                    [
                        [
                            r["name"],
                            r.get("op", "?"),
                            _fmt(r["mean_ms"], 4),
                            f"{100 * r['share']:.1f}%" if "share" in r else "-",
                        ]
                        for r in info.layers
                    ],
                )
            )
        elif info.layers_note and result.options.per_layer:
            parts += ["", f"Per-layer: {info.label}: {info.layers_note}"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- plots


def _figure(w=8.0, h=4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _latency_figure(result):
    groups = list(dict.fromkeys((m.batch, m.mode) for m in result.measurements))
    fig = _figure(max(6.0, 3.2 * len(groups)), 4.5)
    for gi, (batch, mode) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), gi + 1)
        ms = [m for m in result.measurements if (m.batch, m.mode) == (batch, mode)]
        ax.boxplot([m.samples_ms for m in ms], showfliers=True)
        ax.set_xticks(range(1, len(ms) + 1), [m.label for m in ms], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"batch {batch}, {mode}", fontsize=9)
        ax.set_ylabel("latency (ms)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Latency distribution per model")
    return fig


def _throughput_figure(result):
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for mode in dict.fromkeys(m.mode for m in result.measurements):
        for label in dict.fromkeys(m.label for m in result.measurements):
            pts = sorted(
                (m.batch, m.stats.throughput) for m in result.measurements if m.label == label and m.mode == mode
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    linestyle="-" if mode == "model" else "--",
                    label=f"{label} ({mode})",
                )
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("Batch size vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _layers_figure(result):
    with_layers = [m for m in result.models if m.layers]
    fig = _figure(8.0, max(3.0, 2.8 * len(with_layers)))
    for i, info in enumerate(with_layers):
        ax = fig.add_subplot(len(with_layers), 1, i + 1)
        rows = info.layers[::-1]
        ax.barh([f"{r['name']} ({r.get('op', '?')})" for r in rows], [r["mean_ms"] for r in rows], color="tab:orange")
        ax.set_xlabel("mean ms per run")
        ax.set_title(f"Slowest layers: {info.label}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    return fig
