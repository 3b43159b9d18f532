"""The accuracy gate: FP32 vs INT8 on a labelled folder (top-1/top-5, agreement, per-class deltas) or, without labels,
agreement and output error on images; and per-layer sensitivity to decide which layers to keep in float."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.errors import UserInputError

Progress = Callable[[int, int], None]


@dataclass
class Reference:
    """FP32 outputs on the evaluation images, computed once and reused for every INT8 candidate."""

    kind: str  # 'labelled' or 'unlabelled'
    source: str
    inputs: np.ndarray  # uint8 images at the model's input size
    logits: np.ndarray
    labels: np.ndarray | None = None
    class_names: dict[int, str] | None = None
    note: str = ""


def _is_labelled(runner, folder: Path) -> tuple[bool, str]:
    from edgecnn.data import find_splits, map_classes, scan_image_folder

    root, test = find_splits(folder)
    try:
        scanned = scan_image_folder(test or root)
    except UserInputError as exc:
        return False, str(exc)
    try:
        map_classes(scanned.classes, runner.labels, runner.contract.label_keys)
    except UserInputError as exc:
        matched, problems = [], []
        for name in scanned.classes:
            try:
                map_classes([name], runner.labels, runner.contract.label_keys)
                matched.append(name)
            except UserInputError as one:
                problems.append(str(one))
        # most folders name the model's classes: a labelled folder with a typo, not silently "unlabelled"; a few
        # (a scenes folder with a 'church' among its subjects, an ImageNet class) is a coincidence: agreement only
        if matched and len(matched) >= len(problems):
            raise UserInputError(
                f"--val {folder}: {len(matched)} of its {len(scanned.classes)} class folders name this model's "
                f"classes, but {problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}"
            ) from None
        return False, str(exc)
    return True, ""


def reference(
    fp32_runner,
    images: np.ndarray | None = None,
    val: str | os.PathLike | None = None,
    batch: int = 32,
    progress: Progress | None = None,
) -> Reference:
    """FP32 logits on `val` (a labelled folder, or any folder of images) or on the given uint8 images."""
    cfg = fp32_runner.preprocess_config
    if val is not None:
        val = Path(val)
        if not val.exists():
            raise UserInputError(f"--val folder {val} does not exist")
        labelled, why = _is_labelled(fp32_runner, val) if val.is_dir() else (False, "not a folder")
        if labelled:
            from edgecnn.data import decode_resized, find_splits, map_classes, scan_image_folder

            root, test = find_splits(val)
            folder = scan_image_folder(test or root)
            mapping = map_classes(folder.classes, fp32_runner.labels, fp32_runner.contract.label_keys)
            decoded = decode_resized(
                [p for p, _ in folder.samples], cfg, [mapping[i] for _, i in folder.samples], progress=progress
            )
            if len(decoded.images) == 0:
                raise UserInputError(f"No readable images in --val {val}")
            names = {cls: fp32_runner.labels[cls] for cls in mapping}
            logits = _infer_images(fp32_runner, decoded.images, batch)
            notes = [f"{len(decoded.corrupt)} unreadable file(s) skipped"] if decoded.corrupt else []
            if folder.loose:
                notes.append(f"{len(folder.loose)} image(s) directly in {folder.root}, in no class folder, not scored")
            note = "; ".join(notes)
            return Reference("labelled", str(val), decoded.images, logits, decoded.labels, names, note)
        from edgecnn.data import decode_resized, list_images

        decoded = decode_resized(list_images(val), cfg, progress=progress)
        if len(decoded.images) == 0:
            raise UserInputError(f"No readable images in --val {val}")
        images = decoded.images
        note = f"{val} is not labelled with this model's classes ({why}): measuring agreement only"
        source = str(val)
    else:
        note, source = "no --val: agreement measured on the calibration images", "calibration images"
    logits = _infer_images(fp32_runner, images, batch)
    return Reference("unlabelled", source, images, logits, note=note)


def _infer_images(runner, images: np.ndarray, batch: int) -> np.ndarray:
    from edgecnn.preprocess import normalize

    cfg = runner.preprocess_config
    return np.concatenate([runner.infer(normalize(images[i : i + batch], cfg)) for i in range(0, len(images), batch)])


CONFIDENCE_BINS = ((0.0, 0.2), (0.2, 0.5), (0.5, 1.0))


def agreement_by_confidence(fp32_logits: np.ndarray, int8_logits: np.ndarray, bins=CONFIDENCE_BINS) -> list[dict]:
    """Top-1 agreement split by how sure the FP32 model is (its softmax top-1 probability).

    Why: where FP32 hesitates between classes, any small perturbation (INT8, even FP16 weights) can flip top-1;
    where it is confident, a flip is real damage. One overall agreement number mixes the two."""
    from edgecnn.postprocess import softmax

    ref = np.asarray(fp32_logits)
    conf = softmax(ref).max(axis=1)
    same = ref.argmax(axis=1) == np.asarray(int8_logits).argmax(axis=1)
    rows = []
    for i, (lo, hi) in enumerate(bins):
        sel = (conf >= lo) & ((conf <= hi) if i == len(bins) - 1 else (conf < hi))
        rows.append(
            {
                "fp32_top1_prob": f"{lo:.1f}-{hi:.1f}",
                "images": int(sel.sum()),
                "agreement": float(same[sel].mean()) if sel.any() else None,
            }
        )
    return rows


def compare(ref: Reference, int8_runner, batch: int = 32) -> dict:
    """INT8 vs FP32 on the reference images: agreement, output error, and accuracy when labelled.

    `drop` (percentage points) is what --max-drop bounds: the top-1 accuracy lost when labelled, otherwise the
    share of images whose top-1 class changed."""
    from edgecnn.evaluate import accuracy, agreement

    logits = _infer_images(int8_runner, ref.inputs, batch)
    agree = agreement(ref.logits, logits)
    agree.pop("disagreements", None)
    agree["by_fp32_confidence"] = agreement_by_confidence(ref.logits, logits)
    out = {"images": int(len(logits)), "source": ref.source, "kind": ref.kind, "agreement": agree, "note": ref.note}
    if ref.kind == "labelled":
        fp = accuracy(ref.logits, ref.labels, ref.class_names)
        q = accuracy(logits, ref.labels, ref.class_names)
        per_class = {
            name: {
                "fp32": fp["per_class"][name]["top1"],
                "int8": q["per_class"][name]["top1"],
                "delta": q["per_class"][name]["top1"] - fp["per_class"][name]["top1"],
                "images": fp["per_class"][name]["images"],
            }
            for name in fp["per_class"]
        }
        out.update(
            {
                "fp32": {"top1": fp["top1"], "top5": fp["top5"]},
                "int8": {"top1": q["top1"], "top5": q["top5"]},
                "per_class": per_class,
                "drop": round(100.0 * (fp["top1"] - q["top1"]), 4),
            }
        )
    else:
        out["drop"] = round(100.0 * (1.0 - agree["top1_agreement"]), 4)
    return out


# ---------------------------------------------------------------- sensitivity


def _dq_of(qmodel) -> dict[str, str]:
    """quantized tensor -> the name of (one of) its dequantized copies in a Q/DQ model."""
    q_out = {n.output[0]: n.input[0] for n in qmodel.graph.node if n.op_type == "QuantizeLinear"}
    out: dict[str, str] = {}
    for n in qmodel.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_out:
            out.setdefault(q_out[n.input[0]], n.output[0])
    return out


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a.astype(np.float64) - b) ** 2) / max(np.sum(b.astype(np.float64) ** 2), 1e-30))


def layer_sensitivity(prepared, qmodel, batches: list[np.ndarray], threads: int | None = None) -> list[dict]:
    """Rank INT8 nodes by the error they ADD: relative error of their (dequantized) output against FP32 minus the
    worst relative error already present on their quantized inputs. One run of each model with the needed tensors
    as extra outputs; returns [{node, op, added_error, output_error}], most sensitive first."""
    from edgecnn.quant.graph import tensor_runner
    from edgecnn.quant.qdq import quantized_nodes

    dq = _dq_of(qmodel)
    dq_to_src = {v: k for k, v in dq.items()}
    inits = {i.name for i in qmodel.graph.initializer}
    fp_names = {o for n in prepared.graph.node for o in n.output} | {i.name for i in prepared.graph.input}
    wanted_nodes = set(quantized_nodes(qmodel))
    rows = []
    for node in qmodel.graph.node:
        if node.name not in wanted_nodes:
            continue
        ins = [
            dq_to_src[i]
            for i in node.input
            if i in dq_to_src and dq_to_src[i] not in inits and dq_to_src[i] in fp_names
        ]
        out = node.output[0]
        if out not in fp_names:
            continue
        rows.append((node, ins, out))
    q_tensors = sorted(
        {dq[t] for _, ins, _ in rows for t in ins}
        | {dq[o] for _, _, o in rows if o in dq}
        | {o for _, _, o in rows if o not in dq}
    )
    fp_tensors = sorted({t for _, ins, _ in rows for t in ins} | {o for _, _, o in rows})
    run_q = tensor_runner(qmodel, q_tensors, threads)
    run_f = tensor_runner(prepared, fp_tensors, threads)
    err_sum: dict[str, float] = {}
    for batch in batches:
        fq, ff = run_q(batch), run_f(batch)
        for t in fp_tensors:
            qname = dq.get(t, t)
            if qname in fq and t in ff:
                err_sum[t] = err_sum.get(t, 0.0) + _rel_err(fq[qname], ff[t])
    n = max(1, len(batches))
    err = {t: v / n for t, v in err_sum.items()}
    ranked = []
    for node, ins, out in rows:
        before = max((err.get(t, 0.0) for t in ins), default=0.0)
        after = err.get(out, 0.0)
        ranked.append(
            {"node": node.name, "op": node.op_type, "added_error": max(0.0, after - before), "output_error": after}
        )
    ranked.sort(key=lambda r: -r["added_error"])
    return ranked
