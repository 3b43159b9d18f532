"""Live-loop benchmark (issue 5): does the pipeline around the model cost less than 10 %?

Makes a 640×480 30 fps video from real photos (the scenes set, panned and zoomed like a moving camera), then, in one
run and alternating so machine noise hits both alike:
  1. standalone: runner.infer() on one preprocessed 640×480 frame, back to back (the model's own throughput);
  2. loop --no-pace: the live loop over the video, every frame decoded (capture thread), preprocessed, inferred,
     post-processed, headless (what `edgecnn live MODEL --source clip.mp4 --headless --no-pace` runs);
  3. loop paced at 30 fps (a file behaving like a camera): frame age p99 vs two frame intervals (66.7 ms).
Writes benchmarks/live_benchmark.{json,md}.

Run it alone on the machine (the CPU is shared):
  flock /tmp/edgecnn-bench.lock python benchmarks/live_benchmark.py --model efficientnet-lite0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGECNN_CACHE", str(ROOT / ".cache" / "models"))

from edgecnn.camera.capture import ThreadedCapture  # noqa: E402
from edgecnn.camera.loop import LiveOptions, run_live  # noqa: E402
from edgecnn.camera.sources import parse_source  # noqa: E402
from edgecnn.data import list_images, read_image  # noqa: E402
from edgecnn.preprocess import preprocess  # noqa: E402
from edgecnn.runtime.base import load  # noqa: E402

SHARED = Path(os.environ.get("EDGECNN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def scenes_photos(n: int) -> list[np.ndarray]:
    folder = ROOT / ".cache" / "test-data" / "scenes"
    if not (folder / ".complete").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / "scenes-jpg.tar.gz") as tar:
            tar.extractall(folder.parent, filter="data")
        (folder / ".complete").touch()
    paths = list_images(folder)
    step = max(1, len(paths) // n)
    return [read_image(p) for p in paths[::step][:n]]


def make_video(path: Path, seconds: float = 10.0, fps: int = 30, size=(640, 480)) -> Path:
    """Real photos, each shown for 1 s while the 'camera' pans and zooms across it (so frames differ, as live)."""
    w, h = size
    per = fps
    photos = scenes_photos(int(np.ceil(seconds)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for photo in photos:
        big = cv2.resize(photo, (int(w * 1.5), int(h * 1.5)), interpolation=cv2.INTER_CUBIC)
        for k in range(per):
            t = k / (per - 1)
            x, y = int(t * (big.shape[1] - w)), int(t * (big.shape[0] - h) * 0.5)
            writer.write(np.ascontiguousarray(big[y : y + h, x : x + w]))
    writer.release()
    return path


def standalone(runner, frame: np.ndarray, n: int) -> float:
    x = preprocess(frame, runner.preprocess_config)
    for _ in range(5):
        runner.infer(x)
    t0 = time.perf_counter()
    for _ in range(n):
        runner.infer(x)
    return n / (time.perf_counter() - t0)


def loop_run(runner, video: Path, pace: bool, max_frames: int | None = None):
    cap = ThreadedCapture(parse_source(str(video)), pace=pace).start()
    return run_live(runner, cap, LiveOptions(top_k=5, max_frames=max_frames))


def measure(runner, video: Path, n_frames: int, first: np.ndarray, rounds: int, label: str) -> dict:
    """Alternate standalone and loop --no-pace runs; keep every round, report the median ratio."""
    loop_run(runner, video, pace=False, max_frames=30)  # warm-up: ORT arenas, page cache
    out = []
    for r in range(rounds):
        fps_alone = standalone(runner, first, n_frames)
        s = loop_run(runner, video, pace=False)
        out.append(
            {
                "standalone_fps": round(fps_alone, 2),
                "loop_fps": round(s.fps, 2),
                "loop_frames": s.frames,
                "dropped": s.dropped,
                "stages_ms": s.stages,
            }
        )
        print(
            f"[{label}] round {r + 1}: standalone {fps_alone:.1f} FPS, loop --no-pace {s.fps:.1f} FPS "
            f"({s.fps / fps_alone:.1%}), preprocess p50 {s.stages['preprocess']['p50']:.3f} ms",
            file=sys.stderr,
        )
    ratios = [r["loop_fps"] / r["standalone_fps"] for r in out]
    med = sorted(range(rounds), key=lambda i: ratios[i])[rounds // 2]
    paced = loop_run(runner, video, pace=True)
    print(
        f"[{label}] paced: {paced.frames} frames, {paced.dropped} dropped, frame age p99 "
        f"{paced.stages['frame_age']['p99']:.1f} ms",
        file=sys.stderr,
    )
    interval_ms = 1000.0 / 30
    mid = out[med]["stages_ms"]
    return {
        "label": label,
        "rounds": out,
        "median_round": med,
        "throughput_ratio": round(ratios[med], 4),
        "throughput_ratios": [round(x, 4) for x in ratios],
        "preprocess_p50_ms": mid["preprocess"]["p50"],
        "paced": {
            "frames": paced.frames,
            "dropped": paced.dropped,
            "fps": round(paced.fps, 2),
            "frame_age_ms": paced.stages["frame_age"],
            "inference_ms": paced.stages["inference"],
            "preprocess_ms": paced.stages["preprocess"],
            "two_intervals_ms": round(2 * interval_ms, 2),
        },
        "targets": {
            "loop >= 90% of standalone": ratios[med] >= 0.90,
            "preprocess p50 <= 1 ms": mid["preprocess"]["p50"] <= 1.0,
            "paced frame age p99 <= 2 frame intervals": paced.stages["frame_age"]["p99"] <= 2 * interval_ms,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0", help="model file or pretrained name")
    ap.add_argument("--rounds", type=int, default=3, help="alternating standalone/loop rounds (median reported)")
    ap.add_argument("--seconds", type=float, default=10.0, help="video length (30 fps)")
    ap.add_argument(
        "--threads",
        default="1,all",
        help="ONNX Runtime intra-op thread settings to compare, comma-separated ('all' = ORT's default)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "live_benchmark"), help="output path without suffix")
    ap.add_argument("--render", metavar="JSON", help="only re-render the Markdown of a recorded JSON result")
    args = ap.parse_args()
    if args.render:
        recorded = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(render_md(recorded))
        return

    import onnxruntime

    configs = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "scenes_640x480_30fps.mp4", args.seconds)
        n_frames = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
        first = cv2.VideoCapture(str(video)).read()[1]
        for setting in args.threads.split(","):
            opts = {} if setting.strip() == "all" else {"threads": int(setting)}
            label = "threads=" + setting.strip()
            with load(args.model, **opts) as runner:
                q = runner.contract.provenance.get("quantization") or {}
                model = {
                    "name": args.model,
                    "path": runner.path.name,
                    "precision": runner.contract.precision,
                    "backend": runner.backend,
                    "input": list(runner.input_spec.shape),
                    "quantization": {
                        k: q.get(k) for k in ("tool", "target", "method", "activation", "weights") if q.get(k)
                    }
                    or None,
                    "calibration_images": (q.get("calibration") or {}).get("images"),
                }
                configs.append(measure(runner, video, n_frames, first, args.rounds, label))

    result = {
        "command": "flock /tmp/edgecnn-bench.lock python benchmarks/live_benchmark.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "onnxruntime": onnxruntime.__version__,
            "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "model": model,
        "video": {
            "size": [640, 480],
            "fps": 30,
            "frames": n_frames,
            "codec": "mp4v",
            "content": "scenes photos (../shared/data), upscaled 1.5x, panned 1 s per photo",
        },
        "configs": configs,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render_md(result))
    print(json.dumps({c["label"]: c["targets"] for c in configs}, indent=2))


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render_md(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Live loop benchmark",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs ({m['processor']}); Python {m['python']}, numpy {m['numpy']}, "
        f"OpenCV {m['opencv']}, ONNX Runtime {m['onnxruntime']}. The CPUs are shared with other work: standalone "
        "and loop runs alternate so noise hits both alike, and the median round is reported"
        + (
            " (1-minute load average before/after: "
            f"{m['loadavg_1m_before_after'][0]}/{m['loadavg_1m_before_after'][1]})"
            if m.get("loadavg_1m_before_after")
            else ""
        )
        + ".",
        "",
        f"Model: {r['model']['name']} ({r['model']['path']}, {r['model']['precision']}, {r['model']['backend']}), "
        f"input {r['model']['input']}"
        + (
            f"; made by `edgecnn quantize --target {r['model']['quantization'].get('target')} --method "
            f"{r['model']['quantization'].get('method')}` ({r['model']['quantization'].get('activation')} activations, "
            f"{r['model']['quantization'].get('weights')} weights) on {r['model']['calibration_images']} scenes photos"
            if r["model"].get("quantization")
            else ""
        )
        + f". Video: 640×480, 30 fps, {r['video']['frames']} frames, {r['video']['content']}.",
        "Standalone = `runner.infer()` on one preprocessed frame, back to back. Loop = `run_live` over the video with "
        "`--no-pace` (every frame decoded in the capture thread, preprocessed there while the previous frame is "
        "inferred, then inferred and post-processed), headless.",
        "",
        "| ORT threads | loop ÷ standalone (≥ 90 %) | preprocess p50 (≤ 1 ms) | paced frame age p99 (≤ 66.7 ms) |",
        "| --- | --- | --- | --- |",
    ]
    for c in r["configs"]:
        t = c["targets"]
        lines.append(
            f"| {c['label']} | {c['throughput_ratio']:.1%} ({', '.join(f'{x:.1%}' for x in c['throughput_ratios'])}) "
            f"{yes(t['loop >= 90% of standalone'])} | "
            f"{c['preprocess_p50_ms']:.3f} ms {yes(t['preprocess p50 <= 1 ms'])} | "
            f"{c['paced']['frame_age_ms']['p99']:.1f} ms {yes(t['paced frame age p99 <= 2 frame intervals'])} |"
        )
    by = {c["label"]: c for c in r["configs"]}
    if "threads=1" in by and "threads=all" in by:
        one, every = by["threads=1"], by["threads=all"]
        fps = lambda c: c["rounds"][c["median_round"]]["loop_fps"]  # noqa: E731
        lines += [
            "",
            "Reading it: the loop's own work per frame (decoding and preprocessing, both in the capture thread) "
            "overlaps inference only when a core is free for it. With `threads=1` ONNX Runtime leaves the second core "
            f"to capture: the loop keeps {one['throughput_ratio']:.1%} of the runner's throughput. "
            "With every core given "
            "to inference (`threads=all`, ORT's default) that work must share the cores ORT keeps busy, which no "
            f"pipelining can hide: {every['throughput_ratio']:.1%}, for a loop rate of {fps(every):.0f} vs "
            f"{fps(one):.0f} FPS{' (more cores still win in absolute terms)' if fps(every) > 1.02 * fps(one) else ''}. "
            "Either is far above a camera's 30 fps. For the most efficient "
            "pipeline on a CPU run `edgecnn live --threads <cores-1>`; on Jetson the model runs on the GPU and the CPU "
            "cores are free for capture.",
        ]
    for c in r["configs"]:
        lines += [
            "",
            f"## {c['label']}",
            "",
            "| round | standalone FPS | loop FPS | ratio |",
            "| --- | --- | --- | --- |",
        ]
        for i, rd in enumerate(c["rounds"]):
            lines.append(
                f"| {i + 1} | {rd['standalone_fps']:.1f} | {rd['loop_fps']:.1f} | "
                f"{rd['loop_fps'] / rd['standalone_fps']:.1%} |"
            )
        lines += [
            "",
            "Per-stage latency, median `--no-pace` round (ms):",
            "",
            "| stage | p50 | p99 | mean |",
            "| --- | --- | --- | --- |",
        ]
        for name, s in c["rounds"][c["median_round"]]["stages_ms"].items():
            lines.append(f"| {name} | {s['p50']:.3f} | {s['p99']:.3f} | {s['mean']:.3f} |")
        p = c["paced"]
        lines += [
            "",
            f"Paced at 30 fps: {p['frames']} frames processed, {p['dropped']} dropped, {p['fps']} FPS; "
            f"inference p50 {p['inference_ms']['p50']:.1f} ms; frame age p50 {p['frame_age_ms']['p50']:.1f} ms, "
            f"p99 {p['frame_age_ms']['p99']:.1f} ms.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
