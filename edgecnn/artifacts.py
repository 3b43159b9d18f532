"""The artifact contract: labels, preprocessing and provenance that travel inside every model file.

- `.pt` checkpoints carry a `ModelContract` dict (see `edgecnn.checkpoint`),
- ONNX models carry it in `metadata_props` under the `edgecnn.*` keys below,
- TensorRT engines carry it in a sidecar JSON manifest (see `edgecnn.trt`).

Also here: atomic writes (temp file in the same folder, then `os.replace`) and sha256, used by every writer.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from edgecnn.errors import ArtifactError, ExternalDataError, UserInputError
from edgecnn.preprocess import PreprocessConfig

CONTRACT_VERSION = 1
META_PREFIX = "edgecnn."
META_KEYS = ("contract_version", "labels", "label_keys", "preprocess", "arch", "precision", "provenance")


@dataclass
class ModelContract:
    """What a model needs to be used correctly, wherever it runs.

    labels:     class names in output order.
    label_keys: optional stable ids in output order (ImageNet wnids), used to map dataset folders to classes.
    preprocess: the transform inputs must go through.
    arch:       registry name of the architecture (None for foreign models).
    precision:  'fp32', 'fp16' or 'int8'.
    provenance: free-form history (source file sha256, training summary, quantization details, ...).
    """

    labels: list[str]
    preprocess: PreprocessConfig
    arch: str | None = None
    label_keys: list[str] | None = None
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def with_provenance(self, **items) -> "ModelContract":
        """A copy with `items` added to provenance (the original is left alone)."""
        return replace(self, provenance={**self.provenance, **items})

    def to_dict(self) -> dict:
        return {
            "contract_version": CONTRACT_VERSION,
            "labels": list(self.labels),
            "label_keys": list(self.label_keys) if self.label_keys else None,
            "preprocess": self.preprocess.to_dict(),
            "arch": self.arch,
            "precision": self.precision,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelContract":
        if "labels" in d and not isinstance(d["labels"], list):
            raise ArtifactError(
                f"Model contract: labels must be a list of class names, got {type(d['labels']).__name__}"
            )
        try:
            labels = [str(v) for v in d["labels"]]
            pre = PreprocessConfig.from_dict(d["preprocess"])
        except KeyError as exc:
            raise ArtifactError(f"Model contract is missing {exc}: not an edgecnn artifact, or a damaged one") from exc
        except (TypeError, AttributeError, ValueError) as exc:
            raise ArtifactError(f"Model contract is damaged: {exc}") from exc
        except UserInputError as exc:  # e.g. std 0: the file's preprocessing is wrong, not the user's command line
            raise ArtifactError(str(exc)) from exc
        if not labels:
            raise ArtifactError("Model contract has no labels")
        keys = d.get("label_keys")
        if keys is not None and len(keys) != len(labels):
            raise ArtifactError("Model contract: label_keys and labels differ in length")
        return cls(
            labels=labels,
            preprocess=pre,
            arch=d.get("arch"),
            label_keys=[str(k) for k in keys] if keys else None,
            precision=d.get("precision") or "fp32",
            provenance=dict(d.get("provenance") or {}),
        )

    # ONNX metadata_props: one string per key so other tools (Netron, DeepStream scripts) can read them.
    def to_onnx_props(self) -> dict[str, str]:
        d = self.to_dict()
        return {META_PREFIX + k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in d.items()}

    @classmethod
    def from_onnx_props(cls, props: dict[str, str], source: str = "model") -> "ModelContract":
        if META_PREFIX + "labels" not in props or META_PREFIX + "preprocess" not in props:
            raise ArtifactError(
                f"{source} has no edgecnn metadata (labels, preprocessing). Export it with `edgecnn export`, or "
                "attach them with `edgecnn.artifacts.write_onnx_contract()`"
            )
        d: dict[str, Any] = {}
        for key in META_KEYS:
            raw = props.get(META_PREFIX + key)
            if raw is None:
                continue
            if key in ("arch", "precision"):
                d[key] = raw
            else:
                try:
                    d[key] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ArtifactError(f"{source}: metadata {META_PREFIX + key} is not valid JSON") from exc
        try:
            return cls.from_dict(d)
        except ArtifactError as exc:  # name the file whose metadata is wrong
            raise ArtifactError(f"{source}: {exc}") from exc


# ---------------------------------------------------------------- atomic writes

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
    from edgecnn.jsonout import strict_json

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


# ---------------------------------------------------------------- ONNX


def read_onnx_contract(path: str | os.PathLike) -> ModelContract:
    """The contract stored in an ONNX file's metadata (weights are not loaded)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / various on garbage
        raise ArtifactError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    return ModelContract.from_onnx_props({p.key: p.value for p in model.metadata_props}, source=str(path))


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
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    return _external_refs_of(model, Path(path))


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


def write_onnx_contract(model, contract: ModelContract) -> None:
    """Replace the edgecnn.* metadata_props of an in-memory onnx.ModelProto with `contract`."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    for key, value in kept + sorted(contract.to_onnx_props().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def save_onnx(model, path: str | os.PathLike) -> Path:
    """Check and write an onnx.ModelProto atomically."""
    import onnx

    with atomic_path(path, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


# ---------------------------------------------------------------- labels


def imagenet_labels() -> tuple[list[str], list[str]]:
    """The 1000 ImageNet-1k class names and wnids, in index order, from the copy shipped in the package."""
    tsv = Path(__file__).with_name("data") / "imagenet_classes.tsv"
    names, wnids = [], []
    for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            _, wnid, name = line.split("\t", 2)
            wnids.append(wnid)
            names.append(name)
    return names, wnids


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Labels from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Labels file {path} does not exist")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise UserInputError(f"Labels file {path} is empty")
    return labels
