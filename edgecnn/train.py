"""Training: `fit(TrainConfig, progress=callback) -> TrainResult`. No printing; the CLI draws the progress bar.

Pipeline, and why:
- Data is an image folder (one sub-folder per class; train/ beside val/ or test/ is recognised: val/ validates
  when present, else test/, with a warning; see `data.find_training_splits`). Every image is decoded
  ONCE with OpenCV and brought to the model's input size by `preprocess.geometric()` (`data.decode_resized`), so the
  epochs run from uint8 arrays in memory: no per-epoch JPEG decoding, which would dominate on a small CPU.
- Per batch: augmentation on uint8 (random crop with padding, horizontal flip; `edgecnn.augment`) and then
  `preprocess.normalize()`. Evaluation skips the augmentation, so the evaluation input is exactly `preprocess()` —
  the same transform export, prediction, calibration and the camera loop use.
- One-cycle (or warm-up + cosine) learning rate, AdamW (or SGD + Nesterov), label smoothing, early stopping on
  validation accuracy, the best checkpoint written atomically, the last one too (for --resume), per-epoch metrics as
  CSV + JSON and a PNG of the curves next to the output.
- Under `torchrun` (RANK / WORLD_SIZE set) the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on
  CUDA); each process trains on its own shard of every epoch (DistributedSampler semantics: `batch_size` is per
  process) and rank 0 alone writes files and reports progress.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgecnn.augment import random_crop_flip
from edgecnn.checkpoint import check_finite_weights, read_checkpoint, save_checkpoint
from edgecnn.contract import ModelContract
from edgecnn.errors import EdgeCNNError, UserInputError, require_torch
from edgecnn.files import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_output_file,
    ensure_distinct,
    prepare_output_folder,
    raise_storage_error,
    remove_created,
    same_file,
)
from edgecnn.models.registry import count_parameters, create_model, get_entry, pretrained_models
from edgecnn.preprocess import PreprocessConfig, normalize
from edgecnn.train_data import decode_data, plan_data
from edgecnn.train_resume import check_resumable, check_same_split, continues_in_place, is_best_of, resumed_config
from edgecnn.train_types import (  # noqa: F401 (TrainConfig, TrainResult, ... are edgecnn.train's API)
    DEFAULT_LR,
    OPTIMIZERS,
    PRETRAINED_LR,
    SCHEDULES,
    ProgressCallback,
    TrainConfig,
    TrainProgress,
    TrainResult,
    side_paths,
)

# ---------------------------------------------------------------- data


def eval_inputs(images: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """What evaluation feeds the model: the decoded, resized uint8 images normalized, no augmentation.

    Equal to `preprocess(original_frames, cfg)` because decoding went through `preprocess.geometric()`.
    """
    return normalize(images, cfg)


def train_inputs(
    images: np.ndarray,
    cfg: PreprocessConfig,
    rng: np.random.Generator,
    augment: bool = True,
    crop_pad: int | None = None,
) -> np.ndarray:
    """What a training step feeds the model: augmentation on uint8, then the same `normalize()`."""
    return normalize(random_crop_flip(images, rng, pad=crop_pad) if augment else images, cfg)


# ---------------------------------------------------------------- distributed


@dataclass
class _Dist:
    """Process-group facts; inactive (rank 0 of 1) outside torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, torch, device_type: str) -> "_Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
            owns = True
        return cls(
            rank=dist.get_rank(),
            world=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size()))),
            owns_group=owns,
        )

    def all_sum(self, torch, values: list[float]) -> list[float]:
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def sync_buffers(self, model) -> None:
        """Give every rank rank 0's BatchNorm statistics. DDP broadcasts buffers at the start of each forward, so
        after the last step each rank still holds its own last update; evaluation and the checkpoint want one model."""
        if self.active:
            import torch.distributed as dist

            for buf in model.buffers():
                dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def _shard(n: int, epoch: int, seed: int, dist: _Dist) -> np.ndarray:
    """This process's sample order for `epoch`: one permutation shared by all ranks, padded to a multiple of the
    world size and dealt round-robin (what DistributedSampler does), so every rank runs the same number of steps."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if dist.world > 1:
        pad = (-n) % dist.world
        order = np.concatenate([order, order[:pad]])
        order = order[dist.rank :: dist.world]
    return order


# ---------------------------------------------------------------- schedule


def learning_rate(step: int, total: int, peak: float, schedule: str, warmup: float) -> float:
    """LR at `step` of `total`. onecycle: cosine up from peak/25 over the warm-up fraction, cosine down to peak/1e4
    (OneCycleLR's shape); cosine: linear warm-up from 0, then cosine to 0. A closed form, so resuming needs only
    the step number (no scheduler state to pickle)."""
    total = max(1, total)
    warm = int(round(warmup * total))
    if schedule == "onecycle":
        start, end = peak / 25.0, peak / 1e4
        if step < warm:
            return start + (peak - start) * (1 - math.cos(math.pi * step / warm)) / 2
        t = (step - warm) / max(1, total - warm)
        return end + (peak - end) * (1 + math.cos(math.pi * min(1.0, t))) / 2
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (1 + math.cos(math.pi * min(1.0, t))) / 2


# ---------------------------------------------------------------- outputs


def _plain(value):
    """A config value as plain JSON: paths as text, sets (the options given) as sorted lists, not "frozenset(...)"."""
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value


METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "seconds", "partial")


def epochs_completed(history: list[dict]) -> float:
    """Epochs trained, counting an epoch the time budget cut short by the share of its steps that ran (1.4, not 2)."""
    done = 0.0
    for row in history:
        steps, planned = row.get("steps"), row.get("steps_planned")
        done += steps / planned if row.get("partial") and steps and planned else 1.0
    return round(done, 2)


def _write_metrics(history: list[dict], paths: dict[str, Path], summary: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_json(paths["json"], {"summary": summary, "epochs": history})
    _plot(history, paths["plot"])


def _plot(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train vs validation, as a PNG at `path` (written atomically)."""
    fig = _curves_figure(history)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _curves_figure(history: list[dict]):
    """The curves as a matplotlib Figure (the object API: no global pyplot state); epochs are whole-number ticks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, title in ((ax_loss, "loss", "loss (train: with label smoothing)"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        val = [r.get(f"val_{key}") for r in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [np.nan if v is None else v for v in val], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 0.5, 1.5 ticks
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- fit


def _validate(cfg: TrainConfig) -> None:
    """Every option checked before any work: a bad one costs the user no decoding and no training time."""
    if cfg.epochs < 1:
        raise UserInputError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UserInputError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.weight_decay is not None and not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UserInputError(f"--weight-decay must be a number >= 0, got {cfg.weight_decay}")
    if cfg.img_size is not None and cfg.img_size < 8:
        raise UserInputError(f"--img-size must be at least 8, got {cfg.img_size}")
    if cfg.val is not None and cfg.val_split is not None:
        raise UserInputError("Give either --val DIR or --val-split F, not both")
    if cfg.val_split is not None and not 0.0 <= cfg.val_split < 1.0:
        raise UserInputError(f"--val-split must be in [0, 1), got {cfg.val_split}")
    if cfg.crop_pad is not None and cfg.crop_pad < 0:
        raise UserInputError(f"crop padding must be >= 0, got {cfg.crop_pad}")
    if cfg.time_budget is not None and not (math.isfinite(cfg.time_budget) and cfg.time_budget > 0):
        raise UserInputError(f"--time-budget must be a positive number of minutes, got {cfg.time_budget}")
    if cfg.patience is not None and cfg.patience < 1:
        raise UserInputError(f"--patience must be at least 1, got {cfg.patience}")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserInputError(f"--workers must be at least 1, got {cfg.workers} (leave it out to use every core)")
    if cfg.optimizer not in OPTIMIZERS:
        raise UserInputError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise UserInputError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if "num_classes" in cfg.arch_kwargs:  # it would be replaced silently by the number of class folders
        raise UserInputError(
            f"--arch-opt num_classes={cfg.arch_kwargs['num_classes']}: the number of classes comes from "
            "the class folders of the data; drop it"
        )
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserInputError(f"label smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _validate_paths(cfg)


def _validate_paths(cfg: TrainConfig) -> None:
    """Inputs exist; outputs can be written, are no input, and replace no earlier run's files without --force."""
    out = Path(cfg.out)
    if out.is_dir():
        raise UserInputError(f"--out {out} is a folder: give a checkpoint file path such as {out / 'model.pt'}")
    if out.suffix != ".pt":
        raise UserInputError(f"--out {out} must end in .pt (a PyTorch checkpoint; `edgecnn export` makes ONNX)")
    check_output_file(out, "--out")
    if not Path(cfg.data).exists():
        raise UserInputError(f"Data folder {cfg.data} does not exist")
    if cfg.val is not None and not Path(cfg.val).is_dir():
        raise UserInputError(f"--val {cfg.val} is not a folder (expected one sub-folder per class)")
    for flag, folder in (("data folder", cfg.data), ("--val folder", cfg.val)):
        if folder is not None and out.resolve().is_relative_to(Path(folder).resolve()):
            raise UserInputError(f"--out {out} is inside the {flag} {folder}: write the model elsewhere")
    outputs = [out, *side_paths(out).values()]
    for path in outputs[1:]:
        if path.is_dir():
            raise UserInputError(
                f"{path} (written next to --out {out.name}) is a folder: move it, or choose another --out"
            )
    in_place = continues_in_place(cfg)
    if cfg.resume is not None:
        if Path(cfg.resume).is_dir():
            raise UserInputError(f"--resume {cfg.resume} is a folder: give the run's checkpoint file (NAME.last.pt)")
        if not Path(cfg.resume).is_file():
            raise UserInputError(f"--resume {cfg.resume} does not exist")
        for target in outputs:
            if not (in_place and target == side_paths(out)["last"]):
                ensure_distinct(cfg.resume, target)
    existing = [p for p in outputs if p.exists()]
    if existing and not cfg.force and not in_place:
        last = side_paths(out)["last"]
        hint = f", `--resume {last} --out {out}` to continue that run" if last.exists() else ""
        raise UserInputError(
            f"--out {out}: {', '.join(p.name for p in existing)} already exist (an earlier run): pass --force to "
            f"replace them{hint}, or choose another --out"
        )


_RESTARTED = Path("<the resumed weights>")  # best_source when the earlier best checkpoint was not found


def _check_input_size(torch, model, arch: str, pre: PreprocessConfig) -> None:
    """Run one tiny forward pass so an input size the network cannot take fails now, in one clear line."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, pre.height, pre.width))
    except RuntimeError as exc:
        raise UserInputError(
            f"{arch} cannot take {pre.height}×{pre.width} inputs ({str(exc).splitlines()[0][:160]}); "
            f"its default input size is given by `edgecnn models`"
        ) from exc


def _param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _resolve_model_spec(
    cfg: TrainConfig, ckpt: dict | None
) -> tuple[str, dict, PreprocessConfig, list[str] | None, str | None]:
    """(arch, arch_kwargs, preprocessing, classes or None, pretrained source): from the checkpoint when resuming,
    else from the registry entry, with --img-size replacing only the input size."""
    if ckpt is not None:
        arch = ckpt["arch"]
        contract = ModelContract.from_dict(ckpt["contract"])
        pre = contract.preprocess
        if cfg.arch and cfg.arch != arch:
            raise UserInputError(f"--resume checkpoint is a {arch}, not {cfg.arch}: drop --arch or match it")
        if cfg.img_size and (cfg.img_size, cfg.img_size) != pre.input_size:
            raise UserInputError(
                f"--resume checkpoint takes {pre.height}×{pre.width} inputs, not --img-size {cfg.img_size}"
            )
        built_with = {k: v for k, v in ckpt["arch_kwargs"].items() if k != "num_classes"}
        if cfg.arch_kwargs and cfg.arch_kwargs != built_with:
            raise UserInputError(
                f"--resume checkpoint's {arch} was built with {built_with or 'no options'}, not "
                f"--arch-opt {cfg.arch_kwargs}: drop --arch-opt to continue it"
            )
        return (
            arch,
            dict(ckpt["arch_kwargs"]),
            pre,
            contract.labels,
            (ckpt.get("training") or {}).get("pretrained_from"),
        )
    entry = get_entry(cfg.arch)
    if cfg.pretrained and not entry.pretrained:
        raise UserInputError(f"{cfg.arch} has no pretrained weights (pretrained: {', '.join(pretrained_models())})")
    pre = entry.preprocess
    if cfg.img_size:
        pre = replace(pre, input_size=(cfg.img_size, cfg.img_size))
    return cfg.arch, dict(cfg.arch_kwargs), pre, None, cfg.arch if cfg.pretrained else None


class _Run:
    """One training run: model, optimizer and data set up once, then `epoch()` until done. Holds the state a
    checkpoint must carry for an exact resume (epoch, history, best, patience counter, optimizer)."""

    def __init__(self, cfg: TrainConfig, ckpt: dict | None, dist: _Dist, report: ProgressCallback | None, torch):
        """Set-up in named stages, in this order. Everything that can be refused is refused before the images are
        decoded (the slow part): the split, the model options and input size, the resumed state."""
        self.cfg, self.dist, self.report, self.torch = cfg, dist, report, torch
        self.warnings: list[str] = []
        extra = (ckpt or {}).get("extra") or {}
        ckpt_classes = self._set_up_device_and_model_spec(ckpt)
        self._restore_clock(ckpt, extra)
        plan = self._plan_split(ckpt, ckpt_classes)
        self.model = self._build_model(ckpt)
        self.train, self.val, self.corrupt, self.corrupt_examples = decode_data(plan, cfg, self.pre, report)
        self._make_optimizer()
        self._restore_progress(ckpt, extra)
        self._wrap_for_ranks()

    def _set_up_device_and_model_spec(self, ckpt: dict | None) -> list[str] | None:
        """The device, the architecture with its options and preprocessing; returns the resumed run's classes."""
        cfg, torch, dist = self.cfg, self.torch, self.dist
        self.device_type = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda_index = f":{dist.local_rank}" if self.device_type == "cuda" and dist.active else ""
        self.device = torch.device(self.device_type + cuda_index)
        self.arch, self.arch_kwargs, self.pre, ckpt_classes, self.pretrained_from = _resolve_model_spec(cfg, ckpt)
        if cfg.crop_pad is not None and cfg.crop_pad >= min(self.pre.height, self.pre.width):
            raise UserInputError(
                f"--crop-pad {cfg.crop_pad} must be smaller than the {self.pre.height}×{self.pre.width} "
                "input (random crops shift an image by at most that many pixels)"
            )
        return ckpt_classes

    def _restore_clock(self, ckpt: dict | None, extra: dict) -> None:
        """The metrics history and training time so far (a resumed run's), the time budget, and whether the resumed
        checkpoint can be continued at all."""
        self.history: list[dict] = list(extra.get("history", []))
        self.train_seconds = sum(r["seconds"] for r in self.history)
        self.budget_s = (self.cfg.time_budget or 0) * 60.0
        if ckpt is not None:
            check_resumable(self.cfg, ckpt, self.train_seconds, self.dist.world)

    def _plan_split(self, ckpt: dict | None, ckpt_classes: list[str] | None):
        """Which files train and which validate (nothing decoded yet); a resumed run must see the same split."""
        cfg = self.cfg
        plan = plan_data(cfg, ckpt_classes, self._warn)
        self.classes, self.split_digest, self.val_root = plan.classes, plan.digest(), plan.val_root
        if ckpt is not None:
            check_same_split(cfg, ckpt, self.split_digest)
        self.arch_kwargs["num_classes"] = len(self.classes)
        return plan

    def _make_optimizer(self) -> None:
        cfg, torch = self.cfg, self.torch
        self.lr_peak = cfg.resolved_lr()
        groups = _param_groups(self.model, cfg.resolved_weight_decay())
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=self.lr_peak)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=self.lr_peak, momentum=0.9, nesterov=True)

    def _restore_progress(self, ckpt: dict | None, extra: dict) -> None:
        """Epoch, best and patience counter, optimizer state and the earlier best checkpoint of a resumed run."""
        cfg = self.cfg
        self.start_epoch = self.epoch = int(extra.get("epoch", 0))
        self.best_acc = extra.get("best_val_acc")
        self.best_epoch = int(extra.get("best_epoch", 0))
        self.bad_epochs = int(extra.get("bad_epochs", 0))
        self.best_source: Path | None = (
            None  # resume: the earlier run's best checkpoint, put at --out with the first save
        )
        if ckpt is not None:
            if "optimizer" not in extra:  # e.g. stripped to make the file smaller: the moments start from zero
                self._warn(
                    f"--resume {cfg.resume} holds no optimizer state: the {cfg.optimizer} optimizer starts "
                    "afresh, so this is not an exact continuation of the run"
                )
            else:
                try:
                    self.optimizer.load_state_dict(extra["optimizer"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise UserInputError(
                        f"--resume {cfg.resume}: its optimizer state does not fit this "
                        f"{cfg.optimizer} optimizer ({exc!r}); start a new run"
                    ) from exc
            self._find_earlier_best(ckpt)

    def _wrap_for_ranks(self) -> None:
        """The network each rank trains (DistributedDataParallel under torchrun), the loss, the steps per epoch."""
        cfg, torch, dist = self.cfg, self.torch, self.dist
        self.net = self.model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps_per_epoch = math.ceil(len(_shard(len(self.train.labels), 0, cfg.seed, self.dist)) / cfg.batch_size)
        self.stopped = self.out_of_time = False
        self.paths = side_paths(cfg.out)

    def _build_model(self, ckpt: dict | None):
        """The network for these classes (pretrained or resumed weights), after a forward pass at the input size."""
        torch, cfg = self.torch, self.cfg
        try:
            model = create_model(self.arch, pretrained=bool(cfg.pretrained and ckpt is None), **self.arch_kwargs)
        except TypeError as exc:
            raise UserInputError(f"{self.arch} does not take these options {sorted(cfg.arch_kwargs)}: {exc}") from exc
        except ValueError as exc:  # e.g. torch refusing a value
            raise UserInputError(f"{self.arch} with options {cfg.arch_kwargs}: {exc}") from exc
        _check_input_size(torch, model, self.arch, self.pre)
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.parameters = count_parameters(model)
        return model.to(device=self.device, memory_format=self.memory_format)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.report:
            self.report(TrainProgress("warning", message=message))

    def _find_earlier_best(self, ckpt: dict) -> None:
        """A resumed run's --out must hold the best model of the whole run, including the epochs before the resume,
        whose best weights are not in the `.last.pt`. They are in the earlier run's best checkpoint: --out itself when
        continuing in place, else `NAME.pt` beside `NAME.last.pt`. If that file is gone (or is from another run), the
        best restarts from the resumed weights, and the user is told. Either is written to --out only with the first
        epoch's files, so a resume interrupted before that leaves --out as it was."""
        extra = ckpt.get("extra") or {}
        out, resume = Path(self.cfg.out), Path(self.cfg.resume)
        in_place = continues_in_place(self.cfg)
        out_is_best = in_place and out.exists() and is_best_of(out, extra)  # read once, used twice
        if in_place and out.exists() and not out_is_best and not self.cfg.force:
            raise UserInputError(
                f"--out {out} is not the best checkpoint of the run in {resume} (another "
                "run's, or replaced since): pass --force to replace it, or choose another --out"
            )
        if self.best_acc is None:  # no validation: the checkpoint is simply the last epoch
            return
        if out_is_best:
            self.best_source = out
            return
        candidates = []
        if resume.name.endswith(".last.pt"):
            candidates.append(resume.with_name(resume.name[: -len(".last.pt")] + ".pt"))
        if resume.name.endswith(".pt") and self.best_epoch == self.start_epoch:
            candidates.append(resume)  # the resumed epoch was the best one
        candidates = [c for c in candidates if not (in_place and same_file(c, out))]  # --out was read above
        for cand in candidates:
            if is_best_of(cand, extra):
                self.best_source = cand
                return
        candidates = ([out] if in_place else []) + candidates
        last_acc = self.history[-1]["val_acc"] if self.history else None
        self._warn(
            f"the best checkpoint of the resumed run (epoch {self.best_epoch}, val acc {self.best_acc:.2%}) "
            f"is missing or is not that run's ({', '.join(str(c) for c in candidates) or 'no NAME.pt beside it'}): "
            f"the best is counted again from epoch {self.start_epoch}"
        )
        self.best_acc, self.best_epoch, self.bad_epochs = last_acc, self.start_epoch, 0
        best = {"best_val_acc": last_acc, "best_epoch": self.start_epoch}
        self.restarted_best = {
            **ckpt,
            "extra": {**extra, **best, "bad_epochs": 0},
            "training": {**(ckpt.get("training") or {}), **best},
        }
        self.best_source = _RESTARTED

    def _place_earlier_best(self) -> None:
        """Put the resumed run's best model at --out (see `_find_earlier_best`)."""
        import shutil

        out = Path(self.cfg.out)
        if self.best_source is _RESTARTED:  # the resumed weights, marked as the best so far
            with atomic_path(out, suffix=".pt") as tmp:
                self.torch.save(self.restarted_best, tmp)
        elif not same_file(self.best_source, out):
            with atomic_path(out, suffix=".pt") as tmp:
                shutil.copyfile(self.best_source, tmp)

    def _check_finite(self, row: dict) -> None:
        """Refuse to save a model with non-finite weights or outputs. The loss check in `train_epoch` sees each
        step's loss before its update, so the last update of an epoch (the only one when an epoch is one step) can
        diverge unseen; NaN outputs even score a validation accuracy (argmax of NaN is 0) and would become "best".
        The best checkpoint on disk stays the last good one."""
        torch, epoch = self.torch, row["epoch"]
        kept = f"; the best checkpoint so far (epoch {self.best_epoch}) is kept" if self.best_epoch else ""
        if row["val_loss"] is not None and not math.isfinite(row["val_loss"]):
            raise EdgeCNNError(
                f"Training diverged: validation loss {row['val_loss']} after epoch {epoch}{kept}. Lower --lr"
            )
        for name, value in self.model.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise EdgeCNNError(f"Training diverged: {name} is not finite after epoch {epoch}{kept}. Lower --lr")

    def _tensor(self, x: np.ndarray):
        return self.torch.from_numpy(x).to(device=self.device, memory_format=self.memory_format, non_blocking=True)

    def _lr(self, epoch: int, i: int, t0: float) -> float | None:
        """The learning rate of step i of `epoch`, or None when the time budget is spent. With a time budget the
        schedule runs on whichever ends first, the clock or the epochs (the larger fraction done), so the model is
        fully annealed at the end either way."""
        cfg = self.cfg
        step, total = (epoch - 1) * self.steps_per_epoch + i, self.steps_per_epoch * cfg.epochs
        if not cfg.time_budget:
            return learning_rate(step, total, self.lr_peak, cfg.schedule, cfg.warmup)
        spent = self.train_seconds + time.perf_counter() - t0
        spent = self.dist.all_sum(self.torch, [spent])[0] / self.dist.world  # one decision for all ranks
        if spent >= self.budget_s:
            return None
        done = max(spent / self.budget_s, step / total)
        return learning_rate(int(done * 100_000), 100_000, self.lr_peak, cfg.schedule, cfg.warmup)

    def train_epoch(self, epoch: int, prep_pool: ThreadPoolExecutor) -> dict | None:
        """One pass over this rank's shard; returns the epoch's metrics row (None if the budget ran out at once)."""
        torch, cfg, dist = self.torch, self.cfg, self.dist
        self.net.train()
        batches, prepare = self._epoch_batches(epoch)
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        steps = 0
        lr = self.optimizer.param_groups[0]["lr"]
        pending = prep_pool.submit(prepare, batches[0])
        for i in range(len(batches)):
            x_np, y_np = pending.result()
            if i + 1 < len(batches):
                pending = prep_pool.submit(prepare, batches[i + 1])
            lr = self._lr(epoch, i, t0)
            if lr is None:
                self.out_of_time = True
                break
            batch_loss, batch_correct = self._step(epoch, i, x_np, y_np, lr)
            steps += 1
            loss_sum += batch_loss * len(y_np)
            correct += batch_correct
            seen += len(y_np)
            if self.report:
                rate = seen * dist.world / max(time.perf_counter() - t0, 1e-9)
                self.report(
                    TrainProgress(
                        "train", epoch, cfg.epochs, i + 1, len(batches), loss_sum / seen, correct / seen, rate
                    )
                )
        loss_sum, correct, seen = dist.all_sum(torch, [loss_sum, correct, seen])
        dist.sync_buffers(self.model)
        if seen == 0:
            return None
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        if cfg.time_budget and not self.out_of_time:  # spent during this epoch's last step: stop now, not next epoch
            self.out_of_time = dist.all_sum(torch, [self.train_seconds])[0] / dist.world >= self.budget_s
        val_loss, val_acc = self.evaluate() if self.val is not None else (None, None)
        return {
            "epoch": epoch,
            "lr": lr if lr is not None else self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "images_per_s": seen / seconds,
            "seconds": seconds,
            # the time budget ended this epoch part way: a partial epoch, recorded as such (not as a full one)
            "partial": steps < len(batches),
            "steps": steps,
            "steps_planned": len(batches),
        }

    def _epoch_batches(self, epoch: int):
        """This rank's batches of `epoch` (index arrays) and `prepare(batch) -> (inputs, labels)`, which augments
        uint8 images into model inputs; it runs in the prefetch thread, so batch k+1 is prepared while batch k
        trains."""
        cfg, dist = self.cfg, self.dist
        order = _shard(len(self.train.labels), epoch, cfg.seed, dist)
        rng = np.random.default_rng([cfg.seed, dist.rank, epoch, 1])
        batches = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on one image
            batches.pop()

        def prepare(sel):
            sel = np.sort(sel)
            return train_inputs(self.train.images[sel], self.pre, rng, cfg.augment, cfg.crop_pad), self.train.labels[
                sel
            ]

        return batches, prepare

    def _step(self, epoch: int, i: int, x_np: np.ndarray, y_np: np.ndarray, lr: float) -> tuple[float, float]:
        """One optimizer step on a batch at learning rate `lr`: (its loss, its correct predictions). A step that
        diverges is an EdgeCNNError saying to lower --lr."""
        torch = self.torch
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self._tensor(x_np), torch.from_numpy(y_np).to(self.device)
        logits = self.net(x)
        loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        try:
            self.optimizer.step()
        except RuntimeError as exc:  # torch refuses an update beyond float range ("... without overflow")
            if "overflow" not in str(exc):
                raise
            raise EdgeCNNError(
                f"Training diverged (the update at epoch {epoch}, step {i + 1} overflows): lower --lr"
            ) from exc
        batch_loss = loss.item()
        if not math.isfinite(batch_loss):
            raise EdgeCNNError(f"Training diverged (loss {batch_loss} at epoch {epoch}, step {i + 1}): lower --lr")
        return batch_loss, (logits.argmax(1) == y).sum().item()

    def evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy) on the validation set: each rank takes its share, the sums are all-reduced.
        Inputs are `eval_inputs()` = `preprocess()` of the files, the transform every other stage uses."""
        torch, dist, val = self.torch, self.dist, self.val
        self.model.eval()
        idx = np.arange(len(val.labels))[dist.rank :: dist.world]
        loss_sum = correct = 0.0
        with torch.no_grad():
            for s in range(0, len(idx), 256):
                sel = idx[s : s + 256]
                logits = self.model(self._tensor(eval_inputs(val.images[sel], self.pre)))
                target = torch.from_numpy(val.labels[sel]).to(self.device)
                loss_sum += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
                correct += (logits.argmax(1) == target).sum().item()
        loss_sum, correct, count = dist.all_sum(torch, [loss_sum, correct, float(len(idx))])
        return loss_sum / max(1, count), correct / max(1, count)

    def record(self, row: dict) -> bool:
        """Add an epoch's metrics; update best / patience. Returns whether validation accuracy improved."""
        self.history.append(row)
        self.epoch = row["epoch"]
        val_acc = row["val_acc"]
        improved = val_acc is None or self.best_acc is None or val_acc > self.best_acc
        if improved:
            self.best_acc, self.best_epoch, self.bad_epochs = val_acc, row["epoch"], 0
        else:
            self.bad_epochs += 1
        self.stopped = self.cfg.patience is not None and val_acc is not None and self.bad_epochs >= self.cfg.patience
        return improved

    def summary(self) -> dict:
        """The training record stored in the checkpoint and metrics JSON (plain JSON types only, so a weights-only
        load accepts it)."""
        cfg, h = self.cfg, self.history
        secs = sum(r["seconds"] for r in h)
        return json.loads(
            json.dumps(
                {
                    "arch": self.arch,
                    "arch_kwargs": self.arch_kwargs,
                    "parameters": self.parameters,
                    "pretrained_from": self.pretrained_from,
                    "data": str(cfg.data),
                    "classes": self.classes,
                    "num_train": len(self.train.labels),
                    "num_val": 0 if self.val is None else len(self.val.labels),
                    "corrupt": self.corrupt,
                    "corrupt_examples": self.corrupt_examples,
                    "epochs_run": self.epoch,
                    "epochs_completed": epochs_completed(h),
                    "partial_epoch": bool(h and h[-1].get("partial")),
                    "epochs_planned": cfg.epochs,
                    "best_epoch": self.best_epoch,
                    "best_val_acc": self.best_acc,
                    "final_val_acc": h[-1]["val_acc"] if h else None,
                    "stopped_early": self.stopped,
                    "out_of_time": self.out_of_time,
                    "time_budget_min": cfg.time_budget,
                    "train_seconds": round(self.train_seconds, 2),
                    "images_per_s": round(sum(r["images_per_s"] * r["seconds"] for r in h) / secs, 1) if secs else 0.0,
                    "world_size": self.dist.world,
                    "device": self.device_type,
                    "resumed_from": str(cfg.resume) if cfg.resume else None,
                    "val_folder": str(Path(self.val_root).resolve()) if self.val_root is not None else None,
                    "split_digest": self.split_digest,
                    "config": {k: _plain(v) for k, v in asdict(cfg).items()},
                    "optimizer": cfg.optimizer,
                    "lr": self.lr_peak,
                    "batch_size": cfg.batch_size,
                    "schedule": cfg.schedule,
                    "torch": str(self.torch.__version__),
                    "cpu_threads": self.torch.get_num_threads(),
                },
                default=str,
            )
        )

    def save(self, target: Path, summary: dict) -> None:
        contract = ModelContract(
            labels=list(self.classes),
            preprocess=self.pre,
            arch=self.arch,
            provenance={
                "source": "edgecnn train",
                "data": str(self.cfg.data),
                "epochs": self.epoch,
                "best_val_acc": self.best_acc,
                "pretrained_from": self.pretrained_from,
            },
        )
        state = {
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best_val_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }
        try:
            save_checkpoint(target, self.model, self.arch, self.arch_kwargs, contract, training=summary, extra=state)
        except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError("... unexpected pos ...")
            kept = "the files of the epochs before are kept" if self.history[:-1] else "nothing was written"
            raise_storage_error(exc, [target], kept)  # a full disk, a read-only folder: StorageError (exit 74)
            raise EdgeCNNError(
                f"Could not write the checkpoint {target} ({str(exc).splitlines()[0][:160]}): is the "
                "disk full? The files of the epochs before are kept"
            ) from exc

    def _record_out_of_time(self) -> None:
        """The budget ran out before this epoch's first step, after the last epoch's files said 'not out of time':
        write them again (same weights, no step was taken) so the checkpoints and metrics say why training stopped."""
        if self.epoch == self.start_epoch:  # nothing was written yet; run() reports that
            return
        if self.dist.main:
            summary = self.summary()
            self.save(self.paths["last"], summary)
            if self.best_epoch == self.epoch:
                self.save(Path(self.cfg.out), summary)
            _write_metrics(self.history, self.paths, summary)
        self.dist.barrier()

    def run(self) -> TrainResult:
        """The epochs: train, check, record, write the files, report; then the result."""
        cfg = self.cfg
        with ThreadPoolExecutor(max_workers=1) as prep_pool:
            for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
                row = self.train_epoch(epoch, prep_pool)
                if row is None:  # the time budget ran out exactly at an epoch boundary
                    self._record_out_of_time()
                    break
                self._check_finite(row)
                improved = self.record(row)
                self._write_epoch_files(improved)
                if self.report:
                    self.report(
                        TrainProgress(
                            "epoch", epoch, cfg.epochs, metrics=dict(row, best_val_acc=self.best_acc, improved=improved)
                        )
                    )
                if self.stopped or self.out_of_time:
                    break
        if self.epoch == self.start_epoch:  # not one step fitted in the budget: say so, never name unwritten files
            raise EdgeCNNError(
                f"The time budget ({cfg.time_budget:g} min) was spent before the first training step "
                "finished; nothing was written. Pass a larger --time-budget"
            )
        return self._result()

    def _write_epoch_files(self, improved: bool) -> None:
        """The epoch's checkpoints and metrics. Rank 0 alone writes; the others wait so nobody runs ahead of a
        checkpoint."""
        if self.dist.main:
            summary = self.summary()
            # A resumed run's first epoch that did not beat the earlier best puts that best at --out, before the
            # .last.pt it may be copied from is replaced. Then .last.pt before the new best: interrupted between the
            # two writes, the best on disk is never newer than the .last.pt a resume starts from (which then finds
            # its best again, see _find_earlier_best).
            if not improved and self.best_source is not None:
                self._place_earlier_best()
            self.best_source = None
            self.save(self.paths["last"], summary)
            if improved:
                self.save(Path(self.cfg.out), summary)
            _write_metrics(self.history, self.paths, summary)
        self.dist.barrier()

    def _result(self) -> TrainResult:
        cfg, dist = self.cfg, self.dist
        s = self.summary()
        return TrainResult(
            checkpoint=Path(cfg.out),
            last_checkpoint=self.paths["last"],
            metrics_csv=self.paths["csv"],
            metrics_json=self.paths["json"],
            plot=self.paths["plot"],
            arch=self.arch,
            classes=list(self.classes),
            preprocess=self.pre,
            num_train=s["num_train"],
            num_val=s["num_val"],
            corrupt=self.corrupt,
            corrupt_examples=self.corrupt_examples,
            epochs_run=self.epoch,
            best_epoch=self.best_epoch,
            best_val_acc=self.best_acc,
            final_val_acc=s["final_val_acc"],
            stopped_early=self.stopped,
            out_of_time=self.out_of_time,
            train_seconds=s["train_seconds"],
            images_per_s=s["images_per_s"],
            world_size=dist.world,
            history=self.history,
            warnings=list(self.warnings),
            epochs_completed=s["epochs_completed"],
            partial_epoch=s["partial_epoch"],
            model=self.model,
        )


_PEER_LOST = ("closed by peer", "reset by peer", "broken pipe", "nccl", "gloo", "processgroup")


def _lost_peer(exc: BaseException) -> bool:
    """Did a collective fail because another rank is gone? torch raises DistError for some backends and a plain
    RuntimeError naming the transport for others (gloo: "Connection closed by peer")."""
    dist_error = getattr(getattr(sys.modules.get("torch"), "distributed", None), "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _PEER_LOST)


def _prepare_output_folder(out: Path) -> Path | None:
    """--out's folder made and probed before the data is decoded (see `files.prepare_output_folder`)."""
    return prepare_output_folder(out, "--out")


def fit(cfg: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Train `cfg.arch` on `cfg.data` and write the best checkpoint to `cfg.out`. See the module docstring."""
    torch = require_torch()

    _validate(cfg)
    ckpt = read_checkpoint(cfg.resume) if cfg.resume is not None else None
    if ckpt is not None:
        check_finite_weights(cfg.resume, ckpt["state_dict"])
        cfg = resumed_config(cfg, ckpt)
        _validate(cfg)  # the settings taken from the checkpoint (e.g. its --val folder) are checked the same way
    created = _prepare_output_folder(Path(cfg.out))
    device_type = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dist = _Dist.from_env(torch, device_type)
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, dist.local_world)))
        # Tiny gradients early in training (small warm-up LR, zero-initialised residual branches) produce denormal
        # floats, which x86 CPUs process many times slower: flushing them to zero doubled ResNet-20 throughput here.
        torch.set_flush_denormal(True)
        torch.manual_seed(cfg.seed)
        report = progress if (progress is not None and dist.main) else None
        return _Run(cfg, ckpt, dist, report, torch).run()
    except RuntimeError as exc:
        remove_created(created, Path(cfg.out).parent)
        if dist.active and _lost_peer(exc):  # another rank stopped first: its own message says why
            raise EdgeCNNError(
                f"Another process of this torchrun job stopped (rank {dist.rank} lost it: "
                f"{str(exc).splitlines()[0][:120]}); its error above says why"
            ) from exc
        raise
    except BaseException:
        remove_created(created, Path(cfg.out).parent)  # only folders this run made and left empty
        raise
    finally:
        if dist.owns_group:
            import torch.distributed as tdist

            tdist.destroy_process_group()
