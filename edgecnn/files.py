"""THE writing helper: atomic and staged writes, output checks, digests.

Every artifact is written to a temporary file in its destination folder and renamed over the destination
(`os.replace`), so a crash never leaves a half-written file and readers never see one; several files that belong
together are staged and put in place together (`staged_files`). The output checks refuse, before any work starts, an
output that cannot be written or would overwrite an input. Floor 0: imports only errors and jsonout.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.jsonout import strict_json

_UMASK = os.umask(0)
os.umask(_UMASK)


def temp_beside(path: Path, suffix: str | None = None) -> Path:
    """A new empty temporary file in `path`'s folder (same file system, so it can replace `path` atomically)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def put_in_place(tmp: Path, path: Path) -> None:
    """Give `tmp` the usual umask-based mode (mkstemp makes 0600 files) and rename it over `path`."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success it replaces `path`, on error it is removed.

    A crash never leaves a half-written artifact, and readers never see one.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise UserInputError(f"{path} is a folder, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = temp_beside(path, suffix)
    try:
        yield tmp_path
        put_in_place(tmp_path, path)
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
    except UserInputError as exc:
        raise UserInputError(f"{flag} {out}: {exc}") from exc.__cause__
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_created(created, out.parent)
        raise UserInputError(f"{flag} {out}: cannot write files in {out.parent} ({exc.strerror or exc})") from exc
    return created


class StagedWriteError(ArtifactError):
    """Writing or placing a set of staged files failed; the message says which files (if any) were replaced."""


@contextlib.contextmanager
def staged_files() -> Iterator[Callable[..., Path]]:
    """Several outputs that belong together (a model, its TensorRT table, its report), written as temporary files
    beside their destinations and moved into place only when the block ends without error, in the order they were
    staged: stage the most important first. Yields `stage(path, suffix=None) -> temporary path`.

    A failure while writing (a full disk) replaces nothing, removes the temporaries and the folders made for them,
    and raises StagedWriteError saying so. Several files cannot be replaced atomically together: if a rename fails
    part way (a busy or read-only destination), the error names what was already replaced."""
    staged: list[tuple[Path, Path]] = []
    created: list[tuple[Path | None, Path]] = []

    def stage(path: str | os.PathLike, suffix: str | None = None) -> Path:
        path = Path(path)
        if path.is_dir():
            raise UserInputError(f"{path} is a folder, expected a file path")
        created.append((make_dirs(path.parent), path.parent))
        staged.append((temp_beside(path, suffix), path))
        return staged[-1][0]

    def discard() -> None:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for top, folder in reversed(created):
            remove_created(top, folder)

    try:
        yield stage
    except OSError as exc:
        discard()
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StagedWriteError(
            f"Cannot write {', '.join(str(p) for _, p in staged) or 'the outputs'} "
            f"({exc.strerror or exc}{'; is the disk full?' if full else ''}): nothing was "
            "replaced"
        ) from exc
    except BaseException:
        discard()
        raise
    replaced: list[Path] = []
    try:
        for tmp, path in staged:
            put_in_place(tmp, path)
            replaced.append(path)
    except OSError as exc:
        done = f"{', '.join(map(str, replaced))} already replaced" if replaced else "nothing was replaced"
        raise StagedWriteError(f"Cannot put {path} in place ({exc.strerror or exc}): {done}") from exc
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
