"""`edgecnn deploy install`: put a bundle on this device, refusing anything that is not exactly what was bundled.

Order matters: (1) the archive's own sha256 when known (`--sha256`, or a `<bundle>.sha256` file beside it), (2) every
member checked before anything is written (regular files and folders only, relative paths under the one top folder,
no `..`, no links, no devices, no file that is also a folder), (3) extraction into a staging folder next to the target,
(4) every file checked against SHA256SUMS and nothing unlisted, (5) only then the previous install is renamed aside
and the staging folder takes its place, (6) the engine is prepared by the bundle's own `start.sh --prepare` (the same
code path as the first start), and optionally the systemd unit is installed and enabled. Any failure up to and
including (6) removes the new files and puts the previous install back exactly (renames, nothing rewritten). On success
the previous install is kept, one generation, as `PREFIX/.NAME.previous` (a rollback is two `mv`s); only its built
engines are carried into the new install, files a user added to it stay in `.NAME.previous`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable
from zlib import error as zlib_error  # a damaged gzip stream raises this mid-extraction

from edgecnn.deploy.bundle import BUNDLE_FORMAT, NAME_RE, parse_sha256sums, systemd_unit, unit_description
from edgecnn.errors import ArtifactError, EdgeCNNError, StorageError, UserInputError, storage_error
from edgecnn.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_folder,
    fsync_path,
    make_dirs,
    pending_commit,
    recover_folder,
    remove_created,
    remove_stale_temps,
    rename,
    sha256_file,
    temp_folder_beside,
)

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
    previous_kept: str | None = None  # the release that was current before (kept for `rollback`)
    previous_extra_files: list[str] = field(default_factory=list)  # files a user added to it (not carried over)
    release: str | None = None  # the release folder PREFIX/NAME now points at

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- checks


def verify_archive_sha256(bundle: Path, expected: str | None) -> tuple[str, bool]:
    """The bundle's sha256, checked against `expected` or a `<bundle>.sha256` file beside it when either exists."""
    repaired = recover_folder(bundle.parent)  # a `deploy bundle` killed mid-commit: finish its pair first
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
        journal = pending_commit(bundle)
        if journal is not None and not repaired:
            raise ArtifactError(
                f"{bundle.name} and {source} are from an interrupted `edgecnn deploy bundle` (its commit "
                f"{journal.name} is unfinished and {bundle.parent} is not writable here): re-run deploy bundle --force"
            )
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
    folders = set()
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
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if m.isfile():
            if key in seen:
                raise ArtifactError(f"bundle entry {name!r} appears twice")
            seen.add(key)
            total += m.size
        else:
            folders.add(key)
    clash = sorted(seen & folders)
    if clash:
        raise ArtifactError(f"bundle entry {clash[0]!r} is both a file and a folder; refusing to install")
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
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:  # check_members refuses these first
            raise ArtifactError(f"bundle entry {m.name!r} clashes with another entry (file vs folder)") from exc
        src = tar.extractfile(m)
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
        if rel.startswith("/") or "\\" in rel or ".." in PurePosixPath(rel).parts:
            raise ArtifactError(f"SHA256SUMS lists {rel!r}, outside the bundle: the bundle was tampered with")
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
    """Verify, extract and prepare `bundle` as a new release of `prefix/<name>`, switch to it with one symlink
    rename, optionally install + enable its service.

    Nothing is changed unless everything succeeds: a failure before the switch removes the new release; a failure
    of the service step switches back. The previous release is kept for `rollback`."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise UserInputError(f"Bundle {bundle} does not exist")
    prefix = Path(prefix).expanduser().absolute()
    check_prefix(prefix)
    digest, archive_checked = verify_archive_sha256(bundle, expected_sha256)
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
        app = prefix / name
        if (app.exists() or app.is_symlink()) and not (app / "bundle.json").is_file():
            raise UserInputError(
                f"{app} exists and is not an edgecnn app: choose another --prefix (nothing was changed)"
            )
        created = _make_dirs(prefix)
        releases = releases_dir(app)
        staging = None
        try:
            try:
                releases.mkdir(exist_ok=True)
                repair_app(app)
                staging = temp_folder_beside(releases / name, "install")
                os.chmod(staging, 0o755)  # mkdtemp makes it 0700: the service user must be able to read the app
            except OSError as exc:
                raise _write_error(prefix, exc) from exc
            try:
                written = _extract(tar, members, name, staging)
            except (tarfile.TarError, EOFError, zlib_error) as exc:
                raise ArtifactError(f"{bundle.name} is truncated or corrupt ({exc.__class__.__name__})") from exc
            except OSError as exc:  # disk full, quota, ... (damaged gzip data is a BadGzipFile, an OSError too)
                if isinstance(exc, gzip.BadGzipFile):
                    raise ArtifactError(f"{bundle.name} is truncated or corrupt ({exc.__class__.__name__})") from exc
                raise _write_error(prefix, exc) from exc
            if progress:
                progress(1, 3, description="verifying")
            count = verify_tree(staging, written)
            manifest = _manifest(staging)
            current = current_release(app)
            _carry_engines(current, staging)
            if progress:
                progress(2, 3, description="preparing the model")
            runtime, model, note = ("onnx", str(app / manifest["run_onnx"]), "engine build skipped (--no-build)")
            if build_engine:  # in the new release, before anything points at it: a failure changes nothing
                try:
                    runtime, model, note = prepare(staging, python=python)
                except ArtifactError as exc:  # name the app, not the staging folder
                    raise ArtifactError(str(exc).replace(str(staging), str(app))) from exc
                model = model.replace(str(staging), str(app), 1)
            release = releases / _release_id(releases, digest)
            fsync_tree(staging)
            rename(staging, release)
            staging = release
            fsync_path(releases)
        except BaseException as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            _remove_if_empty(releases)
            remove_created(created, prefix)
            if isinstance(exc, (ArtifactError, UserInputError)):
                kept = (
                    f"the previous install at {app} is unchanged"
                    if app.exists()
                    else f"nothing was installed in {prefix}"
                )
                raise exc.__class__(f"{exc}; {kept}") from exc
            raise
    previous = _switch(app, release)
    try:
        svc = {}
        if service:
            svc = install_service(app, name, service_target or ServiceTarget(), python=python or sys.executable)
    except BaseException as exc:
        _switch_back(app, release, previous)
        if isinstance(exc, (ArtifactError, UserInputError)):
            kept = f"the previous install at {app} is unchanged" if previous else f"nothing was installed in {prefix}"
            raise exc.__class__(f"{exc}; {kept}") from exc
        raise
    prune_releases(app, keep=(release, previous))
    if progress:
        progress(3, 3, description="done")
    return InstallReport(
        app_dir=str(app),
        name=name,
        files_verified=count,
        bundle_sha256=digest,
        archive_checked=archive_checked,
        runtime=runtime,
        model=model,
        engine_note=note,
        service=svc,
        replaced_previous=previous is not None,
        previous_kept=str(previous) if previous else None,
        previous_extra_files=_extra_files(previous) if previous else [],
        release=str(release),
    )


# ---------------------------------------------------------------- releases: PREFIX/NAME -> .NAME.releases/ID


def releases_dir(app: Path) -> Path:
    """Where the releases of the app at `app` live (hidden: an app name never starts with a dot)."""
    return app.with_name(f".{app.name}.releases")


def current_release(app: Path) -> Path | None:
    """The release `app` points at (None: no install, or an old-style plain folder)."""
    if not app.is_symlink():
        return None
    target = app.parent / os.readlink(app)
    return target if target.is_dir() else None


def list_releases(app: Path) -> list[Path]:
    """The complete releases, oldest first (release ids sort by time; staging folders are hidden)."""
    releases = releases_dir(app)
    if not releases.is_dir():
        return []
    return sorted(p for p in releases.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.is_symlink())


def _release_id(releases: Path, digest: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"{stamp}-{digest[:12]}"
    rid, n = base, 1
    while (releases / rid).exists():
        n += 1
        rid = f"{base}-{n}"
    return rid


def _switch(app: Path, release: Path) -> Path | None:
    """Point `app` at `release` with one atomic rename of a new symlink over it; returns the release it pointed at
    before (an old-style plain folder is first moved into the releases as one, which `repair_app` finishes should a
    crash fall between the two renames)."""
    previous = current_release(app)
    if app.is_dir() and not app.is_symlink():  # an install made before releases: it becomes a release itself
        previous = releases_dir(app) / _release_id(releases_dir(app), "migrated")
        rename(app, previous)
        fsync_path(releases_dir(app))
    link = app.with_name(f".{app.name}.{os.getpid()}.{secrets.token_hex(4)}.link")
    os.symlink(os.path.relpath(release, app.parent), link)
    rename(link, app)
    fsync_path(app.parent)
    return previous


def _switch_back(app: Path, release: Path, previous: Path | None) -> None:
    """Undo `_switch` after a failed service step: the previous release (or no app) again, the new one removed."""
    if previous is not None:
        _switch(app, previous)
    else:
        app.unlink(missing_ok=True)
    shutil.rmtree(release, ignore_errors=True)


def repair_app(app: Path) -> str | None:
    """What the next install (or rollback) does after a crash: finish what a killed one left half done. Dead
    installs' staging folders go; an app path missing while releases exist (a kill between the two renames that
    turn an old-style folder into a release) points at the newest release again; legacy leftovers of earlier
    edgecnn versions (`.NAME.old-*` holding the only copy after a crash, `.NAME.previous`) become releases and
    `.NAME.install-*` staging folders go. Returns a note on what was repaired (None: nothing)."""
    releases = releases_dir(app)
    notes = []
    if releases.is_dir():
        remove_stale_temps(releases)
    remove_stale_temps(app.parent)
    for stale in app.parent.glob(f".{app.name}.install-*"):
        shutil.rmtree(stale, ignore_errors=True)
        notes.append(f"removed {stale.name}")
    legacy = sorted(app.parent.glob(f".{app.name}.old-*")) + [app.with_name(f".{app.name}.previous")]
    for old in legacy:
        if old.is_dir() and not old.is_symlink() and (old / "bundle.json").is_file():
            releases.mkdir(exist_ok=True)
            rename(
                old,
                releases / _release_id(releases, "legacy-" + ("prev" if old.name.endswith("previous") else "old")),
            )
            notes.append(f"kept {old.name} as a release")
        elif old.is_dir() and not old.is_symlink() and old.name != f".{app.name}.previous":
            shutil.rmtree(old, ignore_errors=True)
    dangling = app.is_symlink() and current_release(app) is None
    if dangling or not (app.exists() or app.is_symlink()):
        found = list_releases(app)
        if found:
            app.unlink(missing_ok=True)
            _switch(app, found[-1])
            notes.append(f"{app} pointed at {found[-1].name} again")
    return "; ".join(notes) or None


def prune_releases(app: Path, keep) -> list[Path]:
    """Remove releases other than `keep` (the current and the previous one)."""
    keep = {Path(k).resolve() for k in keep if k is not None}
    removed = []
    for release in list_releases(app):
        if release.resolve() not in keep:
            shutil.rmtree(release, ignore_errors=True)
            removed.append(release)
    return removed


def _carry_engines(current: Path | None, staging: Path) -> None:
    """Built engines are keyed by model hash + TensorRT version + board: safe to carry into the new release."""
    if current is not None and (current / "engines").is_dir():
        try:
            shutil.copytree(current / "engines", staging / "engines", dirs_exist_ok=True)
        except OSError as exc:
            raise _write_error(staging.parent, exc) from exc


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder of a new release before it is renamed into place."""
    for root, _dirs, files in os.walk(folder):
        for f in files:
            fsync_path(Path(root) / f)
        fsync_path(root)


