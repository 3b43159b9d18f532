"""Package a model for a Jetson from Python, and write its Triton and DeepStream configs.

    python examples/deploy_bundle.py model.onnx --out runs/deploy --device orin-nano --source csi://0

Makes runs/deploy/<name>.tar.gz (copy it to the device, then `edgecnn deploy install <name>.tar.gz --service`),
runs/deploy/triton/ (serve with `tritonserver --model-repository runs/deploy/triton`) and runs/deploy/deepstream/.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an edgecnn .onnx (or a pretrained name)")
    ap.add_argument("--out", default=Path("runs/deploy"), type=Path)
    ap.add_argument("--device", default=None, help="build-engine preset: orin-nano, orin-nx, agx-orin, ...")
    ap.add_argument("--source", default="0", help="the camera on the device: 0, /dev/video0, csi://0, rtsp://...")
    args = ap.parse_args()

    from edgecnn.deploy.bundle import BundleOptions, create_bundle
    from edgecnn.deploy.deepstream import DeepStreamOptions, write_deepstream
    from edgecnn.deploy.triton import TritonOptions, write_repository
    from edgecnn.errors import UserInputError

    name = Path(str(args.model)).name.split(".")[0]
    bundle = create_bundle(
        args.model, args.out / f"{name}.tar.gz", BundleOptions(precision="fp16", device=args.device, source=args.source)
    )
    print(f"bundle {bundle.out} ({bundle.size_bytes / 1e6:.1f} MB), sha256 {bundle.sha256}")

    triton = write_repository(args.model, args.out / "triton", TritonOptions(force=True))
    print(f"triton {triton.model_dir}: {triton.platform}, max_batch_size {triton.max_batch_size}")

    try:
        ds = write_deepstream(args.model, args.out / "deepstream", DeepStreamOptions())
    except UserInputError as exc:  # e.g. per-channel std: DeepStream has one scale factor
        print(f"deepstream: {exc}")
        ds = write_deepstream(args.model, args.out / "deepstream", DeepStreamOptions(approximate_std=True))
    print(f"deepstream {ds.out}: net-scale-factor {ds.net_scale_factor:.6g}, offsets {ds.offsets}")
    for warning in bundle.warnings + ds.warnings:
        print(f"note: {warning}")


if __name__ == "__main__":
    main()
