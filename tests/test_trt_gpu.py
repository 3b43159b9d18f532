"""Real TensorRT builds and inference (marker `gpu`): FP32, FP16 and INT8 (Q/DQ) engines from a small model, compared
with ONNX Runtime on real images. Skipped with the reason where TensorRT, cuda-python or a GPU is missing."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.data import list_images, read_image
from edgecnn.errors import ArtifactError, MissingDependencyError
from edgecnn.files import sha256_file
from edgecnn.preprocess import preprocess
from edgecnn.runtime import load
from edgecnn.runtime.onnxrt import OnnxRuntimeRunner
from edgecnn.trt.manifest import manifest_path, read_manifest
from edgecnn.trt.plan import BuildOptions, parse_batch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    try:
        from edgecnn.trt.env import runtime_facts

        return runtime_facts()
    except MissingDependencyError as exc:
        pytest.skip(f"needs TensorRT, cuda-python and an NVIDIA GPU: {exc}")


@pytest.fixture
def images(image_folder, tiny_onnx):
    from edgecnn.contract import read_onnx_contract

    contract = read_onnx_contract(tiny_onnx)
    return preprocess([read_image(p) for p in list_images(image_folder)], contract.preprocess)


def _build(onnx, out, **kw):
    from edgecnn.trt.builder import build_engine

    phases = []
    report = build_engine(onnx, out, BuildOptions(**kw), progress=lambda phase, done, total: phases.append(phase))
    return report, phases


def _compare(engine, onnx, x):
    with load(engine) as trt_runner, OnnxRuntimeRunner(onnx) as ort_runner:
        a, b = ort_runner.infer(x), trt_runner.infer(x)
        timings = dict(trt_runner.last_timings)
    return a, b, timings


def test_fp32_engine_matches_onnxruntime_with_dynamic_batch(gpu, tiny_onnx, images, tmp_path):
    engine = tmp_path / "tiny.fp32.engine"
    cache = tmp_path / "timing.cache"
    report, phases = _build(tiny_onnx, engine, precision="fp32", batch=parse_batch("1:4:8"), timing_cache=str(cache))
    assert engine.is_file() and cache.is_file() and phases
    m = read_manifest(engine)
    assert m["engine"]["sha256"] == sha256_file(engine) and m["onnx"]["sha256"] == sha256_file(tiny_onnx)
    assert (
        m["built_with"]["tensorrt"] == gpu["tensorrt"]
        and m["built_with"]["compute_capability"] == gpu["compute_capability"]
    )
    assert m["io"]["inputs"][0]["profile"]["max"] == [8, 3, 32, 32] and m["contract"]["labels"] == [
        "cat",
        "dog",
        "bird",
    ]

    a, b, timings = _compare(engine, tiny_onnx, images)  # 12 images > max batch 8: the runner splits them
    assert b.shape == a.shape and (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() <= 1e-2 * max(1.0, np.abs(a).max())  # TF32 may be on for FP32 layers
    assert set(timings) == {"h2d_ms", "compute_ms", "d2h_ms"}

    with load(engine) as runner:
        rows = runner.layer_profile(2, iterations=5)
        assert rows and all(r["mean_ms"] >= 0 for r in rows) and abs(sum(r["share"] for r in rows) - 1) < 1e-6
        assert runner.input_spec.min_batch == 1 and runner.input_spec.max_batch == 8

    _build(tiny_onnx, tmp_path / "again.engine", precision="fp32", batch=parse_batch("1:4:8"), timing_cache=str(cache))


def test_fp16_engine_agrees_with_onnxruntime(gpu, tiny_onnx, images, tmp_path):
    engine = tmp_path / "tiny.fp16.engine"
    report, _ = _build(tiny_onnx, engine, precision="fp16", batch=parse_batch("1:8:16"))
    assert read_manifest(engine)["precision"] == "fp16" and report.plan.engine_precision == "fp16"
    a, b, _ = _compare(engine, tiny_onnx, images)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    assert np.abs(a - b).max() <= 3e-2 * max(1.0, np.abs(a).max())


def test_int8_engine_from_qdq_onnx_agrees_with_onnxruntime(gpu, tiny_onnx, images, tmp_path):
    from test_trt_fp16 import make_qdq_onnx

    qdq = make_qdq_onnx(tiny_onnx, tmp_path / "tiny.qdq.onnx", batches=16)
    engine = tmp_path / "tiny.int8.engine"
    report, _ = _build(qdq, engine, precision="int8", batch=parse_batch("1:4:8"))
    assert report.plan.int8_source == "qdq" and read_manifest(engine)["precision"] == "int8"
    a, b, _ = _compare(engine, qdq, images)  # same Q/DQ model on ONNX Runtime CPU
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.8
    assert np.abs(a - b).max() <= 0.1 * max(1.0, np.abs(a).max())


def test_built_engine_is_refused_after_tampering(gpu, tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    _build(tiny_onnx, engine, precision="fp32")
    assert manifest_path(engine).is_file()
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load(engine)


@pytest.mark.parametrize("layout,dtype,softmax", [("nhwc", "float32", False), ("nhwc", "uint8", True)])
def test_adopted_layouts_build_and_run_like_onnxruntime(gpu, tmp_path, image_folder, layout, dtype, softmax):
    """An adopted NHWC / uint8 / Softmax-output model: the engine takes what preprocess() makes for its contract."""
    from test_adopt import foreign

    from edgecnn.adopt import AdoptOptions, adopt

    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    onnx = tmp_path / "adopted.onnx"
    adopt(foreign(tmp_path / "f.onnx", layout, dtype, softmax), onnx, AdoptOptions(labels=labels, preset="imagenet"))
    engine = tmp_path / "adopted.engine"
    _build(onnx, engine, precision="fp32", batch=parse_batch("1:4:8"))
    frames = [read_image(p) for p in list_images(image_folder)]
    with load(engine) as trt_runner, OnnxRuntimeRunner(onnx) as ort_runner:
        assert trt_runner.input_spec.dtype == dtype
        np.testing.assert_allclose(trt_runner.infer_frames(frames), ort_runner.infer_frames(frames), atol=1e-3)
