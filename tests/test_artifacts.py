"""Contract round trips, atomic writes, input protection."""

import os

import onnx
import pytest
from asserts import raises

from edgecnn.contract import ModelContract, imagenet_labels, read_onnx_contract, write_onnx_contract
from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.files import atomic_path, atomic_write_json, ensure_distinct, sha256_file
from edgecnn.preprocess import PreprocessConfig


def make_contract():
    return ModelContract(
        labels=["a", "b"],
        label_keys=["n1", "n2"],
        preprocess=PreprocessConfig(input_size=(32, 32)),
        arch="cifar-cnn",
        provenance={"epochs": 3},
    )


def test_contract_dict_and_onnx_props_roundtrip():
    c = make_contract()
    assert ModelContract.from_dict(c.to_dict()) == c
    props = c.to_onnx_props()
    assert all(k.startswith("edgecnn.") and isinstance(v, str) for k, v in props.items())
    assert ModelContract.from_onnx_props(props) == c


def test_onnx_metadata_written_and_read(tiny_onnx, tmp_path):
    c = read_onnx_contract(tiny_onnx)
    assert c.labels == ["cat", "dog", "bird"] and c.preprocess.input_size == (32, 32)
    model = onnx.load(str(tiny_onnx))
    model.metadata_props.add(key="author", value="someone")
    write_onnx_contract(model, c.with_provenance(step="x"))
    keys = [p.key for p in model.metadata_props]
    assert keys.count("edgecnn.labels") == 1 and "author" in keys  # replaced, foreign keys kept


def test_missing_metadata_is_a_clear_error(tmp_path, tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with raises(ArtifactError, "bare.onnx", "edgecnn export"):
        read_onnx_contract(bare)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file")
    with pytest.raises(ArtifactError):
        read_onnx_contract(garbage)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    atomic_write_json(target, {"x": 1})
    assert target.read_text().strip().startswith("{")
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's


def test_ensure_distinct(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    with pytest.raises(UserInputError):
        ensure_distinct(f, tmp_path / "." / "m.onnx")
    os.symlink(f, tmp_path / "link.onnx")
    with pytest.raises(UserInputError):
        ensure_distinct(f, tmp_path / "link.onnx")
    ensure_distinct(f, tmp_path / "other.onnx")


def test_sha256_and_imagenet_labels(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    names, wnids = imagenet_labels()
    assert len(names) == len(wnids) == 1000
    assert names[0] == "tench" and wnids[0] == "n01440764"


def test_staged_files_are_put_in_place_in_order_or_not_at_all(tmp_path):
    from edgecnn.files import StagedWriteError, staged_files

    a, b = tmp_path / "new" / "a.onnx", tmp_path / "b.calib"
    b.write_text("old table")
    with staged_files() as stage:
        stage(a).write_text("model")
        stage(b).write_text("table")
        assert not a.exists() and b.read_text() == "old table"  # nothing in place before the block ends
    assert a.read_text() == "model" and b.read_text() == "table"
    # a failure while writing: nothing replaced, the folder made for it taken back, no temporary left
    with raises(StagedWriteError, "nothing was replaced"):
        with staged_files() as stage:
            stage(tmp_path / "other" / "c.onnx").write_text("x")
            raise OSError(28, "No space left on device")
    assert not (tmp_path / "other").exists()
    # a destination that cannot be replaced part way (a folder that appeared there): the error says what was
    with raises(StagedWriteError, "a.onnx"):
        with staged_files() as stage:
            stage(a).write_text("model 2")
            stage(b).write_text("table 2")
            b.unlink()
            b.mkdir()
            (b / "x").write_text("in the way")
    assert a.read_text() == "model 2" and b.is_dir()
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporary file anywhere


def test_json_files_are_strict_json(tmp_path):
    """NaN and infinities are not JSON (jq and JavaScript reject the file): every JSON edgecnn writes has null there."""
    import json
    import math

    from edgecnn.files import atomic_write_json

    path = atomic_write_json(tmp_path / "m.json", {"loss": math.nan, "rows": [1.5, math.inf, (-math.inf,)], "n": 3})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "rows": [1.5, None, [None]], "n": 3}
