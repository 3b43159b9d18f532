"""FP16 ONNX (the input TensorRT 11 needs for FP16 engines): how close is it to FP32, measured on ONNX Runtime CPU.

Converts the pretrained efficientnet-lite0 ONNX with `edgecnn.trt.fp16.convert_fp16` and runs both models on the real
scenes photos (../shared/data/scenes-jpg.tar.gz): top-1 agreement, logit differences, file size, and, for the record,
CPU latency (FP16 ONNX is for TensorRT, not a CPU speed-up). Writes benchmarks/results/trt_fp16_onnx.{json,md}.

Run (the 2 shared cores must not overlap with other benchmarks):
    flock /tmp/edgecnn-bench.lock python benchmarks/trt_fp16_onnx.py [--images 1200]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scenes_dir() -> Path:
    target = ROOT / ".cache" / "test-data" / "scenes"
    if not (target / ".complete").exists():
        with tarfile.open(ROOT.parent / "shared" / "data" / "scenes-jpg.tar.gz") as tar:
            tar.extractall(target.parent, filter="data")
        (target / ".complete").touch()
    return target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort

    from edgecnn.contract import read_onnx_contract
    from edgecnn.data import list_images, read_image
    from edgecnn.preprocess import preprocess
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner
    from edgecnn.trt.fp16 import convert_fp16
    from edgecnn.zoo import pretrained_onnx

    src = pretrained_onnx("efficientnet-lite0")
    contract = read_onnx_contract(src)
    files = list_images(scenes_dir())[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        dst = convert_fp16(src, Path(tmp) / "lite0.fp16.onnx")
        convert_s = time.perf_counter() - t0
        sizes = {"fp32_mb": src.stat().st_size / 1e6, "fp16_mb": dst.stat().st_size / 1e6}
        logits = {"fp32": [], "fp16": []}
        times = {"fp32": [], "fp16": []}
        with OnnxRuntimeRunner(src, threads=2) as r32, OnnxRuntimeRunner(dst, threads=2) as r16:
            for start in range(0, len(files), args.batch):
                x = preprocess([read_image(p) for p in files[start : start + args.batch]], contract.preprocess)
                for key, runner in (("fp32", r32), ("fp16", r16)):  # interleaved, same batch
                    t = time.perf_counter()
                    logits[key].append(runner.infer(x))
                    times[key].append((time.perf_counter() - t) * 1000 / len(x))
    a, b = np.concatenate(logits["fp32"]), np.concatenate(logits["fp16"])
    pa = np.exp(a - a.max(1, keepdims=True))
    pa /= pa.sum(1, keepdims=True)
    pb = np.exp(b - b.max(1, keepdims=True))
    pb /= pb.sum(1, keepdims=True)
    top5 = np.mean([len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5])) / 5 for x, y in zip(a, b)])
    result = {
        "model": "efficientnet-lite0 (pretrained, ImageNet-1k)",
        "images": int(len(a)),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "top5_overlap": float(top5),
        "max_abs_logit_diff": float(np.abs(a - b).max()),
        "mean_abs_logit_diff": float(np.abs(a - b).mean()),
        "max_abs_prob_diff": float(np.abs(pa - pb).max()),
        "logit_scale_max_abs": float(np.abs(a).max()),
        "convert_seconds": round(convert_s, 2),
        **{k: round(v, 2) for k, v in sizes.items()},
        "cpu_ms_per_image_median": {k: round(float(np.median(v)), 2) for k, v in times.items()},
        "cpu_fp16_over_fp32_latency": round(float(np.median(times["fp16"]) / np.median(times["fp32"])), 2),
        "machine": {
            "cpu": _cpu(),
            "cores": 2,
            "python": platform.python_version(),
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "onnxconverter_common": _version("onnxconverter-common"),
            "numpy": np.__version__,
        },
        "command": "flock /tmp/edgecnn-bench.lock python benchmarks/trt_fp16_onnx.py " + " ".join(sys.argv[1:]),
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "trt_fp16_onnx.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "trt_fp16_onnx.md").write_text(_markdown(result))
    print(json.dumps(result, indent=2))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _markdown(r: dict) -> str:
    m = r["machine"]
    logit_diff = (
        f"{r['max_abs_logit_diff']:.4f} / {r['mean_abs_logit_diff']:.5f} (logits up to {r['logit_scale_max_abs']:.1f})"
    )
    ms = r["cpu_ms_per_image_median"]
    cpu_latency = f"{ms['fp32']} ms / {ms['fp16']} ms (ratio {r['cpu_fp16_over_fp32_latency']})"
    return f"""# FP16 ONNX for TensorRT 11: agreement with FP32 (ONNX Runtime CPU)

`edgecnn.trt.fp16.convert_fp16` (onnxconverter-common, inputs/outputs kept FP32) on {r["model"]},
{r["images"]} real scenes photos (150x150 JPEG, resized by the model's own preprocessing).

| metric | value |
|---|---|
| top-1 agreement FP16 vs FP32 | {r["top1_agreement"]:.2%} |
| top-5 overlap | {r["top5_overlap"]:.2%} |
| max / mean abs logit difference | {logit_diff} |
| max abs probability difference | {r["max_abs_prob_diff"]:.4f} |
| file size FP32 -> FP16 | {r["fp32_mb"]:.1f} MB -> {r["fp16_mb"]:.1f} MB |
| conversion time | {r["convert_seconds"]} s |
| CPU latency per image (median, batch 16, 2 threads) FP32 / FP16 | {cpu_latency} |

The FP16 ONNX exists for TensorRT 11 (strongly typed: no FP16 builder flag). The CPU latency row is only a record: on
x86 CPUs ONNX Runtime has few FP16 kernels, so the FP16 model is not a CPU optimisation.

Machine: {m["cpu"]}, {m["cores"]} shared cores; Python {m["python"]}, onnx {m["onnx"]}, onnxruntime {m["onnxruntime"]},
onnxconverter-common {m["onnxconverter_common"]}, numpy {m["numpy"]}.

Command: `{r["command"]}`
"""


if __name__ == "__main__":
    main()
