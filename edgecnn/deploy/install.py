"""`edgecnn deploy install`: put a bundle on this device, refusing anything that is not exactly what was bundled.

Order matters: (1) the archive's own sha256 when known (`--sha256`, or a `<bundle>.sha256` file beside it), (2) every
member checked before anything is written (regular files and folders only, relative paths under the one top folder,
no `..`, no links, no devices), (3) extraction into a staging folder next to the target, (4) every file checked
against SHA256SUMS and nothing unlisted, (5) only then the staging folder replaces the installed app. A bad bundle
leaves the previous install untouched. Then the engine is prepared by the bundle's own `start.sh --prepare` (the
same code path as the first start), and optionally the systemd unit is installed and enabled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable
from zlib import error as zlib_error  # a damaged gzip stream raises this mid-extraction

from edgecnn.artifacts import sha256_file
from edgecnn.deploy.bundle import BUNDLE_FORMAT, NAME_RE, parse_sha256sums, systemd_unit, unit_description
from edgecnn.errors import ArtifactError, UserInputError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 8 << 30  # a bundle is a few models, not a disk image


@dataclass
class ServiceTarget:
    """Where and how the systemd unit is installed (injectable so tests need neither root nor systemd)."""

    unit_dir: Path = Path("/etc/systemd/system")
    systemctl: tuple[str, ...] = ("systemctl",)
    is_root: bool | None = None  # None: os.geteuid() == 0
    has_systemd: bool | None = None  # None: /run/systemd/system exists (systemd is PID 1)
    user: str | None = None  # None: $SUDO_USER, else the current user


@dataclass
class InstallReport:
    app_dir: str
    name: str
    files_verified: int
    bundle_sha256: str
    archive_checked: bool
    runtime: str  # 'engine' or 'onnx'
    model: str | None
    engine_note: str
    service: dict = field(default_factory=dict)
    replaced_previous: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- checks


def verify_archive_sha256(bundle: Path, expected: str | None) -> tuple[str, bool]:
    """The bundle's sha256, checked against `expected` or a `<bundle>.sha256` file beside it when either exists."""
    actual = sha256_file(bundle)
    source = "--sha256"
    if expected is None:
        side = bundle.with_name(bundle.name + ".sha256")
        if not side.is_file():
            return actual, False
        words = side.read_text(encoding="utf-8", errors="replace").split()
        expected, source = (words[0] if words else ""), side.name
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UserInputError(f"{source}: expected 64 hex digits, got {expected[:70]!r}")
    if actual != expected:
        raise ArtifactError(
            f"{bundle.name}: sha256 {actual[:16]}... does not match {source} ({expected[:16]}...): the bundle was "
            "changed or damaged in transit; copy it again"
        )
    return actual, True


