"""A Q/DQ model and the TensorRT calibration table written with it (`quantize --cache`) are bound to each other:
the model records the table's file name and sha256 in its provenance, and build-engine / deploy bundle refuse a table
that is not the one recorded. An old table beside a new model (or the reverse) is therefore never paired silently,
whatever happened to the files in between (a crash, a copy of one of them). Floor 0."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgecnn.contract import ModelContract, read_onnx_contract
from edgecnn.errors import ArtifactError
from edgecnn.files import pending_commit, recover_folder, sha256_file

KEY = "calib_cache"  # provenance key: {"file": name, "sha256": hex}


def bind_table(contract: ModelContract, table_path: str | os.PathLike, table: str | bytes) -> ModelContract:
    """`contract` with the calibration table it is written with recorded (before either file is written)."""
    data = table.encode("utf-8") if isinstance(table, str) else table
    return contract.with_provenance(
        **{KEY: {"file": Path(table_path).name, "sha256": hashlib.sha256(data).hexdigest()}}
    )


def recorded_table(contract: ModelContract) -> dict | None:
    entry = contract.provenance.get(KEY)
    return entry if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) else None


def check_pair(model: str | os.PathLike, table: str | os.PathLike, flag: str = "--calib-cache") -> None:
    """Refuse `table` when `model` records another calibration table. A commit that a killed `quantize` left part
    way is finished first (files.recover_folder); if it cannot be finished here, the error says so."""
    model, table = Path(model), Path(table)
    for folder in {model.parent, table.parent}:
        recover_folder(folder)
    try:
        entry = recorded_table(read_onnx_contract(model))
    except ArtifactError:  # no contract (build-engine may take a bare ONNX): nothing recorded to check against
        return
    if entry is None:
        return
    actual = sha256_file(table)
    if actual == entry["sha256"]:
        return
    journal = pending_commit(table) or pending_commit(model)
    if journal is not None:
        raise ArtifactError(
            f"{flag} {table} and {model.name} are from an interrupted `edgecnn quantize` (its commit {journal.name} "
            f"was not finished, and {journal.parent} is not writable here): run any edgecnn writer there to finish "
            "it, or re-run quantize"
        )
    raise ArtifactError(
        f"{flag} {table} is not the calibration table {model.name} was quantized with (it records "
        f"{entry.get('file')} sha256 {entry['sha256'][:12]}..., this file is {actual[:12]}...): pass that table, or "
        f"re-run `edgecnn quantize ... --cache {table}`"
    )
