"""A crash at any instant leaves every multi-file output entirely old, entirely new, or in a state the next run
finishes: each writer is killed (a real SIGKILL of a real process) at each of its renames in turn, through the fault
hook in files.py (EDGECNN_KILL_AT_RENAME=N) and, where strace is present, through
`strace -e inject=rename:signal=SIGKILL:when=N`, until a run gets through all of them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import build_tiny_onnx, make_image_folder

from edgecnn.calib_pair import check_pair, recorded_table
from edgecnn.contract import read_onnx_contract
from edgecnn.deploy.install import current_release, install_bundle, list_releases, releases_dir, rollback
from edgecnn.errors import ArtifactError
from edgecnn.files import FAULT_ENV, recover_folder, remove_stale_temps, staged_files, temp_beside

ROOT = Path(__file__).resolve().parents[1]
MAX_RENAMES = 12
STRACE = shutil.which("strace")


def _strace_works() -> bool:
    if not STRACE:
        return False
    return subprocess.run([STRACE, "-qq", "-o", "/dev/null", "true"], capture_output=True).returncode == 0


VIAS = ["hook"] + (["strace"] if _strace_works() else [])


def run_killed(argv: list[str], n: int | None, via: str = "hook") -> subprocess.CompletedProcess:
    """Run `argv` (a real process), killed by SIGKILL at its n-th rename (None: not killed)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # no .pyc renames to count
    env.pop(FAULT_ENV, None)
    if n is not None and via == "hook":
        env[FAULT_ENV] = str(n)
    elif n is not None:
        argv = [STRACE, "-f", "-qq", "-o", "/dev/null", "-e", f"inject=rename:signal=SIGKILL:when={n}"] + argv
    return subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)


def every_kill(argv: list[str], via: str = "hook"):
    """Yield (n, returncode) for a kill at rename 1, 2, ... until a run completes (the last one yielded, rc 0)."""
    for n in range(1, MAX_RENAMES + 1):
        proc = run_killed(argv, n, via)
        assert proc.returncode in (0, -9), proc.stderr[-2000:]
        yield n, proc.returncode
        if proc.returncode == 0:
            return
    raise AssertionError(f"{argv} still killed after {MAX_RENAMES} renames")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- the staging helper itself

WRITE_SET = (
    "import sys; from pathlib import Path; from edgecnn.files import staged_files\n"
    "with staged_files() as stage:\n"
    "    for name in ('a.txt', 'b.txt', 'c.txt'):\n"
    "        stage(Path(sys.argv[1]) / name).write_text(sys.argv[2])\n"
)


@pytest.mark.parametrize("via", VIAS)
def test_a_staged_set_is_old_new_or_finished_by_the_next_run(tmp_path, via):
    names = ("a.txt", "b.txt", "c.txt")
    for f in names:
        (tmp_path / f).write_text("old")
    killed = 0
    for n, rc in every_kill([sys.executable, "-c", WRITE_SET, str(tmp_path), "new"], via):
        contents = {(tmp_path / f).read_text() for f in names}
        if rc == -9:
            killed += 1
            journal = any(p.name.startswith(".edgecnn-commit.") for p in tmp_path.iterdir())
            assert contents in ({"old"}, {"new"}) or journal, f"kill at rename {n}: a mixed set, no journal"
            recover_folder(tmp_path)  # what the next run does first
        assert {(tmp_path / f).read_text() for f in names} in ({"old"}, {"new"}), f"kill at rename {n}"
        assert leftovers(tmp_path) == [], f"kill at rename {n} left {leftovers(tmp_path)}"
        for f in names:
            (tmp_path / f).write_text("old")
    assert killed == 4  # the journal, then the three files


def test_the_first_set_is_written_whole(tmp_path):
    # before the first kill test writes "old" the files do not exist: a kill before the journal leaves none of them
    proc = run_killed([sys.executable, "-c", WRITE_SET, str(tmp_path), "new"], 1)
    assert proc.returncode == -9
    recover_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_temps_of_dead_writers_go_live_ones_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [
        tmp_path / f".model.onnx.{pid}.abcd1234.onnx",  # a 0-byte temp beside a model
        tmp_path / f".best.pt.{pid}.x_y9z8w7.pt",  # beside a checkpoint
        tmp_path / f".clip.mp4.{pid}.qwertyui.mp4",  # live --record's hidden recording
    ]
    for p in stale:
        p.write_bytes(b"")
    stale[2].write_bytes(b"\0" * 1000)
    export_dir = tmp_path / f".model.onnx.{pid}.zzzzzzzz.export"
    export_dir.mkdir()
    live = tmp_path / f".other.onnx.{os.getpid()}.abcdefgh.onnx"  # this (running) process's own temp
    live.write_bytes(b"")
    foreign = tmp_path / ".hidden-user-file"
    foreign.write_text("mine")
    tmp = temp_beside(tmp_path / "x.onnx")  # any writer in the folder cleans it first
    tmp.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name])
    assert remove_stale_temps(tmp_path) == []


