"""`edgecnn build-engine` through Typer's CliRunner: the one-line "no TensorRT" error, --print-trtexec without TensorRT,
--json output, and option validation exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecnn.cli.main import app

runner = CliRunner()


@pytest.fixture
def no_tensorrt(monkeypatch):
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def off_jetson(monkeypatch, tmp_path):
    import edgecnn.platform

    monkeypatch.setattr(edgecnn.platform, "ROOT", tmp_path / "absent")


@pytest.fixture
def on_jetson(monkeypatch, tmp_path):
    """A fake JetPack 6.2 Orin Nano: /etc/nv_tegra_release and the device-tree model text under a fake root."""
    import edgecnn.platform

    (tmp_path / "etc").mkdir()
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n"
    )
    (tmp_path / "proc/device-tree/model").write_bytes(
        b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00"
    )
    monkeypatch.setattr(edgecnn.platform, "ROOT", tmp_path)


def test_without_tensorrt_one_line_and_exit_3_on_desktop(tiny_onnx, tmp_path, no_tensorrt, off_jetson):
    out = tmp_path / "tiny.engine"
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", str(out), "--precision", "fp16"])
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: TensorRT is not installed") and "pip install 'edgecnn[tensorrt]'" in lines[0]
    assert result.stdout == "" and not out.exists()


def test_without_tensorrt_on_jetson_points_to_jetpack(tiny_onnx, tmp_path, no_tensorrt, on_jetson):
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", str(tmp_path / "t.engine")])
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert "\n" not in line and "ships with JetPack" in line and "pip cannot install it" in line
    assert "sudo apt install nvidia-jetpack" in line


def test_print_trtexec_works_without_tensorrt(tiny_onnx, tmp_path, no_tensorrt, off_jetson):
    result = runner.invoke(
        app,
        [
            "build-engine",
            str(tiny_onnx),
            "--out",
            "t.engine",
            "--print-trtexec",
            "--precision",
            "fp16",
            "--batch",
            "1:4:8",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == (
        f"trtexec --onnx={tiny_onnx} --saveEngine=t.engine --minShapes=input:1x3x32x32 --optShapes=input:4x3x32x32 "
        "--maxShapes=input:8x3x32x32 --fp16 --skipInference"
    )


def test_print_trtexec_defaults_to_the_detected_jetson_and_its_jetpack(tiny_onnx, no_tensorrt, on_jetson):
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", "t.engine", "--print-trtexec", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["plan"]["device"] == "orin-nano" and data["plan"]["tensorrt"] == "10.3.0"
    assert data["plan"]["workspace_bytes"] == 1 << 30 and "--memPoolSize=workspace:1024" in data["trtexec"]
    assert data["script"].startswith("trtexec ")


def test_print_trtexec_for_tensorrt_11_fp16(tiny_onnx, no_tensorrt, off_jetson):
    result = runner.invoke(
        app,
        [
            "build-engine",
            str(tiny_onnx),
            "--out",
            "t.engine",
            "--print-trtexec",
            "--trt-version",
            "11.4.1",
            "--precision",
            "fp16",
        ],
    )
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[1].startswith("python3 -c ") and "convert_fp16" in lines[1]
    assert lines[2].startswith("trtexec --onnx=") and ".fp16.onnx" in lines[2] and "--fp16" not in lines[2]
    assert "converted to FP16" in result.stderr


@pytest.fixture
def files(tmp_path, tiny_onnx):
    """What the command lines below refer to: {model}, {fixed} (batch fixed at 1), {cache} (a valid calibration
    table), {out} (an engine path in an empty folder)."""
    from conftest import build_tiny_onnx

    from edgecnn.trt.calib_cache import write_table

    return {
        "model": str(tiny_onnx),
        "fixed": str(build_tiny_onnx(tmp_path / "fixed1.onnx", batch=1)),
        "cache": str(write_table(tmp_path / "calib.cache", {"input": 2.0, "r1": 1.5}, version="10.3.0")),
        "out": str(tmp_path / "out" / "t.engine"),
    }


def _invoke(argv, files, print_trtexec: bool):
    argv = [a.format(**files) for a in argv]
    return runner.invoke(app, ["build-engine", *argv, *(["--print-trtexec"] if print_trtexec else [])])


INVALID = [
    (["{model}", "--precision", "int4"], "choose one of fp32, fp16, int8, best"),
    (["{model}", "--device", "foo"], "Unknown --device 'foo'"),
    (["{model}", "--device", "nano"], "TensorRT 8.2"),
    (["{model}", "--dla", "0"], "has no DLA"),
    (["{model}", "--dla", "0", "--precision", "fp16"], "has no DLA"),
    (["{model}", "--device", "xavier-nx", "--dla", "0"], "DLA runs FP16 or INT8 only"),
    (["{model}", "--gpu-fallback"], "only applies with --dla"),
    (["{model}", "--hardware-compat", "foo"], "choose ampere+ or same-cc"),
    (["{model}", "--hardware-compat", "ampere+", "--device", "agx-orin"], "not supported on JetPack"),
    (["{model}", "--trt-version", "abc"], "Not a TensorRT version: 'abc'"),
    (["{model}", "--trt-version", "9.2"], "TensorRT 9.2.0 is not supported"),
    (["{model}", "--version-compatible", "--trt-version", "8.5.2"], "needs TensorRT 8.6+"),
    (["{fixed}", "--batch", "1:4:8"], "fixed batch of 1"),
    (["{model}", "--batch", "4:2:1"], "MIN <= OPT <= MAX"),
    (["{model}", "--workspace", "lots"], "--workspace"),
    (["{model}", "--precision", "int8"], "edgecnn quantize MODEL.onnx --target tensorrt"),
    (
        ["{model}", "--precision", "int8", "--calib-cache", "{cache}", "--trt-version", "11.4.1"],
        "removed implicit INT8",
    ),
    (["{model}", "--precision", "fp16", "--calib-cache", "{cache}"], "only applies to --precision int8"),
]


@pytest.mark.parametrize("print_trtexec", [True, False], ids=["print-trtexec", "build"])
@pytest.mark.parametrize("argv, fragment", INVALID)
def test_invalid_options_exit_2_before_tensorrt_is_looked_for(
    files, no_tensorrt, off_jetson, argv, fragment, print_trtexec
):
    """The same checks with and without --print-trtexec: without TensorRT a bad option is still exit 2 naming the
    option, never exit 3 "TensorRT is not installed"."""
    result = _invoke([*argv, "--out", "{out}"], files, print_trtexec)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert not Path(files["out"]).parent.exists()


def test_valid_options_reach_the_tensorrt_check(files, no_tensorrt, off_jetson):
    for argv in (
        ["{model}", "--precision", "int8", "--calib-cache", "{cache}", "--batch", "1:2:4"],
        ["{fixed}", "--batch", "1", "--trt-version", "10.3", "--precision", "fp16"],
    ):
        result = _invoke([*argv, "--out", "{out}"], files, print_trtexec=False)
        assert result.exit_code == 3 and "TensorRT is not installed" in result.stderr, result.stderr
        assert _invoke([*argv, "--out", "{out}"], files, print_trtexec=True).exit_code == 0


def test_jetson_preset_off_a_jetson_is_refused_before_tensorrt(files, no_tensorrt, off_jetson):
    argv = ["{model}", "--device", "agx-orin", "--precision", "fp16", "--out", "{out}"]
    result = _invoke(argv, files, print_trtexec=False)
    assert result.exit_code == 2 and "this machine is not a Jetson AGX Orin" in result.stderr
    assert _invoke(argv, files, print_trtexec=True).exit_code == 0  # printing a command for the board is fine


# ---------------------------------------------------------------- --calib-cache contents


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"garbage\n", "is not a TensorRT calibration table"),
        (b"", "is not a TensorRT calibration table"),
        (b"\xff\xfe\x00binary", "Cannot read calibration table"),
        (b"TRT-100300-EntropyCalibration2\n", "has a header but no tensor scales"),
        (b"TRT-100300-EntropyCalibration2\ninput 3c010a14\n", "expected 'tensor_name: hexscale'"),
        (b"TRT-100300-LegacyCalibration\ninput: 3c010a14\n", "cannot be replayed"),
        (None, "does not exist"),
        ("folder", "is not a file"),
    ],
    ids=["garbage", "empty", "binary", "header-only", "bad-line", "legacy", "missing", "folder"],
)
@pytest.mark.parametrize("print_trtexec", [True, False], ids=["print-trtexec", "build"])
def test_calibration_cache_is_checked_up_front(
    files, tmp_path, no_tensorrt, off_jetson, content, fragment, print_trtexec
):
    cache = tmp_path / "bad.cache"
    if content == "folder":
        cache.mkdir()
    elif content is not None:
        cache.write_bytes(content)
    result = _invoke(
        ["{model}", "--precision", "int8", "--calib-cache", str(cache), "--out", "{out}"], files, print_trtexec
    )
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"error: --calib-cache {cache}") and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_calibration_cache_of_another_tensorrt_release_is_a_warning(files, tmp_path, no_tensorrt, off_jetson):
    from edgecnn.trt.calib_cache import write_table

    cache = write_table(tmp_path / "old.cache", {"input": 2.0}, version="8.6.1")
    argv = ["{model}", "--precision", "int8", "--calib-cache", str(cache), "--out", "{out}", "--batch", "1"]
    result = _invoke([*argv, "--trt-version", "10.3.0"], files, print_trtexec=True)
    assert result.exit_code == 0 and f"--calib={cache}" in result.stdout
    stderr = " ".join(result.stderr.split())  # rich wraps warnings at the console width
    assert "written for TensorRT 8.6 (header TRT-8601)" in stderr and "may skip it" in stderr
    result = _invoke([*argv, "--trt-version", "8.6.2"], files, print_trtexec=True)
    assert result.exit_code == 0 and "may skip it" not in result.stderr


# ---------------------------------------------------------------- --out and --timing-cache


@pytest.mark.parametrize("print_trtexec", [True, False], ids=["print-trtexec", "build"])
def test_engine_path_is_checked_up_front(files, tmp_path, no_tensorrt, off_jetson, print_trtexec):
    (tmp_path / "a_folder.engine").mkdir()
    (tmp_path / "a_file").write_text("x")
    for out, fragment in [
        (tmp_path / "model.txt", "an engine file ends in .engine or .plan"),
        (tmp_path / "model", "an engine file ends in .engine or .plan"),
        (tmp_path / "a_folder.engine", "is a folder"),
        (tmp_path / "a_file" / "x.engine", "a_file is a file, not a folder"),
    ]:
        result = _invoke(["{model}", "--out", str(out)], files, print_trtexec)
        assert result.exit_code == 2 and fragment in result.stderr, (out, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_engine_in_a_missing_folder_is_accepted(files, tmp_path, no_tensorrt, off_jetson):
    """Like every edgecnn command, build-engine creates the engine's folder when it writes (see the build test
    below); nothing is created while checking. trtexec does not create folders: --print-trtexec says so."""
    for out in (tmp_path / "new" / "m.engine", tmp_path / "new" / "m.PLAN"):
        assert _invoke(["{model}", "--out", str(out)], files, print_trtexec=False).exit_code == 3
        result = _invoke(["{model}", "--out", str(out)], files, print_trtexec=True)
        assert result.exit_code == 0 and "trtexec does not create folders" in " ".join(result.stderr.split())
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("print_trtexec", [True, False], ids=["print-trtexec", "build"])
def test_timing_cache_never_overwrites_an_input(files, tmp_path, no_tensorrt, off_jetson, print_trtexec):
    """The timing cache is saved back after a build: naming the ONNX or the calibration cache would destroy it."""
    from edgecnn.files import sha256_file

    before = {p: sha256_file(files[p]) for p in ("model", "cache")}
    int8 = ["--precision", "int8", "--calib-cache", "{cache}"]
    for argv, fragment in [
        (["--timing-cache", "{model}"], "choose another --timing-cache"),
        ([*int8, "--timing-cache", "{cache}"], "choose another --timing-cache"),
        (["--timing-cache", "{out}"], "choose another --out"),
        ([*int8, "--out", "{cache}"], "is the input file"),
    ]:
        argv = argv if "--out" in argv else [*argv, "--out", "{out}"]
        result = _invoke(["{model}", *argv], files, print_trtexec)
        assert result.exit_code == 2 and fragment in result.stderr, (argv, result.stderr)
    assert {p: sha256_file(files[p]) for p in ("model", "cache")} == before
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"an existing timing cache is read and rewritten: fine")
    result = _invoke(["{model}", "--timing-cache", str(timing), "--out", "{out}"], files, print_trtexec)
    assert result.exit_code == (0 if print_trtexec else 3), result.stderr


# ---------------------------------------------------------------- Q/DQ models for another runtime


@pytest.mark.parametrize("print_trtexec", [True, False], ids=["print-trtexec", "build"])
def test_cpu_target_int8_model_is_refused(tiny_onnx, files, tmp_path, no_tensorrt, off_jetson, print_trtexec):
    from test_trt_plan import make_target_qdq_onnx

    cpu = make_target_qdq_onnx(tiny_onnx, tmp_path / "tiny.cpu.int8.onnx", "cpu", provenance_target="cpu")
    result = _invoke([str(cpu), "--precision", "int8", "--out", "{out}"], files, print_trtexec)
    assert result.exit_code == 2
    assert (
        "this INT8 model was quantized for ONNX Runtime CPU (--target cpu): for TensorRT quantize with "
        "--target tensorrt"
    ) in result.stderr
    trt = make_target_qdq_onnx(tiny_onnx, tmp_path / "tiny.trt.int8.onnx", "tensorrt", provenance_target="tensorrt")
    result = _invoke([str(trt), "--precision", "int8", "--out", "{out}"], files, print_trtexec)
    assert result.exit_code == (0 if print_trtexec else 3), result.stderr


# ---------------------------------------------------------------- the build path, TensorRT faked


# what runtime_facts() reports in these tests; tests/test_trt_conformance.py checks that fake_apply_plan returns what
# the real `_apply_plan` returns on this release's bindings
FAKE_HERE = {"tensorrt": "10.3.0", "gpu": "Fake GPU", "compute_capability": "8.6", "cuda": "12.6", "jetson": None}


def fake_apply_plan(calls: list):
    """A stand-in for builder._apply_plan (the thin TensorRT layer): records the plan, saves the timing cache back as
    the real one does, returns (engine bytes, io) shaped as the real one returns them."""
    from edgecnn.files import atomic_write_bytes

    def apply_plan(plan, onnx_file, progress):
        calls.append(plan)
        if plan.timing_cache:
            atomic_write_bytes(plan.timing_cache, b"timing cache v2")
        io = {
            "inputs": [
                {"name": plan.input_name, "shape": [-1, 3, 32, 32], "dtype": "float32", "profile": plan.profile}
            ],
            "outputs": [{"name": "logits", "shape": [-1, 3], "dtype": "float32"}],
        }
        return b"serialized engine", io

    return apply_plan


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """runtime_facts() and the TensorRT layer (_apply_plan) replaced: everything else in the build runs for real.
    Returns the list of plans it was called with."""
    import edgecnn.platform
    import edgecnn.trt.builder as builder
    import edgecnn.trt.env as env

    calls = []
    monkeypatch.setattr(env, "runtime_facts", lambda device=0: dict(FAKE_HERE))
    monkeypatch.setattr(builder, "_apply_plan", fake_apply_plan(calls))
    monkeypatch.setattr(edgecnn.platform, "ROOT", Path("/nonexistent"))
    return calls


def test_build_creates_the_engine_folder_and_saves_the_timing_cache(files, tmp_path, fake_tensorrt):
    from edgecnn.trt.manifest import manifest_path

    out, timing = tmp_path / "new" / "deeper" / "m.engine", tmp_path / "timing.cache"
    timing.write_bytes(b"timing cache v1")
    result = runner.invoke(
        app,
        [
            "build-engine",
            files["model"],
            "--out",
            str(out),
            "--timing-cache",
            str(timing),
            "--precision",
            "fp16",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == b"serialized engine" and manifest_path(out).is_file()
    assert timing.read_bytes() == b"timing cache v2" and len(fake_tensorrt) == 1
    assert json.loads(result.stdout)["engine"] == str(out)


def test_build_refuses_a_timing_cache_on_an_input_before_building(files, tmp_path, fake_tensorrt):
    from edgecnn.files import sha256_file
    from edgecnn.trt.builder import build_engine
    from edgecnn.trt.plan import BuildOptions

    before = sha256_file(files["model"])
    with pytest.raises(Exception, match="choose another --timing-cache"):
        build_engine(files["model"], tmp_path / "m.engine", BuildOptions(timing_cache=files["model"]))
    opts = BuildOptions(precision="int8", calib_cache=files["cache"], timing_cache=files["cache"])
    with pytest.raises(Exception, match="choose another --timing-cache"):
        build_engine(files["model"], tmp_path / "m.engine", opts)
    assert fake_tensorrt == [] and sha256_file(files["model"]) == before


def test_trt_version_other_than_the_installed_one_is_refused_for_a_build(files, fake_tensorrt):
    result = runner.invoke(app, ["build-engine", files["model"], "--out", files["out"], "--trt-version", "8.6"])
    assert result.exit_code == 2 and "the installed TensorRT is 10.3.0" in result.stderr
    assert fake_tensorrt == []


def test_missing_onnx_is_a_user_error(tmp_path, no_tensorrt):
    result = runner.invoke(app, ["build-engine", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x.engine")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_inputs_are_checked_before_tensorrt_and_never_overwritten(tiny_onnx, tmp_path, no_tensorrt):
    from edgecnn.files import sha256_file

    before = sha256_file(tiny_onnx)
    result = runner.invoke(app, ["build-engine", str(tiny_onnx), "--out", str(tiny_onnx)])
    assert result.exit_code == 2 and "is the input file" in result.stderr
    result = runner.invoke(
        app,
        [
            "build-engine",
            str(tiny_onnx),
            "--out",
            str(tmp_path / "t.engine"),
            "--precision",
            "int8",
            "--calib-cache",
            str(tmp_path / "missing.cache"),
        ],
    )
    assert result.exit_code == 2 and "--calib-cache" in result.stderr and "does not exist" in result.stderr
    foreign = tmp_path / "foreign.onnx"
    import onnx

    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    result = runner.invoke(app, ["build-engine", str(foreign), "--out", str(tmp_path / "f.engine")])
    assert result.exit_code == 4 and "no edgecnn metadata" in result.stderr
    assert sha256_file(tiny_onnx) == before