@dataclass
class RollbackReport:
    app_dir: str
    name: str
    release: str
    replaced: str | None
    service: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def rollback(
    name: str,
    prefix: str | Path = "/opt/edgecnn",
    service: bool = False,
    python: str | None = None,
    service_target: ServiceTarget | None = None,
) -> RollbackReport:
    """Point PREFIX/NAME back at the release before the current one (one symlink rename); the current release
    stays, so rolling back again returns to it."""
    if not NAME_RE.match(name):
        raise UserInputError(f"--rollback {name!r} is not an app name")
    app = Path(prefix).expanduser().absolute() / name
    try:
        repair_app(app)
    except OSError as exc:
        raise _write_error(app.parent, exc) from exc
    current = current_release(app)
    if current is None:
        raise UserInputError(f"{app} is not an installed app with releases: nothing to roll back")
    others = [r for r in list_releases(app) if r.resolve() != current.resolve()]
    if not others:
        raise UserInputError(f"{app} has no previous release to roll back to (only {current.name})")
    older = [r for r in others if r.name < current.name]
    target = older[-1] if older else others[-1]
    try:
        _switch(app, target)
    except OSError as exc:
        raise _write_error(app.parent, exc) from exc
    svc = {}
    if service:
        svc = install_service(app, name, service_target or ServiceTarget(), python=python or sys.executable)
    return RollbackReport(app_dir=str(app), name=name, release=str(target), replaced=str(current), service=svc)


