"""What a training run is given and gives back: `TrainConfig`, `TrainProgress`, `TrainResult`, and the file names
beside a run's checkpoint. Their own module so that train.py, train_data.py and train_resume.py share them without
importing each other back."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from edgecnn.preprocess import PreprocessConfig

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine")
DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.1}
PRETRAINED_LR = {"adamw": 5e-4, "sgd": 0.01}


@dataclass
class TrainConfig:
    """Everything `fit()` needs. Paths may be str or Path.

    data:          image folder (class sub-folders), or a folder with train/ beside val/ (valid/, validation/)
                   and/or test/. val/ validates; without it test/ does (with a warning: the best epoch is then
                   chosen on it).
    arch:          registry name (`edgecnn models`).
    out:           best checkpoint path (.pt); `<stem>.last.pt`, `.metrics.csv`, `.metrics.json`, `.curves.png` go
                   next to it.
    img_size:      input size (square); replaces only the size of the model's preprocessing (mean/std, resize policy
                   and channel order stay the model's own, which is what a pretrained backbone needs).
    val / val_split: validation folder, or the fraction of each class held out. Default: the val/ (else test/)
                   folder beside train/, else 10 % of the training folder. `val_split=0` trains without validation
                   (then the last epoch is the checkpoint and early stopping is off).
    batch_size:    per process (as with DistributedSampler).
    patience:      stop after this many epochs without a better validation accuracy (None: never).
    time_budget:   minutes of training (evaluation excluded). The learning-rate schedule then runs on the clock
                   instead of the step count, so a slower (or busier) machine still gets a fully annealed model
                   when the time is up; `epochs` stays the upper bound.
    arch_kwargs:   extra builder arguments, e.g. {"width_mult": 0.5}.
    resume:        continue an earlier run from its checkpoint (normally its `.last.pt`). The run's settings
                   (RESUMED_SETTINGS: optimizer, learning rate, batch size, seed, split, augmentation ...) come from
                   the checkpoint, so the continuation is exact; setting one of them to another value is an error.
                   `epochs`, `patience` and `time_budget` may change. With `out` = the earlier run's `out`, the run
                   continues in place.
    force:         replace an earlier run's files at `out` (the checkpoint and its side files); without it they are
                   refused, so a new run that fails can never destroy a good model.
    given:         the settings the caller chose explicitly (the CLI: the options typed on the command line); None
                   means the fields that differ from their defaults. Only resume uses it.
    """

    data: str | os.PathLike
    arch: str
    out: str | os.PathLike
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    img_size: int | None = None
    val: str | os.PathLike | None = None
    val_split: float | None = None
    pretrained: bool = False
    resume: str | os.PathLike | None = None
    patience: int | None = None
    workers: int | None = None
    seed: int = 0
    optimizer: str = "adamw"
    weight_decay: float | None = None
    label_smoothing: float = 0.1
    schedule: str = "onecycle"
    warmup: float = 0.2  # fraction of all steps spent warming up
    augment: bool = True
    crop_pad: int | None = None  # random-crop padding in px (None: 1/8 of the side, 4 px at 32×32)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = True
    device: str | None = None  # None: CUDA when available, else CPU
    time_budget: float | None = None  # minutes of training; the schedule follows the clock and training stops there
    force: bool = False
    given: frozenset[str] | None = None

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return (PRETRAINED_LR if self.pretrained else DEFAULT_LR)[self.optimizer]

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 0.05 if self.optimizer == "adamw" else 5e-4


@dataclass
class TrainProgress:
    """One progress report. phase: 'decode' (step/steps = files), 'train' (step/steps = batches of this epoch),
    'epoch' (an epoch finished: `metrics` holds its row), 'warning' (`message`; also in TrainResult.warnings)."""

    phase: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    acc: float | None = None
    images_per_s: float | None = None
    split: str = ""
    metrics: dict | None = None
    message: str = ""  # phase 'warning': something the user should know, reported when it is found


ProgressCallback = Callable[[TrainProgress], None]


@dataclass
class TrainResult:
    checkpoint: Path
    last_checkpoint: Path
    metrics_csv: Path
    metrics_json: Path
    plot: Path
    arch: str
    classes: list[str]
    preprocess: PreprocessConfig
    num_train: int
    num_val: int
    corrupt: dict[str, int]
    corrupt_examples: list[str]
    epochs_run: int
    best_epoch: int
    best_val_acc: float | None
    final_val_acc: float | None
    stopped_early: bool
    out_of_time: bool
    train_seconds: float
    images_per_s: float
    world_size: int
    history: list[dict]
    warnings: list[str] = field(default_factory=list)
    epochs_completed: float = 0.0  # epochs_run counts a partial last epoch as one; this counts its share
    partial_epoch: bool = False  # the time budget ended the last epoch part way
    model: Any = field(default=None, repr=False)  # the trained torch module (best weights not reloaded)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(replace(self, model=None)).items() if k != "model"}
        d["preprocess"] = self.preprocess.to_dict()
        for key in ("checkpoint", "last_checkpoint", "metrics_csv", "metrics_json", "plot"):
            d[key] = str(d[key])
        return d


def side_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Files written next to the best checkpoint `out`."""
    out = Path(out)
    stem = out.with_suffix("")
    return {
        "last": Path(f"{stem}.last.pt"),
        "csv": Path(f"{stem}.metrics.csv"),
        "json": Path(f"{stem}.metrics.json"),
        "plot": Path(f"{stem}.curves.png"),
    }
