"""FP32 vs INT8 on the evaluation images: top-1/top-5 and per-class deltas on a labelled folder; without labels,
agreement where FP32 is confident, KL divergence and output error. `drop` is what the accuracy gate bounds."""

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


CONFIDENT = 0.5  # FP32 top-1 probability from which a changed top-1 class is damage rather than a coin flip


def mean_kl(fp32_logits: np.ndarray, int8_logits: np.ndarray) -> float:
    """Mean KL(FP32 softmax || INT8 softmax) per image: how far INT8 moves the whole output distribution."""

    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(fp32_logits), log_softmax(int8_logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1))) if len(lp) else 0.0


def compare(ref: Reference, int8_runner, batch: int = 32) -> dict:
    """INT8 vs FP32 on the reference images: agreement, KL, output error, and accuracy when labelled.

    `drop` (percentage points) is what --max-drop bounds: the top-1 accuracy lost when labelled; without labels,
    the share of images whose top-1 class changed among those where FP32's top-1 probability is at least
    CONFIDENT (all images when there is none); `drop_metric` says which."""
    from edgecnn.evaluate import accuracy, agreement
    from edgecnn.postprocess import softmax

    logits = _infer_images(int8_runner, ref.inputs, batch)
    agree = agreement(ref.logits, logits)
    agree.pop("disagreements", None)
    agree["by_fp32_confidence"] = agreement_by_confidence(ref.logits, logits)
    confident = softmax(np.asarray(ref.logits)).max(axis=1) >= CONFIDENT
    same = np.asarray(ref.logits).argmax(axis=1) == logits.argmax(axis=1)
    agree["confident_images"] = int(confident.sum())
    agree["confident_agreement"] = float(same[confident].mean()) if confident.any() else None
    out = {
        "images": int(len(logits)),
        "source": ref.source,
        "kind": ref.kind,
        "agreement": agree,
        "kl": mean_kl(ref.logits, logits),
        "note": ref.note,
    }
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
                "drop_metric": f"top-1 accuracy lost on {len(logits)} labelled images",
            }
        )
    elif confident.any():
        out["drop"] = round(100.0 * (1.0 - agree["confident_agreement"]), 4)
        out["drop_metric"] = (
            f"no labels: top-1 changed on the {int(confident.sum())} of {len(logits)} images where FP32's top-1 "
            f"probability is >= {CONFIDENT} (mean KL over all: {out['kl']:.4g})"
        )
    else:
        out["drop"] = round(100.0 * (1.0 - agree["top1_agreement"]), 4)
        out["drop_metric"] = (
            f"no labels and FP32 confident (top-1 probability >= {CONFIDENT}) on none of the {len(logits)} images: "
            "top-1 changed on all of them"
        )
    return out
