"""Training on small real image folders: outputs, the evaluation path, augmentation, resume, corrupt files, errors,
transfer learning and the `edgecnn train` command."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from asserts import assert_error, raises

torch = pytest.importorskip("torch")

from conftest import make_image_folder  # noqa: E402

from edgecnn.augment import random_crop_flip  # noqa: E402
from edgecnn.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from edgecnn.data import decode_resized, list_images, read_image  # noqa: E402
from edgecnn.errors import UserInputError  # noqa: E402
from edgecnn.models.cifar_cnn import CIFAR_PREPROCESS  # noqa: E402
from edgecnn.preprocess import PreprocessConfig, preprocess  # noqa: E402
from edgecnn.train import TrainConfig, eval_inputs, fit, learning_rate, side_paths  # noqa: E402


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two visibly different classes, 8 real PNG/JPEG files each."""
    return make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=8)


def _cfg(folder: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=folder, arch="cifar-cnn", out=out, epochs=2, batch_size=4, val_split=0.25, workers=2)
    base.update(kw)
    return TrainConfig(**base)


def _accuracy(model, paths, labels, pre: PreprocessConfig) -> float:
    """Accuracy of a model through the public `preprocess()`, image by image from the files."""
    x = preprocess([read_image(p) for p in paths], pre)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean())


def test_fit_writes_checkpoint_metrics_and_plot(folder, tmp_path):
    events = []
    result = fit(_cfg(folder, tmp_path / "run" / "m.pt"), progress=events.append)

    assert result.classes == ["cat", "dog"] and result.num_train == 12 and result.num_val == 4
    assert result.epochs_run == 2 and len(result.history) == 2 and result.corrupt == {"train": 0, "val": 0}
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["m.curves.png", "m.last.pt", "m.metrics.csv", "m.metrics.json", "m.pt"]  # no temp leftovers
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(result.metrics_csv.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(0 <= float(r["val_acc"]) <= 1 for r in rows)
    summary = json.loads(result.metrics_json.read_text())["summary"]
    assert summary["arch"] == "cifar-cnn" and summary["num_train"] == 12 and summary["epochs_run"] == 2

    phases = {e.phase for e in events}
    assert {"decode", "train", "epoch"} <= phases
    train_events = [e for e in events if e.phase == "train"]
    assert all(e.loss is not None and e.images_per_s > 0 for e in train_events)

    # The checkpoint carries the contract and the summary, loads weights-only and reproduces the validation accuracy
    # through the public preprocess() on the original files.
    model, contract, ckpt = load_checkpoint(result.checkpoint)
    assert (
        contract.labels == ["cat", "dog"] and contract.arch == "cifar-cnn" and contract.preprocess == CIFAR_PREPROCESS
    )
    assert ckpt["training"]["best_epoch"] == result.best_epoch and ckpt["training"]["num_train"] == 12
    assert ckpt["arch_kwargs"] == {"num_classes": 2}
    best = result.history[result.best_epoch - 1]
    val_paths = [Path(p) for p in _val_paths(folder, result)]
    labels = [contract.labels.index(p.parent.name) for p in val_paths]
    assert _accuracy(model, val_paths, labels, contract.preprocess) == pytest.approx(best["val_acc"])


def _val_paths(folder: Path, result) -> list[str]:
    """The held-out files: those of the folder that were not in the training split (same seeded split)."""
    from edgecnn.data import scan_image_folder
    from edgecnn.train_data import _stratified_split

    scan = scan_image_folder(folder)
    _, val_idx = _stratified_split([c for _, c in scan.samples], 0.25, 0)
    return [str(scan.samples[i][0]) for i in val_idx]


def test_training_learns_a_separable_task(folder, tmp_path):
    result = fit(_cfg(folder, tmp_path / "m.pt", arch="resnet8", epochs=4, lr=5e-3))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_acc == 1.0


@pytest.mark.parametrize("pre", [CIFAR_PREPROCESS, PreprocessConfig()])  # stretch to 32, and shorter-side crop 224
def test_training_eval_path_is_preprocess(folder, pre):
    """What validation feeds the model == preprocess() of the same files (decode once + normalize, no augmentation)."""
    paths = list_images(folder)
    decoded = decode_resized(paths, pre, workers=2)
    expected = preprocess([read_image(p) for p in paths], pre)
    np.testing.assert_array_equal(eval_inputs(decoded.images, pre), expected)


def test_augmentation_crops_and_flips_on_uint8():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, size=(16, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(random_crop_flip(batch, rng, pad=0, flip=False), batch)
    out = random_crop_flip(batch, np.random.default_rng(1), pad=4)
    assert out.shape == batch.shape and out.dtype == np.uint8
    padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for i in range(len(batch)):  # every output is a 32×32 window of the padded image, possibly mirrored
        windows = [padded[i, t : t + 32, s : s + 32] for t in range(9) for s in range(9)]
        assert any(np.array_equal(out[i], w) or np.array_equal(out[i], w[:, ::-1]) for w in windows)
    assert not np.array_equal(out, batch)
    np.testing.assert_array_equal(random_crop_flip(batch, np.random.default_rng(1), pad=4), out)  # seeded


def test_learning_rate_schedules():
    lrs = [learning_rate(s, 100, 1.0, "onecycle", 0.2) for s in range(100)]
    assert lrs[0] == pytest.approx(0.04) and max(lrs) == pytest.approx(1.0, abs=1e-3) and lrs[-1] < 0.01
    assert int(np.argmax(lrs)) == 20
    cos = [learning_rate(s, 100, 1.0, "cosine", 0.1) for s in range(100)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0) and cos[-1] < 0.01


def test_corrupt_images_are_counted_not_fatal(folder, tmp_path):
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "dog" / "empty.png").write_bytes(b"")
    (folder / "dog" / "notes.txt").write_text("not an image, ignored")
    (folder / "stray.png").write_bytes(next((folder / "cat").glob("*.png")).read_bytes())  # in no class: not used
    result = fit(_cfg(folder, tmp_path / "m.pt", epochs=1))
    assert any("1 image(s) directly in" in w and "stray.png" in w for w in result.warnings), result.warnings
    assert result.corrupt["train"] + result.corrupt["val"] == 2
    assert result.num_train + result.num_val == 16
    assert {Path(p).name for p in result.corrupt_examples} == {"broken.jpg", "empty.png"}
    assert read_checkpoint(result.checkpoint)["training"]["corrupt"] == result.corrupt


def test_resume_continues_exactly(folder, tmp_path):
    """A run interrupted after epoch 1 of 2 and resumed from its .last.pt ends with the same weights as the
    uninterrupted run: weights, optimizer state, epoch, schedule position and RNG streams are all restored."""
    straight = fit(_cfg(folder, tmp_path / "a" / "m.pt"))

    def interrupt_after_first_epoch(ev):
        if ev.phase == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(folder, tmp_path / "b" / "m.pt"), progress=interrupt_after_first_epoch)
    last = side_paths(tmp_path / "b" / "m.pt")["last"]
    assert read_checkpoint(last)["extra"]["epoch"] == 1
    resumed = fit(_cfg(folder, tmp_path / "c" / "m.pt", resume=last))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[0]["train_loss"] == pytest.approx(straight.history[0]["train_loss"], rel=1e-5)
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], rel=1e-4)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert read_checkpoint(resumed.last_checkpoint)["training"]["resumed_from"] == str(last)

    first = fit(_cfg(folder, tmp_path / "d" / "m.pt", epochs=1))
    with raises(UserInputError, "--resume", "--epochs"):
        fit(_cfg(folder, tmp_path / "x" / "m.pt", epochs=1, resume=first.last_checkpoint))
    with raises(UserInputError, str(first.checkpoint), "--out"):
        fit(_cfg(folder, first.checkpoint, resume=first.checkpoint))
    with raises(UserInputError, "lenet5"):
        fit(_cfg(folder, tmp_path / "e" / "m.pt", arch="lenet5", resume=first.last_checkpoint))


