"""The peer table: EfficientNet-Lite0, batch 1, this machine's CPU cores, all paths timed in ONE interleaved run.

Rows: PyTorch eager FP32 (the .pt through edgecnn's torch runner), ONNX Runtime FP32, ONNX Runtime INT8 (the Q/DQ model
from `edgecnn quantize --target cpu`: edgecnn's default fastest CPU path), and OpenVINO INT8 on the *same* Q/DQ file
when `openvino` is installed. Each row is timed model-only and end-to-end (BGR 640x480 frame -> edgecnn preprocess ->
model -> top-5; PyTorch eager uses the same numpy/OpenCV preprocessing, so the comparison isolates the runtime).
Also recorded: top-1 agreement of each path with PyTorch FP32 on real photos (the scenes set), so a speed-up that
costs accuracy is visible next to it.

Run (on a shared machine, under the lock so benchmarks never overlap):
    flock /tmp/edgecnn-bench.lock .venv/bin/python benchmarks/peer_benchmark.py [--int8 model.int8.onnx]
Without --int8 the INT8 model is made here with edgecnn.quant (target cpu, 200 scenes photos for calibration).
Writes benchmarks/results/peer_benchmark.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGECNN_CACHE", str(ROOT / ".cache" / "models"))

SHARED = Path(os.environ.get("EDGECNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
GOAL_SPEEDUP = 5.0


def scenes_dir() -> Path:
    import tarfile

    target = ROOT / ".cache" / "test-data" / "scenes"
    if not (target / ".complete").exists():
        src = SHARED / "scenes-jpg.tar.gz"
        if not src.is_file():
            sys.exit(f"{src} not found: the benchmark's calibration/parity photos come from ../shared/data")
        with tarfile.open(src) as tar:
            tar.extractall(target.parent, filter="data")
        (target / ".complete").touch()
    return target


def spread(images: list[Path], n: int) -> list[Path]:
    """n images spread over both classes (sorted lists are class-ordered)."""
    step = max(1, len(images) // n)
    return images[::step][:n]


def make_int8(fp32: Path, out: Path, calib_images: list[Path]) -> Path:
    import shutil
    import tempfile

    from edgecnn.quant.pipeline import QuantOptions, quantize

    with tempfile.TemporaryDirectory(prefix="peer-calib-") as tmp:
        for p in calib_images:
            shutil.copy(p, Path(tmp) / f"{p.parent.name}_{p.name}")
        quantize(fp32, out, tmp, QuantOptions(target="cpu", num_images=len(calib_images), threads=2))
    return out


def agreement_with(reference, others: dict, images: list[Path]) -> dict:
    from edgecnn.profiling.compare import compare_runners
    from edgecnn.runtime import load

    out = {}
    with load(reference[0], backend=reference[1]) as ref:
        for label, (model, backend) in others.items():
            with load(model, backend=backend) as r:
                res = compare_runners(ref, r, images, batch=16)
            out[label] = {"top1_agreement": res["top1_agreement"], "max_abs_diff": res["max_abs_diff"], "images": res["images"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--int8", type=Path, help="INT8 Q/DQ ONNX from `edgecnn quantize --target cpu` (default: build one)")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--parity-images", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer_benchmark")
    args = ap.parse_args()

    from importlib.util import find_spec

    from edgecnn.artifacts import atomic_write_text
    from edgecnn.data import list_images
    from edgecnn.profile import ModelSpec, ProfileOptions, profile_models
    from edgecnn.runtime.resolve import pretrained_checkpoint, pretrained_onnx

    name = "efficientnet-lite0"
    pt, fp32 = pretrained_checkpoint(name), pretrained_onnx(name)
    photos = list_images(scenes_dir())
    int8 = args.int8
    int8_note = f"given: {int8}"
    if int8 is None:
        int8 = ROOT / ".cache" / "peer" / f"{name}.int8-cpu.onnx"
        int8.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        make_int8(fp32, int8, spread(photos, 200))
        int8_note = f"built here by edgecnn.quant.quantize(target='cpu', 200 scenes photos) in {time.perf_counter() - t0:.0f} s"
    have_ov = find_spec("openvino") is not None

    specs = [
        ModelSpec(str(pt), "torch", "PyTorch eager FP32"),
        ModelSpec(str(fp32), "onnxrt", "ONNX Runtime FP32"),
        ModelSpec(str(int8), "onnxrt", "edgecnn INT8 (ONNX Runtime, Q/DQ cpu)"),
    ]
    if have_ov:
        specs.append(ModelSpec(str(int8), "openvino", "OpenVINO INT8 (same Q/DQ)"))
    options = ProfileOptions(batches=(1,), warmup=args.warmup, iterations=args.iterations, threads=args.threads,
                             end_to_end=True)
    t0 = time.perf_counter()
    result = profile_models(specs, options)
    wall = time.perf_counter() - t0

    parity_images = spread(photos, args.parity_images)
    parity = agreement_with((str(pt), "torch"), {s.label: (s.model, s.backend) for s in specs[1:]}, parity_images)

    labels = [s.label for s in specs]
    rows = []
    for label in labels:
        mo, e2e = result.get(label, 1, "model"), result.get(label, 1, "end-to-end")
        rows.append({
            "path": label,
            "model_p50_ms": mo.stats.p50_ms, "model_mean_ms": mo.stats.mean_ms, "model_p99_ms": mo.stats.p99_ms,
            "e2e_p50_ms": e2e.stats.p50_ms, "e2e_mean_ms": e2e.stats.mean_ms, "e2e_p99_ms": e2e.stats.p99_ms,
            "e2e_fps": 1000.0 / e2e.stats.mean_ms,
            "speedup_vs_torch_model": mo.speedup, "speedup_vs_torch_e2e": e2e.speedup,
            "top1_agreement_vs_torch": parity.get(label, {}).get("top1_agreement", 1.0),
        })
    by = {r["path"]: r for r in rows}
    edge = by[labels[2]]
    verdict = {
        "edgecnn_e2e_speedup_vs_torch": edge["speedup_vs_torch_e2e"],
        "goal_5x_met": edge["speedup_vs_torch_e2e"] >= GOAL_SPEEDUP,
    }
    if have_ov:
        ov = by[labels[3]]
        verdict["edgecnn_over_openvino_latency_ratio_model"] = edge["model_p50_ms"] / ov["model_p50_ms"]
        verdict["edgecnn_over_openvino_latency_ratio_e2e"] = edge["e2e_p50_ms"] / ov["e2e_p50_ms"]
        verdict["no_slower_than_openvino_e2e"] = verdict["edgecnn_over_openvino_latency_ratio_e2e"] <= 1.0
    command = "flock /tmp/edgecnn-bench.lock .venv/bin/python benchmarks/peer_benchmark.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    record = {
        "command": command.strip(), "int8_model": int8_note, "wall_s": round(wall, 1), "rows": rows,
        "verdict": verdict, "parity_images": len(parity_images), "profile": result.to_dict(samples=False),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=2, default=str) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), render(record, result, options))
    print(render(record, result, options))


def render(record: dict, result, options) -> str:
    env = result.environment
    cpu, pk = env["cpu"], env["packages"]
    lines = [
        "# Peer table: EfficientNet-Lite0, batch 1, CPU",
        "",
        f"Machine: {cpu['model']}, {cpu['usable_cores']} usable cores, {options.threads} threads per model; "
        f"{env['platform']}, Python {env['python']}.",
        "Versions: " + ", ".join(f"{k} {pk[k]}" for k in ("edgecnn", "torch", "onnxruntime", "openvino", "numpy", "cv2") if k in pk) + ".",
        f"Command: `{record['command']}`",
        f"INT8 model: {record['int8_model']}.",
        f"Method: {options.warmup} warm-up + {options.iterations} timed runs per path and mode, all paths interleaved "
        "round-robin in one process (rotating first), times from `time.perf_counter`. End-to-end = BGR uint8 640x480 "
        "frame -> edgecnn preprocess (OpenCV/numpy, same for every row) -> model -> softmax top-5. "
        f"Agreement = top-1 agreement with PyTorch FP32 on {record['parity_images']} real scenes photos.",
        "",
        "| path | model p50 ms | model p99 ms | end-to-end p50 ms | end-to-end p99 ms | end-to-end FPS | speed-up vs PyTorch (model / e2e) | top-1 agreement vs PyTorch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['path']} | {r['model_p50_ms']:.2f} | {r['model_p99_ms']:.2f} | {r['e2e_p50_ms']:.2f} | "
            f"{r['e2e_p99_ms']:.2f} | {r['e2e_fps']:.0f} | {r['speedup_vs_torch_model']:.2f}x / {r['speedup_vs_torch_e2e']:.2f}x | "
            f"{r['top1_agreement_vs_torch']:.1%} |"
        )
    v = record["verdict"]
    lines += ["", "## Goals", ""]
    lines.append(
        f"- edgecnn INT8 end to end vs PyTorch eager: **{v['edgecnn_e2e_speedup_vs_torch']:.2f}x** faster "
        f"(goal >= {GOAL_SPEEDUP:.0f}x: {'met' if v['goal_5x_met'] else 'NOT met'})."
    )
    if "edgecnn_over_openvino_latency_ratio_e2e" in v:
        lines.append(
            f"- edgecnn INT8 (ONNX Runtime) / OpenVINO INT8 latency ratio: model-only "
            f"**{v['edgecnn_over_openvino_latency_ratio_model']:.2f}**, end to end "
            f"**{v['edgecnn_over_openvino_latency_ratio_e2e']:.2f}** (goal <= 1.0: "
            f"{'met' if v['no_slower_than_openvino_e2e'] else 'NOT met'})."
        )
    else:
        lines.append("- OpenVINO not installed: the OpenVINO row was skipped (pip install 'edgecnn[openvino]').")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
