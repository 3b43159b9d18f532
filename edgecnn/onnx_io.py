"""ONNX files on disk: loading and atomic saving, external data (the weights files beside a model), copying and
identifying a model together with its data files.

`onnx` is imported inside the functions that need it. Floor 0: imports only errors and files.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

from edgecnn.errors import ArtifactError, ExternalDataError, UserInputError
from edgecnn.files import atomic_path, sha256_file


def load_onnx(path: str | os.PathLike, external_data: bool = True):
    """The onnx.ModelProto at `path` (with its external data unless `external_data` is False); a file that is not
    ONNX is an ArtifactError naming it, not a protobuf traceback."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # onnx raises DecodeError / various on garbage
        raise ArtifactError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})") from exc


def onnx_external_data(path: str | os.PathLike, model=None) -> list[str]:
    """The external data files of the ONNX model at `path`: '/'-separated paths relative to its folder, sorted; [] for
    a self-contained model. `model`: the onnx.ModelProto already read from `path` (without its external data), if any.

    Why: torch.onnx.export, and any model over 2 GB, keeps weights in files beside model.onnx that each tensor names
    by a `location` relative to the model's folder. Whatever copies, hashes or ships the model must take them along,
    and nothing may follow a location out of that folder. So this refuses, with an ExternalDataError naming the fix
    and before any weights are read: an absolute location, one leaving the folder ('..' or a symlink), a missing
    file, or one too short for the tensors it holds (truncated)."""
    path = Path(path)
    if model is not None:
        refs = _external_refs_of(model, path)
    else:  # one command asks several times (checks, copy, hash, size): the graph is parsed once per file version
        st = path.stat() if path.is_file() else None
        refs = _external_refs(str(path), st.st_size if st else -1, st.st_mtime_ns if st else -1)
    folder = path.parent
    needed: dict[str, int] = {}  # location -> bytes the tensors need
    for name, location, end in refs:
        parts = Path(location).parts
        if not location or Path(location).is_absolute() or ".." in parts or "\\" in location:
            raise ExternalDataError(
                f"{path}: tensor {name!r} keeps its weights at {location!r}, outside the model's folder, which "
                "edgecnn does not read: keep the data file in the model's folder (onnx.save(model, PATH, "
                "save_as_external_data=True, location='NAME.data') writes it there)"
            )
        file = folder
        for part in parts:
            file = file / part
            if file.is_symlink():
                raise ExternalDataError(
                    f"{path}: external data {location!r} is a symbolic link ({file}), which edgecnn does not follow: "
                    "copy the real file beside the model"
                )
        if not file.is_file():
            raise ExternalDataError(
                f"{path} keeps its weights in the external data file {location!r}, which is missing ({file}): copy it "
                f"beside {path.name} (the two travel together)"
            )
        needed[location] = max(needed.get(location, 0), end)
    for location, end in needed.items():
        size = (folder / location).stat().st_size
        if size < end:
            raise ExternalDataError(
                f"{path}: external data file {location!r} is truncated ({size} bytes, its tensors need {end}): copy it "
                "again from where the model was made"
            )
    return sorted({Path(location).as_posix() for location in needed})


@functools.lru_cache(maxsize=16)
def _external_refs(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, str, int], ...]:
    """`_external_refs_of` the model file, memoised by its size and modification time (a graph with inline weights
    is a full parse: 55 ms for EfficientNet-Lite0's 18 MB)."""
    return _external_refs_of(load_onnx(path, external_data=False), Path(path))


def _external_refs_of(model, path: Path) -> tuple[tuple[str, str, int], ...]:
    """(tensor name, location, end offset) of every tensor kept in external data (onnx's own walk: initializers,
    subgraphs, attribute tensors)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    refs = []
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        try:
            info = ExternalDataInfo(tensor)
        except ValueError as exc:  # a negative offset or length
            raise ExternalDataError(f"{path}: damaged external data entry ({exc})") from exc
        refs.append((tensor.name, info.location, (info.offset or 0) + (info.length or 0)))
    return tuple(refs)


def copy_onnx(src: str | os.PathLike, dst: str | os.PathLike, data_files: list[str] | None = None) -> list[str]:
    """Copy the ONNX model `src` to `dst` together with its external data files, which keep their paths relative to
    the model (the model names them so); returns those paths. A model whose data file would land on `dst` itself
    (a weights file named like the destination) is refused. `data_files`: `onnx_external_data(src)` when known."""
    src, dst = Path(src), Path(dst)
    data_files = onnx_external_data(src) if data_files is None else data_files
    for rel in data_files:
        if dst.parent / rel == dst:
            raise UserInputError(
                f"{src.name} keeps its weights in {rel!r}, the name its copy must take here: re-save the model with "
                "another location, or without external data: onnx.save(onnx.load(SRC), DST)"
            )
    shutil.copyfile(src, dst)
    for rel in data_files:
        target = dst.parent / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / rel, target)
    return data_files


def model_bytes(path: str | os.PathLike) -> int:
    """A model's size on disk: for an ONNX with external data, its data files included (the .onnx alone may be a few
    kB of graph)."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix.lower() == ".onnx":
        size += sum((path.parent / rel).stat().st_size for rel in onnx_external_data(path))
    return size


def onnx_sha256(path: str | os.PathLike, data_files: list[str] | None = None) -> str:
    """sha256 identifying the ONNX model at `path`: the file's own for a self-contained model; with external data,
    that of the model's and its data files' digests, so that new weights give a new id (the .onnx alone holds only
    the graph and offsets, unchanged by retraining)."""
    path = Path(path)
    data_files = onnx_external_data(path) if data_files is None else data_files
    if not data_files:
        return sha256_file(path)
    lines = [sha256_file(path)] + [f"{sha256_file(path.parent / rel)}  {rel}" for rel in data_files]  # not the name
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def save_onnx(model, path: str | os.PathLike) -> Path:
    """Check and write an onnx.ModelProto atomically."""
    import onnx

    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    return Path(path)
