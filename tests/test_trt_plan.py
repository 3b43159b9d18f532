"""The TensorRT build plan, device presets and trtexec text: pure data, checked for every supported version x preset."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgecnn.errors import UserInputError
from edgecnn.platform import jetpack_for_l4t, jetpacks_for_l4t_series, jetson_release
from edgecnn.trt.devices import DEVICES, get_device, preset_for_model_string
from edgecnn.trt.plan import (
    BuildOptions,
    TrtVersion,
    capabilities,
    inspect_onnx,
    make_plan,
    parse_batch,
    parse_size,
)
from edgecnn.trt.trtexec import trtexec_argv, trtexec_script

VERSIONS = ("8.5.2", "8.6.2", "10.3.0", "10.13.3", "11.4.1")
PRESETS = [name for name in DEVICES if name != "nano"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from conftest import build_tiny_onnx

    return build_tiny_onnx(tmp_path_factory.mktemp("plan") / "tiny.onnx")


@pytest.fixture(scope="module")
def facts(tiny):
    return inspect_onnx(tiny)


@pytest.fixture(scope="module")
def qdq_facts(tiny, tmp_path_factory):
    from test_trt_fp16 import make_qdq_onnx

    return inspect_onnx(make_qdq_onnx(tiny, tmp_path_factory.mktemp("qdq") / "tiny.qdq.onnx"))


def plan_for(facts, version, device="desktop", **kw):
    kw.setdefault("batch", parse_batch("1:4:8"))
    return make_plan(BuildOptions(**kw), facts, version, get_device(device))


# ---------------------------------------------------------------- every version x preset


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("device", PRESETS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_plan_for_every_supported_version_and_preset(facts, version, device, precision):
    v = TrtVersion.parse(version)
    preset = get_device(device)
    plan = plan_for(facts, version, device, precision=precision)

    assert plan.tensorrt == str(v) and plan.device == device
    assert plan.network_flags == (["EXPLICIT_BATCH"] if v.major == 8 else [])
    assert plan.progress_monitor is (v.major >= 10)
    assert plan.workspace_bytes == (preset.workspace_mib << 20 if preset.workspace_mib else None)
    assert plan.profile == {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}
    assert plan.dynamic_batch and plan.batch_range == (1, 4, 8)
    assert plan.hardware_compat == "NONE" and plan.dla_core is None and plan.int8_source is None
    if v.major == 11:
        assert plan.typing == "strong" and "FP16" not in plan.builder_flags
        assert plan.convert_fp16 is (precision == "fp16")
    else:
        assert plan.typing == "weak" and not plan.convert_fp16
        assert ("FP16" in plan.builder_flags) is (precision == "fp16")
    assert plan.engine_precision == precision
    shipped = {TrtVersion.parse(r.tensorrt)[:2] for r in preset.jetpack}
    mismatch = (
        preset.jetson and (v.major, v.minor) not in shipped and not (v.major == 11 and device in ("agx-orin", "thor"))
    )
    assert any("build on the device" in n for n in plan.notes) is mismatch
    # and the trtexec text follows the same plan
    argv = trtexec_argv(plan, "m.onnx", "m.engine")
    assert ("--fp16" in argv) is ("FP16" in plan.builder_flags)
    assert argv[-1] == ("--buildOnly" if version.startswith("8.5") else "--skipInference")


def test_versions_compare_as_numbers_and_unsupported_ones_are_refused(facts):
    assert TrtVersion.parse("10.0") > TrtVersion.parse("8.6.1")
    assert TrtVersion.parse("10.3.0.30") == TrtVersion(10, 3, 0)
    for bad in ("8.4.3", "9.2.0", "7.1", "12.0"):
        with pytest.raises(UserInputError, match="not supported"):
            plan_for(facts, bad)
    with pytest.raises(UserInputError, match="Not a TensorRT version"):
        TrtVersion.parse("latest")
    assert capabilities(TrtVersion(10, 9)).same_compute_capability
    assert not capabilities(TrtVersion(10, 8)).same_compute_capability


def test_jetson_nano_is_refused_with_the_reason(facts):
    with pytest.raises(UserInputError, match="TensorRT 8.2"):
        plan_for(facts, "8.5.2", "nano")


# ---------------------------------------------------------------- INT8


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_from_qdq_on_every_version(qdq_facts, version):
    plan = plan_for(qdq_facts, version, precision="int8")
    assert plan.int8_source == "qdq" and plan.engine_precision == "int8"
    assert ("INT8" in plan.builder_flags) is (not version.startswith("11"))
    assert not plan.convert_fp16


def test_implicit_int8_from_calibration_cache_only_up_to_10(facts):
    plan = plan_for(facts, "8.6.2", precision="int8", calib_cache="m.cache")
    assert plan.int8_source == "calib_cache" and "INT8" in plan.builder_flags and not plan.notes[1:]
    assert "--calib=m.cache" in trtexec_argv(plan, "m.onnx", "m.engine")
    plan10 = plan_for(facts, "10.3.0", precision="int8", calib_cache="m.cache")
    assert any("deprecated since TensorRT 10.1" in n for n in plan10.notes)
    with pytest.raises(UserInputError, match="edgecnn quantize MODEL.onnx --target tensorrt"):
        plan_for(facts, "11.4.1", precision="int8", calib_cache="m.cache")


def test_int8_without_qdq_or_cache_names_the_explicit_path(facts):
    with pytest.raises(UserInputError, match="Q/DQ ONNX .*--target tensorrt.*or a --calib-cache"):
        plan_for(facts, "10.3.0", precision="int8")
    with pytest.raises(UserInputError, match="--target tensorrt`\\)$"):
        plan_for(facts, "11.4.1", precision="int8")
    with pytest.raises(UserInputError, match="only applies to --precision int8"):
        plan_for(facts, "10.3.0", precision="fp16", calib_cache="m.cache")


def test_best_uses_what_the_model_allows(facts, qdq_facts):
    assert plan_for(facts, "10.3.0", precision="best").builder_flags == ["FP16"]
    assert plan_for(qdq_facts, "10.3.0", precision="best").builder_flags == ["FP16", "INT8"]
    p11 = plan_for(facts, "11.4.1", precision="best")
    assert p11.convert_fp16 and p11.builder_flags == [] and p11.engine_precision == "fp16"


# ---------------------------------------------------------------- DLA


def test_dla_plan_on_a_board_that_has_one(facts):
    plan = plan_for(
        facts, "10.3.0", "agx-orin", precision="fp16", dla_core=1, gpu_fallback=True, batch=parse_batch("2")
    )
    assert plan.dla_core == 1 and plan.gpu_fallback and plan.builder_flags == ["FP16", "GPU_FALLBACK"]
    argv = trtexec_argv(plan, "m.onnx", "m.engine")
    assert "--useDLACore=1" in argv and "--allowGPUFallback" in argv and "--memPoolSize=workspace:4096" in argv
    no_fallback = plan_for(facts, "8.5.2", "xavier-nx", precision="int8", dla_core=0, calib_cache="c.cache")
    assert any("without --gpu-fallback" in n for n in no_fallback.notes)
    dynamic = plan_for(facts, "10.3.0", "orin-nx", precision="fp16", dla_core=0, gpu_fallback=True)
    assert any("static shapes" in n for n in dynamic.notes)


@pytest.mark.parametrize(
    "version, device, kw, match",
    [
        ("10.3.0", "desktop", {"dla_core": 0, "precision": "fp16"}, "has no DLA"),
        ("10.3.0", "orin-nano", {"dla_core": 0, "precision": "fp16"}, "has no DLA"),
        ("10.13.3", "thor", {"dla_core": 0, "precision": "fp16"}, "has no DLA"),
        ("8.5.2", "xavier-nx", {"dla_core": 2, "precision": "fp16"}, "DLA cores 0..1"),
        ("10.3.0", "agx-orin", {"dla_core": 0, "precision": "fp32"}, "DLA runs FP16 or INT8 only"),
        ("11.2.1", "agx-orin", {"dla_core": 0, "precision": "fp16"}, "cannot build for DLA"),
        ("11.4.1", "orin-nx", {"dla_core": 0, "precision": "fp16"}, "AGX Orin only"),
        ("10.3.0", "agx-orin", {"gpu_fallback": True}, "only applies with --dla"),
    ],
)
def test_dla_validation_errors(facts, version, device, kw, match):
    with pytest.raises(UserInputError, match=match):
        plan_for(facts, version, device, **kw)


def test_dla_on_tensorrt_11_4_1_agx_orin_is_strongly_typed(facts):
    plan = plan_for(facts, "11.4.1", "agx-orin", precision="fp16", dla_core=0, gpu_fallback=True)
    assert plan.convert_fp16 and plan.builder_flags == ["GPU_FALLBACK"]


# ---------------------------------------------------------------- compatibility, profiles, sizes


def test_compatibility_options(facts):
    plan = plan_for(facts, "10.9.0", hardware_compat="same-cc", version_compatible=True)
    assert plan.hardware_compat == "SAME_COMPUTE_CAPABILITY" and "VERSION_COMPATIBLE" in plan.builder_flags
    argv = trtexec_argv(plan, "m.onnx", "m.engine")
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in argv and "--versionCompatible" in argv
    assert "--hardwareCompatibilityLevel=ampere+" in trtexec_argv(
        plan_for(facts, "8.6.2", hardware_compat="ampere+"), "m", "e"
    )
    for kw, version, device, match in [
        ({"hardware_compat": "ampere+"}, "10.3.0", "agx-orin", "not supported on JetPack"),
        ({"hardware_compat": "ampere+"}, "8.5.2", "desktop", "needs TensorRT 8.6"),
        ({"hardware_compat": "same-cc"}, "10.3.0", "desktop", "needs TensorRT 10.9"),
        ({"hardware_compat": "turing+"}, "10.3.0", "desktop", "choose ampere\\+ or same-cc"),
        ({"version_compatible": True}, "8.5.2", "desktop", "needs TensorRT 8.6"),
    ]:
        with pytest.raises(UserInputError, match=match):
            plan_for(facts, version, device, **kw)
    with pytest.raises(UserInputError, match="Ampere or newer GPU"):
        make_plan(
            BuildOptions(hardware_compat="ampere+"),
            facts,
            "10.3.0",
            get_device("desktop"),
            gpu_compute_capability="7.5",
        )


def test_batch_profiles_follow_the_onnx(tmp_path, facts):
    from conftest import build_tiny_onnx

    default = make_plan(BuildOptions(), facts, "10.3.0", get_device("desktop"))
    assert default.batch_range == (1, 1, 1) and any("--batch MIN:OPT:MAX" in n for n in default.notes)

    fixed = inspect_onnx(build_tiny_onnx(tmp_path / "fixed.onnx", batch=4))
    plan = make_plan(BuildOptions(), fixed, "10.3.0", get_device("desktop"))
    assert plan.batch_range == (4, 4, 4) and not plan.dynamic_batch
    assert not any(a.startswith("--minShapes") for a in trtexec_argv(plan, "m.onnx", "m.engine"))
    with pytest.raises(UserInputError, match="fixed batch of 4"):
        make_plan(BuildOptions(batch=parse_batch("1:4:8")), fixed, "10.3.0", get_device("desktop"))

    model = onnx.load(str(build_tiny_onnx(tmp_path / "dynhw.onnx")))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    onnx.save(model, str(tmp_path / "dynhw.onnx"))
    with pytest.raises(UserInputError, match="only the batch dimension may be dynamic"):
        make_plan(BuildOptions(), inspect_onnx(tmp_path / "dynhw.onnx"), "10.3.0", get_device("desktop"))


def test_parse_batch_and_size():
    assert parse_batch("8").min == 8 and parse_batch("8").fixed
    b = parse_batch("1:8:32")
    assert (b.min, b.opt, b.max) == (1, 8, 32) and not b.fixed
    assert parse_batch(None) is None
    for bad in ("0", "8:4:16", "1:2", "a:b:c", "1:2:3:4"):
        with pytest.raises(UserInputError):
            parse_batch(bad)
    assert parse_size("512M") == 512 << 20 and parse_size("2G") == 2 << 30 and parse_size("1024") == 1 << 30
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    for bad in ("lots", "12X", "100K"):
        with pytest.raises(UserInputError):
            parse_size(bad)


def test_unknown_precision_and_device(facts):
    with pytest.raises(UserInputError, match="choose one of fp32, fp16, int8, best"):
        plan_for(facts, "10.3.0", precision="int4")
    with pytest.raises(UserInputError, match="Unknown --device"):
        get_device("jetson-tx2")


# ---------------------------------------------------------------- trtexec text


def test_trtexec_text_for_tensorrt_11_fp16_converts_first(tiny):
    plan = make_plan(
        BuildOptions(precision="fp16", batch=parse_batch("1:2:4")), inspect_onnx(tiny), "11.4.1", get_device("desktop")
    )
    script = trtexec_script(plan, "/models/m.onnx", "/models/m.engine")
    lines = script.splitlines()
    assert lines[0].startswith("# TensorRT 11 is strongly typed")
    assert lines[1] == (
        "python3 -c 'from edgecnn.trt.fp16 import convert_fp16; "
        'convert_fp16("/models/m.onnx", "/models/m.fp16.onnx")\''
    )
    assert lines[2] == (
        "trtexec --onnx=/models/m.fp16.onnx --saveEngine=/models/m.engine --minShapes=input:1x3x32x32 "
        "--optShapes=input:2x3x32x32 --maxShapes=input:4x3x32x32 --skipInference"
    )


def test_trtexec_text_for_jetpack_5_int8_with_calibration_cache(facts):
    plan = plan_for(
        facts,
        "8.5.2",
        "xavier-nx",
        precision="int8",
        calib_cache="calib.cache",
        dla_core=0,
        gpu_fallback=True,
        batch=parse_batch("1"),
        timing_cache="timing.cache",
    )
    assert trtexec_script(plan, "m.onnx", "m.engine") == (
        "trtexec --onnx=m.onnx --saveEngine=m.engine --minShapes=input:1x3x32x32 --optShapes=input:1x3x32x32 "
        "--maxShapes=input:1x3x32x32 --int8 --calib=calib.cache --memPoolSize=workspace:1024 --useDLACore=0 "
        "--allowGPUFallback --timingCacheFile=timing.cache --buildOnly"
    )


# ---------------------------------------------------------------- Jetson detection facts


def test_jetson_model_strings_and_l4t(tmp_path):
    assert preset_for_model_string("NVIDIA Jetson AGX Orin Developer Kit") == "agx-orin"
    assert preset_for_model_string("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super") == "orin-nano"
    assert preset_for_model_string("NVIDIA Jetson Orin NX Engineering Reference Developer Kit") == "orin-nx"
    assert preset_for_model_string("NVIDIA Jetson Xavier NX Developer Kit") == "xavier-nx"
    assert preset_for_model_string("NVIDIA Jetson AGX Thor Developer Kit") == "thor"
    assert preset_for_model_string("NVIDIA Jetson Nano Developer Kit") == "nano"
    assert preset_for_model_string("Raspberry Pi 5") is None
    assert jetpack_for_l4t("36.4.3").jetpack == "6.2" and jetpack_for_l4t("36.4.3").tensorrt == "10.3.0"
    assert jetpack_for_l4t("35.4.1").tensorrt == "8.5.2" and jetpack_for_l4t("38.2.0").jetpack == "7.0"
    assert jetpack_for_l4t("36.3.0").tensorrt == "8.6.2"
    assert jetpacks_for_l4t_series("36.4.0") == "6.1/6.2" and jetpacks_for_l4t_series("36.2.0") == "6.0 DP"
    assert jetpacks_for_l4t_series("99.1.0") is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(  # a fake machine root
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n"
    )
    assert jetson_release(tmp_path) == "36.4.3"
    assert jetson_release(tmp_path / "absent") is None
    assert np.all([DEVICES[n].dla_cores == 0 for n in ("orin-nano", "thor", "desktop", "nano")])


# ---------------------------------------------------------------- Q/DQ models TensorRT cannot build


def make_target_qdq_onnx(src, dst, target: str, provenance_target: str | None = None):
    """A Q/DQ copy of `src` written by edgecnn's own writer for `target` ('tensorrt': symmetric INT8, 'cpu': UINT8
    asymmetric), with ranges that include negatives so the cpu target gets nonzero zero points."""
    from dataclasses import replace

    from edgecnn.contract import read_onnx_contract, write_onnx_contract
    from edgecnn.onnx_io import save_onnx
    from edgecnn.quant import graph, qdq

    prepared = graph.prepare(src)
    model = qdq.write_qdq(prepared, {t: (-1.0, 4.0) for t in graph.activation_tensors(prepared)}, target)
    contract = replace(read_onnx_contract(src), precision="int8")
    if provenance_target:
        contract = contract.with_provenance(quantization={"target": provenance_target, "tool": "edgecnn quantize"})
    write_onnx_contract(model, contract)
    return save_onnx(model, dst)


CPU_MESSAGE = r"quantized for ONNX Runtime CPU \(--target cpu\): for TensorRT quantize with --target tensorrt"


@pytest.fixture(scope="module")
def cpu_int8(tiny, tmp_path_factory):
    return make_target_qdq_onnx(tiny, tmp_path_factory.mktemp("cpu") / "tiny.cpu.onnx", "cpu")


@pytest.fixture(scope="module")
def trt_int8(tiny, tmp_path_factory):
    return make_target_qdq_onnx(tiny, tmp_path_factory.mktemp("trt") / "tiny.trt.onnx", "tensorrt", "tensorrt")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("precision", ["int8", "best", "fp16", "fp32"])
def test_cpu_target_int8_model_is_refused_for_tensorrt(cpu_int8, version, precision):
    """UINT8 activations with nonzero zero points: TensorRT 8.x refuses them at parse time, 10.x reinterprets a UINT8
    zero point as INT8 (halving the range): refused up front for every version and precision."""
    from edgecnn.trt.int8 import check_tensorrt_qdq

    facts = inspect_onnx(cpu_int8)
    assert facts.has_qdq and facts.qdq_problem
    with pytest.raises(UserInputError, match=CPU_MESSAGE):
        plan_for(facts, version, precision=precision)
    with pytest.raises(UserInputError, match=CPU_MESSAGE):
        check_tensorrt_qdq(cpu_int8)


def test_tensorrt_target_int8_model_is_accepted(trt_int8):
    from edgecnn.trt.int8 import check_tensorrt_qdq

    facts = inspect_onnx(trt_int8)
    assert facts.has_qdq and facts.qdq_problem is None
    check_tensorrt_qdq(trt_int8)
    assert plan_for(facts, "10.3.0", precision="int8").int8_source == "qdq"


def test_int8_problems_found_from_provenance_zero_point_type_and_value(tiny, trt_int8, tmp_path):
    from conftest import build_int8_qdq_onnx
    from onnx import numpy_helper

    from edgecnn.trt.int8 import check_tensorrt_qdq, tensorrt_qdq_problem

    # the contract says --target cpu although the graph looks symmetric: trust the provenance
    labelled = make_target_qdq_onnx(tiny, tmp_path / "labelled.onnx", "tensorrt", provenance_target="cpu")
    with pytest.raises(UserInputError, match=CPU_MESSAGE):
        check_tensorrt_qdq(labelled)
    # UINT8 zero points of value 0 (no provenance at all): still a CPU-style model
    uint8_zero = build_int8_qdq_onnx(tmp_path / "u8.onnx")
    with pytest.raises(UserInputError, match=CPU_MESSAGE + r".*has a uint8 zero point"):
        check_tensorrt_qdq(uint8_zero)
    # a signed but asymmetric zero point
    model = onnx.load(str(trt_int8))
    inits = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    inits[q.input[2]].CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), q.input[2]))
    problem = tensorrt_qdq_problem(model, "m.onnx")
    assert problem.startswith("m.onnx: TensorRT takes only symmetric Q/DQ") and "nonzero zero point" in problem
    # a zero point from a Constant node is read too
    model = onnx.load(str(trt_int8))
    inits = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    const = onnx.helper.make_node(
        "Constant", [], ["zp_const"], value=numpy_helper.from_array(np.array(128, dtype=np.uint8))
    )
    model.graph.node.insert(0, const)
    q.input[2] = "zp_const"
    assert "has a uint8 zero point" in tensorrt_qdq_problem(model)
    # no Q/DQ at all: nothing to say
    assert tensorrt_qdq_problem(onnx.load(str(tiny))) is None


def test_planning_version_without_tensorrt(monkeypatch):
    import edgecnn.trt.env as env
    from edgecnn.trt.builder import planning_version

    monkeypatch.setattr(env, "tensorrt_version", lambda: None)
    desktop, orin_nano, thor = get_device("desktop"), get_device("orin-nano"), get_device("thor")
    assert planning_version("8.6", desktop, None) == TrtVersion(8, 6)
    assert planning_version(None, desktop, None) == TrtVersion.parse("10.13")
    # on a Jetson, its own JetPack's TensorRT (L4T 36.3.0 = JetPack 6.0 = TensorRT 8.6.2), not the preset's newest
    jetson = {"preset": "orin-nano", "l4t": "36.3.0"}
    assert planning_version(None, orin_nano, jetson) == TrtVersion(8, 6, 2)
    assert planning_version(None, thor, jetson) == TrtVersion(10, 13, 3)  # planning for another board
    monkeypatch.setattr(env, "tensorrt_version", lambda: "10.3.0.30")
    assert planning_version(None, orin_nano, jetson) == TrtVersion(10, 3, 0)  # installed wins
    with pytest.raises(UserInputError, match="Not a TensorRT version"):
        planning_version("abc", desktop, None)


def test_trt_version_must_match_the_installed_one_for_a_build():
    from edgecnn.trt.builder import check_trt_version_matches

    for asked, installed in [(None, "10.3.0"), ("10.3", "10.3.0.30"), ("10", "10.13.3"), ("10.3.0", "10.3.0.30")]:
        check_trt_version_matches(asked, installed)
    for asked, installed in [("10.3.0", "10.13.3"), ("8.6", "10.3.0"), ("10.3.1", "10.3.0")]:
        with pytest.raises(UserInputError, match="installed TensorRT is"):
            check_trt_version_matches(asked, installed)


@pytest.mark.parametrize("device", ["agx-orin", "thor"])
def test_tensorrt_11_before_11_4_1_is_no_jetpack_release(facts, device):
    """TensorRT 11.0-11.4.0 support no JetPack: a plan for a Jetson with one says to build on the device."""
    assert any("build on the device" in n for n in plan_for(facts, "11.2.0", device, precision="fp16").notes)
    assert not any("build on the device" in n for n in plan_for(facts, "11.4.1", device, precision="fp16").notes)
