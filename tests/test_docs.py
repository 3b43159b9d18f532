"""Every command in README.md and docs/*.md that can run on a CPU is run here, so the documentation cannot rot.

What runs: each fenced ```bash / ```console block. A block right after `<!-- not-run: REASON -->` is skipped (it needs
TensorRT, a GPU, a camera, a Jetson, root, a network host, ...). Every line of any other block must be an `edgecnn`
command (comments and blank lines aside): it runs in-process through Typer's CliRunner and must exit 0. A line of
another program in an unmarked block fails the test: run it, or mark the block.

Where: each page runs in a fresh folder holding the starting files its `<!-- test-files: ... -->` line names, made
from the workplace's real data (../shared/data: small CIFAR-10 and scenes subsets; skipped cleanly when absent) and a
real model trained and exported once per session (FILES below). The blocks of a page run in order, so a command uses
the files that earlier commands on the page wrote.

Substitutions made only here, to keep the test short (a page shows the real values):
- `--epochs N` becomes `--epochs 1` (`--epochs 2` for a `--resume` line, which must go past the first run's epoch);
- `edgecnn profile` gets `-n 5 --warmup 1` (not the default 100 timed runs);
- `edgecnn quantize efficientnet-lite0` gets `--rounding nearest` (GPTQ over its 4M weights costs ~15 s of CPU;
  tests/test_quant_rounding.py covers GPTQ, and the small model's quantize lines here use it);
- a pipe's right-hand side (`| head -1`, `| grep lite`) is dropped; the edgecnn command on its left runs.
A line that sets an accuracy gate (`--min-agreement`, `--max-diff`, `--max-drop`, `adopt --check-preprocessing`) may
also exit 5: the gate's verdict depends on the small model trained here, the command still has to run through.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import onnx
import pytest
from typer.testing import CliRunner

from edgecnn.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GATES = ("--min-agreement", "--max-diff", "--max-drop", "--check-preprocessing")
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
TEST_FILES = re.compile(r"<!--\s*test-files:\s*(.*?)\s*-->")

runner = CliRunner()


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # the reason, or None when the block runs


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the not-run reason of the comment right above it (blank lines between
    are allowed)."""
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        reason = NOT_RUN.search(lines[k]) if k >= 0 else None
        blocks.append(Block(page, start + 1, lang, "\n".join(lines[start + 1 : j]), reason and reason.group(1)))
        i = j + 1
    return blocks


def commands(block: Block) -> list[list[str]]:
    """The commands of a block as argv lists (continuation lines joined, comments and pipes' right sides dropped)."""
    out = []
    for line in block.text.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if "|" in argv:
            argv = argv[: argv.index("|")]
        if argv:
            out.append(argv)
    return out


def substitute(argv: list[str]) -> list[str]:
    """The test-only substitutions of the module docstring."""
    argv = list(argv)
    if "--epochs" in argv:
        argv[argv.index("--epochs") + 1] = "2" if "--resume" in argv else "1"
    if argv[:2] == ["edgecnn", "profile"]:
        argv[2:2] = ["-n", "5", "--warmup", "1"]
    if argv[:3] == ["edgecnn", "quantize", "efficientnet-lite0"] and "--rounding" not in argv:
        argv += ["--rounding", "nearest"]
    return argv


def test_every_block_runs_or_is_marked():
    """A ```bash/```console block either holds only edgecnn commands or says why it cannot run here."""
    unrunnable = []
    for page in PAGES:
        for block in read_blocks(page):
            if block.lang not in ("bash", "console", "sh", "shell") or block.not_run:
                continue
            for argv in commands(block):
                if argv[0] != "edgecnn":
                    unrunnable.append(f"{page.name}:{block.line}: {' '.join(argv)}")
    assert not unrunnable, "mark these blocks <!-- not-run: REASON --> or make them edgecnn commands:\n" + "\n".join(
        unrunnable
    )


def test_every_page_names_its_starting_files():
    """A page with runnable commands says which starting files it needs, and each is one the test can make."""
    for page in PAGES:
        runnable = [b for b in read_blocks(page) if b.lang in ("bash", "console") and not b.not_run]
        names = _starting_files(page)
        assert set(names) <= set(FILES), f"{page.name}: no starting file {sorted(set(names) - set(FILES))}"
        if any(argv[1:] and argv[1] not in ("models", "doctor", "--version") for b in runnable for argv in commands(b)):
            assert TEST_FILES.search(page.read_text(encoding="utf-8")), f"{page.name} has no <!-- test-files: --> line"


# ---- the starting files --------------------------------------------------------------------------------------------


def _starting_files(page: Path) -> list[str]:
    m = TEST_FILES.search(page.read_text(encoding="utf-8"))
    return m.group(1).split() if m else []