def test_temp_names_carry_the_writer_pid(tmp_path):
    with staged_files() as stage:
        tmp = stage(tmp_path / "m.onnx")
        assert f".m.onnx.{os.getpid()}." in tmp.name
        tmp.write_text("x")


# ---------------------------------------------------------------- quantize --cache: model + table


@pytest.fixture
def quantize_setup(tmp_path):
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    calib = make_image_folder(tmp_path / "calib", per_class=4, seed=1)
    out, cache = tmp_path / "q" / "tiny.int8.onnx", tmp_path / "q" / "tiny.calib"

    def argv(percentile: str) -> list[str]:
        args = ["quantize", model, "--calib", calib, "--out", out, "--cache", cache, "--force", "--json"]
        return (
            [sys.executable, "-m", "edgecnn"]
            + [str(a) for a in args]
            + ["--method", "percentile"]
            + [
                "--percentile",
                percentile,
            ]
        )

    return argv, out, cache


def test_quantize_kill_at_every_rename_never_pairs_model_and_table_wrongly(quantize_setup):
    argv, out, cache = quantize_setup
    assert run_killed(argv("99.9"), None).returncode == 0
    old = (out.read_bytes(), cache.read_bytes())
    killed = 0
    for n, rc in every_kill(argv("99.0")):
        check_pair(out, cache)  # the next reader (build-engine, deploy bundle): finishes the commit, then checks
        entry = recorded_table(read_onnx_contract(out))
        assert entry and entry["sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest(), f"kill at rename {n}"
        assert (out.read_bytes(), cache.read_bytes()) == old or cache.read_bytes() != old[1]
        assert leftovers(out.parent) == [], f"kill at rename {n} left {leftovers(out.parent)}"
        killed += rc == -9
        if rc == -9:  # back to the old pair for the next kill
            out.write_bytes(old[0])
            cache.write_bytes(old[1])
    assert killed >= 3  # its work files, then the journal, the model, the table


def test_a_table_from_another_run_is_refused_by_name(quantize_setup, tmp_path):
    argv, out, cache = quantize_setup
    assert run_killed(argv("99.9"), None).returncode == 0
    other = tmp_path / "other.calib"
    shutil.copy(cache, other)
    assert run_killed(argv("99.0"), None).returncode == 0
    with pytest.raises(ArtifactError, match=r"other\.calib is not the calibration table tiny\.int8\.onnx was quant"):
        check_pair(out, other)
    from edgecnn.trt.builder import check_inputs
    from edgecnn.trt.plan import BuildOptions

    with pytest.raises(ArtifactError, match=r"--calib-cache .*other\.calib is not the calibration table"):
        check_inputs(out, tmp_path / "m.engine", BuildOptions(precision="int8", calib_cache=str(other)))


# ---------------------------------------------------------------- deploy bundle --force: archive + .sha256


def _bundle_argv(model: Path, out: Path, source: str) -> list[str]:
    return [sys.executable, "-m", "edgecnn", "deploy", "bundle", str(model), "--out", str(out), "--force"] + [
        "--source",
        source,
    ]


def _bundled_source(bundle: Path) -> str:
    with tarfile.open(bundle) as tar:
        return json.load(tar.extractfile("tiny/bundle.json"))["source"]


@pytest.mark.parametrize("via", VIAS)
def test_bundle_kill_at_every_rename_keeps_archive_and_checksum_together(tmp_path, via):
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "b" / "tiny.tar.gz"
    assert run_killed(_bundle_argv(model, out, "0"), None).returncode == 0
    old = (out.read_bytes(), out.with_name("tiny.tar.gz.sha256").read_bytes())
    killed = 0
    for n, rc in every_kill(_bundle_argv(model, out, "1"), via):
        report = install_bundle(out, tmp_path / f"prefix{n}", build_engine=False)  # checks the .sha256 first
        assert report.archive_checked, f"kill at rename {n}"
        assert _bundled_source(out) in ("0", "1")
        assert leftovers(out.parent) == [], f"kill at rename {n} left {leftovers(out.parent)}"
        killed += rc == -9
        out.write_bytes(old[0])
        out.with_name("tiny.tar.gz.sha256").write_bytes(old[1])
    assert killed >= 3  # journal, archive, checksum


# ---------------------------------------------------------------- deploy install: releases and one symlink


@pytest.fixture
def two_bundles(tmp_path):
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    paths = []
    for source in ("0", "1"):
        out = tmp_path / f"v{source}" / "tiny.tar.gz"
        assert run_killed(_bundle_argv(model, out, source), None).returncode == 0
        paths.append(out)
    return paths


def _install_argv(bundle: Path, prefix: Path) -> list[str]:
    return [sys.executable, "-m", "edgecnn", "deploy", "install", str(bundle), "--prefix", str(prefix), "--no-build"]


def _app_source(app: Path) -> str | None:
    if not (app / "bundle.json").is_file():
        return None
    return json.loads((app / "bundle.json").read_text())["source"]


def _make_legacy(app: Path) -> None:
    """Turn a release-style install into the plain folder earlier edgecnn versions made."""
    release = current_release(app)
    app.unlink()
    shutil.copytree(release, app)
    shutil.rmtree(releases_dir(app))


@pytest.mark.parametrize("legacy", [False, True], ids=["over-release", "over-plain-folder"])
def test_install_kill_at_every_rename_leaves_old_or_new_app(two_bundles, tmp_path, legacy):
    old_bundle, new_bundle = two_bundles
    killed = 0
    for n in range(1, MAX_RENAMES + 1):
        prefix = tmp_path / f"prefix{n}"
        install_bundle(old_bundle, prefix, build_engine=False)
        app = prefix / "tiny"
        if legacy:
            _make_legacy(app)
        proc = run_killed(_install_argv(new_bundle, prefix), n)
        assert proc.returncode in (0, -9), proc.stderr
        if proc.returncode == 0:
            break
        killed += 1
        seen = _app_source(app)
        # between the two renames that turn a plain folder into a release, the app path is briefly missing
        assert seen in ("0", "1") or (legacy and seen is None), f"kill at rename {n}: {seen}"
        install_bundle(new_bundle, prefix, build_engine=False)  # the next run repairs, then installs
        assert _app_source(app) == "1" and app.is_symlink()
        assert sorted(p.name for p in prefix.iterdir()) == [".tiny.releases", "tiny"], f"kill at rename {n}"
        assert 1 <= len(list_releases(app)) <= 2
        assert leftovers(releases_dir(app)) == []
    assert killed == (3 if legacy else 2)


def test_rollback_switches_to_the_previous_release_and_back(two_bundles, tmp_path):
    old_bundle, new_bundle = two_bundles
    prefix = tmp_path / "prefix"
    install_bundle(old_bundle, prefix, build_engine=False)
    app = prefix / "tiny"
    (app / "local.conf").write_text("kept")
    report = install_bundle(new_bundle, prefix, build_engine=False)
    assert report.replaced_previous and report.previous_extra_files == ["local.conf"]
    assert _app_source(app) == "1"
    proc = run_killed(
        [sys.executable, "-m", "edgecnn", "deploy", "install", "--rollback", "tiny", "--prefix", str(prefix)], None
    )
    assert proc.returncode == 0, proc.stderr
    assert _app_source(app) == "0" and (app / "local.conf").read_text() == "kept"
    rollback("tiny", prefix)
    assert _app_source(app) == "1"
    install_bundle(old_bundle, prefix, build_engine=False)  # a third release: only current + previous are kept
    assert len(list_releases(app)) == 2


def test_a_legacy_old_folder_left_by_a_crash_becomes_the_app_again(two_bundles, tmp_path):
    """Earlier versions renamed the app aside (.NAME.old-*) before moving the new one in: a kill between left no app.
    The next install (or rollback) keeps that folder as a release instead of losing it."""
    old_bundle, new_bundle = two_bundles
    prefix = tmp_path / "prefix"
    install_bundle(old_bundle, prefix, build_engine=False)
    app = prefix / "tiny"
    _make_legacy(app)
    app.rename(prefix / ".tiny.old-k2j3h4")
    (prefix / ".tiny.install-abc123").mkdir()
    with pytest.raises(Exception, match="not an installed app"):
        rollback("tiny", prefix / "elsewhere")
    rollback_target = None
    try:
        rollback("tiny", prefix)
    except Exception as exc:  # only one release: repaired, but nothing to roll back to
        rollback_target = str(exc)
    assert "no previous release" in (rollback_target or "")
    assert _app_source(app) == "0"
    assert sorted(p.name for p in prefix.iterdir()) == [".tiny.releases", "tiny"]


# ---------------------------------------------------------------- folder writers: deploy triton / deepstream --force


@pytest.mark.parametrize(
    "command",
    [
        ["deploy", "triton", "{model}", "--repo", "{parent}", "--name", "m", "--force"],
        ["deploy", "deepstream", "{model}", "--out", "{parent}/m", "--force"],
    ],
    ids=["triton", "deepstream"],
)
def test_a_replaced_output_folder_is_never_lost(tmp_path, command):
    """The old folder is renamed aside before the new one moves in: a kill between those renames used to leave no
    folder at all. Now the next run finishes the swap (files.replace_folder's journal)."""
    model = build_tiny_onnx(tmp_path / "tiny.onnx")
    parent = tmp_path / "out"
    argv = [sys.executable, "-m", "edgecnn"] + [a.format(model=model, parent=parent) for a in command]
    assert run_killed(argv, None).returncode == 0
    target = parent / "m"
    first = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))
    (target / "marker-of-the-old-one").write_text("old")  # deploy deepstream keeps only its own files: a label
    if "deepstream" in command:
        (target / "marker-of-the-old-one").unlink()
        (target / "README.md").write_text("old")
    killed = 0
    for n, rc in every_kill(argv):
        killed += rc == -9
        recover_folder(parent)  # the next run in that folder
        assert target.is_dir(), f"kill at rename {n}: {target} is gone"
        now = sorted(p.relative_to(target).as_posix() for p in target.rglob("*"))
        assert set(first) <= set(now), f"kill at rename {n}: incomplete {now}"
        assert leftovers(parent) == [], f"kill at rename {n} left {leftovers(parent)}"
    assert killed >= 2


