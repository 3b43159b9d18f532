"""Distributed training under torchrun: 2 CPU processes on the gloo backend, a tiny real image folder.

Checks what DDP promises and what edgecnn adds: identical weights (and BatchNorm statistics) on every rank, each
rank training on its own shard, and checkpoints / metrics written once, by rank 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

from conftest import make_image_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="this PyTorch build has no gloo backend",
    ),
]

WORKER = textwrap.dedent('''
    """One torchrun process: train, then dump this rank's final state and what it wrote."""
    import json, os, sys
    import torch
    import edgecnn.checkpoint as checkpoint

    saves = []
    _save = checkpoint.save_checkpoint

    def counting_save(path, *args, **kwargs):  # pass-through: records which rank writes checkpoints
        saves.append(os.path.basename(str(path)))
        return _save(path, *args, **kwargs)

    checkpoint.save_checkpoint = counting_save
    from edgecnn.train import TrainConfig, fit

    data, out, report = sys.argv[1:4]
    events = []
    result = fit(TrainConfig(data=data, arch="resnet8", out=out, epochs=2, batch_size=4, val_split=0.25, workers=1),
                 progress=events.append)
    rank = os.environ["RANK"]
    torch.save(result.model.state_dict(), os.path.join(report, f"rank{rank}.pt"))
    with open(os.path.join(report, f"rank{rank}.json"), "w") as fh:
        json.dump({"world": result.world_size, "saves": saves, "events": len(events),
                   "num_train": result.num_train, "history": result.history}, fh)
''')


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_ddp_two_gloo_processes_agree_and_rank0_writes(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    report = tmp_path / "report"
    report.mkdir()
    out = tmp_path / "run" / "m.pt"
    proc = _torchrun([str(script), str(data), str(out), str(report)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = (json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["num_train"] == r1["num_train"] == 12
    assert r0["saves"].count("m.last.pt") == 2 and 1 <= r0["saves"].count("m.pt") <= 2 and len(r0["saves"]) <= 4
    assert r1["saves"] == [] and r1["events"] == 0 and r0["events"] > 0  # only rank 0 writes and reports
    untimed = [
        [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in r["history"]]
        for r in (r0, r1)
    ]
    assert untimed[0] == untimed[1]  # losses and accuracies are all-reduced: both ranks saw the same numbers

    s0, s1 = (torch.load(report / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert s0.keys() == s1.keys()
    for k in s0:  # parameters AND BatchNorm buffers
        assert torch.equal(s0[k], s1[k]), k
    from edgecnn.checkpoint import read_checkpoint

    ckpt = read_checkpoint(out.with_suffix(".last.pt"))
    for k in s0:
        assert torch.equal(ckpt["state_dict"][k], s0[k]), k
    assert ckpt["training"]["world_size"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "m.curves.png",
        "m.last.pt",
        "m.metrics.csv",
        "m.metrics.json",
        "m.pt",
    ]


def test_edgecnn_train_cli_under_torchrun(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    out = tmp_path / "run" / "m.pt"
    proc = _torchrun(
        [
            "-m",
            "edgecnn",
            "train",
            str(data),
            "--arch",
            "cifar-cnn",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--val-split",
            "0.25",
            "--out",
            str(out),
            "--json",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # rank 0 alone prints: exactly one JSON document on stdout
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2 and summary["num_train"] == 12
    rows = out.with_suffix("").with_name("m.metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + one row per epoch, written once
    from edgecnn.checkpoint import load_checkpoint

    model, contract, ckpt = load_checkpoint(out)
    assert contract.labels == ["cat", "dog"] and ckpt["training"]["world_size"] == 2


def _torchrun_cli(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "edgecnn",
        "train",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_a_user_error_under_torchrun_is_printed_once(tmp_path):
    """Every rank meets the same refusal; rank 0 alone prints it (it was printed once per rank) and the job fails."""
    data = make_image_folder(tmp_path / "data", per_class=4)
    proc = _torchrun_cli([str(data), "--val", str(data / "cat"), "--out", str(tmp_path / "m.pt")], cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("overlaps the training images") == 1, proc.stderr[-2000:]
    assert "internal error" not in proc.stderr


def test_resume_under_another_number_of_processes_is_refused(tmp_path):
    """--batch-size is per process: a run resumed under another torchrun size would change its global batch."""
    data = make_image_folder(tmp_path / "data", per_class=8)
    out = tmp_path / "m.pt"
    first = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecnn",
            "train",
            str(data),
            "--arch",
            "lenet5",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert first.returncode == 0, first.stderr[-2000:]
    proc = _torchrun_cli(
        [str(data), "--epochs", "2", "--resume", str(tmp_path / "m.last.pt"), "--out", str(out)], cwd=tmp_path
    )
    assert proc.returncode != 0
    assert proc.stderr.count("trained in 1 process(es), this is 2") == 1, proc.stderr[-2000:]
    assert "global batch would change from 4 to 8" in proc.stderr


PEER_WORKER = textwrap.dedent('''
    """Rank 0 fails on its own after epoch 1 (as a full disk would); rank 1 must see a clear EdgeCNNError."""
    import os, sys
    from edgecnn.errors import EdgeCNNError
    from edgecnn.train import TrainConfig, fit

    data, out = sys.argv[1:3]

    def fail_on_rank0(ev):  # the progress callback runs on rank 0 only
        if ev.phase == "epoch":
            raise EdgeCNNError("rank 0 stops here")

    try:
        fit(TrainConfig(data=data, arch="resnet8", out=out, epochs=3, batch_size=4, val_split=0.25, workers=1),
            progress=fail_on_rank0)
    except EdgeCNNError as exc:
        print(f"rank {os.environ['RANK']}: EdgeCNNError: {exc}", flush=True)
        sys.exit(1)
''')


def test_a_rank_that_loses_its_peer_says_so_clearly(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    script = tmp_path / "worker.py"
    script.write_text(PEER_WORKER)
    proc = _torchrun([str(script), str(data), str(tmp_path / "m.pt")], cwd=tmp_path)
    assert proc.returncode != 0
    assert "rank 0: EdgeCNNError: rank 0 stops here" in proc.stdout
    # rank 1 either reports the lost peer clearly or is stopped by torchrun first; never a raw gloo traceback
    assert "[rank1]: RuntimeError" not in proc.stderr, proc.stderr[-3000:]
    if "rank 1:" in proc.stdout:
        assert "rank 1: EdgeCNNError: Another process of this torchrun job stopped" in proc.stdout
