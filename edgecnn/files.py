"""THE writing helper: atomic and staged writes, output checks, digests.

Every artifact is written to a temporary file in its destination folder, fsynced, and renamed over the destination
(`os.replace`), the folder fsynced after, so a crash or power cut never leaves a half-written file and readers never
see one. Several files that belong together are staged and committed together (`staged_files`): every temporary is
complete on disk before a commit journal naming the renames is written, so a crash part way through the renames is
finished by the next run (`recover_folder`): the set is entirely old or entirely new. Temporary names carry the
writer's PID, so the next run removes the temporaries of dead writers and never touches a live writer's.
The output checks refuse, before any work starts, an output that cannot be written or would overwrite an input.
Floor 0: imports only errors and jsonout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from edgecnn.errors import (
    STORAGE_ERRNOS,
    EdgeCNNError,
    StorageError,
    UserInputError,
    storage_errno,
    storage_error,
)
from edgecnn.jsonout import strict_json

_UMASK = os.umask(0)
os.umask(_UMASK)


# ---------------------------------------------------------------- crash consistency: renames, fsync, recovery

# Tests kill a writer at its N-th rename with this variable (a real SIGKILL of a real process), as
# `strace -e inject=rename:signal=SIGKILL:when=N` does where strace is present.
FAULT_ENV = "EDGECNN_KILL_AT_RENAME"
_renames = 0
# .NAME.<pid>.<8 random chars><suffix>: files from temp_beside; .NAME.<pid>.<8 chars>.d: folders from temp_folder_beside
_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}(\.[A-Za-z0-9_-]+)*$")
_JOURNAL_RE = re.compile(r"^\.edgecnn-commit\.(\d+)\.(\d+)\.json$")
_journals = 0


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace, counted for the fault hook (FAULT_ENV=N kills this process with SIGKILL at its N-th rename)."""
    global _renames
    _renames += 1
    if os.environ.get(FAULT_ENV, "") == str(_renames):
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(src, dst)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data to disk (best effort where the file system cannot, e.g. some FUSE)."""
    try:
        flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Is a process with this PID running here? (A reused PID counts as alive: its temporaries are then kept.)"""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _journal_pid(path: Path) -> int | None:
    m = _JOURNAL_RE.match(path.name)
    return int(m.group(1)) if m else None


def recover_folder(folder: str | os.PathLike) -> list[Path]:
    """Finish the commits that dead writers left part way in `folder` (roll forward: every temporary a journal names
    was complete and fsynced before the journal was written), then remove dead writers' temporaries.

    Returns the destinations this put in place. Called by every writer before it writes into a folder, and by the
    readers of file pairs (build-engine, deploy) before they check a pair. Best effort: an unwritable folder is left
    as it is (the readers then name the interrupted write)."""
    folder = Path(folder)
    repaired: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return repaired
    for name in sorted(names):
        pid = _journal_pid(Path(name))
        if pid is None or pid_alive(pid):
            continue
        try:
            repaired += _roll_forward(folder / name)
        except OSError:
            continue
    remove_stale_temps(folder)
    return repaired