def test_a_killed_recording_is_removed_by_the_next_one(tiny_onnx, tmp_path):
    from conftest import write_video

    video = write_video(tmp_path / "clip.avi", frames=6, fourcc="MJPG")
    out = tmp_path / "rec" / "out.avi"
    out.parent.mkdir()
    argv = [sys.executable, "-m", "edgecnn", "live", str(tiny_onnx), "--source", str(video), "--headless"]
    argv += ["--no-pace", "--record", str(out)]
    proc = run_killed(argv, 1)  # dies as it puts the finished recording in place
    assert proc.returncode == -9, proc.stderr
    hidden = leftovers(out.parent)
    assert len(hidden) == 1 and hidden[0].startswith(".out.avi.") and not out.exists()
    assert run_killed(argv, None).returncode == 0
    assert out.is_file() and leftovers(out.parent) == []


def test_an_unfinishable_bundle_commit_is_named_not_called_damage(tmp_path):
    """Where the next run cannot finish a killed `deploy bundle` commit (here its temporary cannot be renamed; in life
    a read-only folder), install names the interrupted write instead of "damaged in transit"."""
    from edgecnn.deploy.bundle import BundleOptions, create_bundle
    from edgecnn.deploy.install import verify_archive_sha256

    out = tmp_path / "b" / "tiny.tar.gz"
    create_bundle(build_tiny_onnx(tmp_path / "tiny.onnx"), out, BundleOptions())
    sidecar = out.with_name("tiny.tar.gz.sha256")
    sidecar.write_text("0" * 64 + "  tiny.tar.gz\n")  # the other half of a pair a kill split
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    stuck = tmp_path / "b" / "not-renamable"
    (stuck / "sub").mkdir(parents=True)  # a folder cannot be renamed over the archive
    journal = tmp_path / "b" / f".edgecnn-commit.{dead}.1.json"
    journal.write_text(json.dumps({"renames": [[str(stuck), str(sidecar)], [str(stuck), str(out)]]}))
    with pytest.raises(ArtifactError, match=r"interrupted `edgecnn deploy bundle`.*re-run deploy bundle --force"):
        verify_archive_sha256(out, None)
    journal.unlink()
    with pytest.raises(ArtifactError, match="damaged in transit"):
        verify_archive_sha256(out, None)
