"""`edgecnn deploy triton`: the generated config.pbtxt is parsed with Triton's own protobuf schema (tritonclient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asserts import raises
from conftest import build_int8_qdq_onnx, build_tiny_onnx
from typer.testing import CliRunner

from edgecnn.contract import read_onnx_contract
from edgecnn.deploy.triton import TritonOptions, write_repository
from edgecnn.errors import UserInputError
from edgecnn.files import sha256_file

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="pip install 'tritonclient[grpc]' (in edgecnn[dev]) to validate configs",
)
from google.protobuf import text_format  # noqa: E402  (protobuf comes with tritonclient)


def parse(text: str):
    """Triton's ModelConfig from text format: unknown fields or bad enums raise ParseError."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture
def dynamic_onnx(tmp_path) -> Path:
    return build_tiny_onnx(tmp_path / "classifier.onnx")  # batch dimension 'N'


def test_onnx_repository_with_dynamic_batching(tmp_path, dynamic_onnx):
    report = write_repository(
        dynamic_onnx, tmp_path / "repo", TritonOptions(max_batch=16, instances=2, dynamic_batching=True)
    )
    model_dir = tmp_path / "repo" / "classifier"
    cfg = parse((model_dir / "config.pbtxt").read_text())
    assert cfg.name == "classifier" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16 == report.max_batch_size
    (inp,), (out,) = cfg.input, cfg.output
    assert inp.name == "input" and inp.data_type == model_config_pb2.TYPE_FP32
    assert list(inp.dims) == [3, 32, 32] and inp.format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert out.name == "logits" and list(out.dims) == [3] and out.label_filename == "labels.txt"
    assert cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 100
    pre = json.loads(cfg.parameters["edgecnn.preprocess"].string_value)
    assert pre == read_onnx_contract(dynamic_onnx).preprocess.to_dict()

    assert (model_dir / "labels.txt").read_text().splitlines() == ["cat", "dog", "bird"]
    assert sha256_file(model_dir / "1" / "model.onnx") == sha256_file(dynamic_onnx)
    assert sorted(report.files) == [
        "classifier/1/model.onnx",
        "classifier/config.pbtxt",
        "classifier/edgecnn-contract.json",
        "classifier/labels.txt",
    ]
    assert not list((tmp_path / "repo").glob(".classifier*")), "no staging folder left behind"


def test_fixed_batch_model_gets_max_batch_size_zero(tmp_path):
    model = build_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    write_repository(model, tmp_path / "repo", TritonOptions(kind="cpu"))
    cfg = parse((tmp_path / "repo" / "fixed" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [1, 3, 32, 32] and list(cfg.output[0].dims) == [1, 3]
    assert cfg.input[0].format == model_config_pb2.ModelInput.FORMAT_NONE  # NCHW needs rank 3 in Triton
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    with raises(UserInputError, "--dynamic-batch"):
        write_repository(model, tmp_path / "repo2", TritonOptions(dynamic_batching=True))
    with raises(UserInputError, "--dynamic-batch"):  # a negative max batch is not "no batching"
        write_repository(model, tmp_path / "repo2", TritonOptions(max_batch=-3))
    with raises(UserInputError, model.name):
        write_repository(model, model / "sub", TritonOptions(kind="cpu"))


def _engine_with_manifest(tmp_path: Path, onnx: Path, max_batch: int) -> Path:
    """An engine file + the sidecar manifest `build-engine` writes. The bytes are not a real plan (no TensorRT
    here); the repository writer only reads the manifest and copies the file, which is what is tested."""
    from edgecnn.trt.manifest import file_record, write_manifest

    engine = tmp_path / "classifier.engine"
    engine.write_bytes(b"serialized plan bytes")
    contract = read_onnx_contract(onnx)
    write_manifest(
        engine,
        {
            "engine": file_record(engine),
            "built_with": {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"},
            "contract": contract.to_dict(),
            "io": {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [-1, 3, 32, 32],
                        "dtype": "float32",
                        "profile": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [max_batch, 3, 32, 32]},
                    }
                ],
                "outputs": [{"name": "logits", "shape": [-1, 3], "dtype": "float32", "profile": None}],
            },
        },
    )
    return engine


def test_engine_repository_uses_tensorrt_plan(tmp_path, dynamic_onnx):
    engine = _engine_with_manifest(tmp_path, dynamic_onnx, max_batch=4)
    report = write_repository(engine, tmp_path / "repo", TritonOptions(name="clf_trt"))
    cfg = parse(report.config)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4  # capped at the profile's max
    assert "profile maximum 4" in report.notes[0]
    model_dir = tmp_path / "repo" / "clf_trt"
    assert (model_dir / "1" / "model.plan").read_bytes() == b"serialized plan bytes"
    assert (model_dir / "1" / "model.plan.json").is_file()
    with raises(UserInputError, "--max-batch 8"):
        write_repository(engine, tmp_path / "repo", TritonOptions(name="x", max_batch=8))
    with raises(UserInputError, "--cpu"):
        write_repository(engine, tmp_path / "repo", TritonOptions(name="y", kind="cpu"))
    engine.write_bytes(b"tampered")
    from edgecnn.errors import ArtifactError

    with pytest.raises(ArtifactError):
        write_repository(engine, tmp_path / "repo", TritonOptions(name="z"))