def test_resume_from_nan_weights_is_a_damaged_checkpoint_not_a_divergence(folder, tmp_path):
    from edgecnn.errors import ArtifactError

    first = fit(_cfg(folder, tmp_path / "a" / "m.pt", epochs=1))
    ckpt = torch.load(first.last_checkpoint, weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    weights = ckpt["state_dict"][name]
    weights[(0,) * weights.dim()] = float("nan")
    damaged = tmp_path / "nan.last.pt"
    torch.save(ckpt, damaged)
    with raises(ArtifactError, name):
        fit(_cfg(folder, tmp_path / "b" / "m.pt", epochs=2, resume=damaged))
    assert not (tmp_path / "b").exists()  # refused before anything was made


def test_early_stopping(folder, tmp_path):
    result = fit(_cfg(folder, tmp_path / "m.pt", epochs=6, lr=1e-9, patience=2))  # nothing improves after epoch 1
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_time_budget_stops_on_the_clock_with_an_annealed_schedule(folder, tmp_path):
    result = fit(_cfg(folder, tmp_path / "m.pt", epochs=10_000, lr=1e-3, time_budget=0.05))  # 3 seconds
    assert result.out_of_time and not result.stopped_early and 1 <= result.epochs_run < 10_000
    assert 2.5 < result.train_seconds < 20
    assert result.history[-1]["lr"] < 0.25 * 1e-3  # the one-cycle schedule was near its end when the time was
    summary = read_checkpoint(result.last_checkpoint)["training"]
    assert summary["out_of_time"] and summary["time_budget_min"] == 0.05


def test_budget_spent_at_an_epoch_boundary_is_written_to_the_files(folder, tmp_path, monkeypatch):
    # The clock's verdict is forced (a real clock hits the boundary only by chance, which made the test above flaky):
    # the budget is spent just before epoch 3's first step, after epoch 2's files were written saying it was not.
    from edgecnn import train as train_module

    real_lr = train_module._Run._lr
    monkeypatch.setattr(
        train_module._Run, "_lr", lambda self, epoch, i, t0: None if epoch == 3 else real_lr(self, epoch, i, t0)
    )
    result = fit(_cfg(folder, tmp_path / "m.pt", epochs=5, time_budget=10.0, val_split=0.0))
    assert result.out_of_time and result.epochs_run == 2
    for path in (result.last_checkpoint, result.checkpoint):
        training = read_checkpoint(path)["training"]
        assert training["out_of_time"] and training["epochs_run"] == 2
    assert json.loads(result.metrics_json.read_text())["summary"]["out_of_time"]


def test_a_split_that_leaves_nothing_to_validate_says_so(tmp_path):
    data = make_image_folder(tmp_path / "one_each", per_class=1)  # one image per class: each stays in training
    result = fit(_cfg(data, tmp_path / "m.pt", epochs=1, val_split=0.5))
    assert result.num_val == 0 and result.num_train == 2
    assert any("no validation images" in w for w in result.warnings), result.warnings


def test_no_validation_keeps_the_last_epoch(folder, tmp_path):
    result = fit(_cfg(folder, tmp_path / "m.pt", val_split=0.0, patience=1))
    assert result.num_val == 0 and result.best_val_acc is None and result.best_epoch == 2 and not result.stopped_early
    assert read_checkpoint(result.checkpoint)["extra"]["epoch"] == 2


def test_train_test_pair_and_val_folder(tmp_path):
    root = tmp_path / "ds"
    make_image_folder(root / "train", per_class=6, seed=1)
    make_image_folder(root / "test", per_class=3, seed=2)
    result = fit(_cfg(root, tmp_path / "m.pt", epochs=1, val_split=None))
    assert (result.num_train, result.num_val) == (12, 6)  # train/ + test/: test/ validates, and the run says so
    assert read_checkpoint(result.checkpoint)["training"]["val_folder"] == str((root / "test").resolve())
    assert any("validating on" in w and "--val-split" in w for w in result.warnings), result.warnings

    make_image_folder(root / "val", per_class=2, seed=3)  # train/ + val/ + test/: val/ validates, test/ stays unseen
    result = fit(_cfg(root, tmp_path / "m3.pt", epochs=1, val_split=None))
    assert (result.num_train, result.num_val) == (12, 4)
    assert read_checkpoint(result.checkpoint)["training"]["val_folder"] == str((root / "val").resolve())

    extra = make_image_folder(tmp_path / "other", classes=("cat", "dog", "fox"), per_class=2)
    with raises(UserInputError, "fox"):
        fit(_cfg(root, tmp_path / "m2.pt", epochs=1, val_split=None, val=extra))


@pytest.mark.parametrize(
    "setup,mentions",
    [
        (lambda d: d.mkdir(), "data"),
        (lambda d: make_image_folder(d, classes=("cat",), per_class=3), "cat"),
        (
            lambda d: [
                make_image_folder(d, classes=("cat",), per_class=3),
                (d / "dog").mkdir(),
                (d / "dog" / "x.jpg").write_bytes(b"garbage"),
            ],
            "cat",
        ),
        (lambda d: None, "data"),
    ],
    ids=["empty", "single-class", "single-readable-class", "missing"],
)
def test_bad_data_is_a_clear_user_error(tmp_path, setup, mentions):
    data = tmp_path / "data"
    setup(data)
    with raises(UserInputError, mentions):
        fit(_cfg(data, tmp_path / "m.pt"))
    assert not (tmp_path / "m.pt").exists()


def test_bad_options_are_user_errors(folder, tmp_path):
    with raises(UserInputError, "nope"):
        fit(_cfg(folder, tmp_path / "m.pt", arch="nope"))
    with raises(UserInputError, "64×64"):
        fit(_cfg(folder, tmp_path / "m.pt", img_size=64))  # the dense layer of cifar-cnn is sized for 32×32
    with raises(UserInputError, "--out", str(folder)):
        fit(_cfg(folder, folder / "m.pt"))
    with raises(UserInputError, "--out", ".pt"):
        fit(_cfg(folder, tmp_path / "m.onnx"))
    with raises(UserInputError, "--val"):
        fit(_cfg(folder, tmp_path / "m.pt", val=folder, val_split=0.2))
    with raises(UserInputError, "cifar-cnn"):
        fit(_cfg(folder, tmp_path / "m.pt", pretrained=True))
    with raises(UserInputError, "cifar-cnn", "width_mult"):
        fit(_cfg(folder, tmp_path / "m.pt", arch_kwargs={"width_mult": 2}))
    with raises(UserInputError, "--arch-opt num_classes=3"):
        fit(_cfg(folder, tmp_path / "m.pt", arch_kwargs={"num_classes": 3}))  # was silently replaced by 2
    assert not any(tmp_path.glob("m.*"))


def test_val_split_keeps_a_training_image_of_every_class(tmp_path):
    """A class with a single image trains on it: --val-split moved it to validation, so the model never saw the
    class (3+ classes: silently; 2 classes: an error blaming unreadable images)."""
    from edgecnn.train_data import _stratified_split

    labels = [0] * 5 + [1] + [2] * 4
    train, val = _stratified_split(labels, 0.6, seed=0)
    assert sorted({labels[i] for i in train}) == [0, 1, 2] and 5 in train and 5 not in val
    assert sorted({labels[i] for i in val}) == [0, 2]
    data = make_image_folder(tmp_path / "data", classes=("cat",), per_class=5)
    make_image_folder(tmp_path / "dog", classes=("dog",), per_class=1, seed=1)
    (tmp_path / "dog" / "dog").rename(data / "dog")
    result = fit(_cfg(data, tmp_path / "m.pt", epochs=1, val_split=0.6))
    assert (result.num_train, result.num_val) == (3, 3)


def test_arch_kwargs_travel_into_the_checkpoint(folder, tmp_path):
    result = fit(
        _cfg(folder, tmp_path / "m.pt", arch="resnet8", epochs=1, arch_kwargs={"width_mult": 0.5}, img_size=24)
    )
    model, contract, ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["arch_kwargs"] == {"width_mult": 0.5, "num_classes": 2}
    assert contract.preprocess.input_size == (24, 24) and contract.preprocess.mean == CIFAR_PREPROCESS.mean


@pytest.mark.slow
def test_transfer_learning_keeps_the_pretrained_preprocessing(scenes_dir, tmp_path):
    """efficientnet-lite0 fine-tuned on real photos (buildings vs forest): new 2-class head, the model's own
    mean 127 / std 128 and resize policy kept, --img-size changing only the size."""
    data = tmp_path / "scenes"
    for cls in ("buildings", "forest"):
        (data / cls).mkdir(parents=True)
        for src in sorted((scenes_dir / cls).glob("*.jpg"))[:10]:
            os.symlink(src, data / cls / src.name)
    result = fit(
        _cfg(
            data,
            tmp_path / "m.pt",
            arch="efficientnet-lite0",
            pretrained=True,
            epochs=1,
            img_size=96,
            batch_size=8,
            val_split=0.2,
        )
    )
    model, contract, ckpt = load_checkpoint(result.checkpoint)
    pre = contract.preprocess
    assert pre.input_size == (96, 96) and pre.mean == (127.0,) * 3 and pre.std == (128.0,) * 3
    assert pre.resize == "shorter_crop" and contract.labels == ["buildings", "forest"]
    assert ckpt["training"]["pretrained_from"] == "efficientnet-lite0"
    assert model._fc.out_features == 2
    # ImageNet features make this easy even after one short epoch at 96 px.
    assert result.best_val_acc >= 0.75


def test_real_photos_small_net(scenes_dir, tmp_path):
    """cifar-cnn on 40 real 150×150 photos stretched to 32×32: decodes, trains and validates."""
    data = tmp_path / "scenes"
    for cls in ("buildings", "forest"):
        (data / cls).mkdir(parents=True)
        for src in sorted((scenes_dir / cls).glob("*.jpg"))[:20]:
            os.symlink(src, data / cls / src.name)
    result = fit(_cfg(data, tmp_path / "m.pt", epochs=2, batch_size=8))
    assert (result.num_train, result.num_val) == (30, 10) and sum(result.corrupt.values()) == 0
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


# ---------------------------------------------------------------- CLI


def _invoke(args):
    from typer.testing import CliRunner

    from edgecnn.cli.main import app

    return CliRunner().invoke(app, args)


def test_cli_train_json(folder, tmp_path):
    out = tmp_path / "cli" / "m.pt"
    r = _invoke(
        [
            "train",
            str(folder),
            "--arch",
            "lenet5",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "0.002",
            "--val-split",
            "0.25",
            "--seed",
            "3",
            "--workers",
            "1",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["arch"] == "lenet5" and summary["epochs_run"] == 2 and summary["classes"] == ["cat", "dog"]
    assert summary["checkpoint"] == str(out) and out.is_file() and side_paths(out)["plot"].is_file()
    assert read_checkpoint(out)["training"]["config"]["seed"] == 3


def test_cli_train_human_output_and_resume(folder, tmp_path):
    out = tmp_path / "m.pt"
    r = _invoke(["train", str(folder), "--epochs", "1", "--batch-size", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "epoch   1/1" in r.output and "checkpoint" in r.output
    r = _invoke(
        [
            "train",
            str(folder),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--resume",
            str(out.with_suffix(".last.pt")),
            "--out",
            str(tmp_path / "m2.pt"),
            "--json",
        ]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs_run"] == 2


@pytest.mark.parametrize(
    "args,mentions",
    [
        (["--arch", "nope"], "nope"),
        (["--val-split", "1.5"], "--val-split"),
        (["--arch-opt", "width_mult"], "KEY=VALUE"),
        (["--resume", "MISSING"], "missing.pt"),
    ],
)
def test_cli_train_errors_are_one_line(folder, tmp_path, args, mentions):
    args = [a.replace("MISSING", str(tmp_path / "missing.pt")) for a in args]
    r = _invoke(["train", str(folder), "--epochs", "1", "--out", str(tmp_path / "m.pt"), *args])
    assert_error(r, 2, mentions, stream="output")
    assert not (tmp_path / "m.pt").exists()


def test_cli_train_out_equal_to_resume(folder, tmp_path):
    out = tmp_path / "m.pt"
    assert _invoke(["train", str(folder), "--epochs", "1", "--batch-size", "4", "--out", str(out)]).exit_code == 0
    before = out.read_bytes()
    r = _invoke(["train", str(folder), "--epochs", "2", "--resume", str(out), "--out", str(out)])
    assert_error(r, 2, "m.pt", "--out", stream="output")
    assert out.read_bytes() == before


def test_cli_missing_data(tmp_path):
    r = _invoke(["train", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.pt")])
    assert_error(r, 2, "nothing", stream="output")


def test_cli_train_export_eval_end_to_end(tmp_path):
    """`edgecnn train` -> `edgecnn export` -> `edgecnn eval` on ONNX Runtime: the exported model scores exactly the
    validation accuracy training measured (on val/), because every stage feeds it the same preprocess()."""
    root = tmp_path / "ds"
    make_image_folder(root / "train", per_class=8, seed=1)
    make_image_folder(root / "val", per_class=4, seed=2)
    ckpt, onnx_path = tmp_path / "m.pt", tmp_path / "m.onnx"
    r = _invoke(
        ["train", str(root), "--arch", "resnet8", "--epochs", "2", "--batch-size", "4", "--out", str(ckpt), "--json"]
    )
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout)
    assert trained["num_val"] == 8
    r = _invoke(["export", str(ckpt), "--out", str(onnx_path), "--json"])
    assert r.exit_code == 0, r.output
    r = _invoke(["eval", str(onnx_path), str(root), "--json"])  # no test/ beside train/: eval scores val/
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert metrics["images"] == 8 and metrics["scored"] == str(root / "val")  # and it says which folder it scored
    assert metrics["top1"] == pytest.approx(trained["best_val_acc"])


# ---------------------------------------------------------------- earlier runs, resume, divergence, bad options


def test_an_earlier_run_is_never_replaced_without_force(folder, tmp_path):
    """A second run into the same --out is refused before any work (a new run that diverges or is interrupted
    would otherwise have replaced a good model with its epoch 1); --force replaces it."""
    first = fit(_cfg(folder, tmp_path / "m.pt", epochs=1))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("m.*")}
    with raises(UserInputError, "--force", "--resume", "m.pt", "m.last.pt"):
        fit(_cfg(folder, tmp_path / "m.pt", epochs=1, seed=5))
    assert {p.name: p.read_bytes() for p in tmp_path.glob("m.*")} == before

    first.checkpoint.unlink()  # one side file of another run is enough to refuse
    first.last_checkpoint.unlink()
    with raises(UserInputError, "m.metrics.csv"):
        fit(_cfg(folder, tmp_path / "m.pt", epochs=1))

    again = fit(_cfg(folder, tmp_path / "m.pt", epochs=1, seed=5, force=True))
    assert read_checkpoint(again.checkpoint)["training"]["config"]["seed"] == 5


def test_a_diverging_step_never_becomes_the_checkpoint(folder, tmp_path):
    """One step per epoch (12 training images, batch 12): the loss of that step is computed before its update, so
    only the outputs show the divergence (NaN outputs even scored 50-100 % validation accuracy and were saved as
    the best model). Nothing is saved, and the run fails with a clear error."""
    from edgecnn.errors import EdgeCNNError

    with raises(EdgeCNNError, "nan", "--lr"):
        fit(_cfg(folder, tmp_path / "m.pt", batch_size=12, optimizer="sgd", lr=1e9))
    assert not (tmp_path / "m.pt").exists()
    with raises(EdgeCNNError, "--lr"):
        fit(_cfg(folder, tmp_path / "m.pt", batch_size=12, optimizer="sgd", lr=1e300))
    assert not list(tmp_path.glob("m.*"))


def _flat_run(folder, out, **kw):
    """A run whose validation accuracy never improves after epoch 1 (a learning rate of 1e-9)."""
    return fit(_cfg(folder, out, lr=1e-9, **kw))


def test_resume_keeps_the_best_checkpoint_of_the_whole_run(folder, tmp_path):
    run = _flat_run(folder, tmp_path / "b" / "m.pt", epochs=2)
    assert run.best_epoch == 1
    best_bytes = run.checkpoint.read_bytes()

    # Into a new --out: the earlier best (b/m.pt, epoch 1) is carried over, it is not the resumed epoch 2.
    new = fit(_cfg(folder, tmp_path / "c" / "m.pt", epochs=3, resume=run.last_checkpoint))
    assert new.best_epoch == 1 and new.checkpoint.read_bytes() == best_bytes and not new.warnings
    assert read_checkpoint(new.checkpoint)["extra"]["epoch"] == new.best_epoch

    # In place (--out is the run's own): allowed, the best stays where it is.
    same = fit(_cfg(folder, run.checkpoint, epochs=3, resume=run.last_checkpoint))
    assert same.best_epoch == 1 and run.checkpoint.read_bytes() == best_bytes
    assert read_checkpoint(run.last_checkpoint)["extra"]["epoch"] == 3

    # The earlier best is gone: the best restarts from the resumed weights, with a warning, and --out holds them.
    other = _flat_run(folder, tmp_path / "d" / "m.pt", epochs=2)
    other.checkpoint.unlink()
    events = []
    lost = fit(_cfg(folder, tmp_path / "e" / "m.pt", epochs=3, resume=other.last_checkpoint), progress=events.append)
    assert lost.warnings and "is missing or is not that run's" in lost.warnings[0]
    assert [e.message for e in events if e.phase == "warning"] == lost.warnings
    assert read_checkpoint(lost.checkpoint)["extra"]["epoch"] == lost.best_epoch == 2


def test_resume_continues_with_the_runs_own_settings(folder, tmp_path):
    """An SGD run with its own batch size, seed and learning rate resumes with them (it failed with a KeyError when
    the default AdamW met SGD's optimizer state); another value given explicitly is refused by name."""
    first = fit(_cfg(folder, tmp_path / "a" / "m.pt", epochs=1, optimizer="sgd", batch_size=3, seed=7, lr=0.01))
    resumed = fit(
        TrainConfig(
            data=folder, arch="", out=tmp_path / "b" / "m.pt", epochs=2, workers=1, resume=first.last_checkpoint
        )
    )
    config = read_checkpoint(resumed.checkpoint)["training"]["config"]
    assert (config["optimizer"], config["batch_size"], config["seed"], config["val_split"]) == ("sgd", 3, 7, 0.25)
    assert read_checkpoint(resumed.last_checkpoint)["training"]["lr"] == 0.01

    def resume(**kw):
        return fit(_cfg(folder, tmp_path / "x" / "m.pt", arch="", resume=first.last_checkpoint, **kw))

    with raises(UserInputError, "sgd", "adamw"):
        resume(optimizer="adamw", given=frozenset({"optimizer"}))
    with raises(UserInputError, "--lr", "0.01", "0.5"):
        resume(lr=0.5)
    with raises(UserInputError, "--arch-opt"):
        resume(arch_kwargs={"dropout": 0.5}, given=frozenset({"arch_kwargs"}))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "kw,mentions",
    [
        ({"weight_decay": float("nan")}, "--weight-decay"),
        ({"weight_decay": -1.0}, "--weight-decay"),
        ({"lr": float("inf")}, "--lr"),
        ({"time_budget": float("inf")}, "--time-budget"),
        ({"workers": 0}, "--workers"),
        ({"workers": -1}, "--workers"),
        ({"arch": "resnet8", "arch_kwargs": {"width_mult": 0}}, "width_mult"),
        ({"arch": "resnet8", "arch_kwargs": {"width_mult": "wide"}}, "width_mult"),
        ({"arch_kwargs": {"dropout": 1.5}}, "dropout"),
    ],
)
def test_bad_values_are_refused_before_any_work(folder, tmp_path, kw, mentions):
    with raises(UserInputError, mentions):
        fit(_cfg(folder, tmp_path / "m.pt", **kw))
    assert not list(tmp_path.glob("m.*"))


def test_output_paths_are_checked_first(folder, tmp_path):
    val = make_image_folder(tmp_path / "val", per_class=2)
    with raises(UserInputError, "--val"):
        fit(_cfg(folder, val / "m.pt", val=val, val_split=None))
    (tmp_path / "file").write_text("a file, not a folder")
    with raises(UserInputError, "--out"):
        fit(_cfg(folder, tmp_path / "file" / "m.pt"))
    with raises(UserInputError, "--val"):
        fit(_cfg(folder, tmp_path / "m.pt", val=tmp_path / "nope", val_split=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file", "val"]


def test_an_empty_class_folder_is_a_warning(folder, tmp_path):
    (folder / "fox").mkdir()
    result = fit(_cfg(folder, tmp_path / "m.pt", epochs=1))
    assert result.classes == ["cat", "dog"]
    assert len(result.warnings) == 1 and "fox" in result.warnings[0] and "no images" in result.warnings[0]


def test_cli_refuses_an_earlier_run_and_resumes_an_sgd_run(folder, tmp_path):
    out = tmp_path / "m.pt"
    base = ["train", str(folder), "--epochs", "1", "--batch-size", "4", "--optimizer", "sgd", "--out", str(out)]
    assert _invoke(base).exit_code == 0
    r = _invoke(base)
    assert_error(r, 2, "m.pt", "--force", stream="output")
    assert _invoke([*base, "--force"]).exit_code == 0

    # Continue in place without repeating the settings: --optimizer sgd comes from the checkpoint.
    r = _invoke(
        ["train", str(folder), "--epochs", "2", "--resume", str(side_paths(out)["last"]), "--out", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs_run"] == 2
    # An explicit --optimizer adamw (the default value, typed) is not silently replaced by sgd.
    r = _invoke(
        [
            "train",
            str(folder),
            "--epochs",
            "3",
            "--optimizer",
            "adamw",
            "--resume",
            str(side_paths(out)["last"]),
            "--out",
            str(out),
        ]
    )
    assert_error(r, 2, "sgd", "adamw", stream="output")


def test_cli_prints_the_empty_class_warning(folder, tmp_path):
    (folder / "fox").mkdir()
    r = _invoke(["train", str(folder), "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 0, r.output
    assert "fox" in r.output and "no images" in r.output


def _interrupted(folder, out, **kw):
    """A run stopped by Ctrl-C right after its first epoch (the callback raises where the user's key would)."""

    def stop(ev):
        if ev.phase == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(folder, out, **kw), progress=stop)
    return side_paths(out)["last"]


def test_resume_without_options_continues_the_planned_run(folder, tmp_path):
    """Nothing typed but --resume: the run's own --epochs, --patience and --time-budget continue (the epochs fell
    back to the default 10 and stretched the learning-rate schedule mid-run)."""
    straight = fit(_cfg(folder, tmp_path / "a" / "m.pt", epochs=3, patience=5))
    last = _interrupted(folder, tmp_path / "b" / "m.pt", epochs=3, patience=5)
    resumed = fit(TrainConfig(data=folder, arch="", out=tmp_path / "b" / "m.pt", resume=last, given=frozenset()))
    assert resumed.epochs_run == 3
    assert [r["lr"] for r in resumed.history] == pytest.approx([r["lr"] for r in straight.history], rel=1e-6)
    config = read_checkpoint(resumed.last_checkpoint)["training"]["config"]
    assert (config["epochs"], config["patience"], config["time_budget"]) == (3, 5, None)


def test_resume_from_a_damaged_or_stripped_checkpoint(folder, tmp_path):
    """A training record of the wrong types (batch_size 'abc') is an ArtifactError naming the field (was a TypeError,
    exit 70); a checkpoint whose optimizer state was removed resumes with a warning that it is not exact."""
    from edgecnn.errors import ArtifactError

    last = _interrupted(folder, tmp_path / "a" / "m.pt", epochs=2)
    ckpt = torch.load(last, weights_only=True)
    for where, key, value in (
        ("config", "batch_size", "abc"),
        ("config", "augment", 1),
        ("config", "epochs", 2.5),
        ("extra", "epoch", "1"),
        ("training", "world_size", [1]),
    ):
        bad = {
            **ckpt,
            "training": {**ckpt["training"], "config": dict(ckpt["training"]["config"])},
            "extra": dict(ckpt["extra"]),
        }
        (bad["training"]["config"] if where == "config" else bad[where])[key] = value
        path = tmp_path / f"bad-{key}.last.pt"
        torch.save(bad, path)
        with raises(ArtifactError, f"bad-{key}.last.pt"):
            fit(TrainConfig(data=folder, arch="", out=tmp_path / "b" / "m.pt", resume=path, given=frozenset()))
    assert not (tmp_path / "b").exists()

    stripped = tmp_path / "stripped.last.pt"
    torch.save({**ckpt, "extra": {k: v for k, v in ckpt["extra"].items() if k != "optimizer"}}, stripped)
    result = fit(TrainConfig(data=folder, arch="", out=tmp_path / "c" / "m.pt", resume=stripped, given=frozenset()))
    assert result.epochs_run == 2
    assert any("holds no optimizer state" in w and "not an exact continuation" in w for w in result.warnings)


def test_resume_refuses_another_split_and_keeps_its_val_folder(folder, tmp_path):
    last = _interrupted(folder, tmp_path / "a" / "m.pt", epochs=2)
    cv2_img = read_image(next((folder / "cat").glob("*.png")))
    import cv2

    cv2.imwrite(str(folder / "cat" / "added.png"), cv2_img)  # one more image reshuffles the seeded split
    with raises(UserInputError, "--resume"):
        fit(_cfg(folder, tmp_path / "a" / "m.pt", resume=last))
    (folder / "cat" / "added.png").unlink()
    other_val = make_image_folder(tmp_path / "other-val", per_class=2, seed=4)
    with raises(UserInputError, "--resume"):
        fit(_cfg(folder, tmp_path / "a" / "m.pt", resume=last, val=other_val, val_split=None))
    # Typing the values the run used is not "another value": --val-split 0.25 here, --crop-pad 4 at 32×32.
    done = fit(_cfg(folder, tmp_path / "a" / "m.pt", resume=last, crop_pad=4))
    assert done.epochs_run == 2

    # A run that validated on a --val folder keeps validating on it when resumed without typing --val.
    val = make_image_folder(tmp_path / "val", per_class=3, seed=9)
    last = _interrupted(folder, tmp_path / "c" / "m.pt", val=val, val_split=None)
    resumed = fit(TrainConfig(data=folder, arch="", out=tmp_path / "c" / "m.pt", resume=last, given=frozenset()))
    assert (resumed.num_train, resumed.num_val) == (16, 6)


def test_a_spent_time_budget_writes_nothing_and_fails(folder, tmp_path):
    from edgecnn.errors import EdgeCNNError

    with raises(EdgeCNNError, "--time-budget"):
        fit(_cfg(folder, tmp_path / "m.pt", time_budget=1e-9))
    assert not list(tmp_path.glob("m*"))

    first = fit(_cfg(folder, tmp_path / "r" / "m.pt", epochs=1))  # its epoch took far more than 60 microseconds
    with raises(UserInputError, "--time-budget"):
        fit(_cfg(folder, tmp_path / "s" / "m.pt", epochs=3, time_budget=1e-6, resume=first.last_checkpoint))
    assert not (tmp_path / "s").exists()


def test_a_time_budget_still_anneals_when_the_epochs_end_first(folder, tmp_path):
    plain = fit(_cfg(folder, tmp_path / "a.pt", epochs=2))
    budget = fit(_cfg(folder, tmp_path / "b.pt", epochs=2, time_budget=60))
    assert not budget.out_of_time
    # The schedule follows the epochs here (2 of 2 done, 0.1 % of the hour): the same curve as without a budget, up
    # to the finer warm-up of the clock schedule (it stayed in its warm-up, at peak / 25, before).
    assert [r["lr"] for r in budget.history] == pytest.approx([r["lr"] for r in plain.history], rel=0.15)


def test_unwritable_outputs_are_refused_before_training(folder, tmp_path):
    (tmp_path / "m.last.pt").mkdir()
    with raises(UserInputError, "m.last.pt"):
        fit(_cfg(folder, tmp_path / "m.pt", force=True))
    if Path("/proc/self").is_dir():  # a place nobody can create files in, even root
        with raises(UserInputError, "/proc"):
            fit(_cfg(folder, Path("/proc/m.pt")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.last.pt"]


def test_data_problems_found_before_decoding(folder, tmp_path):
    events = []
    with raises(UserInputError, "foo"):
        fit(_cfg(folder, tmp_path / "m.pt", arch_kwargs={"foo": 1}), progress=events.append)
    with raises(UserInputError, "--crop-pad 32", "32×32"):
        fit(_cfg(folder, tmp_path / "m.pt", crop_pad=32), progress=events.append)
    with raises(UserInputError, "--val", str(folder)):
        fit(_cfg(folder, tmp_path / "m.pt", val=folder, val_split=None), progress=events.append)
    assert not [e for e in events if e.phase == "decode"]

    bad_val = tmp_path / "bad-val" / "cat"
    bad_val.mkdir(parents=True)
    (bad_val / "x.png").write_bytes(b"not a png")
    with raises(UserInputError, "bad-val"):
        fit(_cfg(folder, tmp_path / "m.pt", val=bad_val.parent, val_split=None))
    assert not list(tmp_path.glob("m*"))


def test_a_full_or_read_only_disk_is_a_clear_error(folder, small_disk):
    """A real 300 KiB file system: the first checkpoint does not fit (one line, nothing half-written); read-only, the
    run is refused before any decoding."""
    from edgecnn.errors import StorageError

    with raises(StorageError, "m.last.pt", "disk full"):
        fit(_cfg(folder, small_disk / "m.pt", epochs=1))
    assert [p.name for p in small_disk.iterdir()] == []  # no temporary file left
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    events = []
    with raises(StorageError, "read-only file system", "--out"):  # the environment's refusal: exit 74
        fit(_cfg(folder, small_disk / "m.pt", epochs=1), progress=events.append)
    assert events == []


def test_resume_refuses_other_images_under_the_same_names(folder, tmp_path):
    last = _interrupted(folder, tmp_path / "a" / "m.pt", epochs=2)
    swapped = tmp_path / "swapped"
    for src in folder.rglob("*.*"):  # the same names, other pictures
        dst = swapped / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        img = read_image(src)
        import cv2

        cv2.imwrite(str(dst), 255 - img)
    with raises(UserInputError, "--resume"):
        fit(_cfg(swapped, tmp_path / "a" / "m.pt", resume=last))


def test_resume_in_place_never_replaces_another_runs_model(folder, tmp_path):
    """With --force the run's best (here its epoch 1, the .last.pt itself: lr 1e-9 never improves) is put back at
    --out, copied before that .last.pt is rewritten."""
    last = _interrupted(folder, tmp_path / "a" / "m.pt", epochs=2, lr=1e-9)
    other = fit(_cfg(folder, tmp_path / "b" / "m.pt", epochs=1, seed=3))
    other_bytes = other.checkpoint.read_bytes()
    (tmp_path / "a" / "m.pt").write_bytes(other_bytes)  # another run's model where this run's best was
    with raises(UserInputError, "--force"):
        fit(_cfg(folder, tmp_path / "a" / "m.pt", resume=last))
    assert (tmp_path / "a" / "m.pt").read_bytes() == other_bytes
    forced = fit(_cfg(folder, tmp_path / "a" / "m.pt", resume=last, force=True))
    mine = read_checkpoint(forced.checkpoint)
    assert mine["extra"]["epoch"] == forced.best_epoch == 1 and mine["training"]["config"]["seed"] == 0


def test_resume_of_an_early_stopped_run_needs_more_patience(folder, tmp_path):
    stopped = fit(_cfg(folder, tmp_path / "m.pt", epochs=6, lr=1e-9, patience=2))
    assert stopped.stopped_early and stopped.epochs_run == 3
    with raises(UserInputError, "--patience 2"):
        fit(_cfg(folder, tmp_path / "m.pt", epochs=6, lr=1e-9, patience=2, resume=stopped.last_checkpoint))
    more = fit(_cfg(folder, tmp_path / "m.pt", epochs=6, lr=1e-9, patience=3, resume=stopped.last_checkpoint))
    assert more.epochs_run == 4 and more.stopped_early


def test_validation_through_links_to_training_images_is_refused(folder, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(folder / "cat", linked / "cat")
    with raises(UserInputError, "linked"):
        fit(_cfg(folder, tmp_path / "m.pt", val=linked, val_split=None))


def test_resume_messages_name_what_to_pass(folder, tmp_path):
    val = make_image_folder(tmp_path / "val", per_class=2, seed=9)
    last = _interrupted(folder, tmp_path / "a" / "m.pt", val=val, val_split=None)
    val.rename(tmp_path / "val-moved")
    with raises(UserInputError, "--val"):
        fit(TrainConfig(data=folder, arch="", out=tmp_path / "a" / "m.pt", resume=last, given=frozenset()))
    resumed = fit(_cfg(folder, tmp_path / "a" / "m.pt", resume=last, val=tmp_path / "val-moved", val_split=None))
    assert resumed.epochs_run == 2
    with raises(UserInputError, "--resume", str(tmp_path / "a")):
        fit(_cfg(folder, tmp_path / "b" / "m.pt", resume=tmp_path / "a"))
