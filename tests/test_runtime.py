"""The Runner protocol, parametrised over every registered backend (those that cannot run here skip)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from asserts import raises

from edgecnn.errors import UserInputError
from edgecnn.runtime import backends, load
from edgecnn.runtime.base import backend_for

LABELS = ["cat", "dog", "bird"]


def _torch_checkpoint(tmp_path):
    pytest.importorskip("torch")
    from edgecnn.checkpoint import save_checkpoint
    from edgecnn.contract import ModelContract
    from edgecnn.models.registry import create_model, get_entry

    model = create_model("lenet5", num_classes=3).eval()
    contract = ModelContract(labels=LABELS, preprocess=get_entry("lenet5").preprocess, arch="lenet5")
    return save_checkpoint(tmp_path / "lenet.pt", model, "lenet5", {"num_classes": 3}, contract)


def _onnx_model(tmp_path):
    from conftest import build_tiny_onnx

    return build_tiny_onnx(tmp_path / "tiny.onnx", labels=LABELS)


MAKERS = {"onnxrt": _onnx_model, "torch": _torch_checkpoint}


def _model_for(name, tmp_path):
    backend = backends()[name]
    if name in MAKERS:
        return MAKERS[name](tmp_path), None
    if name == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO not installed (optional extra edgecnn[openvino])")
        return _onnx_model(tmp_path), "openvino"
    pytest.skip(f"backend {name} ({backend.description}) needs hardware/software absent here (TensorRT + NVIDIA GPU)")


@pytest.mark.parametrize("name", sorted(backends()))
def test_runner_protocol(name, tmp_path):
    path, force = _model_for(name, tmp_path)
    with load(path, backend=force) as runner:
        assert runner.labels == LABELS
        spec = runner.input_spec
        shape = (5,) + tuple(d for d in spec.shape[1:])
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        logits = runner.infer(x)
        assert logits.shape == (5, 3) and logits.dtype == np.float32 and np.isfinite(logits).all()
        # batch-invariance: one at a time == all at once
        single = np.concatenate([runner.infer(x[i : i + 1]) for i in range(5)])
        np.testing.assert_allclose(single, logits, rtol=1e-4, atol=1e-4)
        frames = [np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)]
        assert runner.infer_frames(frames).shape == (1, 3)
        with raises(UserInputError, "(1, 3, 7, 7)"):
            runner.infer(np.zeros((1, 3, 7, 7), np.float32))
        assert runner.describe()["backend"] == runner.backend


def test_fixed_batch_model_is_chunked_and_padded(tmp_path):
    from conftest import build_tiny_onnx

    fixed = build_tiny_onnx(tmp_path / "b2.onnx", batch=2)
    dynamic = build_tiny_onnx(tmp_path / "dyn.onnx")
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    with load(fixed) as f, load(dynamic) as d:
        assert f.input_spec.fixed_batch == 2 and d.input_spec.fixed_batch is None
        np.testing.assert_allclose(f.infer(x), d.infer(x), rtol=1e-5, atol=1e-5)


def test_torch_and_onnx_agree_after_export(tmp_path):
    pytest.importorskip("torch")
    from edgecnn.export import ExportOptions, export_onnx

    ckpt = _torch_checkpoint(tmp_path)
    report = export_onnx(ckpt, tmp_path / "lenet.onnx", ExportOptions(dynamic_batch=True))
    assert report.max_abs_diff < 1e-4
    x = np.random.default_rng(3).normal(size=(4, 3, 32, 32)).astype(np.float32)
    with load(ckpt) as t, load(tmp_path / "lenet.onnx") as o:
        assert t.backend == "torch" and o.backend == "onnxrt"
        np.testing.assert_allclose(t.infer(x), o.infer(x), atol=1e-4)
        assert o.contract.provenance["source_sha256"]


def test_load_errors(tmp_path):
    with raises(UserInputError, "missing.onnx"):
        load(tmp_path / "missing.onnx")
    (tmp_path / "model.xyz").write_bytes(b"x")
    with raises(UserInputError, "model.xyz", ".onnx"):
        load(tmp_path / "model.xyz")
    with raises(UserInputError, str(tmp_path)):
        load(tmp_path)
    with raises(UserInputError, "nope"):
        backend_for(tmp_path / "m.onnx", "nope")
    onnx_model = _onnx_model(tmp_path)  # the torch backend on an ONNX file: the real mistake, not 'a plain pickle'
    with raises(UserInputError, "--backend onnxrt", "tiny.onnx"):
        load(onnx_model, backend="torch")


def test_labels_must_match_the_models_outputs(tmp_path):
    """More labels than outputs would name classes that do not exist; fewer failed on the first prediction."""
    import onnx
    from conftest import build_tiny_onnx

    from edgecnn.errors import ArtifactError

    model = build_tiny_onnx(tmp_path / "three.onnx")  # 3 outputs
    for labels, mentions in (
        (["a", "b"], ("relabelled.onnx", "3", "2")),
        (["a", "b", "c", "d"], ("relabelled.onnx", "4")),
        ({"a": 0, "b": 1, "c": 2}, ("relabelled.onnx", "labels")),
    ):
        m = onnx.load(str(model))
        for prop in m.metadata_props:
            if prop.key == "edgecnn.labels":
                prop.value = json.dumps(labels)
        path = tmp_path / "relabelled.onnx"
        onnx.save(m, str(path))
        with raises(ArtifactError, *mentions):
            load(path)


def test_corrupt_onnx_and_checkpoint_are_artifact_errors(tmp_path):
    from edgecnn.errors import ArtifactError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ArtifactError):
        load(bad)
    pytest.importorskip("torch")
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"fn": print}, evil)  # a pickle that references a callable: weights_only must refuse it
    with raises(ArtifactError, "evil.pt"):
        load(evil)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(_torch_checkpoint(tmp_path).read_bytes()[:500])
    with pytest.raises(ArtifactError):
        load(truncated)


@pytest.mark.parametrize("cache", ["/proc/edgecnn", "/sys/edgecnn", "/proc"])
def test_an_unwritable_model_cache_is_one_line(tmp_path, monkeypatch, cache):
    """A pretrained name materialises into $EDGECNN_CACHE: where that cannot be written, predict says so (exit 2)
    and names the variable, instead of an internal error from inside the save."""
    import cv2
    from typer.testing import CliRunner

    from edgecnn.cli.main import app

    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), np.full((32, 32, 3), 128, np.uint8))
    monkeypatch.setenv("EDGECNN_CACHE", cache)
    result = CliRunner().invoke(app, ["predict", "efficientnet-lite0", str(img)])
    assert result.exit_code == (74 if cache.startswith("/sys") else 2), result.output  # /sys refuses: StorageError
    assert "EDGECNN_CACHE" in result.stderr and "internal" not in result.stderr


def _edit_contract(src, dst, **changes):
    """A copy of an ONNX model whose edgecnn metadata has `changes` (JSON values) written over it."""
    import onnx

    m = onnx.load(str(src))
    for prop in m.metadata_props:
        key = prop.key.removeprefix("edgecnn.")
        if key in changes:
            prop.value = json.dumps(changes[key])
    onnx.save(m, str(dst))
    return dst


def _small_graph(path, input_type, head):
    """A real ONNX classifier-like graph: `input_type` input (N, 3, 32, 32), then `head` ('flat': (N, 3) scores;
    'map': (N, 3, 1, 1), what a model that was never flattened outputs), with an edgecnn contract for 3 labels."""
    import onnx
    from onnx import TensorProto, helper

    from edgecnn.contract import ModelContract, write_onnx_contract
    from edgecnn.onnx_io import save_onnx
    from edgecnn.preprocess import PreprocessConfig

    nodes = [
        helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
    ]
    if head == "flat":
        nodes.append(helper.make_node("Flatten", ["gap"], ["logits"]))
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    else:
        nodes.append(helper.make_node("Identity", ["gap"], ["logits"]))
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 1, 1])
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("input", input_type, ["N", 3, 32, 32])], [out]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    write_onnx_contract(model, ModelContract(labels=LABELS, preprocess=PreprocessConfig(input_size=(32, 32))))
    return save_onnx(model, path)


def test_a_damaged_onnx_contract_is_an_artifact_error_naming_the_file(tmp_path):
    """Problems inside the model file are exit 4 with the file's name, found at load: never 'Invalid preprocessing'
    blamed on the user (exit 2), a failure at the first inference, or an internal error."""
    import cv2
    from conftest import build_tiny_onnx
    from typer.testing import CliRunner

    from edgecnn.cli.main import app
    from edgecnn.contract import read_onnx_contract
    from edgecnn.errors import ArtifactError
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

    good = build_tiny_onnx(tmp_path / "tiny.onnx", labels=LABELS, size=(32, 32))
    pre = read_onnx_contract(good).preprocess.to_dict()
    OnnxRuntimeRunner(_small_graph(tmp_path / "float.onnx", 1, "flat")).close()  # the small graph itself is fine
    cases = [
        (_edit_contract(good, tmp_path / "std0.onnx", preprocess={**pre, "std": [0, 0, 0]}), ("std0.onnx", "std")),
        (
            _edit_contract(good, tmp_path / "size64.onnx", preprocess={**pre, "input_size": [64, 64]}),
            ("size64.onnx", "(N, 3, 32, 32)", "(N, 3, 64, 64)"),
        ),
        (
            _small_graph(tmp_path / "uint8.onnx", 2, "flat"),
            ("uint8.onnx", "uint8", "float32"),
        ),
        (
            _small_graph(tmp_path / "map.onnx", 1, "map"),
            ("map.onnx", "logits", "(N, 3, 1, 1)"),
        ),
    ]
    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), np.full((32, 32, 3), 100, np.uint8))
    for path, mentions in cases:
        with raises(ArtifactError, *mentions):
            load(path)
        result = CliRunner().invoke(app, ["predict", str(path), str(img)])
        assert result.exit_code == 4, result.output
        assert path.name in result.stderr and "internal" not in result.stderr
