"""One I/O error path: every writing command against a full disk and a read-only folder.

A real 3 MB tmpfs filled to the last byte stands for a full disk, and a tmpfs remounted read-only for a read-only
folder (as root, chmod is not enough: root writes anyway). Each command must fail with the one StorageError: exit 74,
one line naming what could not be written and why, never "internal error" (70), an exit 1, or a misleading cause
(export's "at opset 17"). With --json the same failure is an error object on stdout. Skipped where a tmpfs cannot be
mounted (not root, a container without CAP_SYS_ADMIN).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_onnx, make_image_folder, write_video
from typer.testing import CliRunner

from edgecnn.cli.main import app
from edgecnn.errors import StorageError

runner = CliRunner()


def _mount(folder: Path, *options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=3m",) + options)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True).returncode == 0
    )


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the tmpfs at `folder` until `leave` bytes (about) are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    fd = os.open(folder / ".filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\0" * max(0, free - leave))
        while not leave:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.fixture
def full_disk(tmp_path):
    folder = tmp_path / "full"
    if os.geteuid() != 0 or not _mount(folder):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    _fill(folder)
    yield folder
    _umount(folder)


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "ro"
    if os.geteuid() != 0 or not _mount(folder):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode:
        _umount(folder)
        pytest.skip("cannot remount a tmpfs read-only here")
    yield folder
    _umount(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """What the commands read: a tiny ONNX, a checkpoint, images, a video, a bundle (on the normal disk)."""
    root = tmp_path_factory.mktemp("inputs")
    onnx = build_tiny_onnx(root / "tiny.onnx")
    images = make_image_folder(root / "images", classes=("cat", "dog", "bird"), per_class=4)
    video = write_video(root / "clip.mp4", frames=60, size=(160, 120))
    from edgecnn.deploy.bundle import BundleOptions, create_bundle

    bundle = root / "tiny.tar.gz"
    create_bundle(onnx, bundle, BundleOptions(precision="fp16", device="orin-nano", source="0"))
    ckpt = None
    try:
        import torch  # noqa: F401

        from edgecnn.checkpoint import save_checkpoint
        from edgecnn.contract import ModelContract
        from edgecnn.models.registry import create_model, get_entry

        contract = ModelContract(labels=["cat", "dog"], preprocess=get_entry("lenet5").preprocess, arch="lenet5")
        ckpt = save_checkpoint(
            root / "m.pt", create_model("lenet5", num_classes=2).eval(), "lenet5", {"num_classes": 2}, contract
        )
    except ImportError:
        pass
    return {"onnx": onnx, "images": images, "video": video, "bundle": bundle, "ckpt": ckpt}


# (case, argv builder: (inputs, DIR) -> argv, needs torch)
COMMANDS = [
    (
        "train",
        lambda i, d: [
            "train",
            i["images"],
            "--out",
            d / "m.pt",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--arch",
            "lenet5",
        ],
        True,
    ),
    ("export", lambda i, d: ["export", i["ckpt"], "--out", d / "m.onnx"], True),
    (
        "quantize",
        lambda i, d: ["quantize", i["onnx"], "--calib", i["images"], "--out", d / "q.onnx", "--target", "cpu"],
        False,
    ),
    (
        "quantize --report",
        lambda i, d: [
            "quantize",
            i["onnx"],
            "--calib",
            i["images"],
            "--out",
            d.parent / "ok.q.onnx",
            "--report",
            d / "rep",
            "--target",
            "cpu",
            "--force",
        ],
        False,
    ),
    ("calibrate capture", lambda i, d: ["calibrate", "capture", "--source", i["video"], "--out", d / "frames"], False),
    (
        "live --record",
        lambda i, d: [
            "live",
            i["onnx"],
            "--source",
            i["video"],
            "--headless",
            "--max-frames",
            "20",
            "--record",
            d / "rec.mp4",
        ],
        False,
    ),
    (
        "profile --report",
        lambda i, d: ["profile", i["onnx"], "--iterations", "2", "--warmup", "0", "--report", d / "rep"],
        False,
    ),
    ("deploy bundle", lambda i, d: ["deploy", "bundle", i["onnx"], "--out", d / "b.tar.gz"], False),
    ("deploy triton", lambda i, d: ["deploy", "triton", i["onnx"], "--repo", d / "repo"], False),
    ("deploy deepstream", lambda i, d: ["deploy", "deepstream", i["onnx"], "--out", d / "ds"], False),
    ("deploy install", lambda i, d: ["deploy", "install", i["bundle"], "--prefix", d / "p", "--no-build"], False),
]


def _run(case, argv_of, needs_torch, inputs, folder, json_out=False):
    if needs_torch:
        pytest.importorskip("torch")
    argv = [str(a) for a in argv_of(inputs, folder)] + (["--json"] if json_out else [])
    return runner.invoke(app, argv)


def _assert_storage_error(res, folder: Path, why: str):
    assert res.exit_code == StorageError.exit_code, res.output
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: Cannot write"), res.stderr
    assert str(folder) in line and why in line, line
    assert "internal error" not in res.output and "Traceback" not in res.output and "opset" not in line


@pytest.mark.parametrize("case,argv_of,needs_torch", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_full_disk_is_one_storage_error(case, argv_of, needs_torch, inputs, full_disk):
    res = _run(case, argv_of, needs_torch, inputs, full_disk)
    _assert_storage_error(res, full_disk, "disk full")
    leftovers = [p.name for p in full_disk.iterdir() if p.name != ".filler"]
    assert leftovers == [], leftovers  # nothing half-written is left behind


@pytest.mark.parametrize("case,argv_of,needs_torch", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_read_only_folder_is_one_storage_error(case, argv_of, needs_torch, inputs, read_only):
    res = _run(case, argv_of, needs_torch, inputs, read_only)
    _assert_storage_error(res, read_only, "read-only")


def test_json_failure_is_an_error_object_on_stdout(inputs, full_disk):
    res = _run(*COMMANDS[-2], inputs, full_disk, json_out=True)  # deploy deepstream
    err = json.loads(res.stdout)["error"]
    assert err["exit_code"] == 74 and err["type"] == "StorageError" and "disk full" in err["why"]
    assert str(full_disk) in err["message"] and err["kept"]


def test_capture_on_a_filling_disk_keeps_the_frames_saved_and_says_how_many(inputs, tmp_path):
    folder = tmp_path / "small"
    if os.geteuid() != 0 or not _mount(folder):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        _fill(folder, leave=60_000)  # room for a few 160x120 JPEGs, not for 200
        res = runner.invoke(
            app,
            ["calibrate", "capture", "--source", str(inputs["video"]), "--out", str(folder / "f"), "--every-ms", "0"],
        )
        assert res.exit_code == 74, res.output
        saved = sorted((folder / "f").glob("*.jpg"))
        assert saved, res.output
        line = res.stderr.strip().splitlines()[-1]
        assert f"kept the {len(saved)} frame(s) saved" in line and "disk full" in line, line
        assert not [p for p in (folder / "f").iterdir() if p.name.startswith(".")]  # no half-written temp file
    finally:
        _umount(folder)


def test_storage_error_from_a_library_error_behind_it():
    """A full disk that torch or onnx re-raised as their own error is still recognised (export said 'at opset 17')."""
    from edgecnn.errors import storage_error

    try:
        try:
            raise OSError(28, "No space left on device", "/x/m.onnx")
        except OSError as inner:
            raise RuntimeError("export failed") from inner
    except RuntimeError as exc:
        err = storage_error(exc, "m.onnx", "nothing was written")
    assert isinstance(err, StorageError) and "disk full" in str(err) and "nothing was written" in str(err)
    assert storage_error(RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 64 vs 0"))
    assert storage_error(ValueError("bad value")) is None


def test_cli_maps_an_unhandled_oserror_to_the_storage_error(tmp_path):
    """A write outside the helpers (a library's own open()) meeting a read-only file system: exit 74, not 70."""
    code = (
        "import errno, typer\n"
        "from edgecnn.cli.common import add_command\n"
        "app = typer.Typer()\n"
        "def w(json_out: bool = False):\n"
        "    raise OSError(errno.EROFS, 'Read-only file system', '/mnt/x/out.bin')\n"
        "add_command(app, 'w', w)\n"
        "app(['--json'] if False else [])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 74, proc.stderr
    assert "Cannot write /mnt/x/out.bin: read-only file system" in proc.stderr


def test_train_meeting_a_full_disk_mid_run_is_the_storage_error_not_exit_1(tmp_path):
    """The checkpoint write fails after training started (room for the output probe, not for a checkpoint)."""
    pytest.importorskip("torch")
    folder = tmp_path / "small"
    if os.geteuid() != 0 or not _mount(folder):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        data = make_image_folder(tmp_path / "data", per_class=6)
        _fill(folder, leave=40_000)
        res = runner.invoke(
            app, ["train", str(data), "--out", str(folder / "m.pt"), "--epochs", "1", "--arch", "cifar-cnn"]
        )
        assert res.exit_code == 74, res.output
        line = res.stderr.strip().splitlines()[-1]
        assert "Cannot write" in line and str(folder / "m") in line and "disk full" in line, line
    finally:
        _umount(folder)
