"""Quantize the pretrained EfficientNet-Lite0 to INT8 (Q/DQ ONNX + TensorRT calibration cache) and check it.

    python examples/quantize_pretrained.py --calib path/to/photos --check path/to/other/photos --out runs/lite0

The INT8 model runs on ONNX Runtime here and on TensorRT on a Jetson (`edgecnn build-engine --precision int8`).
Its top-1 agreement with the FP32 model is measured on --check photos (use ones the calibration did not see).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", required=True, type=Path, help="folder of real photos (a few hundred) or a video")
    ap.add_argument("--check", type=Path, help="other photos to compare FP32 and INT8 on (default: --calib)")
    ap.add_argument("--model", default="efficientnet-lite0", help="a pretrained name or an edgecnn FP32 .onnx")
    ap.add_argument("--out", default=Path("runs/lite0"), type=Path)
    ap.add_argument("--images", default=200, type=int, help="calibration images to use")
    args = ap.parse_args()

    from edgecnn.data import list_images, read_image
    from edgecnn.evaluate import agreement
    from edgecnn.quant import OutputPolicy, QuantOptions, quantize
    from edgecnn.runtime import load
    from edgecnn.zoo import open_model

    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.model).name.split(".")[0]
    int8, cache = args.out / f"{stem}.int8.onnx", args.out / f"{stem}.calib"
    result = quantize(
        args.model,
        int8,
        args.calib,
        QuantOptions(target="tensorrt", method="entropy", num_images=args.images),
        progress=lambda stage, done, total: print(f"\r{stage} {done}/{total or '?'}", end="", flush=True),
        output=OutputPolicy(cache=cache),
    )
    print(f"\nwrote {int8} and {cache}")
    print({k: v for k, v in result.items() if isinstance(v, (int, float, str))})

    frames = [read_image(p) for p in list_images(args.check or args.calib)[:64]]
    with open_model(args.model) as fp32, load(int8) as q:
        agree = agreement(fp32.infer_frames(frames), q.infer_frames(frames))
    print(
        f"FP32 vs INT8 on {len(frames)} photos: top-1 agreement {agree['top1_agreement']:.1%}, "
        f"cosine {agree['cosine_mean']:.4f}, max |Δlogit| {agree['max_abs_diff']:.3f}"
    )


if __name__ == "__main__":
    main()