def test_engine_whose_profile_starts_above_batch_1_is_refused(tmp_path, dynamic_onnx):
    """`build-engine --batch 2:4:8`: Triton would send batch-1 requests the engine cannot run."""
    from conftest import engine_with_manifest

    engine = engine_with_manifest(dynamic_onnx, tmp_path / "b248.engine", batch="2:4:8")
    for options in (TritonOptions(), TritonOptions(max_batch=4, dynamic_batching=True)):
        with raises(UserInputError, "--batch 1:OPT:8"):
            write_repository(engine, tmp_path / "repo", options)
    assert not (tmp_path / "repo").exists()
    ok = engine_with_manifest(dynamic_onnx, tmp_path / "b148.engine", batch="1:4:8")
    assert write_repository(ok, tmp_path / "repo", TritonOptions()).max_batch_size == 8


def test_existing_model_needs_force(tmp_path, dynamic_onnx):
    write_repository(dynamic_onnx, tmp_path / "repo")
    (tmp_path / "repo" / "classifier" / "config.pbtxt").write_text("edited by hand")
    with raises(UserInputError, "--force"):
        write_repository(dynamic_onnx, tmp_path / "repo")
    assert (tmp_path / "repo" / "classifier" / "config.pbtxt").read_text() == "edited by hand"
    write_repository(dynamic_onnx, tmp_path / "repo", TritonOptions(force=True))
    parse((tmp_path / "repo" / "classifier" / "config.pbtxt").read_text())


def test_cli_triton_json(tmp_path, dynamic_onnx):
    from edgecnn.cli.main import app

    res = CliRunner().invoke(
        app,
        [
            "deploy",
            "triton",
            str(dynamic_onnx),
            "--repo",
            str(tmp_path / "repo"),
            "--max-batch",
            "4",
            "--instances",
            "3",
            "--dynamic-batching",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    cfg = parse(report["config"])
    assert cfg.max_batch_size == 4 and cfg.instance_group[0].count == 3

    res = CliRunner().invoke(app, ["deploy", "triton", str(tmp_path / "nope.onnx"), "--repo", str(tmp_path / "r")])
    assert res.exit_code == 2 and "not found" in res.output


def test_full_range_int8_model_on_cpu_instances_gets_a_warning(tmp_path, dynamic_onnx):
    """Triton's ORT backend cannot set session.x64quantprecision: full-range INT8 weights saturate on x86 servers
    without VNNI, so KIND_CPU serving of such a model is flagged; reduced-range weights and GPU instances are not."""
    from edgecnn.cli.main import app

    full = build_int8_qdq_onnx(tmp_path / "full.onnx", weight=127)
    reduced = build_int8_qdq_onnx(tmp_path / "reduced.onnx", weight=64)
    report = write_repository(full, tmp_path / "repo", TritonOptions(kind="cpu"))
    assert any("full-range INT8 weights (up to 127)" in n and "x64quantprecision" in n for n in report.notes)
    assert parse((tmp_path / "repo" / "full" / "config.pbtxt").read_text()).instance_group[0].kind == (
        model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    assert not write_repository(full, tmp_path / "repo", TritonOptions(kind="gpu", force=True)).notes
    assert not write_repository(reduced, tmp_path / "repo", TritonOptions(kind="cpu")).notes
    assert not write_repository(dynamic_onnx, tmp_path / "repo", TritonOptions(kind="cpu")).notes  # FP32

    res = CliRunner().invoke(app, ["deploy", "triton", str(full), "--repo", str(tmp_path / "cli"), "--cpu"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the console wraps long lines
    assert "full-range INT8 weights" in text and "--target cpu" in text


def test_int8_cpu_note_reads_the_weights_read_model_io_already_loaded(tmp_path):
    """The note reuses the ModelProto from read_model_io: it still answers once the file is gone (no second load)."""
    from edgecnn.deploy.model_io import read_model_io
    from edgecnn.deploy.triton import int8_cpu_note

    full = build_int8_qdq_onnx(tmp_path / "full.onnx", weight=127)
    io = read_model_io(full)
    assert io.onnx_model is not None
    full.unlink()
    note = int8_cpu_note(io, TritonOptions(kind="cpu"))
    assert note is not None and "full-range INT8 weights (up to 127)" in note


def test_int8_cpu_note_with_weights_in_external_data(tmp_path):
    """read_model_io does not load external data; the note then reads the file with its weights, as before."""
    import onnx

    from edgecnn.deploy.model_io import read_model_io
    from edgecnn.deploy.triton import int8_cpu_note

    for weight, expected in ((127, True), (64, False)):
        model = onnx.load(str(build_int8_qdq_onnx(tmp_path / f"w{weight}.onnx", weight=weight)))
        path = tmp_path / f"external{weight}.onnx"
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"external{weight}.data",
            size_threshold=0,
        )
        io = read_model_io(path)
        assert (int8_cpu_note(io, TritonOptions(kind="cpu")) is not None) is expected


def test_repo_example_in_deploy_folder_parses():
    root = Path(__file__).resolve().parents[1] / "deploy" / "triton" / "efficientnet-lite0"
    cfg = parse((root / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and list(cfg.input[0].dims) == [3, 224, 224]
    assert len((root / "labels.txt").read_text().splitlines()) == list(cfg.output[0].dims)[0] == 1000