def check_members(members: list[tarfile.TarInfo]) -> str:
    """Refuse unsafe members before anything is written; return the bundle's top folder name."""
    if not members:
        raise ArtifactError("the bundle is empty")
    if len(members) > MAX_MEMBERS:
        raise ArtifactError(f"the bundle has {len(members)} entries; refusing more than {MAX_MEMBERS}")
    top = None
    seen = set()
    total = 0
    for m in members:
        name = m.name
        if not name or name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
            raise ArtifactError(f"unsafe path in bundle: {name!r} is absolute; refusing to install")
        parts = PurePosixPath(name).parts
        if any(p == ".." for p in parts):
            raise ArtifactError(f"unsafe path in bundle: {name!r} climbs out with '..'; refusing to install")
        if m.issym() or m.islnk():
            raise ArtifactError(f"bundle entry {name!r} is a link (to {m.linkname!r}); bundles hold regular files only")
        if not (m.isfile() or m.isdir()):
            raise ArtifactError(f"bundle entry {name!r} is a device, FIFO or other special file; refusing to install")
        parts = tuple(p for p in parts if p != ".")
        if not parts:
            continue
        if top is None:
            top = parts[0]
        if parts[0] != top:
            raise ArtifactError(f"bundle entries must all sit under one folder; found {top!r} and {parts[0]!r}")
        key = "/".join(parts)
        if m.isfile():
            if key in seen:
                raise ArtifactError(f"bundle entry {name!r} appears twice")
            seen.add(key)
            total += m.size
    if top is None or not NAME_RE.match(top):
        raise ArtifactError(f"bundle folder {top!r} is not a valid app name")
    if total > MAX_TOTAL_BYTES:
        raise ArtifactError(f"the bundle unpacks to {total} bytes; refusing more than {MAX_TOTAL_BYTES}")
    return top


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], top: str, dest: Path) -> list[str]:
    """Write the (already checked) regular files under `dest`; modes limited to rwxr-xr-x. Returns bundle paths."""
    written = []
    for m in members:
        parts = [p for p in PurePosixPath(m.name).parts if p != "."]
        if not m.isfile() or len(parts) < 2:
            continue
        rel = "/".join(parts[1:])
        target = dest.joinpath(*parts[1:])
        if not target.resolve().is_relative_to(dest.resolve()):  # belt and braces after check_members
            raise ArtifactError(f"bundle entry {m.name!r} would land outside the install folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(m)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(src, fh)
        os.chmod(target, 0o755 if m.mode & 0o100 else 0o644)
        written.append(rel)
    return written


def verify_tree(app: Path, written: list[str]) -> int:
    """Every file listed in SHA256SUMS is present with its hash, and nothing unlisted was shipped."""
    sums_path = app / "SHA256SUMS"
    if not sums_path.is_file():
        raise ArtifactError("the bundle has no SHA256SUMS: not an edgecnn bundle, or a damaged one")
    listed = parse_sha256sums(sums_path.read_text(encoding="utf-8"))
    unlisted = sorted(set(written) - set(listed) - {"SHA256SUMS"})
    if unlisted:
        raise ArtifactError(f"bundle file {unlisted[0]} is not in SHA256SUMS: the bundle was tampered with")
    for rel, digest in sorted(listed.items()):
        path = app / rel
        if not path.is_file():
            raise ArtifactError(f"bundle file {rel} listed in SHA256SUMS is missing: the bundle is incomplete")
        if sha256_file(path) != digest:
            raise ArtifactError(f"bundle file {rel} does not match its SHA256SUMS entry: the bundle was tampered with")
    return len(listed)


# ---------------------------------------------------------------- install


def install_bundle(
    bundle: str | Path,
    prefix: str | Path = "/opt/edgecnn",
    expected_sha256: str | None = None,
    service: bool = False,
    build_engine: bool = True,
    python: str | None = None,
    service_target: ServiceTarget | None = None,
    progress: Callable[..., None] | None = None,
) -> InstallReport:
    """Verify, extract and prepare `bundle` under `prefix/<name>`; optionally install + enable its service."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise UserInputError(f"Bundle {bundle} does not exist")
    digest, archive_checked = verify_archive_sha256(bundle, expected_sha256)
    prefix = Path(prefix).expanduser().absolute()
    try:
        tar = tarfile.open(bundle, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"{bundle.name} is not a gzip tar bundle ({exc.__class__.__name__}: {exc})") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArtifactError(f"{bundle.name} is truncated or corrupt ({exc.__class__.__name__})") from exc
        name = check_members(members)
        try:
            prefix.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.install-", dir=prefix))
            os.chmod(staging, 0o755)  # mkdtemp makes it 0700: the service user must be able to read the app
        except PermissionError as exc:
            raise UserInputError(
                f"Cannot write to {prefix}: run with sudo, or install elsewhere with --prefix ~/edgecnn-apps"
            ) from exc
        try:
            try:
                written = _extract(tar, members, name, staging)
            except (tarfile.TarError, EOFError, zlib_error) as exc:
                raise ArtifactError(f"{bundle.name} is truncated or corrupt ({exc.__class__.__name__})") from exc
            if progress:
                progress(1, 3, description="verifying")
            count = verify_tree(staging, written)
            manifest = _manifest(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    app = prefix / name
    replaced = _swap_in(staging, app)
    if progress:
        progress(2, 3, description="preparing the model")
    runtime, model, note = ("onnx", str(app / manifest["run_onnx"]), "engine build skipped (--no-build)")
    if build_engine:
        runtime, model, note = prepare(app, python=python)
    svc = {}
    if service:
        svc = install_service(app, name, service_target or ServiceTarget(), python=python or sys.executable)
    if progress:
        progress(3, 3, description="done")
    return InstallReport(
        app_dir=str(app), name=name, files_verified=count, bundle_sha256=digest, archive_checked=archive_checked,
        runtime=runtime, model=model, engine_note=note, service=svc, replaced_previous=replaced,
    )


def _manifest(app: Path) -> dict:
    try:
        manifest = json.loads((app / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the bundle's bundle.json is missing or invalid ({exc.__class__.__name__})") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ArtifactError(
            f"bundle format {manifest.get('format')!r} is not {BUNDLE_FORMAT}: made by another edgecnn version"
        )
    return manifest


def _swap_in(staging: Path, app: Path) -> bool:
    """Replace `app` by `staging` (two renames in one folder); keep built engines of the previous install."""
    if not app.exists():
        os.replace(staging, app)
        return False
    if not (app / "bundle.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise UserInputError(f"{app} exists and is not an edgecnn app: choose another --prefix (nothing was changed)")
    old_engines = app / "engines"
    if old_engines.is_dir():  # engine files are keyed by model hash + TensorRT version: safe to carry over
        shutil.copytree(old_engines, staging / "engines", dirs_exist_ok=True)
    old = app.with_name(f".{app.name}.old-{os.getpid()}")
    os.replace(app, old)
    os.replace(staging, app)
    shutil.rmtree(old, ignore_errors=True)
    return True


def prepare(app: Path, python: str | None = None, timeout: float = 3600) -> tuple[str, str, str]:
    """Run the bundle's `start.sh --prepare`: builds the engine when TensorRT is here, else settles on ONNX."""
    env = dict(os.environ, EDGECNN_PYTHON=python or sys.executable)
    try:
        proc = subprocess.run(
            [str(app / "start.sh"), "--prepare"], capture_output=True, text=True, env=env, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ArtifactError(f"{app}/start.sh --prepare failed to run: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or lines[-1].split(" ", 1)[0] not in ("engine", "onnx"):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtifactError(f"{app}/start.sh --prepare failed (exit {proc.returncode}): {tail}")
    kind, model = lines[-1].split(" ", 1)
    if kind == "engine":
        note = "TensorRT engine ready"
    else:
        reasons = [line for line in proc.stderr.splitlines() if "TensorRT" in line or "engine" in line]
        note = reasons[-1].split("] ", 1)[-1] if reasons else "TensorRT absent: keeping the ONNX model (ONNX Runtime)"
    return kind, model, note


def install_service(app: Path, name: str, target: ServiceTarget, python: str = "python3") -> dict:
    """Write + enable `<name>.service`, or, without root or systemd, say exactly what would be done.

    The unit runs start.sh with the interpreter that ran the install (it has the requirements), as `user`, who also
    gets the engines/ folder so a TensorRT upgrade can rebuild the engine without root."""
    import getpass

    user = target.user or os.environ.get("SUDO_USER") or getpass.getuser()
    manifest = json.loads((app / "bundle.json").read_text(encoding="utf-8"))
    unit_text = systemd_unit(
        name, str(app), user, tuple(manifest.get("service_args") or ()),
        unit_description(manifest.get("arch"), manifest.get("classes") or 0), python=python,
    )
    unit_path = Path(target.unit_dir) / f"{name}.service"
    commands = [list(target.systemctl) + ["daemon-reload"], list(target.systemctl) + ["enable", "--now", f"{name}.service"]]
    is_root = os.geteuid() == 0 if target.is_root is None else target.is_root
    has_systemd = Path("/run/systemd/system").is_dir() if target.has_systemd is None else target.has_systemd
    plan = {
        "unit": str(unit_path),
        "user": user,
        "commands": [" ".join(c) for c in commands],
        "installed": False,
    }
    if not has_systemd:
        plan["reason"] = "systemd is not running here (not PID 1): the unit was not installed"
        return plan
    if not is_root:
        plan["reason"] = "not root: rerun with sudo to install the unit"
        return plan
    from edgecnn.artifacts import atomic_write_text

    engines = app / "engines"
    engines.mkdir(exist_ok=True)
    try:
        shutil.chown(engines, user=user)
        for f in engines.iterdir():
            shutil.chown(f, user=user)
    except (LookupError, PermissionError) as exc:
        raise UserInputError(f"Cannot give {engines} to user {user!r}: {exc}") from exc
    atomic_write_text(unit_path, unit_text)
    for argv in commands:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserInputError(f"`{' '.join(argv)}` failed: {(proc.stderr.strip() or 'no output').splitlines()[-1]}")
    plan["installed"] = True
    return plan
