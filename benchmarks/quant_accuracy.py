"""INT8 accuracy benchmark (issue 21): top-1 drop where it is resolvable, agreement where FP32 is confident, KL.

CIFAR-10 (../shared/data/cifar10-jpg.tar.gz): for each zoo network trained here (checkpoints from
benchmarks/train_cifar.py, found in .cache/bench/runs/ or given with --checkpoint ARCH=PATH), exported to ONNX once,
quantized by `edgecnn.quant.quantize` with 500 seeded calibration images from train/ for both targets (tensorrt:
the Q/DQ form TensorRT consumes, run here on ONNX Runtime CPU; cpu) and the three calibrators, then evaluated on the
10,000 test images (one image = 0.01 point): FP32 top-1, INT8 top-1, drop with a 95 % paired-bootstrap interval,
agreement overall and where FP32's top-1 probability is >= 0.5, mean KL(FP32 || INT8), calibration seconds.
The test images are decoded and preprocessed once per input contract (cached .npy), FP32 logits once per model.
The accuracy gate runs once per model with --max-drop 0.3 (default calibrator, tensorrt target, a labelled --val
of 2,000 test images), and its result is then measured on all 10,000.

EfficientNet-Lite0 on the scenes photos (no labels): 200 calibration + 400 held-out photos (seed 0, as
quant_benchmark.py); agreement, confident agreement, KL, calibration seconds.

    nice python benchmarks/quant_accuracy.py                      # everything found
    nice python benchmarks/quant_accuracy.py --models resnet20 --no-lite0
Writes benchmarks/quant_accuracy.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".cache" / "bench" / "quant_accuracy"
TARGETS = ("tensorrt", "cpu")
METHODS = ("percentile", "minmax", "entropy")
CONFIDENT = 0.5


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def paired_drop_interval(fp_right: np.ndarray, q_right: np.ndarray, n_boot: int = 10000, seed: int = 0):
    """Drop (points) and its 95 % paired-bootstrap interval. Resampling images with replacement only changes how
    many fall in each (FP32 right, INT8 right) cell, so the bootstrap draws those counts (multinomial), exactly."""
    n = len(fp_right)
    lost = int(np.sum(fp_right & ~q_right))
    won = int(np.sum(~fp_right & q_right))
    draws = np.random.default_rng(seed).multinomial(n, [lost / n, won / n, 1 - (lost + won) / n], size=n_boot)
    boot = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    return 100.0 * (lost - won) / n, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)), lost, won


def metrics(ref: np.ndarray, q: np.ndarray, labels: np.ndarray | None) -> dict:
    pf, pq = softmax(ref), softmax(q)
    conf = pf.max(axis=1) >= CONFIDENT
    same = ref.argmax(1) == q.argmax(1)
    out = {
        "images": len(ref),
        "agreement": float(same.mean()),
        "confident_images": int(conf.sum()),
        "confident_agreement": float(same[conf].mean()) if conf.any() else None,
        "kl": float(np.mean(np.sum(pf * (np.log(pf + 1e-300) - np.log(pq + 1e-300)), axis=1))),
    }
    if labels is not None:
        fr, qr = ref.argmax(1) == labels, q.argmax(1) == labels
        drop, lo, hi, lost, won = paired_drop_interval(fr, qr)
        out.update(
            fp32_top1=float(fr.mean()),
            int8_top1=float(qr.mean()),
            drop=drop,
            drop_lo=lo,
            drop_hi=hi,
            lost=lost,
            won=won,
        )
    return out


def infer(path: Path, x: np.ndarray, threads: int, batch: int = 250) -> np.ndarray:
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, threads=threads) as r:  # the runner splits or pads for a fixed batch itself
        parts = [r.infer(x[i : i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(parts)


def cifar_split(cifar: Path, work: Path, n_calib: int, n_gate: int, seed: int = 0) -> tuple[Path, Path]:
    """Folders of links: n_calib seeded train images (calibration), n_gate test images, n_gate/10 per class (the
    gate's labelled --val)."""
    calib, gate = work / f"calib{n_calib}", work / f"gate{n_gate}"
    if not calib.exists():
        files = sorted((cifar / "train").glob("*/*.jpg"))
        pick = np.random.default_rng(seed).permutation(len(files))[:n_calib]
        for i in pick:
            (calib / files[i].parent.name).mkdir(parents=True, exist_ok=True)
            (calib / files[i].parent.name / files[i].name).symlink_to(files[i])
    if not gate.exists():
        for cls in sorted((cifar / "test").iterdir()):
            (gate / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.glob("*.jpg"))[: n_gate // 10]:
                (gate / cls.name / f.name).symlink_to(f)
    return calib, gate


def test_set(cifar: Path, onnx_path: Path, work: Path):
    """The 10,000 test images preprocessed by the model's own contract (cached per contract) and their labels."""
    from edgecnn.contract import read_onnx_contract
    from edgecnn.data import decode_resized, scan_image_folder
    from edgecnn.preprocess import normalize

    contract = read_onnx_contract(onnx_path)
    key = hashlib.sha1(json.dumps(contract.preprocess.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:8]
    cache = work / f"test-{key}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["x"], data["y"], contract
    folder = scan_image_folder(cifar / "test")
    names = contract.labels
    mapping = [names.index(c) for c in folder.classes]
    dec = decode_resized([p for p, _ in folder.samples], contract.preprocess, [mapping[i] for _, i in folder.samples])
    x = normalize(dec.images, contract.preprocess).astype(np.float32)
    np.savez(cache, x=x, y=np.asarray(dec.labels))
    return x, np.asarray(dec.labels), contract


def export(arch: str, ckpt: Path, work: Path, cifar: Path) -> Path:
    from edgecnn.export import ExportOptions, export_onnx

    out = work / f"{arch}.onnx"
    if not out.exists() or out.stat().st_mtime < ckpt.stat().st_mtime:  # a newer checkpoint replaces the export
        export_onnx(ckpt, out, ExportOptions(dynamic_batch=True, data=cifar / "test", force=True))
    return out


def find_checkpoint(arch: str, given: dict[str, Path]) -> Path | None:
    if arch in given:
        return given[arch]
    runs = sorted(
        (ROOT / ".cache" / "bench" / "runs").glob(f"{arch}-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    runs = [p for p in runs if not p.name.endswith((".last.pt", ".best.pt"))]
    return runs[0] if runs else None


def run_cifar(arch: str, ckpt: Path, args, cifar: Path) -> dict:
    from edgecnn.quant import OutputPolicy, QuantOptions, quantize

    work = WORK / arch
    work.mkdir(parents=True, exist_ok=True)
    calib, gate_val = cifar_split(cifar, WORK, args.calibration, args.gate_images)
    onnx_path = export(arch, ckpt, work, cifar)
    x, y, _ = test_set(cifar, onnx_path, WORK)
    ref_path = work / "fp32_logits.npy"
    if not ref_path.exists() or ref_path.stat().st_mtime < onnx_path.stat().st_mtime:
        np.save(ref_path, infer(onnx_path, x, args.threads))
    ref = np.load(ref_path)
    train_record = ROOT / "benchmarks" / "results" / f"train_cifar-{ckpt.stem}.json"
    out = {"checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt), "rows": {}}
    if train_record.exists():
        rec = json.loads(train_record.read_text())
        out["training"] = {k: rec.get(k) for k in ("epochs", "train_seconds", "final_test_acc", "command")}
    out["fp32_top1"] = float((ref.argmax(1) == y).mean())
    for target in TARGETS:
        for method in METHODS:
            q = work / f"{target}-{method}.onnx"
            t0 = time.perf_counter()
            r = quantize(
                onnx_path,
                q,
                calib,
                QuantOptions(target=target, method=method, num_images=args.calibration, threads=args.threads),
                output=OutputPolicy(force=True),
            )
            seconds = time.perf_counter() - t0
            row = metrics(ref, infer(q, x, args.threads), y)
            row.update(calibration_s=r["timings"]["calibration_s"], quantize_s=round(seconds, 1))
            out["rows"][f"{target}/{method}"] = row
            print(arch, target, method, json.dumps({k: row[k] for k in ("drop", "agreement", "kl")}), flush=True)
    if args.gate:
        q = work / "gate.onnx"
        t0 = time.perf_counter()
        try:
            r = quantize(
                onnx_path,
                q,
                calib,
                QuantOptions(
                    target="tensorrt",
                    num_images=args.calibration,
                    threads=args.threads,
                    val=gate_val,
                    max_drop=args.max_drop,
                    method=args.gate_method,
                ),
                output=OutputPolicy(force=True),
            )
            gate = {
                "met": True,
                "seconds": round(time.perf_counter() - t0, 1),
                "drop_on_val": r["accuracy"]["drop"],
                "excluded": r["excluded"],
                "fallback": r["fallback"],
                "test": metrics(ref, infer(q, x, args.threads), y),
            }
        except Exception as exc:  # AccuracyGateError: what it tried is in its details
            gate = {"met": False, "seconds": round(time.perf_counter() - t0, 1), "error": str(exc)}
            gate.update(getattr(exc, "details", None) or {})
        gate.update(val_images=args.gate_images, method=args.gate_method, max_drop=args.max_drop)
        out["gate"] = gate
        print(arch, "gate", json.dumps({k: gate.get(k) for k in ("met", "seconds", "excluded")}), flush=True)
    return out


def lite0_entropy_study(args) -> dict:
    """Entropy on Lite0 before and after the bound: the tensors TensorRT's unbounded KL search clips hardest (amax
    each calibrator picks from the same statistics), agreement/KL of the unbounded search for both targets, and the
    seconds compute_ranges takes with and without the bound on the same statistics."""
    from edgecnn.contract import read_onnx_contract
    from edgecnn.quant import OutputPolicy, QuantOptions, calibrators, graph, qdq, quantize
    from edgecnn.quant.calib_data import load_calibration

    work = WORK / "lite0"
    model = ROOT / ".cache" / "models" / "efficientnet-lite0-0.1.0.onnx"
    x, ref = np.load(work / "held.npy"), np.load(work / "fp32_logits.npy")
    out = {"rows": {}}
    bound = calibrators.ENTROPY_MAX_CLIPPED
    calibrators.ENTROPY_MAX_CLIPPED = None  # TensorRT's search as documented
    try:
        for target in TARGETS:
            q = work / f"{target}-entropy-unbounded.onnx"
            r = quantize(
                model,
                q,
                work / "calibration",
                QuantOptions(target=target, method="entropy", num_images=200, threads=args.threads),
                output=OutputPolicy(force=True),
            )
            row = metrics(ref, infer(q, x, args.threads, batch=50), None)
            row["calibration_s"] = r["timings"]["calibration_s"]
            out["rows"][f"{target}/entropy, unbounded KL"] = row
            print("lite0 unbounded", target, json.dumps({k: row[k] for k in ("agreement", "kl")}), flush=True)
    finally:
        calibrators.ENTROPY_MAX_CLIPPED = bound
    prepared = graph.prepare(model)
    cs = load_calibration(work / "calibration", read_onnx_contract(model).preprocess, 200)
    needed = qdq.needed_tensors(prepared, graph.activation_tensors(prepared), "tensorrt")
    stats = calibrators.collect_stats(cs.batches(16), graph.tensor_runner(graph.batch_agnostic(prepared), needed, 2))
    table = calibrators.range_comparison(stats)
    rows = sorted(table.items(), key=lambda kv: kv[1]["kl"] / kv[1]["minmax"])[:10]
    out["hardest_kl_clips"] = [{"tensor": name, **row} for name, row in rows]
    timing = {}
    for label, clip in (("unbounded", None), ("bounded", bound), ("unbounded", None), ("bounded", bound)):
        t0 = time.perf_counter()
        for s in stats.values():
            if s.width > 0:
                calibrators.entropy_amax(s, max_clipped=clip)
        timing.setdefault(label, []).append(time.perf_counter() - t0)
    out["ranges_seconds"] = {k: min(v) for k, v in timing.items()}
    out["tensors"] = len(stats)
    return out


def run_lite0(args) -> dict:
    from quant_benchmark import scenes, split

    from edgecnn.quant import OutputPolicy, QuantOptions, quantize
    from edgecnn.zoo import pretrained_onnx

    os.environ.setdefault("EDGECNN_CACHE", str(ROOT / ".cache" / "models"))
    model = pretrained_onnx("efficientnet-lite0")
    work = WORK / "lite0"
    if not (work / "calibration").exists():
        split(scenes(ROOT / ".cache" / "test-data"), work, 200, 400, 0)
    cal, held = work / "calibration", work / "held_out"
    from edgecnn.contract import read_onnx_contract
    from edgecnn.data import decode_resized, list_images
    from edgecnn.preprocess import normalize

    contract = read_onnx_contract(model)
    if not (work / "held.npy").exists():
        np.save(
            work / "held.npy",
            normalize(decode_resized(list_images(held), contract.preprocess).images, contract.preprocess),
        )
    x = np.load(work / "held.npy")
    if not (work / "fp32_logits.npy").exists():
        np.save(work / "fp32_logits.npy", infer(model, x, args.threads, batch=50))
    ref = np.load(work / "fp32_logits.npy")
    out = {
        "model": "efficientnet-lite0 (ImageNet-1k pretrained)",
        "data": "scenes: 200 calibration + 400 held-out photos, seed 0",
        "rows": {},
    }
    for target in TARGETS:
        for method in METHODS:
            q = work / f"{target}-{method}.onnx"
            r = quantize(
                model,
                q,
                cal,
                QuantOptions(target=target, method=method, num_images=200, threads=args.threads),
                output=OutputPolicy(force=True),
            )
            row = metrics(ref, infer(q, x, args.threads, batch=50), None)
            row["calibration_s"] = r["timings"]["calibration_s"]
            row["range_comparison"] = r["range_comparison"][:6]
            out["rows"][f"{target}/{method}"] = row
            print(
                "lite0",
                target,
                method,
                json.dumps({k: row[k] for k in ("agreement", "confident_agreement", "kl")}),
                flush=True,
            )
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# INT8 accuracy: top-1 drop on CIFAR-10, agreement and KL on real photos",
        "",
        "Commands (script: `benchmarks/quant_accuracy.py`, which says what it does; runs merge into one record): "
        + "; ".join(f"`{c}`" for c in r.get("commands", [r["command"]]))
        + ".",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs shared with other jobs (load average {m['loadavg'][0]:.1f} at the "
        f"start of the latest run; each model's own is given below); Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, numpy {m['numpy']}. "
        "Both targets run on ONNX Runtime CPU (tensorrt: the Q/DQ model TensorRT would consume).",
        "",
        "Drop = FP32 top-1 minus INT8 top-1 in points on the 10,000 test images (one image = 0.01 point), with a 95 % "
        "paired-bootstrap interval; agreement = same top-1 as FP32; confident = images where FP32's top-1 probability "
        "is >= 0.5; KL = mean KL(FP32 softmax || INT8 softmax). Calibration: 500 seeded train/ images.",
    ]
    for note in r.get("notes", []):
        lines += ["", note]
    for arch, c in r.get("cifar", {}).items():
        tr = c.get("training") or {}
        lines += [
            "",
            f"## {arch}: FP32 top-1 {_pct(c['fp32_top1'])}",
            "",
            f"Checkpoint `{c['checkpoint']}`"
            + (
                f", trained {tr.get('epochs')} epoch(s) in {tr.get('train_seconds', 0) / 60:.1f} min on the shared "
                f"cores to {_pct(tr.get('final_test_acc'))} test top-1 (`{tr.get('command')}`)."
                if tr
                else "."
            )
            + (
                f" Load average {r['machine_per_run'][arch]['loadavg'][0]:.1f} at the start of this model's run."
                if arch in r.get("machine_per_run", {})
                else ""
            ),
            "",
            "| target / method | INT8 top-1 | drop [95 % interval] | lost / won | agreement | confident agreement "
            "| KL | calibration s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, row in c["rows"].items():
            lines.append(
                f"| {key} | {_pct(row['int8_top1'])} | {row['drop']:+.2f} "
                f"[{row['drop_lo']:+.2f}, {row['drop_hi']:+.2f}] "
                f"| {row['lost']} / {row['won']} | {_pct(row['agreement'])} | {_pct(row['confident_agreement'])} "
                f"({row['confident_images']}) | {row['kl']:.2g} | {row['calibration_s']:.2f} |"
            )
        g = c.get("gate")
        if g:
            lines.append("")
            if g["met"]:
                t = g["test"]
                steps = (g.get("fallback") or {}).get("steps") or []
                lines.append(
                    f"Gate (`--max-drop {g['max_drop']}`, tensorrt, {g['method']}, labelled --val of {g['val_images']} "
                    f"test images): met in {g['seconds']:.0f} s with {len(g['excluded'])} layer(s) in float "
                    f"({', '.join(g['excluded']) or 'none needed'}; {len(steps) - 1 if steps else 0} search step(s)), "
                    f"drop {g['drop_on_val']:+.2f} on the --val images; on all 10,000: drop {t['drop']:+.2f} "
                    f"[{t['drop_lo']:+.2f}, {t['drop_hi']:+.2f}], agreement {_pct(t['agreement'])}."
                )
            else:
                lines.append(f"Gate (`--max-drop {g['max_drop']}`): not met in {g['seconds']:.0f} s: {g['error']}")
    lite = r.get("lite0")
    if lite:
        lines += [
            "",
            f"## {lite['model']} on the scenes photos (no labels)",
            "",
            f"{lite['data']}. The photos are not ImageNet classes, so FP32 is unsure on most of them: agreement "
            "overall counts coin flips; agreement where FP32 is confident and the KL divergence are the measures."
            + (
                f" Load average {r['machine_per_run']['lite0']['loadavg'][0]:.1f} at the start of this run."
                if "lite0" in r.get("machine_per_run", {})
                else ""
            ),
            "",
            "| target / method | agreement | confident agreement (images) | KL | calibration s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, row in lite["rows"].items():
            lines.append(
                f"| {key} | {_pct(row['agreement'])} | {_pct(row['confident_agreement'])} "
                f"({row['confident_images']}) | {row['kl']:.3g} | {row['calibration_s']:.2f} |"
            )
        ent = lite["rows"].get("tensorrt/entropy", {}).get("range_comparison")
        if ent:
            lines += [
                "",
                "Tensors entropy clips hardest (tensorrt, amax from the same statistics; `KL alone` = TensorRT's "
                "unbounded search, what entropy chose before the bound):",
                "",
                "| tensor | max abs | percentile 99.99 | KL alone | entropy |",
                "| --- | --- | --- | --- | --- |",
            ]
            for row in ent:
                lines.append(
                    f"| `{row['tensor']}` | {row['minmax']:.3g} | {row['percentile']:.3g} | {row['kl']:.3g} "
                    f"| {row['entropy']:.3g} |"
                )
    study = r.get("entropy_study")
    if study:
        lines += [
            "",
            "## Entropy before and after the bound (EfficientNet-Lite0, the same photos)",
            "",
            "TensorRT's documented search (what `kl_amax` computes; it matches NVIDIA pytorch-quantization's "
            "`_compute_amax_entropy` bin for bin) against the bounded entropy `edgecnn quantize --method entropy` "
            "runs now (never clipping more than 0.01 % of the values):",
            "",
            "| target / method | agreement | confident agreement (images) | KL | calibration s |",
            "| --- | --- | --- | --- | --- |",
        ]
        both = {**study["rows"], **{k: v for k, v in (lite or {}).get("rows", {}).items() if "entropy" in k}}
        for key in sorted(both):
            row = both[key]
            lines.append(
                f"| {key} | {_pct(row['agreement'])} | {_pct(row['confident_agreement'])} "
                f"({row['confident_images']}) | {row['kl']:.3g} | {row['calibration_s']:.2f} |"
            )
        lines += [
            "",
            "The tensors the unbounded KL search clips hardest (tensorrt: the tensors its Q/DQ model quantizes):",
            "",
            "| tensor | max abs | percentile 99.99 | KL alone | entropy (bounded) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in study["hardest_kl_clips"]:
            lines.append(
                f"| `{row['tensor']}` | {row['minmax']:.3g} | {row['percentile']:.3g} | {row['kl']:.3g} "
                f"| {row['entropy']:.3g} |"
            )
        rs = study["ranges_seconds"]
        lines += [
            "",
            f"Computing the {study['tensors']} entropy thresholds from the same statistics: {rs['unbounded']:.3f} s "
            f"unbounded, {rs['bounded']:.3f} s bounded (best of 2, on the loaded machine): the bound adds one "
            "cumulative-histogram lookup per tensor; the calibration pass itself is unchanged. The Lite0 calibration "
            "seconds in the tables were measured at load averages of 13-18 on 2 cores and vary 3x between runs of "
            "the same work; quant_benchmark.md has the quiet-machine timing (4.7 s for entropy on 200 photos).",
        ]
    checks = r.get("gate_checks")
    if checks:
        lines += ["", "## Further gate checks", ""]
        for c in checks:
            if c["exit"] == 0:
                lines.append(
                    f"- `{c['command']}`: exit 0 in {c['wall_s']:.0f} s wall (everything: decode, calibration, GPTQ, "
                    f"reference, gate); drop {c['drop']:.2f} = {c['drop_metric']}; overall agreement "
                    f"{_pct(c['agreement'])}; {len(c['excluded'])} layer(s) in float."
                )
            else:
                steps = ", ".join(f"{s['layers_in_float']}: {s['drop']:.2f}" for s in c["steps"])
                lines.append(
                    f"- `{c['command']}`: exit {c['exit']} in {c['wall_s']:.0f} s wall; drop by layers in float "
                    f"({steps}): 0.05 is one image of the 2,000, the bound 0 is below the measurement's resolution; "
                    f'the error says so in one line: "{c["error"][:120]}..."'
                )
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import onnx
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cifar-cnn,resnet20,mobilenetv2-cifar")
    ap.add_argument(
        "--checkpoint", action="append", default=[], help="ARCH=PATH (default: newest in .cache/bench/runs)"
    )
    ap.add_argument("--calibration", type=int, default=500)
    ap.add_argument("--gate-images", type=int, default=2000)
    ap.add_argument("--max-drop", type=float, default=0.3)
    ap.add_argument("--gate-method", default="percentile")
    ap.add_argument("--no-gate", dest="gate", action="store_false")
    ap.add_argument("--no-lite0", dest="lite0", action="store_false")
    ap.add_argument("--entropy-study", action="store_true", help="only the Lite0 entropy study (after a Lite0 run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "quant_accuracy")
    args = ap.parse_args()
    from train_cifar import cifar_dir

    given = {a.split("=", 1)[0]: Path(a.split("=", 1)[1]) for a in args.checkpoint}
    result = {
        "command": "python benchmarks/quant_accuracy.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "cifar": {},
    }
    prev = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    if args.entropy_study:
        prev["entropy_study"] = lite0_entropy_study(args)
        prev.setdefault("commands", []).append(result["command"])
        args.out.with_suffix(".json").write_text(json.dumps(prev, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(prev))
        return
    cifar = cifar_dir()
    for arch in [a for a in args.models.split(",") if a]:
        ckpt = find_checkpoint(arch, given)
        if ckpt is None:
            print(f"{arch}: no checkpoint (train it with benchmarks/train_cifar.py --arch {arch})", flush=True)
            continue
        result["cifar"][arch] = run_cifar(arch, ckpt, args, cifar)
        args.out.with_suffix(".json").write_text(json.dumps({**prev, **result}, indent=2) + "\n")
    if args.lite0:
        result["lite0"] = run_lite0(args)
    result["machine"]["loadavg_after"] = os.getloadavg()
    commands = [
        c for c in prev.get("commands", [prev["command"]] if "command" in prev else []) if c != result["command"]
    ]
    merged = {
        **prev,
        **result,
        "cifar": {**prev.get("cifar", {}), **result["cifar"]},
        "commands": commands + [result["command"]],
        "machine_per_run": {
            **prev.get("machine_per_run", {}),
            **{k: result["machine"] for k in [*result["cifar"], *(["lite0"] if "lite0" in result else [])]},
        },
    }
    args.out.with_suffix(".json").write_text(json.dumps(merged, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(merged))
    print(f"wrote {args.out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
