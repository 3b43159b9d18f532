"""The optional OpenVINO backend: same outputs as ONNX Runtime, IR round trip, per-layer counters, clear errors."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from edgecnn.errors import ArtifactError, MissingDependencyError
from edgecnn.runtime import load


def test_missing_openvino_is_a_clear_error(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError, as on a machine without it
    with pytest.raises(MissingDependencyError, match=r"edgecnn\[openvino\]"):
        load(tiny_onnx, backend="openvino")


HAVE_OV = importlib.util.find_spec("openvino") is not None
pytestmark_ov = pytest.mark.skipif(not HAVE_OV, reason="optional extra not installed: pip install 'edgecnn[openvino]'")


@pytestmark_ov
def test_matches_onnxruntime_on_onnx(tiny_onnx):
    x = np.random.default_rng(0).normal(0, 1, (3, 3, 32, 32)).astype(np.float32)
    with load(tiny_onnx) as ref, load(tiny_onnx, backend="openvino", threads=1) as runner:
        assert runner.backend == "openvino" and runner.input_spec.shape == (None, 3, 32, 32)
        assert runner.labels == ref.labels
        np.testing.assert_allclose(runner.infer(x), ref.infer(x), atol=1e-4)
        np.testing.assert_allclose(runner.infer(x[:1]), ref.infer(x[:1]), atol=1e-4)


@pytestmark_ov
def test_ir_round_trip_keeps_the_contract(tmp_path, tiny_onnx):
    from edgecnn.runtime.openvino import save_ir

    xml = save_ir(tiny_onnx, tmp_path / "ir" / "tiny.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    assert sorted(p.name for p in xml.parent.iterdir()) == ["tiny.bin", "tiny.xml"]  # no temp files left
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    with load(xml) as runner, load(tiny_onnx) as ref:  # .xml picks the backend by suffix
        assert runner.backend == "openvino" and runner.labels == ["cat", "dog", "bird"]
        assert runner.preprocess_config == ref.preprocess_config
        np.testing.assert_allclose(runner.infer(x), ref.infer(x), atol=1e-4)


@pytestmark_ov
def test_ir_without_contract_is_rejected(tmp_path, tiny_onnx):
    import openvino as ov

    model = ov.Core().read_model(str(tiny_onnx))
    ov.save_model(model, str(tmp_path / "plain.xml"))
    with pytest.raises(ArtifactError, match="no edgecnn contract"):
        load(tmp_path / "plain.xml")


@pytestmark_ov
def test_layer_profile_and_profile_hook(tiny_onnx):
    from edgecnn.profiling.latency import ProfileOptions, profile_models

    with load(tiny_onnx, backend="openvino") as runner:
        rows = runner.layer_profile(batch=2, iterations=3)
    names = " ".join(r["name"] for r in rows)
    assert "conv1" in names and "conv2" in names and all(r["mean_ms"] >= 0 for r in rows)
    result = profile_models(
        [str(tiny_onnx), f"{tiny_onnx}@openvino"], ProfileOptions(warmup=1, iterations=3, per_layer=True)
    )
    assert [m.backend for m in result.models] == ["onnxrt", "openvino"]
    assert result.models[1].layers and result.models[1].label == "tiny.onnx@openvino"


@pytestmark_ov
def test_unreadable_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="OpenVINO cannot read"):
        load(bad, backend="openvino")
