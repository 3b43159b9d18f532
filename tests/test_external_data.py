"""ONNX models whose weights are EXTERNAL DATA (`model.onnx` + `model.onnx.data`, as torch.onnx.export and big models
write them) through every command that takes an ONNX model. Real files and real ONNX Runtime sessions throughout.

A model whose data file is missing, truncated, a symlink, or named by a location outside the model's folder is refused
with one line naming the fix, before anything is written and without reading the file outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from asserts import assert_error, raises
from conftest import build_tiny_onnx, make_image_folder, save_with_external_data, write_video
from typer.testing import CliRunner

from edgecnn.cli.main import app
from edgecnn.errors import ExternalDataError, UserInputError
from edgecnn.files import sha256_file
from edgecnn.onnx_io import copy_onnx, model_bytes, onnx_external_data, onnx_sha256
from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

runner = CliRunner()
SECRET = b"SECRET-BYTES-" * 1000  # larger than any tensor: only the location check can stop a read of it


def logits(path: Path, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    with OnnxRuntimeRunner(path) as r:
        return r.infer(x)


def relocate(model: Path, location: str) -> None:
    """Point every external tensor of `model` at `location` (the weights file itself is left where it is)."""
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(model))


def broken(external_onnx: Path, kind: str) -> Path:
    """The external-data model damaged as `kind`; a secret file sits in the folder above it."""
    secret = external_onnx.parent.parent / "secret.bin"
    secret.write_bytes(SECRET)
    data = external_onnx.with_name("model.onnx.data")
    if kind == "missing":
        data.unlink()
    elif kind == "truncated":
        data.write_bytes(data.read_bytes()[:100])
    elif kind == "symlink":
        data.unlink()
        data.symlink_to(secret)
    elif kind == "outside":
        relocate(external_onnx, "../secret.bin")
    elif kind == "absolute":
        relocate(external_onnx, str(secret))
    return external_onnx


BROKEN = {
    "missing": "missing",
    "truncated": "4608",  # the bytes its tensors need
    "symlink": "symbolic link",
    "outside": "outside",
    "absolute": "outside",
}


# ---------------------------------------------------------------- the helpers


def test_external_data_files_are_listed_and_hashed(external_onnx, tmp_path):
    assert onnx_external_data(external_onnx) == ["model.onnx.data"]
    assert onnx_external_data(build_tiny_onnx(tmp_path / "plain.onnx")) == []
    plain = tmp_path / "plain.onnx"
    assert onnx_sha256(plain) == sha256_file(plain)  # a self-contained model keeps its plain file digest
    assert model_bytes(external_onnx) == external_onnx.stat().st_size + 4608

    # new weights, same graph (retrained): the .onnx is byte-identical, the model's id is not
    other = tmp_path / "other" / "model.onnx"
    other.parent.mkdir()
    other.write_bytes(external_onnx.read_bytes())
    weights = np.frombuffer(external_onnx.with_name("model.onnx.data").read_bytes(), np.float32)
    other.with_name("model.onnx.data").write_bytes((weights * 0.5).tobytes())
    assert not np.allclose(logits(other), logits(external_onnx))
    assert onnx_sha256(other) != onnx_sha256(external_onnx)


def test_copy_keeps_nested_locations(tmp_path):
    src = save_with_external_data(build_tiny_onnx(tmp_path / "t.onnx"), tmp_path / "src", location="weights/w.bin")
    assert onnx_external_data(src) == ["weights/w.bin"]
    dst = tmp_path / "dst" / "renamed.onnx"
    dst.parent.mkdir()
    assert copy_onnx(src, dst) == ["weights/w.bin"]
    copied, original = tmp_path / "dst" / "weights" / "w.bin", tmp_path / "src" / "weights" / "w.bin"
    assert copied.read_bytes() == original.read_bytes()
    np.testing.assert_array_equal(logits(dst), logits(src))


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_external_data_is_refused(external_onnx, kind):
    model = broken(external_onnx, kind)
    with raises(ExternalDataError, BROKEN[kind]):
        onnx_external_data(model)


# ---------------------------------------------------------------- predict / eval / profile / compare


def test_inference_commands_run_an_external_data_model(external_onnx, tmp_path):
    images = make_image_folder(tmp_path / "images", classes=("cat", "dog", "bird"))
    plain = tmp_path / "tiny.onnx"  # the same weights inside one file
    np.testing.assert_array_equal(logits(external_onnx), logits(plain))

    res = runner.invoke(app, ["predict", str(external_onnx), str(images / "cat")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", str(external_onnx), str(images), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(external_onnx), str(plain), "--data", str(images), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["top1_agreement"] == 1.0
    res = runner.invoke(app, ["profile", str(external_onnx), "-n", "3", "--warmup", "1", "--json"])
    assert res.exit_code == 0, res.output
    size = json.loads(res.stdout)["models"][0]["file_size_mb"]
    assert size == round(model_bytes(external_onnx) / 1e6, 3) > round(external_onnx.stat().st_size / 1e6, 3)


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_predict_refuses_broken_external_data_in_one_line(external_onnx, tmp_path, kind):
    model = broken(external_onnx, kind)
    image = next(make_image_folder(tmp_path / "images").rglob("*.png"))
    res = runner.invoke(app, ["predict", str(model), str(image)])
    assert res.exit_code == 4
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and BROKEN[kind] in lines[0], res.stderr
    assert "Traceback" not in res.output and "SECRET" not in res.output


@pytest.mark.parametrize("kind", ["missing", "outside", "truncated"])
def test_openvino_backend_names_broken_external_data(external_onnx, tmp_path, kind):
    pytest.importorskip("openvino")
    image = next(make_image_folder(tmp_path / "i").rglob("*.png"))
    good = runner.invoke(app, ["predict", str(external_onnx), str(image), "--backend", "openvino"])
    assert good.exit_code == 0, good.output
    model = broken(external_onnx, kind)
    res = runner.invoke(app, ["predict", str(model), str(tmp_path / "i"), "--backend", "openvino"])
    assert res.exit_code == 4 and BROKEN[kind] in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- quantize


def test_quantize_takes_an_external_data_model_and_writes_one_file(external_onnx, tmp_path):
    images = make_image_folder(tmp_path / "images", classes=("cat", "dog", "bird"), per_class=4)
    out = tmp_path / "q" / "model.int8.onnx"
    res = runner.invoke(app, ["quantize", str(external_onnx), "--calib", str(images), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["sizes"]["fp32_bytes"] == model_bytes(external_onnx)
    assert onnx_external_data(out) == [] and sorted(p.name for p in out.parent.iterdir()) == ["model.int8.onnx"]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    provenance = json.loads(meta["edgecnn.provenance"])["quantization"]
    assert provenance["source_sha256"] == onnx_sha256(external_onnx)  # covers the weights, not just the graph
    assert logits(out).shape == (2, 3)


def test_quantize_never_writes_over_the_weights_file(external_onnx, tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=2)
    data = external_onnx.with_name("model.onnx.data")
    before = sha256_file(data)
    res = runner.invoke(app, ["quantize", str(external_onnx), "--calib", str(images), "--out", str(data)])
    assert_error(res, 2, "model.onnx.data", "--out")
    assert sha256_file(data) == before


@pytest.mark.parametrize("kind", ["missing", "outside", "truncated"])
def test_quantize_refuses_broken_external_data(external_onnx, tmp_path, kind):
    model = broken(external_onnx, kind)
    images = make_image_folder(tmp_path / "images", per_class=2)
    out = tmp_path / "q.onnx"
    res = runner.invoke(app, ["quantize", str(model), "--calib", str(images), "--out", str(out)])
    assert res.exit_code == 4 and BROKEN[kind] in res.stderr and "Traceback" not in res.output
    assert not out.exists()


# ---------------------------------------------------------------- build-engine (up to TensorRT, absent here)


def test_build_engine_checks_external_data_before_tensorrt(external_onnx, tmp_path):
    out = tmp_path / "m.engine"
    res = runner.invoke(app, ["build-engine", str(external_onnx), "--out", str(out), "--print-trtexec"])
    assert res.exit_code == 0 and f"--onnx={external_onnx}" in res.stdout
    data = external_onnx.with_name("model.onnx.data")
    res = runner.invoke(
        app, ["build-engine", str(external_onnx), "--out", str(out), "--timing-cache", str(data), "--print-trtexec"]
    )
    assert_error(res, 2, "--timing-cache")
    data.unlink()
    for extra in ([], ["--print-trtexec"]):
        res = runner.invoke(app, ["build-engine", str(external_onnx), "--out", str(out), *extra])
        assert res.exit_code == 4 and "which is missing" in res.stderr, res.stderr  # not "TensorRT is not installed"


def test_engine_manifest_records_the_weights_files(external_onnx):
    from edgecnn.trt.builder import onnx_record

    record = onnx_record(external_onnx)
    data = external_onnx.with_name("model.onnx.data")
    assert record["sha256"] == sha256_file(external_onnx)
    assert record["external_data"] == [{"file": "model.onnx.data", "sha256": sha256_file(data), "bytes": 4608}]
    assert "external_data" not in onnx_record(external_onnx.parent.parent / "tiny.onnx")


# ---------------------------------------------------------------- deploy triton


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_triton_repository_carries_the_weights(tmp_path, kind):
    from edgecnn.deploy.triton import TritonOptions, write_repository

    model = save_with_external_data(
        build_tiny_onnx(tmp_path / "tiny.onnx"), tmp_path / "src", name="net.onnx", location="weights/net.bin"
    )
    report = write_repository(model, tmp_path / "repo", TritonOptions(kind=kind))
    assert report.files == [
        "net/1/model.onnx",
        "net/1/weights/net.bin",
        "net/config.pbtxt",
        "net/edgecnn-contract.json",
        "net/labels.txt",
    ]
    served = tmp_path / "repo" / "net" / "1" / "model.onnx"
    np.testing.assert_array_equal(logits(served), logits(model))  # Triton's ORT backend loads it by this path


@pytest.mark.parametrize("kind", ["missing", "outside", "symlink"])
def test_triton_refuses_broken_external_data_and_creates_nothing(external_onnx, tmp_path, kind):
    model = broken(external_onnx, kind)
    repo = tmp_path / "new" / "repo"
    res = runner.invoke(app, ["deploy", "triton", str(model), "--repo", str(repo), "--cpu"])
    assert res.exit_code == 4 and BROKEN[kind] in res.stderr
    assert not (tmp_path / "new").exists()


def test_triton_takes_back_the_repo_folder_when_writing_fails(tmp_path):
    """A weights file that would land on the copied model itself fails inside the write: --repo, which the call
    created, goes again (make_dirs / remove_created), and the source is untouched."""
    from edgecnn.deploy.triton import write_repository

    model = save_with_external_data(
        build_tiny_onnx(tmp_path / "tiny.onnx"), tmp_path / "src", name="net.onnx", location="model.onnx"
    )
    before = sha256_file(tmp_path / "src" / "model.onnx")
    with raises(UserInputError, "model.onnx"):
        write_repository(model, tmp_path / "new" / "repo")
    assert not (tmp_path / "new").exists()
    assert sha256_file(tmp_path / "src" / "model.onnx") == before


# ---------------------------------------------------------------- deploy deepstream


def _with_softmax(src: Path, dst: Path) -> Path:
    from onnx import helper

    proto = onnx.load(str(src))
    proto.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    out = onnx.ValueInfoProto()
    out.CopyFrom(proto.graph.output[0])
    out.name = "probs"
    del proto.graph.output[:]
    proto.graph.output.append(out)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("ends_in_softmax", [False, True], ids=["adds-softmax", "has-softmax"])
def test_deepstream_writes_a_self_contained_model(tmp_path, ends_in_softmax):
    plain = build_tiny_onnx(tmp_path / "tiny.onnx")
    if ends_in_softmax:
        plain = _with_softmax(plain, tmp_path / "tiny.softmax.onnx")
    model = save_with_external_data(plain, tmp_path / "src")
    out = tmp_path / "ds"
    res = runner.invoke(app, ["deploy", "deepstream", str(model), "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = out / "model.softmax.onnx"
    assert onnx_external_data(written) == [] and not list(out.glob("*.data"))
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    import onnxruntime as ort

    got = ort.InferenceSession(str(written)).run(None, {"input": x})[0]
    expected = ort.InferenceSession(str(plain)).run(None, {"input": x})[0]
    if not ends_in_softmax:
        expected = np.exp(expected - expected.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["missing", "outside", "truncated"])
def test_deepstream_refuses_broken_external_data(external_onnx, tmp_path, kind):
    model = broken(external_onnx, kind)
    res = runner.invoke(app, ["deploy", "deepstream", str(model), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 4 and BROKEN[kind] in res.stderr and "internal error" not in res.stderr
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- deploy bundle + install


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def test_bundle_carries_hashes_and_installs_the_weights(external_onnx, tmp_path):
    from edgecnn.deploy.bundle import BundleOptions, create_bundle, parse_sha256sums
    from edgecnn.deploy.install import install_bundle

    if _has_tensorrt():
        pytest.skip("TensorRT is installed here: the start script would build an engine instead")
    out = tmp_path / "app.tar.gz"
    report = create_bundle(external_onnx, out, BundleOptions(name="ext"))
    data = external_onnx.with_name("model.onnx.data")
    with tarfile.open(out) as tar:
        sums = parse_sha256sums(tar.extractfile("ext/SHA256SUMS").read().decode())
        manifest = json.loads(tar.extractfile("ext/bundle.json").read())
        readme = tar.extractfile("ext/README.md").read().decode()
    assert "model.onnx, model.onnx.data" in readme  # the README lists the weights file beside the model
    assert sums["model.onnx.data"] == sha256_file(data)
    assert manifest["model_id"] == onnx_sha256(external_onnx)[:12]  # the device's engine key changes with the weights
    assert {"path": "model.onnx.data", "sha256": sha256_file(data), "bytes": 4608} in report.files

    installed = install_bundle(out, tmp_path / "prefix", python=sys.executable)
    app_dir = Path(installed.app_dir)
    assert installed.runtime == "onnx" and (app_dir / "model.onnx.data").is_file()
    np.testing.assert_array_equal(logits(app_dir / "model.onnx"), logits(external_onnx))

    video = write_video(tmp_path / "clip.avi", frames=6, fps=10, fourcc="MJPG")
    env = dict(os.environ, EDGECNN_PYTHON=sys.executable, EDGECNN_SOURCE=str(video))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(app_dir / "start.sh"), "--max-frames", "2", "--no-pace"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"type": "frame"')]
    assert len(frames) == 2


def test_install_refuses_a_tampered_weights_file(external_onnx, tmp_path):
    from test_deploy_install import repack

    from edgecnn.deploy.bundle import BundleOptions, create_bundle
    from edgecnn.deploy.install import install_bundle
    from edgecnn.errors import ArtifactError

    out = tmp_path / "app.tar.gz"
    create_bundle(external_onnx, out, BundleOptions(name="ext"))

    def flip(name, data):
        return bytes([data[0] ^ 0xFF]) + data[1:] if name == "ext/model.onnx.data" else data

    bad = repack(out, tmp_path / "bad.tar.gz", flip)
    with raises(ArtifactError, "model.onnx.data"):
        install_bundle(bad, tmp_path / "prefix", build_engine=False)
    assert not (tmp_path / "prefix" / "ext").exists()


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_bundle_refuses_broken_external_data(external_onnx, tmp_path, kind):
    model = broken(external_onnx, kind)
    out = tmp_path / "app.tar.gz"
    res = runner.invoke(app, ["deploy", "bundle", str(model), "--out", str(out)])
    assert res.exit_code == 4 and BROKEN[kind] in res.stderr, res.stderr
    assert not out.exists()


def test_bundle_refuses_a_weights_file_named_like_its_own_files(tmp_path):
    model = save_with_external_data(build_tiny_onnx(tmp_path / "tiny.onnx"), tmp_path / "src", location="labels.txt")
    res = runner.invoke(app, ["deploy", "bundle", str(model), "--out", str(tmp_path / "app.tar.gz")])
    assert_error(res, 2, "labels.txt")
    assert not (tmp_path / "app.tar.gz").exists()


def test_bundle_with_an_external_data_int8_model(external_onnx, tmp_path):
    """An INT8 Q/DQ model (from `edgecnn quantize`, one file) re-saved with external data goes beside the FP32 one."""
    from edgecnn.deploy.bundle import BundleOptions, create_bundle

    images = make_image_folder(tmp_path / "images", classes=("cat", "dog", "bird"), per_class=3)
    q = tmp_path / "q.onnx"
    res = runner.invoke(app, ["quantize", str(external_onnx), "--calib", str(images), "--out", str(q)])
    assert res.exit_code == 0, res.output
    int8 = save_with_external_data(
        q, tmp_path / "int8", name="model.int8.onnx", location="model.int8.onnx.data", size_threshold=256
    )
    assert onnx_external_data(int8) == ["model.int8.onnx.data"]
    out = tmp_path / "app.tar.gz"
    create_bundle(external_onnx, out, BundleOptions(name="ext", precision="int8", int8_model=int8))
    with tarfile.open(out) as tar:
        names = {m.name for m in tar.getmembers()}
        manifest = json.loads(tar.extractfile("ext/bundle.json").read())
    assert {"ext/model.onnx.data", "ext/model.int8.onnx.data"} <= names
    assert manifest["build_onnx"] == "model.int8.onnx" and manifest["model_id"] == onnx_sha256(int8)[:12]
