"""Adopt parity: a foreign EfficientNet-Lite0 ONNX (plain torch.onnx.export, no edgecnn metadata), adopted with
`edgecnn adopt --preset tf-lite`, must give the outputs of edgecnn's own export on the scenes photos; so must its
NHWC variant (a Transpose in front, as tf2onnx makes; `--layout nhwc`) and its Softmax-output variant. Then wrong
preprocessing (BGR for RGB, 0-1 for 0-255) must be caught by `--check-preprocessing`, naming the right preset.

    nice -n 10 .venv/bin/python benchmarks/adopt_parity.py [--images N] [--out benchmarks/adopt_parity.json]

Writes the measured numbers as JSON (and prints them). The test suite runs the same functions on a few photos
(tests/test_adopt.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def make_foreign_models(folder: Path) -> dict[str, Path]:
    """EfficientNet-Lite0 exported three ways with plain torch.onnx.export (no edgecnn metadata), + a wnids file."""
    import torch

    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.contract import imagenet_labels
    from edgecnn.zoo import pretrained_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    net, _, _ = load_checkpoint(pretrained_checkpoint("efficientnet-lite0"))
    net.eval()

    class Nhwc(torch.nn.Module):  # what tf2onnx gives a Keras model: NHWC input, a Transpose in front
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    class Probs(torch.nn.Module):  # a Softmax at the end, as Ultralytics and many Keras exports have
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.softmax(self.inner(x), dim=1)

    variants = {
        "plain": (net, (1, 3, 224, 224)),
        "nhwc": (Nhwc(net), (1, 224, 224, 3)),
        "softmax": (Probs(net), (1, 3, 224, 224)),
    }
    paths = {}
    for name, (module, shape) in variants.items():
        path = folder / f"lite0-{name}.onnx"
        if not path.exists():
            torch.onnx.export(
                module,
                (torch.zeros(shape),),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=["scores"],
                dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}},
                opset_version=17,
            )
        paths[name] = path
    wnids = folder / "imagenet_wnids.txt"
    wnids.write_text("\n".join(imagenet_labels()[1]) + "\n")
    paths["labels"] = wnids
    return paths


def edgecnn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "edgecnn"), *args], capture_output=True, text=True)


def compare(reference: Path, adopted: Path, images: list[Path]) -> dict:
    """Top-1 agreement and max abs logit difference (probabilities for a Softmax model) on `images`."""
    from edgecnn.data import read_image
    from edgecnn.postprocess import softmax
    from edgecnn.runtime import load

    frames = [read_image(p) for p in images]
    with load(reference) as a, load(adopted) as b:
        la = np.concatenate([a.infer_frames(frames[i : i + 16]) for i in range(0, len(frames), 16)])
        lb = np.concatenate([b.infer_frames(frames[i : i + 16]) for i in range(0, len(frames), 16)])
        kind = b.contract.output
    row = {"images": len(frames), "top1_agreement": float(np.mean(la.argmax(1) == lb.argmax(1)))}
    if kind == "probabilities":  # the model outputs probabilities; its runner gives their log (logits up to a constant)
        row["max_abs_prob_diff"] = float(np.max(np.abs(softmax(la) - softmax(lb))))
        log_softmax = la - la.max(1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
        row["max_abs_diff"] = float(np.max(np.abs(log_softmax - lb)))
        row["compared"] = "log-probabilities (logits less their logsumexp)"
    else:
        row["max_abs_diff"] = float(np.max(np.abs(la - lb)))
        row["compared"] = "logits"
    return row


def teacher_labelled(reference: Path, photos: list[Path], dest: Path, min_prob: float = 0.5) -> Path:
    """A labelled ImageNet folder made from `photos`: those edgecnn's own export (preprocessing from the TF
    reference) classifies with probability >= min_prob, in folders named by that class's wnid. No ImageNet images
    are at hand here; this is the labelled data `--check-preprocessing` needs, with the known-right model's labels."""
    from edgecnn.data import read_image
    from edgecnn.postprocess import softmax
    from edgecnn.runtime import load

    with load(reference) as ref:
        keys = ref.contract.label_keys
        for i in range(0, len(photos), 16):
            part = photos[i : i + 16]
            probs = softmax(ref.infer_frames([read_image(p) for p in part]))
            for p, row in zip(part, probs):
                if row.max() >= min_prob:
                    (dest / keys[int(row.argmax())]).mkdir(parents=True, exist_ok=True)
                    shutil.copy(p, dest / keys[int(row.argmax())] / p.name)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=0, help="photos used (0: all 1,200)")
    ap.add_argument("--check-images", type=int, default=200, help="photos --check-preprocessing scores on")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "adopt-bench")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "adopt_parity.json")
    args = ap.parse_args()

    from edgecnn.zoo import pretrained_onnx

    scenes = ROOT / ".cache" / "test-data" / "scenes"
    if not scenes.is_dir():
        with tarfile.open(SHARED / "scenes-jpg.tar.gz") as tar:
            tar.extractall(ROOT / ".cache" / "test-data", filter="data")
    images = sorted(scenes.rglob("*.jpg"))
    if args.images:
        images = images[:: max(1, len(images) // args.images)][: args.images]
    work = args.work
    models = make_foreign_models(work)
    own = pretrained_onnx("efficientnet-lite0")
    results: dict = {"parity": {}, "check_preprocessing": {}}
    for name, extra in (("plain", []), ("nhwc", ["--layout", "nhwc"]), ("softmax", [])):
        adopted = work / f"lite0-{name}.adopted.onnx"
        t0 = time.perf_counter()
        cmd = ["adopt", str(models[name]), "--labels", str(models["labels"]), "--preset", "tf-lite"]
        proc = edgecnn(*cmd, *extra, "--out", str(adopted), "--force", "--json")
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return 1
        seconds = round(time.perf_counter() - t0, 2)
        row = compare(own, adopted, images)
        row.update(command="edgecnn " + " ".join(cmd + extra), adopt_seconds=seconds)
        results["parity"][name] = row
        print(name, row)
    labelled = work / "teacher-labelled"
    if labelled.exists():
        shutil.rmtree(labelled)
    teacher_labelled(own, sorted(scenes.rglob("*.jpg")), labelled)
    results["teacher_labelled"] = {
        "photos": sum(1 for _ in labelled.rglob("*.jpg")),
        "classes": sum(1 for _ in labelled.iterdir()),
        "rule": "scenes photos edgecnn's own export classifies with p >= 0.5, in folders named by wnid",
    }
    wrongs = (
        ("right", []),
        ("bgr for rgb", ["--channel-order", "bgr"]),
        ("0-1 pixels for 0-255 (raw-0-1 preset)", ["--preset", "raw-0-1"]),
        ("0-1 numbers on the 0-255 scale", ["--mean", "0.5", "--std", "0.5", "--scale", "0-255"]),
    )
    for name, wrong in wrongs:
        cmd = ["adopt", str(models["plain"]), "--labels", str(models["labels"]), "--preset", "tf-lite", *wrong]
        cmd += ["--data", str(labelled), "--check-preprocessing", "--limit", str(args.check_images)]
        proc = edgecnn(*cmd, "--out", str(work / f"wrong-{name}.onnx"), "--force", "--json")
        line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        row = {"command": "edgecnn " + " ".join(cmd), "exit": proc.returncode, "message": line}
        if proc.returncode == 0:
            report = json.loads(proc.stdout)
            row.update(top1=report["top1"], best=report["best"])
            row["candidates"] = {c["preset"]: c["top1"] for c in report["candidates"]}
        results["check_preprocessing"][name] = row
        print(name, proc.returncode, line, row.get("candidates"))
    import onnxruntime

    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }
    results["command"] = "nice -n 10 .venv/bin/python benchmarks/adopt_parity.py " + " ".join(sys.argv[1:])
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
