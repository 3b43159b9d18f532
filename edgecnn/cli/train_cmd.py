"""`edgecnn train`: parse options into a TrainConfig, call `edgecnn.train.fit`, draw its progress."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from edgecnn.cli.common import add_command, console, force_option, json_option, plural, print_json, progress_bar, warn


def parse_arch_opts(items: list[str]) -> dict:
    """KEY=VALUE pairs -> builder kwargs; values are read as JSON when they parse (0.5, true, 3), else as text."""
    from edgecnn.errors import UserInputError

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--arch-opt expects KEY=VALUE (e.g. width_mult=0.5), got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def given_options(ctx: typer.Context) -> frozenset[str]:
    """The TrainConfig fields typed on the command line (not left at their defaults): with --resume these are
    checked against the resumed run's settings, the others are taken from it."""
    names = {"arch_opt": "arch_kwargs"}
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            given.add(names.get(name, name))
    return frozenset(given)


def train(
    ctx: typer.Context,
    data: Path = typer.Argument(
        ...,
        help="Image folder: one sub-folder per class, or train/ beside val/ and/or test/ (val/ validates, else test/).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Best checkpoint (.pt); metrics CSV/JSON and curves PNG go next to it."
    ),
    arch: Optional[str] = typer.Option(
        None,
        "--arch",
        "-a",
        help="Architecture from `edgecnn models` (default cifar-cnn; taken from the checkpoint with --resume).",
    ),
    epochs: int = typer.Option(
        10,
        "--epochs",
        "-e",
        help="Epochs in total (with --resume: including those done; default there: the run's own).",
    ),
    batch_size: int = typer.Option(128, "--batch-size", "-b", help="Images per step (per process under torchrun)."),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Peak learning rate (default: 2e-3 AdamW, 0.1 SGD; 5e-4 / 0.01 with --pretrained)."
    ),
    img_size: Optional[int] = typer.Option(
        None,
        "--img-size",
        help="Square input size; only the size changes, the model's mean/std and resize policy stay.",
    ),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation folder (same class names)."),
    val_split: Optional[float] = typer.Option(
        None, "--val-split", help="Hold out this fraction of each class (0: no validation)."
    ),
    pretrained: bool = typer.Option(
        False,
        "--pretrained",
        help="Start from the registered pretrained weights (transfer learning: new classifier for DATA's classes).",
    ),
    resume: Optional[Path] = typer.Option(
        None,
        "--resume",
        help="Continue a run from its checkpoint (weights, optimizer, epoch, settings): its .last.pt; "
        "with the same --out it continues in place.",
    ),
    patience: Optional[int] = typer.Option(
        None, "--patience", help="Early stopping: stop after N epochs without a better validation accuracy."
    ),
    time_budget: Optional[float] = typer.Option(
        None,
        "--time-budget",
        help="Minutes of training: training stops when they are spent, and the LR schedule follows the "
        "clock or the epochs, whichever ends first.",
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="Threads decoding images (default: all cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, shuffling, augmentation and initialisation."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd (Nesterov momentum 0.9)."),
    schedule: str = typer.Option("onecycle", "--schedule", help="onecycle or cosine (with warm-up)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Default 0.05 (AdamW) / 5e-4 (SGD)."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random crop with padding + horizontal flip."),
    crop_pad: Optional[int] = typer.Option(
        None, "--crop-pad", help="Random-crop padding in px (default 1/8 of the side: 4 at 32×32)."
    ),
    arch_opt: Optional[list[str]] = typer.Option(
        None,
        "--arch-opt",
        help="Builder option KEY=VALUE, repeatable (e.g. width_mult=0.5); not num_classes: the class folders set it.",
    ),
    force: bool = force_option("Replace an earlier run's checkpoint and side files at --out."),
    json_out: bool = json_option("Print the training summary as JSON only, on stdout."),
):
    """Train a zoo network on an image folder; writes the best checkpoint, metrics and a training-curve plot.

    Under `torchrun --nproc_per_node N` it trains with DistributedDataParallel (gloo on CPU, nccl on CUDA).
    """
    import os

    from edgecnn.errors import EdgeCNNError, UserInputError
    from edgecnn.train import TrainConfig, fit

    if arch is None and resume is None:
        arch = "cifar-cnn"
    if resume is not None and pretrained:
        raise UserInputError("--pretrained starts a new run; with --resume the weights come from the checkpoint")
    cfg = TrainConfig(
        data=data,
        arch=arch or "",
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        img_size=img_size,
        val=val,
        val_split=val_split,
        pretrained=pretrained,
        resume=resume,
        patience=patience,
        time_budget=time_budget,
        workers=workers,
        seed=seed,
        optimizer=optimizer,
        schedule=schedule,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        augment=augment,
        crop_pad=crop_pad,
        arch_kwargs=parse_arch_opts(arch_opt or []),
        force=force,
        given=given_options(ctx),
    )
    quiet = int(os.environ.get("RANK", "0")) != 0  # under torchrun only rank 0 talks
    with contextlib.ExitStack() as stack:
        bars: list = []

        def update(*args, **kwargs) -> None:  # the bar appears with the first report, not before a quick error
            if not bars:
                bars.append(stack.enter_context(progress_bar("training", disable=quiet)))
            bars[0](*args, **kwargs)

        def on_progress(ev) -> None:
            if ev.phase == "decode":
                update(ev.step, total=ev.steps, description=f"decoding {ev.split}")
            elif ev.phase == "train":
                update(
                    ev.step,
                    total=ev.steps,
                    description=f"epoch {ev.epoch}/{ev.epochs}",
                    info=f"loss {ev.loss:.3f}  acc {ev.acc:6.1%}  {ev.images_per_s:,.0f} img/s",
                )
            elif ev.phase == "warning":
                warn(ev.message)
            elif ev.phase == "epoch":
                m = ev.metrics
                if m.get("steps"):  # the bar ends full, with no ETA left: a cut-short epoch ends where it stopped
                    update(m["steps"], total=m["steps"])
                val_txt = (
                    f"val loss {m['val_loss']:.3f}  val acc {m['val_acc']:6.1%}"
                    if m["val_acc"] is not None
                    else "no validation"
                )
                mark = "  [green]best[/]" if m.get("improved") and m["val_acc"] is not None else ""
                console.print(
                    f"epoch {ev.epoch:3d}/{ev.epochs}  loss {m['train_loss']:.3f}  acc {m['train_acc']:6.1%}  "
                    f"{val_txt}  {m['images_per_s']:,.0f} img/s  {m['seconds']:.1f} s{mark}"
                )

        try:
            result = fit(cfg, progress=on_progress)
        except EdgeCNNError as exc:
            if quiet:  # every rank meets the same error: rank 0 alone prints it (the exit code stays)
                raise typer.Exit(exc.exit_code) from exc
            raise
    if quiet:
        return
    if sum(result.corrupt.values()):
        warn(
            f"skipped {sum(result.corrupt.values())} unreadable image(s) "
            f"(train {result.corrupt['train']}, val {result.corrupt['val']}), e.g. {result.corrupt_examples[0]}"
        )
    if json_out:
        print_json(result.to_dict())
        return
    best = (
        f"{result.best_val_acc:.2%} at epoch {result.best_epoch}"
        if result.best_val_acc is not None
        else "no validation"
    )
    stop = " (early stop)" if result.stopped_early else " (time budget spent)" if result.out_of_time else ""
    if result.partial_epoch:
        stop = f" (the time budget ran out part way through epoch {result.epochs_run})"
    console.print(
        f"[bold]{result.arch}[/] on {result.num_train} images, {len(result.classes)} classes: best {best}, "
        f"{plural(result.epochs_completed, 'epoch')}{stop} in {result.train_seconds:.0f} s, "
        f"{result.images_per_s:,.0f} img/s"
    )
    console.print(f"checkpoint {result.checkpoint}  (last: {result.last_checkpoint})", markup=False)
    console.print(f"metrics {result.metrics_csv}, {result.metrics_json}; curves {result.plot}", markup=False)


def register(app: typer.Typer) -> None:
    add_command(app, "train", train)
