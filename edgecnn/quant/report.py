"""Quantization report: JSON (everything) + Markdown (what a person reads), written atomically into one folder."""

from __future__ import annotations

import os
from pathlib import Path

from edgecnn.jsonout import strict_json


def _pct(v) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}%"


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def finetune_summary(ft: dict) -> str:
    """One line on a --finetune run (CLI summary and report)."""
    return (
        f"{ft['epochs']} epoch(s) on {ft['images']} images, lr {ft['lr']:g}, {ft['seconds']:.0f} s, "
        f"distillation loss {ft['loss_first_epoch']:.4g} -> {ft['loss_last_epoch']:.4g}"
    )


def confidence_summary(rows: list[dict]) -> str:
    """One line on top-1 agreement split by FP32's confidence (CLI summary and report): where the flips are."""
    parts = [
        f"p {row['fp32_top1_prob']}: "
        + ("-" if row["agreement"] is None else f"{100 * row['agreement']:.1f}%")
        + f" of {row['images']}"
        for row in rows
    ]
    return "agreement by FP32 top-1 probability: " + " · ".join(parts)


def to_markdown(result: dict) -> str:
    r = result
    acc = r.get("accuracy") or {}
    cal = r.get("calibration") or {}
    lines = [
        f"# INT8 quantization report: {Path(r['model']).name}",
        "",
        f"- output: `{r['output']}` (target **{r['target']}**, method **{r['method']}**"
        + (f", percentile {r['percentile']}" if r["method"] == "percentile" else "")
        + ")",
        f"- calibration: {cal.get('images')} images from `{cal.get('source')}` ({cal.get('kind')}), "
        f"{cal.get('corrupt', 0)} unreadable skipped, brightness mean {cal.get('brightness', {}).get('mean')} "
        f"± {cal.get('brightness', {}).get('std')}",
        f"- calibration time: {r['timings']['calibration_s']:.2f} s for {len(r['ranges'])} tensors "
        f"({r['timings']['images_per_s']:.1f} images/s)",
        f"- model size: FP32 {r['sizes']['fp32_bytes'] / 1e6:.2f} MB -> INT8 {r['sizes']['int8_bytes'] / 1e6:.2f} MB",
        f"- Q/DQ: {r['qdq']['quantize_nodes']} QuantizeLinear, {r['qdq']['dequantize_nodes']} DequantizeLinear, "
        f"{r['qdq']['int8_nodes']} nodes in INT8, zero points {', '.join(r['qdq']['zero_point_types'])}",
        f"- excluded (kept in float): {', '.join(r['excluded']) or 'none'}",
    ]
    for e in r.get("exclusions") or []:
        lines.append(f"  - `{e['node']}` ({e['op']}): {e['reason']}")
    if r.get("excluded") and r.get("high_precision"):
        lines.append(f"- layers kept in float run in: {r['high_precision']}")
    if r.get("rounding"):
        ro = r["rounding"]
        lines.append(
            f"- weight rounding: {ro['method']}"
            + (f" ({ro['layers']} layers, {ro['seconds']:.1f} s)" if ro["method"] == "gptq" else "")
        )
    if r.get("weights"):
        lines.append(f"- weights: {r['weights']['text']}")
        if r["weights"].get("note"):
            lines.append(f"- warning: {r['weights']['note']}")
    if r.get("finetune"):
        lines.append(f"- quantization-aware fine-tuning: {finetune_summary(r['finetune'])}")
    if r.get("cache"):
        c = r["cache"]
        lines.append(f"- TensorRT calibration table: `{c['path']}` (`{c['header']}`, {c['tensors']} tensors)")
    for w in cal.get("warnings", []):
        lines.append(f"- warning: {w}")
    lines += ["", "## Accuracy", ""]
    if acc:
        ag = acc["agreement"]
        lines.append(f"On {acc['images']} images ({acc['source']}). {acc.get('note') or ''}".rstrip())
        lines.append("")
        lines.append("| metric | FP32 | INT8 |")
        lines.append("| --- | --- | --- |")
        if acc["kind"] == "labelled":
            lines.append(f"| top-1 | {_pct(acc['fp32']['top1'])} | {_pct(acc['int8']['top1'])} |")
            lines.append(f"| top-5 | {_pct(acc['fp32']['top5'])} | {_pct(acc['int8']['top5'])} |")
        lines.append(f"| top-1 agreement with FP32 | | {_pct(ag['top1_agreement'])} |")
        lines.append(f"| max / mean abs logit diff | | {ag['max_abs_diff']:.4f} / {ag['mean_abs_diff']:.4f} |")
        lines.append(f"| cosine (min / mean) | | {ag['cosine_min']:.5f} / {ag['cosine_mean']:.5f} |")
        if acc.get("kl") is not None:
            lines.append(f"| mean KL(FP32 softmax, INT8 softmax) | | {acc['kl']:.4g} |")
        if ag.get("by_fp32_confidence"):
            lines.append(
                f"\n{confidence_summary(ag['by_fp32_confidence'])} images (flips where FP32 itself "
                "hesitates are expected; flips where it is sure are damage)."
            )
        lines.append(
            f"\ndrop: {acc['drop']:.2f} points"
            + (f" (bound {r['max_drop']})" if r.get("max_drop") is not None else "")
            + (f": {acc['drop_metric']}" if acc.get("drop_metric") else "")
        )
        if acc.get("per_class"):
            lines += ["", "| class | images | FP32 top-1 | INT8 top-1 | delta |", "| --- | --- | --- | --- | --- |"]
            for name, c in sorted(acc["per_class"].items(), key=lambda kv: kv[1]["delta"]):
                lines.append(
                    f"| {name} | {c['images']} | {_pct(c['fp32'])} | {_pct(c['int8'])} | {100 * c['delta']:+.2f} |"
                )
    if r.get("fallback"):
        fb = r["fallback"]
        lines += [
            "",
            "## Accuracy gate (--max-drop)",
            "",
            f"Sensitivity: {fb.get('measure', '')}; ranking {fb.get('rank_seconds', 0):.1f} s, gate "
            f"{fb.get('seconds', 0):.1f} s in all. Measured: {fb.get('metric') or 'top-1'}.",
            "",
            "| step | layers in float | drop |",
            "| --- | --- | --- |",
        ]
        for step in fb["steps"]:
            lines.append(f"| {step['layers_in_float']} | {', '.join(step['excluded']) or '-'} | {step['drop']:.2f} |")
        lines += ["", "Most sensitive layers (KL of the output with only that layer in INT8):", ""]
        for row in fb["sensitivity"][:10]:
            kl = "not reached in time" if row["kl"] is None else f"{row['kl']:.3g}"
            lines.append(f"- `{row['node']}` ({row['op']}): {kl}")
    if r.get("latency"):
        lat = r["latency"]
        lines += [
            "",
            f"## Latency on this machine (ONNX Runtime CPU, batch {lat['batch']})",
            "",
            "| model | median ms | p90 ms |",
            "| --- | --- | --- |",
            f"| FP32 | {lat['fp32']['median_ms']:.2f} | {lat['fp32']['p90_ms']:.2f} |",
            f"| INT8 | {lat['int8']['median_ms']:.2f} | {lat['int8']['p90_ms']:.2f} |",
            "",
            f"speed-up {lat['speedup']:.2f}x ({lat['runs']} runs each, interleaved in "
            f"{lat.get('interleaved_rounds', 1)} rounds, {lat['threads'] or 'default'} threads, "
            f"{lat['machine']})",
        ]
    if r.get("range_comparison"):
        lines += [
            "",
            f"## Tensors {r['method']} clips hardest (amax each calibrator would choose from the same statistics)",
            "",
            "| tensor | max abs | percentile | entropy (KL alone) | chosen | chosen / max |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["range_comparison"]:
            lines.append(
                f"| `{row['tensor']}` | {row['minmax']:.4g} | {_num(row['percentile'])} | {_num(row['entropy'])} "
                f"({_num(row['kl'])}) | {row['chosen']:.4g} | {row['clip_ratio']:.3f} |"
            )
    lines += ["", "## Per-tensor ranges", "", "| tensor | low | high | scale |", "| --- | --- | --- | --- |"]
    for name, rng in r["ranges"].items():
        lines.append(f"| `{name}` | {rng['low']:.6g} | {rng['high']:.6g} | {rng['scale']:.6g} |")
    return "\n".join(lines) + "\n"


def stage_report(stage, folder: str | os.PathLike, result: dict) -> dict[str, str]:
    """Write the report (JSON + Markdown) to files staged with files.staged_files (`stage`), so they are put in
    place together with the model, or not at all. Sets and returns result["report"] (the paths)."""
    import json

    folder = Path(folder)
    result["report"] = {"json": str(folder / "quantization.json"), "markdown": str(folder / "quantization.md")}
    text = json.dumps(strict_json(result), indent=2, sort_keys=True, default=str) + "\n"
    stage(folder / "quantization.json").write_text(text, encoding="utf-8")
    stage(folder / "quantization.md").write_text(to_markdown(result), encoding="utf-8")
    return result["report"]
