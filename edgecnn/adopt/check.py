"""The checks on the written candidate (opened as every command opens it), and its score on `--data`: top-1 with
the chosen preprocessing, and with --check-preprocessing every preset's, refusing one far behind the best."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edgecnn.adopt.graph import probe_batch
from edgecnn.adopt.options import AdoptOptions, AdoptReport
from edgecnn.adopt.presets import PRESETS, preset_config
from edgecnn.contract import ModelContract
from edgecnn.errors import AccuracyGateError, ArtifactError, UserInputError
from edgecnn.preprocess import PreprocessConfig


def check_and_score(path: Path, contract: ModelContract, options: AdoptOptions, notes, say) -> AdoptReport:
    """Open the written candidate as edgecnn will (ONNX Runtime runner: contract, input shape, class count), and
    score it on `data` when given."""
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

    report = AdoptReport(
        out="",
        source="",
        input={},
        output={},
        labels=len(contract.labels),
        preprocess={},
        decided_by={},
        batch="",
        notes=notes,
    )
    say("checking the adopted model with ONNX Runtime")
    with OnnxRuntimeRunner(path) as runner:
        logits = runner.infer(probe_batch(contract.preprocess, 1))
        if logits.ndim != 2 or logits.shape[1] != len(contract.labels):
            raise UserInputError(
                f"The labels list {len(contract.labels)} classes but the model outputs "
                f"{logits.shape[1] if logits.ndim == 2 else tuple(logits.shape)} scores per image: give the labels "
                "file of this model"
            )
        if not np.all(np.isfinite(logits)):
            raise ArtifactError("The model's outputs are not finite (NaN/inf) on a test input")
        if options.data is None:
            return report
        frames, truth, labelled = _read_data(Path(options.data), contract, options.limit, notes)
        say(f"scoring on {len(frames)} images of {options.data}")
        top1, conf = _score(runner, frames, truth, contract.preprocess)
        report.top1, report.confidence, report.scored_images = top1, conf, len(frames)
        if not options.check_preprocessing:
            return report
        base = contract.preprocess
        results = []
        for name, cand in _candidates(base):
            say(f"trying preset {name}")
            runner.contract = replace(contract, preprocess=cand)
            t, c = _score(runner, frames, truth, cand)
            results.append({"preset": name, "top1": t, "confidence": c, "preprocess": cand.to_dict()})
        runner.contract = contract
    # top-1 first, confidence breaks ties (presets close to each other often tie on top-1)
    key = (lambda r: (r["top1"], r["confidence"])) if labelled else (lambda r: (r["confidence"],))
    results.sort(key=key, reverse=True)
    report.candidates, report.best = results, results[0]["preset"]
    if not labelled:  # confidence on photos of other classes says little: ranked, never refused
        notes.append(
            "presets ranked by confidence only, which is not conclusive: give --data a folder labelled with the "
            "model's classes to check the preprocessing"
        )
        return report
    best = results[0]["top1"]
    # Far behind the best preset: the commonest mistake (colour order, 0-1 vs 0-255, mean/std), refused.
    if best - top1 > 0.05:
        ties = [r["preset"] for r in results[1:] if r["top1"] >= best - 0.005]
        also = f" (so does {', '.join(ties)})" if ties else ""
        fix = f"--preset {report.best.split('+')[0]}" + (" --channel-order bgr" if report.best.endswith("+bgr") else "")
        raise AccuracyGateError(
            f"The preprocessing chosen scores {top1:.1%} top-1 on {options.data}, preset {report.best} scores "
            f"{best:.1%}{also}: re-run with {fix}; nothing written",
            details=report.to_dict(),
        )
    return report


def _candidates(base: PreprocessConfig):
    """Every preset in both colour orders, at the model's size, layout and dtype."""
    for name in PRESETS:
        cfg = preset_config(name, base.input_size, base.layout, base.dtype)
        yield name, cfg
        yield name + "+bgr", replace(cfg, channel_order="bgr")


def _read_data(folder: Path, contract: ModelContract, limit: int, notes: list[str]):
    """(frames, true class per frame or None, labelled?): decoded once, spread over the folder. The folders score
    top-1 when they name the model's classes (names, wnids or ids); otherwise only the confidence is measured."""
    from edgecnn.data import find_splits, list_images, map_classes, read_image, scan_image_folder

    truth = None
    try:
        root, test = find_splits(folder)
        scanned = scan_image_folder(test or root)
        mapping = map_classes(scanned.classes, contract.labels, contract.label_keys)
        samples = [(p, mapping[i]) for p, i in scanned.samples]
    except UserInputError:
        samples = [(p, -1) for p in list_images(folder)]
        notes.append(f"the folders of {folder} do not name the model's classes: scored by confidence only")
    if not samples:
        raise UserInputError(f"--data {folder} holds no images")
    if len(samples) > limit:
        samples = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, limit).astype(int)]
    frames, classes = [], []
    for p, c in samples:
        frame = read_image(p)
        if frame is not None:
            frames.append(frame)
            classes.append(c)
    if not frames:
        raise UserInputError(f"--data {folder}: none of its images can be decoded")
    labelled = all(c >= 0 for c in classes)
    if labelled:
        truth = np.asarray(classes)
    return frames, truth, labelled


def _score(runner, frames, truth, cfg: PreprocessConfig, batch: int = 16) -> tuple[float | None, float]:
    """(top-1 or None, mean top-1 probability) of `runner` on `frames` through `cfg`."""
    from edgecnn.postprocess import softmax
    from edgecnn.preprocess import preprocess

    logits = np.concatenate(
        [runner.infer(preprocess(frames[i : i + batch], cfg)) for i in range(0, len(frames), batch)]
    )
    probs = softmax(logits)
    top1 = float(np.mean(probs.argmax(1) == truth)) if truth is not None else None
    return top1, float(np.mean(probs.max(1)))