def _copy_images(src_dirs: list[Path], dst: Path, per_class: int) -> None:
    for src in src_dirs:
        target = dst / src.name
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(src.glob("*.jpg"))[:per_class]:
            shutil.copy(path, target / path.name)


def _photos(scenes: Path, n: int, offset: int = 0) -> list[Path]:
    return sorted((scenes / "buildings").glob("*.jpg"))[offset : offset + n]


def _video(path: Path, photos: list[Path], fps: float = 30.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    assert writer.isOpened()
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (160, 120)))
    writer.release()


def _run(argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, f"{' '.join(argv)}: exit {result.exit_code}\n{result.output}"


# Each starting file: how to put it into a page's folder from the session's assets folder.
FILES = {
    "data/cifar10/": "data/cifar10",
    "data/scenes/": "data/scenes",
    "data/val/": "data/val",
    "photo.jpg": "photo.jpg",
    "photo1.jpg": "photo.jpg",
    "photos/": "photos",
    "imagenet/val/": "imagenet/val",
    "calibration/": "calibration",
    "clip.mp4": "clip.mp4",
    "model.pt": "model.pt",
    "runs/best.pt": "model.pt",
    "model.onnx": "model.onnx",
    "runs/cnn.onnx": "model.onnx",
    "model.int8.onnx": "model.int8.onnx",
    "their-model.onnx": "their-model.onnx",  # model.onnx without edgecnn metadata: a foreign model for `adopt`
    "labels.txt": "labels.txt",
}


@pytest.fixture(scope="session")
def assets(tmp_path_factory, cifar_dir, scenes_dir) -> Path:
    """Small real data and one real CIFAR-10 model (trained 1 epoch, exported, quantized), made once."""
    root = tmp_path_factory.mktemp("doc-assets")
    classes = sorted(p for p in (cifar_dir / "train").iterdir() if p.is_dir())
    _copy_images(classes, root / "data/cifar10/train", 20)
    _copy_images([cifar_dir / "test" / c.name for c in classes], root / "data/cifar10/test", 8)
    shutil.copytree(root / "data/cifar10/test", root / "data/val")
    _copy_images([scenes_dir / "buildings", scenes_dir / "forest"], root / "data/scenes", 8)
    photos = _photos(scenes_dir, 40)
    shutil.copy(photos[0], root / "photo.jpg")
    (root / "photos").mkdir()
    for p in photos[1:4]:
        shutil.copy(p, root / "photos" / p.name)
    (root / "calibration/lobby-cam").mkdir(parents=True)
    for p in photos[4:20]:
        shutil.copy(p, root / "calibration/lobby-cam" / p.name)
    for wnid, src in (("n03028079", "buildings"), ("n09468604", "forest")):  # church, valley
        (root / "imagenet/val" / wnid).mkdir(parents=True)
        for p in sorted((scenes_dir / src).glob("*.jpg"))[40:43]:
            shutil.copy(p, root / "imagenet/val" / wnid / p.name)
    _video(root / "clip.mp4", photos[:30])
    data = str(root / "data/cifar10")
    _run(["train", data, "--arch", "cifar-cnn", "--epochs", "1", "--out", str(root / "model.pt")])
    _run(["export", str(root / "model.pt"), "--out", str(root / "model.onnx"), "--dynamic-batch"])
    foreign = onnx.load(str(root / "model.onnx"))
    labels = json.loads(next(p.value for p in foreign.metadata_props if p.key == "edgecnn.labels"))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(root / "their-model.onnx"))
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    calib = str(root / "calibration")
    _run(
        [
            "quantize",
            str(root / "model.onnx"),
            "--calib",
            calib,
            "--target",
            "cpu",
            "--out",
            str(root / "model.int8.onnx"),
        ]
    )
    return root


def _prepare(page: Path, assets: Path, folder: Path) -> None:
    for name in _starting_files(page):
        src, dst = assets / FILES[name], folder / name.rstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_commands_run(page, assets, tmp_path, monkeypatch):
    """The page's runnable commands, in order, in a folder holding its starting files."""
    runnable = [b for b in read_blocks(page) if b.lang in ("bash", "console") and not b.not_run]
    if not runnable:
        pytest.skip(f"{page.name} has no command that runs on a CPU")
    folder = tmp_path / "work"
    folder.mkdir()
    _prepare(page, assets, folder)
    monkeypatch.chdir(folder)
    for block in runnable:
        for argv in commands(block):
            argv = substitute(argv)
            t0 = time.perf_counter()
            result = runner.invoke(app, argv[1:])
            print(f"{time.perf_counter() - t0:6.1f} s  {shlex.join(argv)}")
            allowed = (0, 5) if any(g in argv for g in GATES) else (0,)
            assert result.exit_code in allowed, (
                f"{page.name}:{block.line}: {shlex.join(argv)} exited {result.exit_code}\n{result.output}"
            )
