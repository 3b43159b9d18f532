"""Checkpoint loading: weights-only, and every way a checkpoint can be wrong is one clear ArtifactError naming the file
and the field (never an internal TypeError, never PyTorch's advice to load with weights_only=False)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from asserts import raises
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from edgecnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgecnn.cli.main import app  # noqa: E402
from edgecnn.contract import ModelContract  # noqa: E402
from edgecnn.errors import ArtifactError  # noqa: E402
from edgecnn.models.registry import create_model, get_entry  # noqa: E402

runner = CliRunner()


@pytest.fixture
def good(tmp_path):
    model = create_model("lenet5", num_classes=2).eval()
    contract = ModelContract(labels=["cat", "dog"], preprocess=get_entry("lenet5").preprocess, arch="lenet5")
    return save_checkpoint(tmp_path / "good.pt", model, "lenet5", {"num_classes": 2}, contract)


def _variant(good, tmp_path, name, **changes):
    ckpt = torch.load(good, weights_only=True)
    ckpt.update(changes)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "kwargs, mentions",
    [
        ({"bogus": 1}, ("bad.pt", "bogus", "lenet5")),
        ([1, 2], ("bad.pt", "[1, 2]", "lenet5")),
    ],
)
def test_bad_arch_kwargs_are_artifact_errors(good, tmp_path, kwargs, mentions):
    bad = _variant(good, tmp_path, "bad.pt", arch_kwargs=kwargs)
    with raises(ArtifactError, *mentions):
        load_checkpoint(bad)
    # through the CLI: export and predict (torch backend) say the same, with the artifact exit code
    for args in (["export", str(bad), "--out", str(tmp_path / "x.onnx")], ["predict", str(bad), str(tmp_path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 4, result.output
        assert "internal error" not in result.stderr and "lenet5" in result.stderr and "bad.pt" in result.stderr
        assert result.stderr.count("\n") == 1


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_python_objects_are_refused_with_edgecnns_own_message(tmp_path, capfd):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "edgecnn.checkpoint", "evil": _RunsCode(marker)}, evil)
    with pytest.raises(ArtifactError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert not marker.exists()  # refused, never executed
    assert "holds Python objects beyond tensors and plain data" in message and "weights-only" in message
    assert "'state_dict': model.state_dict()" in message and "'contract'" in message and "'arch_kwargs'" in message
    assert "weights_only` set to `False" not in message and "Re-running" not in message and "\n" not in message

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"format": "edgecnn.checkpoint", "evil": _RunsCode(marker)}, protocol=4))
    capfd.readouterr()
    with raises(ArtifactError, "plain.pt"):
        load_checkpoint(plain)
    assert not marker.exists()
    assert "UserWarning" not in capfd.readouterr().err  # torch's "Detected pickle protocol 4" warning is silenced

    result = runner.invoke(app, ["export", str(evil), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 4 and result.stderr.count("\n") == 1 and "weights_only set to False" not in result.stderr
    assert not marker.exists()


def test_unreadable_files_say_why(tmp_path, good):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with raises(ArtifactError, "empty.pt"):
        load_checkpoint(empty)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:500])
    with raises(ArtifactError, "trunc.pt") as info:
        load_checkpoint(trunc)
    assert "If you are seeing" not in str(info.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello world garbage" * 10)
    with raises(ArtifactError, "garbage.pt"):
        load_checkpoint(garbage)


def test_damaged_contract_and_weights_say_what_is_wrong(good, tmp_path):
    with raises(ArtifactError, "contract") as info:
        load_checkpoint(_variant(good, tmp_path, "c1.pt", contract="hello"))
    assert "string indices" not in str(info.value)
    contract = torch.load(good, weights_only=True)["contract"]
    with raises(ArtifactError, "labels", "int"):
        load_checkpoint(_variant(good, tmp_path, "c2.pt", contract={**contract, "labels": 5}))
    with raises(ArtifactError, "c3.pt", "labels"):
        load_checkpoint(
            _variant(good, tmp_path, "c3.pt", contract={k: v for k, v in contract.items() if k != "labels"})
        )
    bad_pre = {**contract["preprocess"], "std": [0.0, 0.0, 0.0]}
    with raises(ArtifactError, "c4.pt"):
        load_checkpoint(_variant(good, tmp_path, "c4.pt", contract={**contract, "preprocess": bad_pre}))

    state = torch.load(good, weights_only=True)["state_dict"]
    first = next(iter(state))
    shape = _variant(good, tmp_path, "sd.pt", state_dict={**state, first: torch.zeros(1)})
    with raises(ArtifactError, first) as info:
        load_checkpoint(shape)
    assert "torch.Size" not in str(info.value) and "\n" not in str(info.value)
    wider = _variant(good, tmp_path, "nc5.pt", arch_kwargs={"num_classes": 5})
    with raises(ArtifactError, "num_classes"):
        load_checkpoint(wider)
    three = _variant(good, tmp_path, "lab3.pt", contract={**contract, "labels": ["a", "b", "c"], "label_keys": None})
    with raises(ArtifactError, "lab3.pt", "2", "3"):
        load_checkpoint(three)
    with raises(ArtifactError, "unk.pt", "nope"):
        load_checkpoint(_variant(good, tmp_path, "unk.pt", arch="nope"))


def test_good_checkpoint_still_loads(good):
    model, contract, ckpt = load_checkpoint(good)
    assert contract.labels == ["cat", "dog"] and not model.training
    assert json.dumps(ckpt["arch_kwargs"]) == '{"num_classes": 2}'


def test_contract_and_weights_that_do_not_run_are_refused_at_load(good, tmp_path):
    """Hand-made or damaged files that load but cannot run right: each an ArtifactError at load (exit 4 from predict,
    eval and export alike), never an IndexError, an internal RuntimeError or a silent 'nan%'."""
    import cv2

    ckpt = torch.load(good, weights_only=True)
    contract = ckpt["contract"]
    model = create_model("lenet5", num_classes=10).eval()
    nine = tmp_path / "nine.pt"  # no num_classes in arch_kwargs: the builder's default, 10 outputs, for 9 labels
    torch.save(
        {
            **ckpt,
            "arch_kwargs": {},
            "state_dict": model.state_dict(),
            "contract": {**contract, "labels": [str(i) for i in range(9)], "label_keys": None},
        },
        nine,
    )
    with raises(ArtifactError, "10", "9"):
        load_checkpoint(nine)
    big = _variant(
        good,
        tmp_path,
        "big.pt",
        contract={**contract, "preprocess": {**contract["preprocess"], "input_size": [64, 64]}},
    )
    with raises(ArtifactError, "64×64"):
        load_checkpoint(big)
    state = dict(ckpt["state_dict"])
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first].clone()
    state[first].view(-1)[0] = float("nan")
    nan = _variant(good, tmp_path, "nan.pt", state_dict=state)
    with raises(ArtifactError, first):
        load_checkpoint(nan)

    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), (np.arange(32 * 32 * 3) % 255).astype(np.uint8).reshape(32, 32, 3))
    data = tmp_path / "data"
    for name in ("0", "1"):
        (data / name).mkdir(parents=True)
        cv2.imwrite(str(data / name / "a.png"), np.full((32, 32, 3), 90, np.uint8))
    for bad in (nine, big, nan):
        for args in (
            ["predict", str(bad), str(img), "-k", "10"],
            ["eval", str(bad), str(data)],
            ["export", str(bad), "--out", str(tmp_path / "x.onnx")],
        ):
            result = runner.invoke(app, args)
            assert result.exit_code == 4, (args, result.output)
            assert bad.name in result.stderr and "internal" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()