def check_prefix(prefix: Path) -> None:
    """Refuse, before anything is read or written, a --prefix that cannot be a folder."""
    check_output_folder(prefix, "--prefix")


def _write_error(folder: Path, exc: OSError) -> EdgeCNNError:
    """The one StorageError (exit 74) for a full disk, a read-only or forbidden --prefix; else a UserInputError."""
    kept = "nothing was installed (an earlier install is as it was)"
    if isinstance(exc, PermissionError):
        return StorageError(
            str(folder), "permission denied (run with sudo, or install elsewhere with --prefix ~/edgecnn-apps)", kept
        )
    return storage_error(exc, folder, kept, verb="write") or UserInputError(
        f"Cannot write to {folder}: {exc.strerror or exc}"
    )


def _make_dirs(path: Path) -> Path | None:
    """files.make_dirs, with install's own message when only root may write there."""
    try:
        return make_dirs(path)
    except UserInputError as exc:
        if isinstance(exc.__cause__, PermissionError):
            raise _write_error(path, exc.__cause__) from exc.__cause__
        raise


def _manifest(app: Path) -> dict:
    try:
        manifest = json.loads((app / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the bundle's bundle.json is missing or invalid ({exc.__class__.__name__})") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ArtifactError(
            f"bundle format {manifest.get('format')!r} is not {BUNDLE_FORMAT}: made by another edgecnn version"
        )
    run_onnx = manifest.get("run_onnx")
    if not isinstance(run_onnx, str) or ".." in PurePosixPath(run_onnx).parts or not (app / run_onnx).is_file():
        raise ArtifactError(f"the bundle's bundle.json names run_onnx {run_onnx!r}, which is not a file in the bundle")
    return manifest


def _extra_files(old: Path, limit: int = 20) -> list[str]:
    """Files in a previous install that its bundle did not ship (user additions); engines/ and Python's
    __pycache__ aside."""
    try:
        listed = set(parse_sha256sums((old / "SHA256SUMS").read_text(encoding="utf-8"))) | {"SHA256SUMS"}
    except (OSError, UnicodeDecodeError, ValueError, ArtifactError):
        return []
    extra = []
    for path in sorted(old.rglob("*")):
        rel = path.relative_to(old).as_posix()
        parts = rel.split("/")
        if parts[0] == "engines" or "__pycache__" in parts or (path.is_dir() and not path.is_symlink()):
            continue
        if rel not in listed:
            extra.append(rel)
            if len(extra) >= limit:
                break
    return extra


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
        name,
        str(app),
        user,
        tuple(manifest.get("service_args") or ()),
        unit_description(manifest.get("arch"), manifest.get("classes") or 0),
        python=python,
    )
    unit_path = Path(target.unit_dir) / f"{name}.service"
    # restart, not `enable --now`: over an existing install the running service must move to the new version
    # (enable --now leaves a running unit alone, still executing the previous install's files)
    systemctl, unit = list(target.systemctl), f"{name}.service"
    commands = [systemctl + ["daemon-reload"], systemctl + ["enable", unit], systemctl + ["restart", unit]]
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

    engines = app / "engines"
    engines.mkdir(exist_ok=True)
    try:
        shutil.chown(engines, user=user)
        for f in engines.iterdir():
            shutil.chown(f, user=user)
    except (LookupError, PermissionError) as exc:
        raise UserInputError(f"Cannot give {engines} to user {user!r}: {exc}") from exc
    try:
        previous_unit = unit_path.read_bytes() if unit_path.is_file() else None
        atomic_write_text(unit_path, unit_text)
    except OSError as exc:
        raise UserInputError(f"Cannot write {unit_path}: {exc.strerror or exc}") from exc
    try:
        for argv in commands:
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserInputError(
                    f"`{' '.join(argv)}` failed: {(proc.stderr.strip() or 'no output').splitlines()[-1]}"
                )
    except BaseException:
        _restore_unit(unit_path, previous_unit, commands[0])
        raise
    plan["installed"] = True
    return plan


def _restore_unit(unit_path: Path, previous: bytes | None, reload: list[str]) -> None:
    """Best effort after a failed service step: the unit file as it was (or none), and systemd told so."""
    try:
        if previous is None:
            unit_path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(unit_path, previous)
        subprocess.run(reload, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pass
