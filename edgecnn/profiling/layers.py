"""Per-layer (per-node) time: ONNX Runtime's profiler trace, aggregated per node, slowest first.

ONNX Runtime writes a Chrome-trace JSON when profiling is enabled: one `cat == "Node"` event per executed kernel per
run, inside `model_run` session events. We keep only the node events of the measured runs (the warm-up runs come
first and are dropped by time window), sum their durations per node and divide by the number of runs.

Node names are those of the graph ONNX Runtime executes after its optimisations: a fused Conv+Relu is one kernel named
after its output (e.g. `r1_nchwc`), which is where the time goes on this machine, so that is what we report.

Other backends provide the same list through the optional runner hook `layer_profile(batch, iterations)` (see
`edgecnn.profiling.latency`): a list of `{"name", "op", "mean_ms"}` dicts.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgecnn.errors import ArtifactError
from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

_SUFFIX = "_kernel_time"


def parse_ort_trace(events: list[dict], skip_runs: int = 0) -> tuple[list[dict], int]:
    """Aggregate an ONNX Runtime trace per node: ([{name, op, provider, mean_ms, calls, share}], measured runs).

    The first `skip_runs` `model_run` windows (warm-up) are excluded. `share` is the node's fraction of all node time.
    """
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    kept = runs[skip_runs:]
    if not kept:
        return [], 0
    starts = np.array([a for a, _ in kept])
    ends = np.array([b for _, b in kept])
    total_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    meta: dict[str, tuple[str, str]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(_SUFFIX):
            continue
        ts = e["ts"]
        i = int(np.searchsorted(starts, ts, side="right")) - 1
        if i < 0 or ts > ends[i]:
            continue  # a warm-up run's node
        name = e["name"][: -len(_SUFFIX)]
        args = e.get("args") or {}
        total_us[name] += float(e.get("dur", 0))
        calls[name] += 1
        meta[name] = (args.get("op_name", "?"), args.get("provider", "?"))
    n_runs = len(kept)
    grand = sum(total_us.values()) or 1.0
    rows = [
        {
            "name": name,
            "op": meta[name][0],
            "provider": meta[name][1],
            "mean_ms": total_us[name] / n_runs / 1000.0,
            "calls": calls[name],
            "share": total_us[name] / grand,
        }
        for name in total_us
    ]
    rows.sort(key=lambda r: r["mean_ms"], reverse=True)
    return rows, n_runs


def onnxrt_layer_profile(
    path: str | Path, batch: int, iterations: int = 20, warmup: int = 3, threads: int | None = None, inputs=None
) -> list[dict]:
    """Per-node mean time (ms per run) of an ONNX model on ONNX Runtime CPU, slowest first.

    Opens its own profiling session (profiling slows every run a little, so the latency numbers come from a
    separate, un-instrumented session). The trace file lives in a temporary folder and is removed.
    """
    with tempfile.TemporaryDirectory(prefix="edgecnn-ortprof-") as tmp:
        runner = OnnxRuntimeRunner(Path(path), threads=threads, profile_prefix=str(Path(tmp) / "trace"))
        try:
            x = inputs if inputs is not None else _zeros_input(runner, batch)
            for _ in range(warmup + iterations):
                runner.infer(x)
            trace = runner.end_profiling()
        finally:
            runner.close()
        try:
            events = json.loads(Path(trace).read_text())
        except (OSError, TypeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"ONNX Runtime's profiler trace could not be read: {exc}") from exc
    rows, _ = parse_ort_trace(events, skip_runs=warmup)
    return rows


def _zeros_input(runner, batch: int) -> np.ndarray:
    shape = [batch] + [
        d if d is not None else s
        for d, s in zip(runner.input_spec.shape[1:], runner.preprocess_config.input_shape(batch)[1:])
    ]
    return np.zeros(shape, dtype=runner.preprocess_config.dtype)
