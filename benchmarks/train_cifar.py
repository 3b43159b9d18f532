"""Benchmark: train a zoo network on the CIFAR-10 JPEG copy with `edgecnn.train.fit` on this machine's CPU.

Extracts ../shared/data/cifar10-jpg.tar.gz into .cache/bench/ once, trains on train/ (50,000 images) and evaluates
on test/ (10,000 images) after every epoch, then writes a JSON record (machine, versions, command, per-epoch
metrics, accuracy, wall time, images/s) to benchmarks/results/. The cores are shared: run it under
`flock /tmp/edgecnn-bench.lock` so benchmarks never overlap, and read the load average recorded with the result.

    flock /tmp/edgecnn-bench.lock python benchmarks/train_cifar.py --arch cifar-cnn --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECNN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def cifar_dir() -> Path:
    target = ROOT / ".cache" / "bench"
    if not (target / "cifar10" / ".complete").exists():
        archive = SHARED / "cifar10-jpg.tar.gz"
        if not archive.is_file():
            sys.exit(f"{archive} not found: this benchmark needs the workplace's ../shared/data")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        (target / "cifar10" / ".complete").touch()
    return target / "cifar10"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cifar-cnn")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--crop-pad", type=int, default=None)
    ap.add_argument("--time-budget", type=float, default=None, help="minutes of training (schedule on the clock)")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--width-mult", type=float, default=None)
    ap.add_argument("--dropout", type=float, default=None)
    ap.add_argument("--train-limit", type=int, default=None, help="use only the first N training images (tuning)")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    args = ap.parse_args()

    import cv2
    import numpy as np
    import torch

    from edgecnn.train import TrainConfig, fit

    data = cifar_dir()
    if args.train_limit:  # a stratified subset for quick tuning runs, as a folder of links
        sub = ROOT / ".cache" / "bench" / f"cifar10-sub{args.train_limit}"
        if not sub.exists():
            for split in ("train", "test"):
                for cls in sorted((data / split).iterdir()):
                    files = sorted(cls.glob("*.jpg"))
                    keep = files[: args.train_limit // 10] if split == "train" else files
                    (sub / split / cls.name).mkdir(parents=True, exist_ok=True)
                    for f in keep:
                        (sub / split / cls.name / f.name).symlink_to(f)
        data = sub

    arch_kwargs = {}
    if args.width_mult is not None:
        arch_kwargs["width_mult"] = args.width_mult
    if args.dropout is not None:
        arch_kwargs["dropout"] = args.dropout
    name = f"{args.arch}-{args.epochs}ep{('-' + args.tag) if args.tag else ''}"
    out_dir = ROOT / ".cache" / "bench" / "runs"
    cfg = TrainConfig(
        data=data,
        arch=args.arch,
        out=out_dir / f"{name}.pt",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        augment=not args.no_augment,
        crop_pad=args.crop_pad,
        time_budget=args.time_budget,
        channels_last=not args.no_channels_last,
        arch_kwargs=arch_kwargs,
        force=True,  # a benchmark re-run replaces its own scratch checkpoint under .cache/bench
    )
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    decode_done = {}
    load_per_epoch = []  # 1-minute load average at each epoch end: how busy the shared cores were

    def progress(ev):
        if ev.phase == "decode" and ev.step == ev.steps:
            decode_done[ev.split] = time.perf_counter() - t0
        if ev.phase == "epoch":
            m = ev.metrics
            load_per_epoch.append(round(os.getloadavg()[0], 2))
            print(
                f"epoch {ev.epoch:2d}/{ev.epochs}  loss {m['train_loss']:.3f}  train {m['train_acc']:.3f}  "
                f"test {m['val_acc']:.4f}  {m['images_per_s']:.0f} img/s  {m['seconds']:.1f} s  "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )

    result = fit(cfg, progress=progress)
    wall = time.perf_counter() - t0
    record = {
        "benchmark": "train_cifar",
        "command": "flock /tmp/edgecnn-bench.lock python " + " ".join(shlex.quote(a) for a in sys.argv),
        "arch": args.arch,
        "arch_kwargs": arch_kwargs,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "epochs": result.epochs_run,
        "time_budget_min": args.time_budget,
        "out_of_time": result.out_of_time,
        "batch_size": args.batch_size,
        "lr": cfg.resolved_lr(),
        "optimizer": cfg.optimizer,
        "train_images": result.num_train,
        "test_images": result.num_val,
        "final_test_acc": result.final_val_acc,
        "best_test_acc": result.best_val_acc,
        "train_seconds": result.train_seconds,
        "decode_seconds": round(decode_done.get("val", decode_done.get("train", 0.0)), 1),
        "wall_seconds": round(wall, 1),
        "train_images_per_s": result.images_per_s,
        "history": result.history,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "loadavg_per_epoch": load_per_epoch,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
    }
    try:
        model_name = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
        record["machine"]["cpu"] = model_name
    except (OSError, StopIteration):
        pass
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"train_cifar-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: record[k]
                for k in (
                    "arch",
                    "final_test_acc",
                    "train_seconds",
                    "wall_seconds",
                    "train_images_per_s",
                    "decode_seconds",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
