"""What `--resume` needs to continue a training run exactly, and to refuse what would not continue it.

A resumed run must end as the uninterrupted run would have: same optimizer, learning-rate schedule, batches, seed,
augmentation and, above all, the same train/validation split (a different split moves images the run validated on
into training, and picks its best epoch on two different validation sets). So the run's settings come from the
checkpoint, a different value given explicitly is refused by name, and the split itself is compared by digest.
`--epochs`, `--patience` and `--time-budget` are when to stop, not how to train: they may change, and otherwise are
the run's own too.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from edgecnn.augment import default_pad
from edgecnn.checkpoint import read_checkpoint
from edgecnn.contract import ModelContract
from edgecnn.errors import ArtifactError, EdgeCNNError, UserInputError
from edgecnn.files import same_file
from edgecnn.train_types import TrainConfig, side_paths

# How the run trains: taken from the checkpoint; an explicit other value is an error.
RESUMED_SETTINGS = (
    "optimizer",
    "lr",
    "weight_decay",
    "batch_size",
    "schedule",
    "warmup",
    "label_smoothing",
    "augment",
    "crop_pad",
    "seed",
    "channels_last",
)
# Which images and when to stop: taken from the checkpoint unless given (the split digest guards the images).
INHERITED_SETTINGS = ("val", "val_split", "epochs", "patience", "time_budget")
_FLAGS = {"augment": "--augment/--no-augment", "channels_last": "(channels_last)"}


_INT, _NUMBER, _TEXT, _BOOL = "an integer", "a number", "text", "true or false"
# The type each inherited setting must have in the checkpoint's training record (None allowed where the field has
# no value by default): a hand-edited or damaged record is refused by name, not met later as a TypeError.
_SETTING_TYPES = {
    "optimizer": (_TEXT, False),
    "lr": (_NUMBER, True),
    "weight_decay": (_NUMBER, True),
    "batch_size": (_INT, False),
    "schedule": (_TEXT, False),
    "warmup": (_NUMBER, False),
    "label_smoothing": (_NUMBER, False),
    "augment": (_BOOL, False),
    "crop_pad": (_INT, True),
    "seed": (_INT, False),
    "channels_last": (_BOOL, False),
    "val": (_TEXT, True),
    "val_split": (_NUMBER, True),
    "epochs": (_INT, False),
    "patience": (_INT, True),
    "time_budget": (_NUMBER, True),
}
_STATE_TYPES = {
    "epoch": (_INT, False),
    "best_epoch": (_INT, False),
    "bad_epochs": (_INT, False),
    "best_val_acc": (_NUMBER, True),
}


def _has_type(value, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):  # True is an int to Python, not a batch size
        return False
    if kind == _INT:
        return isinstance(value, int)
    if kind == _NUMBER:
        return isinstance(value, (int, float))
    return isinstance(value, str)


def check_resume_record(path, ckpt: dict) -> None:
    """The training record and resumable state of a `--resume` checkpoint have the types a run writes, or an
    ArtifactError names the file and the field (a batch size of 'abc' was a TypeError, exit 70)."""
    training, extra = ckpt.get("training"), ckpt.get("extra")
    for name, value in (("training", training), ("extra", extra)):
        if value is not None and not isinstance(value, dict):
            raise ArtifactError(f"--resume {path}: its {name} record is a {type(value).__name__}, expected a dict")
    training, extra = training or {}, extra or {}
    config = training.get("config")
    if config is not None and not isinstance(config, dict):
        raise ArtifactError(f"--resume {path}: its training config is a {type(config).__name__}, expected a dict")
    checks = [
        ("training config", config or {}, _SETTING_TYPES),
        ("training record", training, {"lr": (_NUMBER, True), "world_size": (_INT, True)}),
        ("resumable state", extra, _STATE_TYPES),
    ]
    for where, record, types in checks:
        for key, (kind, optional) in types.items():
            if key not in record or (optional and record[key] is None) or _has_type(record[key], kind):
                continue
            raise ArtifactError(
                f"--resume {path}: damaged {where}: {key} is {record[key]!r}, expected {kind}; "
                "resume from an undamaged checkpoint of the run, or start a new run"
            )
    history = extra.get("history", [])
    if not isinstance(history, list) or not all(
        isinstance(row, dict) and _has_type(row.get("seconds"), _NUMBER) for row in history
    ):
        raise ArtifactError(f"--resume {path}: damaged resumable state: history is not a list of epoch records")


def _flag(key: str) -> str:
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def continues_in_place(cfg: TrainConfig) -> bool:
    """True when --resume is the `.last.pt` of --out itself: the run goes on writing its own files."""
    if cfg.resume is None:
        return False

    last = side_paths(cfg.out)["last"]
    return last.exists() and same_file(cfg.resume, last)


def given_settings(cfg: TrainConfig) -> frozenset[str]:
    """The fields the caller chose: `cfg.given` (the CLI's typed options), else those that differ from defaults."""
    if cfg.given is not None:
        return cfg.given
    defaults = TrainConfig(data="", arch="", out="")
    return frozenset(f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != getattr(defaults, f.name))


def _effective(key: str, value, cfg: TrainConfig, input_size: tuple[int, int] | None):
    """A setting as the run used it: the learning rate and weight decay with their defaults resolved, the crop
    padding with its default for the input size, so that typing the value a run used is never 'another value'."""
    if key == "lr":
        return replace(cfg, lr=value).resolved_lr()
    if key == "weight_decay":
        return replace(cfg, weight_decay=value).resolved_weight_decay()
    if key == "crop_pad" and value is None and input_size:
        return default_pad(*input_size)
    return value


def resumed_config(cfg: TrainConfig, ckpt: dict) -> TrainConfig:
    """`cfg` with the checkpoint run's settings filled in (see the module docstring)."""
    check_resume_record(cfg.resume, ckpt)
    training = ckpt.get("training") or {}
    earlier = dict(training.get("config") or {})
    if not earlier:  # a checkpoint without its run's settings (not written by edgecnn train): nothing to take over
        return cfg
    if training.get("val_folder"):
        earlier["val"] = training["val_folder"]  # absolute: the run may be resumed from another folder
    earlier["lr"] = training.get("lr", earlier.get("lr"))  # the peak LR the run used (its default resolved)
    try:
        size = ModelContract.from_dict(ckpt["contract"]).preprocess.input_size
    except Exception:  # the contract is checked where the model is built; here it only resolves a default
        size = None
    earlier_cfg = replace(cfg, **{k: earlier[k] for k in RESUMED_SETTINGS if k in earlier})
    given = given_settings(cfg)
    updates = {}
    for key in RESUMED_SETTINGS:
        if key not in earlier:
            continue
        theirs = _effective(key, earlier[key], earlier_cfg, size)
        mine = _effective(key, getattr(cfg, key), replace(cfg, optimizer=earlier_cfg.optimizer), size)
        if key in given and mine != theirs:
            raise UserInputError(
                f"--resume continues a run trained with {key} = {theirs!r}, not {mine!r}: drop {_flag(key)} to "
                "continue it, or start a new run"
            )
        updates[key] = earlier[key]
    for key in INHERITED_SETTINGS:
        if key not in given and key in earlier:
            updates[key] = earlier[key]
    if "val" in updates and "val_split" in given:  # --val-split replaces the run's --val folder (the digest decides)
        updates["val"] = None
    if updates.get("val") is not None and not Path(updates["val"]).is_dir():
        raise UserInputError(
            f"--resume: the run validated on {updates['val']}, which is no longer a folder: pass "
            "--val with where it is now"
        )
    if "val_split" in updates and "val" in given:
        updates["val_split"] = None
    return replace(cfg, **updates)


def check_resumable(cfg: TrainConfig, ckpt: dict, trained_seconds: float, world: int) -> None:
    """Refuse a resume with nothing left to do (all epochs done, early stopping reached, the time budget spent), and
    one under another number of processes: the batch size is per process, so the global batch and the steps per
    epoch would change mid-run."""
    extra = ckpt.get("extra") or {}
    training = ckpt.get("training") or {}
    done = int(extra.get("epoch") or 0)
    if done >= cfg.epochs:
        raise UserInputError(f"--resume checkpoint already has {done} epochs: pass --epochs above {done}")
    bad = int(extra.get("bad_epochs") or 0)
    if cfg.patience is not None and bad >= cfg.patience:
        raise UserInputError(
            f"--resume: the run stopped early ({bad} epoch(s) without a better validation accuracy, "
            f"--patience {cfg.patience}): pass a larger --patience to go on"
        )
    earlier_world = int(training.get("world_size") or 1)
    if earlier_world != world:
        how = f"torchrun --nproc_per_node {earlier_world} -m edgecnn train" if earlier_world > 1 else "edgecnn train"
        raise UserInputError(
            f"--resume: the run trained in {earlier_world} process(es), this is {world} (--batch-size is per process: "
            f"the global batch would change from {earlier_world * cfg.batch_size} to {world * cfg.batch_size}); "
            f"resume it with `{how}`"
        )
    if cfg.time_budget and trained_seconds >= cfg.time_budget * 60:
        raise UserInputError(
            f"--resume checkpoint already trained {trained_seconds / 60:.2f} min of its --time-budget "
            f"{cfg.time_budget:g} min: pass a larger --time-budget"
        )


def check_same_split(cfg: TrainConfig, ckpt: dict, digest: str) -> None:
    """The resumed run must train and validate on the very files the run started with."""
    training = ckpt.get("training") or {}
    theirs = training.get("split_digest")
    if theirs is None or theirs == digest:  # older checkpoints carry no digest: nothing to compare
        return
    val = training.get("val_folder") or (training.get("config") or {}).get("val")
    source = f"validated on {val}" if val else "split off its validation images by seed and --val-split"
    raise UserInputError(
        f"--resume: the training/validation images differ from those the run started with (it trained on "
        f"{training.get('num_train')} images and {source}); images added, removed or moved, or another --val / "
        "--val-split, would mix validation images into training. Resume on the same data, or start a new run"
    )


def is_best_of(path: Path, extra: dict) -> bool:
    """Is `path` the best checkpoint of the run whose state is `extra`: same run, saved at its best epoch?"""
    try:
        theirs = read_checkpoint(path).get("extra") or {}
    except EdgeCNNError:
        return False
    epoch = theirs.get("epoch")
    return epoch == extra.get("best_epoch") and theirs.get("history") == list(extra.get("history", []))[:epoch]
