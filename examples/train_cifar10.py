"""Train the CIFAR-10 tutorial CNN from Python, export it to ONNX and measure it on ONNX Runtime.

    python examples/train_cifar10.py --data path/to/cifar10 --epochs 5 --out runs/cifar

`--data` is a folder with train/ and test/ class sub-folders (the workplace's cifar10-jpg.tar.gz unpacks to one).
The same steps as `edgecnn train`, `edgecnn export` and `edgecnn eval`, through the library API.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="CIFAR-10 folder with train/ and test/")
    ap.add_argument("--out", default=Path("runs/cifar"), type=Path, help="output folder")
    ap.add_argument("--epochs", default=5, type=int)
    ap.add_argument("--arch", default="cifar-cnn", help="any `edgecnn models` name")
    ap.add_argument("--force", action="store_true", help="replace an earlier run in --out")
    args = ap.parse_args()

    from edgecnn.evaluate import evaluate
    from edgecnn.export import ExportOptions, export_onnx
    from edgecnn.runtime import load
    from edgecnn.train import TrainConfig, fit

    def progress(p):  # fit() never prints: it reports through this callback
        if p.phase == "epoch" and p.metrics:
            print(
                f"epoch {p.epoch}/{p.epochs}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in p.metrics.items() if isinstance(v, float))
            )

    result = fit(
        TrainConfig(data=args.data, arch=args.arch, out=args.out / "model.pt", epochs=args.epochs, force=args.force),
        progress,
    )
    print(f"best validation accuracy {result.best_val_acc} at epoch {result.best_epoch}; curves: {result.plot}")

    onnx_path = args.out / "model.onnx"
    report = export_onnx(result.checkpoint, onnx_path, ExportOptions(dynamic_batch=True, force=args.force))
    print(f"exported {onnx_path} (max abs diff vs PyTorch {report.max_abs_diff:.1e})")

    test_dir = args.data / "test" if (args.data / "test").is_dir() else args.data
    with load(onnx_path) as runner:  # ONNX Runtime on the CPU: no PyTorch needed from here on
        metrics = evaluate(runner, test_dir)
    print(f"ONNX Runtime: top-1 {metrics['top1']:.2%}, top-5 {metrics['top5']:.2%} on {metrics['images']} images")


if __name__ == "__main__":
    main()
