"""Several cameras, one model (issue 19): how many paced 640×480 30 fps sources one `edgecnn live` keeps up with.

N video files made from real photos (the scenes set, panned like a moving camera; each file different) play as N
cameras (paced at 30 fps, newest frame wins). For each N, one `edgecnn live MODEL -s v0 ... -s vN-1 --headless`
process runs them to the end, and its summary gives:
  - frames classified: processed / frames the cameras produced (the rest were dropped: the loop was busy);
  - frame age p99: from a frame's arrival to its result;
  - where the time goes, per frame: decode (measured apart: OpenCV reading one file flat out), preprocess,
    inference (per batch / frames per batch), postprocess and the loop's own overhead.
Then, same N, in the same run: N separate `edgecnn live` processes, one source each (what batching replaces), and
--serve with two "browsers" attached (each reads every source's MJPEG stream and polls /stats.json twice a second,
as the page does) against the same run without --serve.

The machine is shared: run it niced and alone if you can; ratios are quoted from one run (alternated pairs).
  nice -n 10 python benchmarks/live_multi_benchmark.py --model /path/lite0-int8.onnx
Writes benchmarks/live_multi_benchmark.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("EDGECNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
FPS = 30


def scenes(folder: Path) -> list[Path]:
    if not (folder / ".complete").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / "scenes-jpg.tar.gz") as tar:
            tar.extractall(folder.parent, filter="data")
        (folder / ".complete").touch()
    return sorted(folder.rglob("*.jpg"))


def make_video(path: Path, photos: list[Path], seconds: int, size=(640, 480)) -> Path:
    """Each photo shown for 1 s while the 'camera' pans across it; mp4v, as a camera recording would be."""
    if path.exists():
        return path
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    for p in photos[:seconds]:
        big = cv2.resize(cv2.imread(str(p)), (int(w * 1.5), int(h * 1.5)), interpolation=cv2.INTER_CUBIC)
        for k in range(FPS):
            t = k / (FPS - 1)
            x, y = int(t * (big.shape[1] - w)), int(t * (big.shape[0] - h) * 0.5)
            writer.write(np.ascontiguousarray(big[y : y + h, x : x + w]))
    writer.release()
    return path


def decode_ms(video: Path) -> float:
    """OpenCV (FFmpeg) decoding one file flat out: ms per 640×480 frame."""
    cap = cv2.VideoCapture(str(video))
    n, t0 = 0, time.perf_counter()
    while cap.read()[0]:
        n += 1
    cap.release()
    return (time.perf_counter() - t0) / n * 1e3


LIVE_ARGS: list[str] = []  # e.g. --threads 1, from the command line


def live(model: Path, videos: list[Path], extra=(), viewers: int = 0) -> dict:
    """One `edgecnn live` process on these videos; its JSON summary (+ the bytes the viewers received)."""
    cmd = [sys.executable, "-m", "edgecnn", "live", str(model), "--headless", "--json", "--every", "1000000"]
    cmd += LIVE_ARGS
    for v in videos:
        cmd += ["-s", str(v)]
    cpu0 = _children_cpu()
    proc = subprocess.Popen([*cmd, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients, stop, seen = [], threading.Event(), []
    if viewers:
        url = None
        for line in proc.stderr:
            m = re.search(r"serving (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        for _ in range(viewers):
            clients += _browser(url, len(videos), stop, seen)
    out, err = proc.communicate(timeout=600)
    stop.set()
    for t in clients:
        t.join(5)
    summary = json.loads(out.strip().splitlines()[-1])
    summary["viewer_bytes"] = sum(seen)
    summary["cpu_s"] = round(_children_cpu() - cpu0, 3)
    if proc.returncode != 0:
        raise RuntimeError(f"edgecnn live failed ({proc.returncode}): {err[-2000:]}")
    return summary


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes: on a shared machine the CPU a run used is a
    steadier measure than what it achieved in the wall-clock time the scheduler gave it."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _browser(url: str, n: int, stop: threading.Event, seen: list) -> list[threading.Thread]:
    """What the page does: one MJPEG stream per source, /stats.json twice a second."""

    def stream(i):
        try:
            with urllib.request.urlopen(f"{url}stream/{i}.mjpg", timeout=30) as r:
                while not stop.is_set():
                    data = r.read1(1 << 16)
                    if not data:
                        return
                    seen.append(len(data))
        except OSError:
            return

    def stats():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{url}stats.json", timeout=10) as r:
                    seen.append(len(r.read()))
            except OSError:
                return
            stop.wait(0.5)

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(n)]
    threads.append(threading.Thread(target=stats, daemon=True))
    for t in threads:
        t.start()
    return threads


def batch_efficiency(model: Path, frame: np.ndarray, sizes: list[int], threads: int, rounds: int = 15) -> list[dict]:
    """Inference alone, in this process: one batch of n frames vs n batches of one, alternated round by round so
    machine noise hits both alike; median per-frame ms of each and their ratio."""
    from edgecnn.preprocess import preprocess
    from edgecnn.runtime.base import load

    with load(model, **({"threads": threads} if threads else {})) as runner:
        one = preprocess(frame, runner.preprocess_config)
        out = []
        for n in sizes:
            batch = np.concatenate([one] * n)
            runner.infer(batch)
            runner.infer(one)
            together, apart = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                runner.infer(batch)
                t1 = time.perf_counter()
                for _ in range(n):
                    runner.infer(one)
                t2 = time.perf_counter()
                together.append((t1 - t0) / n * 1e3)
                apart.append((t2 - t1) / n * 1e3)
            a, b = float(np.median(together)), float(np.median(apart))
            out.append({"n": n, "batched_ms_per_frame": round(a, 3), "single_ms_per_frame": round(b, 3),
                        "speedup": round(b / a, 3)})  # fmt: skip
    return out


def row(n: int, summary: dict, produced: int, decode: float) -> dict:
    st = summary["stages_ms"]
    frames = summary["frames"]
    batch = summary["batch"]["mean"] or 1.0
    per_frame = {
        "decode_ms": round(decode, 3),
        "preprocess_ms": st["preprocess"]["mean"],
        "inference_ms": round(st["inference"]["mean"] / batch, 3),
        "postprocess_ms": round(st["postprocess"]["mean"] / batch, 3),
        "display_ms": round(st["display"]["mean"] / batch, 3),
    }
    return {
        "sources": n,
        "cpu_s": summary["cpu_s"],
        "cpu_ms_per_classified_frame": round(summary["cpu_s"] / max(1, frames) * 1e3, 3),
        "frames_produced": produced,
        "frames_classified": frames,
        "classified_pct": round(100.0 * frames / produced, 2),
        "frame_age_p99_ms": st["frame_age"]["p99"],
        "frame_age_p50_ms": st["frame_age"]["p50"],
        "fps_total": summary["fps"],
        "elapsed_s": summary["elapsed_s"],
        "batch_mean": summary["batch"]["mean"],
        "batch_max": summary["batch"]["max"],
        "inference_per_batch_ms": st["inference"]["mean"],
        "per_frame": per_frame,
    }


def separate(model: Path, videos: list[Path], produced_each: int) -> dict:
    """N `edgecnn live` processes at once, one source each."""
    procs = []
    cpu0 = _children_cpu()
    for v in videos:
        cmd = [sys.executable, "-m", "edgecnn", "live", str(model), "--headless", "--json", "--every", "1000000"]
        cmd += LIVE_ARGS
        procs.append(subprocess.Popen([*cmd, "-s", str(v)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    summaries = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
    frames = sum(s["frames"] for s in summaries)
    produced = produced_each * len(videos)
    cpu = _children_cpu() - cpu0
    return {
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_classified_frame": round(cpu / max(1, frames) * 1e3, 3),
        "sources": len(videos),
        "processes": len(videos),
        "frames_classified": frames,
        "classified_pct": round(100.0 * frames / produced, 2),
        "frame_age_p99_ms": max(s["stages_ms"]["frame_age"]["p99"] for s in summaries),
        "fps_total": round(sum(s["fps"] for s in summaries), 2),
    }


def versions() -> dict:
    import onnxruntime

    return {
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


LOAD_BEFORE = round(os.getloadavg()[0], 2)


def rewrite_report(json_path: Path) -> None:
    """Regenerate the .md from a recorded .json (after a change to the report's layout), keeping any notes written
    below the NOTES marker of the existing .md."""
    md = json_path.with_suffix(".md")
    notes = ""
    if md.exists() and NOTES in md.read_text():
        notes = md.read_text().split(NOTES, 1)[1]
    md.write_text(report(json.loads(json_path.read_text())) + (NOTES + notes if notes else ""))


NOTES = "\n## Reading it\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="EfficientNet-Lite0 INT8 (--target cpu), dynamic batch")
    ap.add_argument("--sources", default="1,2,4,6,8", help="the N to try")
    ap.add_argument("--seconds", type=int, default=10, help="length of each video")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "live-multi-bench"))
    ap.add_argument("--compare-at", type=int, default=4, help="N for separate processes and --serve")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "live_multi_benchmark"))
    ap.add_argument("--serve-pairs", type=int, default=4, help="alternated runs without/with --serve and 2 viewers")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per process (0: its default)")
    ap.add_argument("--rewrite-report", action="store_true", help="only regenerate OUT.md from OUT.json")
    args = ap.parse_args()
    if args.rewrite_report:
        rewrite_report(Path(args.out + ".json"))
        return
    if args.threads:
        LIVE_ARGS.extend(["--threads", str(args.threads)])

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    photos = scenes(ROOT / ".cache" / "test-data" / "scenes")
    ns = [int(x) for x in args.sources.split(",")]
    top = max(ns + [args.compare_at])
    stride = len(photos) // top
    videos = [make_video(work / f"cam{i}.mp4", photos[i * stride :], args.seconds) for i in range(top)]
    produced_each = int(cv2.VideoCapture(str(videos[0])).get(cv2.CAP_PROP_FRAME_COUNT))
    decode = float(np.median([decode_ms(videos[0]) for _ in range(3)]))
    print(f"decode: {decode:.2f} ms per 640x480 frame", file=sys.stderr)
    model = Path(args.model)
    live(model, videos[:1])  # warm-up: page cache, model file
    frame = cv2.VideoCapture(str(videos[0])).read()[1]
    efficiency = batch_efficiency(model, frame, [n for n in ns if n > 1], args.threads)
    print(f"batch efficiency: {efficiency}", file=sys.stderr)

    sweep = []
    for n in ns:
        s = live(model, videos[:n])
        sweep.append(row(n, s, produced_each * n, decode))
        r = sweep[-1]
        print(
            f"N={n}: {r['classified_pct']:.1f} % classified, frame age p99 {r['frame_age_p99_ms']:.1f} ms, "
            f"batch {r['batch_mean']:.2f}",
            file=sys.stderr,
        )
    keeps = [r["sources"] for r in sweep if r["classified_pct"] >= 95.0]

    k = args.compare_at
    batched = live(model, videos[:k])
    sep = separate(model, videos[:k], produced_each)
    batched_row = row(k, batched, produced_each * k, decode)
    print(
        f"N={k}: one process {batched_row['classified_pct']:.1f} %, {k} processes {sep['classified_pct']:.1f} %",
        file=sys.stderr,
    )

    serve_pairs = []
    for _ in range(args.serve_pairs):  # alternated: noise hits both alike
        plain = live(model, videos[:k])
        served = live(model, videos[:k], extra=["--serve", "127.0.0.1:0"], viewers=2)
        serve_pairs.append(
            {
                "without_fps": plain["fps"],
                "with_fps": served["fps"],
                "without_classified": plain["frames"],
                "with_classified": served["frames"],
                "viewer_bytes": served["viewer_bytes"],
                "ratio": round(served["frames"] / plain["frames"], 4),
                "without_cpu_ms_per_frame": round(plain["cpu_s"] / plain["frames"] * 1e3, 3),
                "with_cpu_ms_per_frame": round(served["cpu_s"] / served["frames"] * 1e3, 3),
            }
        )
        print(f"--serve: {serve_pairs[-1]}", file=sys.stderr)
    serve_ratio = float(np.median([p["ratio"] for p in serve_pairs]))
    serve_cpu = float(np.median([p["with_cpu_ms_per_frame"] / p["without_cpu_ms_per_frame"] for p in serve_pairs]))

    result = {
        "benchmark": "live_multi",
        "command": "nice -n 10 python benchmarks/live_multi_benchmark.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_average_before_after": [LOAD_BEFORE, round(os.getloadavg()[0], 2)],
            "note": "shared with other jobs; niced",
        },
        "threads": args.threads or "onnxruntime default",
        "versions": versions(),
        "model": model.name,
        "video": {"size": "640x480", "fps": FPS, "seconds": args.seconds, "frames_each": produced_each},
        "decode_ms_per_frame": round(decode, 3),
        "inference_batch_efficiency": efficiency,
        "sweep": sweep,
        "largest_n_at_95pct": max(keeps) if keeps else 0,
        "batching_vs_processes": {
            "sources": k,
            "one_process": batched_row,
            "separate_processes": sep,
            "classified_ratio": round(batched_row["frames_classified"] / max(1, sep["frames_classified"]), 3),
            "cpu_per_frame_ratio": round(
                sep["cpu_ms_per_classified_frame"] / batched_row["cpu_ms_per_classified_frame"], 3
            ),
        },
        "serve_two_viewers": {
            "sources": k,
            "pairs": serve_pairs,
            "frames_ratio_median": round(serve_ratio, 4),
            "cpu_per_frame_ratio_median": round(serve_cpu, 4),
        },
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    lines = [
        "# Live: several cameras through one model",
        "",
        f"Command: `{r['command']}`  ",
        f"Date: {r['date']}; CPU: {r['machine']['cpu']} ({r['machine']['cores']} cores, {r['machine']['note']}; "
        f"1-minute load average before/after: {r['machine']['load_average_before_after']})  ",
        f"ONNX Runtime threads per process: {r['threads']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + "  ",
        f"Model: `{r['model']}`; each camera: a {r['video']['size']} {r['video']['fps']} fps video of "
        f"{r['video']['seconds']} s ({r['video']['frames_each']} frames), paced, newest frame wins.",
        "",
        "| sources | classified | frame age p50 / p99 ms | frames per batch (mean / max) | inference per batch ms "
        "| CPU s used | share of the 2 cores it got | CPU ms per classified frame |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cores = r["machine"]["cores"] or 2
    for s in r["sweep"]:
        share = s["cpu_s"] / max(1e-9, s["elapsed_s"]) / cores
        lines.append(
            f"| {s['sources']} | {s['classified_pct']:.1f} % | {s['frame_age_p50_ms']:.1f} / "
            f"{s['frame_age_p99_ms']:.1f} | {s['batch_mean']:.2f} / {s['batch_max']} | "
            f"{s['inference_per_batch_ms']:.1f} | {s['cpu_s']:.1f} | {share:.0%} | "
            f"{s['cpu_ms_per_classified_frame']:.1f} |"
        )
    lines += [
        "",
        "(CPU s: user + system time of the `edgecnn live` process, model loading included; the share is that over "
        "the run's wall time and the machine's cores: how much of the CPU the scheduler gave the run.)",
    ]
    lines += [
        "",
        f"Largest N with at least 95 % of frames classified: **{r['largest_n_at_95pct']}**.",
        "",
        "Where the time goes, per frame (ms; decode measured apart, one file read flat out; the rest from the "
        "run's stage means, inference divided by the frames in its batch):",
        "",
        "| sources | decode | preprocess | inference | postprocess | overlay/sinks |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["sweep"]:
        p = s["per_frame"]
        lines.append(
            f"| {s['sources']} | {p['decode_ms']:.2f} | {p['preprocess_ms']:.2f} | {p['inference_ms']:.2f} | "
            f"{p['postprocess_ms']:.2f} | {p['display_ms']:.2f} |"
        )
    lines += [
        "",
        "Inference alone (this process, alternated rounds): one batch of n frames vs n single-frame runs, "
        "ms per frame:",
        "",
        "| n | batched | one at a time | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for e in r["inference_batch_efficiency"]:
        lines.append(
            f"| {e['n']} | {e['batched_ms_per_frame']:.2f} | {e['single_ms_per_frame']:.2f} | {e['speedup']:.2f}× |"
        )
    b = r["batching_vs_processes"]
    one, sep = b["one_process"], b["separate_processes"]
    lines += [
        "",
        f"Batching vs separate processes, {b['sources']} sources, same run: one process classified "
        f"{one['classified_pct']:.1f} % (frame age p99 {one['frame_age_p99_ms']:.1f} ms); {sep['processes']} "
        f"processes {sep['classified_pct']:.1f} % (worst p99 {sep['frame_age_p99_ms']:.1f} ms): "
        f"**{b['classified_ratio']:.2f}×** the frames classified; CPU per classified frame "
        f"{one['cpu_ms_per_classified_frame']:.1f} ms vs {sep['cpu_ms_per_classified_frame']:.1f} ms: batching needs "
        f"**{b['cpu_per_frame_ratio']:.2f}×** less CPU per frame.",
        "",
        f"`--serve` with two viewers ({r['serve_two_viewers']['sources']} sources; each viewer reads every MJPEG "
        "stream and polls /stats.json twice a second, as the page does), frames classified with / without, "
        "alternated pairs:",
        "",
    ]
    for p in r["serve_two_viewers"]["pairs"]:
        lines.append(
            f"- {p['with_classified']} / {p['without_classified']} = {p['ratio']:.3f} "
            f"({p['viewer_bytes'] / 1e6:.1f} MB sent to the viewers); CPU per frame {p['with_cpu_ms_per_frame']:.1f} "
            f"vs {p['without_cpu_ms_per_frame']:.1f} ms"
        )
    sv = r["serve_two_viewers"]
    lines += [
        "",
        f"Median frames ratio: **{sv['frames_ratio_median']:.3f}**; median CPU-per-frame ratio (with / without): "
        f"**{sv['cpu_per_frame_ratio_median']:.3f}**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