def _roll_forward(journal: Path) -> list[Path]:
    try:
        entry = json.loads(journal.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entry = {"renames": [], "journals": [str(journal)]}  # never complete on disk: nothing was renamed after it
    done = []
    for staging, target, aside in entry.get("swaps", []):  # replace_folder: old aside, new in, old removed
        if os.path.lexists(staging):
            if os.path.lexists(target):
                os.replace(target, aside)
            os.replace(staging, target)
            fsync_path(Path(target).parent)
            done.append(Path(target))
        shutil.rmtree(aside, ignore_errors=True)
    for tmp, dest in entry.get("renames", []):
        if os.path.lexists(tmp):
            os.replace(tmp, dest)
            fsync_path(Path(dest).parent)
            done.append(Path(dest))
    for copy in entry.get("journals", [str(journal)]):
        Path(copy).unlink(missing_ok=True)
        fsync_path(Path(copy).parent)
    return done


def pending_commit(path: str | os.PathLike) -> Path | None:
    """The journal of a dead writer's unfinished commit that includes `path`, if one is left in its folder."""
    path = Path(path).absolute()
    try:
        names = os.listdir(path.parent)
    except OSError:
        return None
    for name in names:
        pid = _journal_pid(Path(name))
        if pid is None or pid_alive(pid):
            continue
        try:
            entry = json.loads((path.parent / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if any(Path(dest) == path for _, dest in entry.get("renames", [])):
            return path.parent / name
    return None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders (PID in the name) of writers that are no longer running; a live
    writer's and anything named otherwise are never touched. Journals are left to recover_folder."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if not m or _JOURNAL_RE.match(name) or pid_alive(int(m.group(1))):
            continue
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def temp_beside(path: Path, suffix: str | None = None) -> Path:
    """A new empty temporary file in `path`'s folder (same file system, so it can replace `path` atomically), named
    `.NAME.<pid>.XXXXXXXX<suffix>`: the next writer in that folder removes it if this process dies first."""
    recover_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def temp_folder_beside(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A new empty temporary folder beside `path` (`.NAME.<pid>.XXXXXXXX.TAG`), removed by the next run if this
    process dies before it is renamed or removed."""
    path = Path(path)
    recover_folder(path.parent)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f".{tag}", dir=path.parent))


@contextlib.contextmanager
def temp_folder(beside: str | os.PathLike, tag: str = "tmp") -> Iterator[Path]:
    """A work folder beside the output `beside` (temp_folder_beside), removed when the block ends."""
    folder = temp_folder_beside(beside, tag)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def put_in_place(tmp: Path, path: Path) -> None:
    """Give `tmp` the usual umask-based mode (mkstemp makes 0600 files), flush it to disk, rename it over `path`
    and flush the folder, so the rename survives a power cut and never exposes an empty file."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    fsync_path(tmp)
    rename(tmp, path)
    fsync_path(path.parent)


def _kept(paths: list[Path]) -> str:
    """What a failed write leaves: the earlier files, untouched, or nothing."""
    existing = [str(p) for p in paths if p.exists()]
    return f"the existing {', '.join(existing)} left as it was" if existing else "nothing was written"


def raise_storage_error(exc: BaseException, paths: list[Path], kept: str | None = None) -> None:
    """Raise the StorageError behind `exc` (a full disk, a read-only folder, ...) naming `paths`; return if none."""
    if isinstance(exc, EdgeCNNError):
        return
    err = storage_error(exc, ", ".join(map(str, paths)), kept or _kept(paths), verb="write")
    if err is not None:
        raise err from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success it replaces `path`, on error it is removed.

    A crash never leaves a half-written artifact, and readers never see one. A full disk, a read-only folder or
    another refusal of the environment is a StorageError (exit 74) naming `path` and saying the earlier file is kept.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserInputError(f"{path} is a folder, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = temp_beside(path, suffix)
    except OSError as exc:
        raise_storage_error(exc, [path])
        raise
    try:
        yield tmp_path
        put_in_place(tmp_path, path)
    except Exception as exc:
        raise_storage_error(exc, [path])
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=True, default=str) + "\n")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Do the two paths name one file: the same resolved path, or existing links to one inode?"""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def ensure_distinct(
    inputs: list[str | os.PathLike] | str | os.PathLike, output: str | os.PathLike, flag: str = "--out"
) -> None:
    """Refuse to write `output` over any of `inputs` (no command overwrites its own input). An input may be a folder
    (calibration or validation images): an existing file inside it is an input too."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out = Path(output)
    for inp in inputs:
        inp = Path(inp)
        if same_file(inp, out):
            raise UserInputError(
                f"Output {out} is the input file: choose another {flag} (inputs are never overwritten)"
            )
        if inp.is_dir() and out.is_file() and out.resolve().is_relative_to(inp.resolve()):
            raise UserInputError(
                f"{flag} {out} would overwrite a file inside the input folder {inp}: choose another {flag}"
            )


def _first_existing(path: Path) -> Path:
    """`path` or the nearest of its parents that exists (where a new file or folder would be created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _refuse_under_a_file(path: Path, flag: str) -> None:
    above = _first_existing(path.parent)
    if above.exists() and not above.is_dir():
        raise UserInputError(f"{flag} {path}: {above} is a file, not a folder")


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any work starts, an output file path that cannot be written: a folder, or a path under a file."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a folder; give a file name")
    _refuse_under_a_file(path, flag)
    return path


def refuse_existing(path: str | os.PathLike, flag: str, force: bool) -> None:
    """An existing output file is replaced only when asked (--force), as train, live --record, calibrate capture and
    the deploy commands do: re-running a command with another option must not silently replace the earlier result
    (e.g. a model whose calibration table beside it then no longer matches)."""
    path = Path(path)
    if path.exists() and not force:
        raise UserInputError(f"{flag} {path} already exists: pass --force to replace it, or choose another {flag}")


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any work starts, an output folder path that cannot be one: a file, or a path under a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{flag} {path} is a file; expected a folder (it is created if missing)")
    _refuse_under_a_file(path, flag)
    return path


def make_dirs(path: str | os.PathLike) -> Path | None:
    """mkdir -p `path`; returns the topmost folder it created (None if `path` existed), so a command that fails later
    can take back what it made (`remove_created`). Any OSError (a file in the way, /proc, permissions) is a
    UserInputError naming the folder; the OSError is its __cause__."""
    path = Path(path)
    if path.is_dir():
        return None
    top = path
    while not top.parent.exists() and top.parent != top.parent.parent:
        top = top.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_created(top, path)
        raise_storage_error(exc, [path], "nothing was written")
        raise UserInputError(f"Cannot create the folder {path}: {exc.strerror or exc}") from exc
    return top


def remove_created(top: Path | None, path: str | os.PathLike) -> None:
    """Remove the folders `make_dirs` created, from `path` up to `top`, as long as they are empty."""
    if top is None:
        return
    path = Path(path)
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == top:
            return
        path = path.parent


def prepare_output_folder(out: str | os.PathLike, flag: str = "--out") -> Path | None:
    """Create the folder of the output file `out` and write a probe file in it now: a read-only or otherwise
    unwritable place (/proc, /sys, a read-only mount, no permission) is one clear UserInputError before the work
    starts, not an internal error after it. Returns the topmost folder created, for `remove_created` when the
    command fails later (nothing half-made is left behind)."""
    out = Path(out)
    try:
        created = make_dirs(out.parent)
    except StorageError as exc:
        raise StorageError(f"{flag} {out}", exc.why, exc.kept) from exc.__cause__
    except UserInputError as exc:
        raise UserInputError(f"{flag} {out}: {exc}") from exc.__cause__
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_created(created, out.parent)
        raise_storage_error(exc, [Path(f"{flag} {out}")], "nothing was written")
        raise UserInputError(f"{flag} {out}: cannot write files in {out.parent} ({exc.strerror or exc})") from exc
    return created


class StagedWriteError(StorageError):
    """Writing or placing a set of staged files failed; the message says which files (if any) were replaced."""

    def __init__(self, what: str, exc: BaseException, kept: str):
        code = storage_errno(exc)
        why = STORAGE_ERRNOS[code] if code is not None else getattr(exc, "strerror", None) or str(exc)
        super().__init__(what, why, kept)


@contextlib.contextmanager
def staged_files() -> Iterator[Callable[..., Path]]:
    """Several outputs that belong together (a model, its TensorRT table, its report), written as temporary files
    beside their destinations and moved into place only when the block ends without error, in the order they were
    staged: stage the most important first. Yields `stage(path, suffix=None) -> temporary path`.

    A failure while writing (a full disk) replaces nothing, removes the temporaries and the folders made for them,
    and raises StagedWriteError (a StorageError, exit 74) saying so. Several files cannot be replaced atomically
    together: if a rename fails part way (a busy or read-only destination), the error names what was already
    replaced."""
    staged: list[tuple[Path, Path]] = []
    created: list[tuple[Path | None, Path]] = []

    def stage(path: str | os.PathLike, suffix: str | None = None) -> Path:
        path = Path(path)
        if path.is_dir():
            raise UserInputError(f"{path} is a folder, expected a file path")
        created.append((make_dirs(path.parent), path.parent))
        try:
            staged.append((temp_beside(path, suffix), path))
        except OSError as exc:
            raise StagedWriteError(str(path), exc, "nothing was replaced") from exc
        return staged[-1][0]

    def discard() -> None:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for top, folder in reversed(created):
            remove_created(top, folder)

    try:
        yield stage
    except Exception as exc:
        discard()
        if not isinstance(exc, OSError) and (isinstance(exc, EdgeCNNError) or storage_errno(exc) is None):
            raise
        raise StagedWriteError(
            ", ".join(str(p) for _, p in staged) or "the outputs", exc, "nothing was replaced"
        ) from exc
    except BaseException:
        discard()
        raise
    replaced: list[Path] = []
    journals: list[Path] = []
    try:
        journals = _write_journals(staged)
        for tmp, path in staged:
            put_in_place(tmp, path)
            replaced.append(path)
    except OSError as exc:
        done = f"{', '.join(map(str, replaced))} already replaced" if replaced else "nothing was replaced"
        raise StagedWriteError(f"{path} (putting it in place)", exc, done) from exc
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for journal in journals:
            journal.unlink(missing_ok=True)
            fsync_path(journal.parent)


def _write_journals(staged: list[tuple[Path, Path]]) -> list[Path]:
    """Flush every staged temporary, then write the commit journal (the renames still to do) into every
    destination folder: from then on a crash is finished by the next run in any of those folders."""
    for tmp, _ in staged:
        os.chmod(tmp, 0o666 & ~_UMASK)
        fsync_path(tmp)
    if len(staged) < 2:
        return []
    folders = list(dict.fromkeys(path.parent.absolute() for _, path in staged))
    return _write_journal(folders, {"renames": [[str(t.absolute()), str(p.absolute())] for t, p in staged]})


def _write_journal(folders: list[Path], entry: dict) -> list[Path]:
    """The same commit journal, written (temp + fsync + rename) into each of `folders`."""
    global _journals
    _journals += 1
    paths = [f / f".edgecnn-commit.{os.getpid()}.{_journals}.json" for f in folders]
    text = json.dumps({"pid": os.getpid(), **entry, "journals": [str(p) for p in paths]}, indent=1).encode("utf-8")
    written = []
    for journal in paths:
        fd, tmp = tempfile.mkstemp(prefix=f".edgecnn-commit.json.{os.getpid()}.", suffix=".tmp", dir=journal.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        rename(tmp, journal)
        fsync_path(journal.parent)
        written.append(journal)
    return written


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder `staging` (beside `target`, e.g. from temp_folder_beside) in place of the folder
    `target`, or where there is none. A folder cannot be renamed over a non-empty one, so the old one is renamed aside
    first: a commit journal written before makes a crash between the two renames one the next run finishes
    (recover_folder: the new folder in place, the old one removed), never a missing `target`."""
    staging, target = Path(staging).absolute(), Path(target).absolute()
    for root, _dirs, files in os.walk(staging):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(root)
    if not (target.exists() or target.is_symlink()):
        rename(staging, target)
        fsync_path(target.parent)
        return
    aside = temp_folder_beside(target, "old")
    journals = _write_journal([target.parent], {"swaps": [[str(staging), str(target), str(aside)]]})
    rename(target, aside)  # onto the empty folder temp_folder_beside made
    rename(staging, target)
    fsync_path(target.parent)
    shutil.rmtree(aside, ignore_errors=True)
    for journal in journals:
        journal.unlink(missing_ok=True)
    fsync_path(target.parent)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
