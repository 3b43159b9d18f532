"""edgecnn's TensorRT code against the REAL Python bindings of TensorRT 8.6.1, 10.3.0, 10.13.0.35 and 11.4.0.106.

No GPU and no TensorRT install: the bindings wheels are fetched and given stub native libraries
(trt_conformance_bindings.py); each release is imported in its own process, where every TensorRT use of edgecnn runs
against doubles derived from that release's classes (trt_conformance_doubles.py, trt_conformance_checks.py). A test per
(release, check): `na` checks are the build plan's version gates (skipped with the plan's reason). Also here: the
`--print-trtexec` flags against trtexec's help text per release (tests/data/trtexec), the attribute table
docs/tensorrt-api.md (regenerate with EDGECNN_WRITE_TRT_TABLE=1), and the stand-in for `_apply_plan` used by
tests/test_trt_cli.py checked against what the real layer returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cuda_conformance import prepare_cuda
from trt_conformance_bindings import ROOT, VERSIONS, Unavailable, prepare
from trt_conformance_checks import check_names

TABLE = ROOT / "docs" / "tensorrt-api.md"
FLAGS = Path(__file__).parent / "data" / "trtexec"
_RESULTS: dict[str, dict | str] = {}


def _run_release(version: str, tmp: Path) -> dict | str:
    """The result JSON of trt_conformance_checks.py for one release, or the reason it cannot run here."""
    from conftest import build_tiny_onnx

    try:
        env_extra = prepare(version)
    except Unavailable as exc:
        return f"TensorRT {version} bindings unavailable here: {exc}"
    try:
        cuda_module, cuda_site = prepare_cuda(version)
        env_extra["PYTHONPATH"] = os.pathsep.join([env_extra["PYTHONPATH"], str(cuda_site)])
        env_extra["EDGECNN_CONFORMANCE_CUDA"] = cuda_module
    except Unavailable as exc:
        env_extra["EDGECNN_CONFORMANCE_CUDA_UNAVAILABLE"] = f"cuda-python for TensorRT {version} unavailable: {exc}"
    tmp.mkdir(parents=True, exist_ok=True)
    spec = {
        "onnx": str(build_tiny_onnx(tmp / "fixed.onnx", batch=1)),
        "onnx_fixed": str(tmp / "fixed.onnx"),
        "onnx_dynamic": str(build_tiny_onnx(tmp / "dynamic.onnx")),
        "tmp": str(tmp),
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    env.update(env_extra)
    script = Path(__file__).parent / "trt_conformance_checks.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp / "spec.json"), str(tmp / "result.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode or not (tmp / "result.json").is_file():
        why = f"TensorRT {version} conformance process failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        return {"crashed": why}
    return json.loads((tmp / "result.json").read_text())


def results_for(version: str, tmp_path_factory) -> dict:
    if version not in _RESULTS:
        _RESULTS[version] = _run_release(version, tmp_path_factory.mktemp(f"trt-{version}"))
    result = _RESULTS[version]
    if isinstance(result, str):
        pytest.skip(result)
    if "crashed" in result:  # kept, so the other checks of this release fail at once instead of rerunning it
        pytest.fail(result["crashed"])
    return result


@pytest.mark.parametrize("check", check_names())
@pytest.mark.parametrize("version", list(VERSIONS))
def test_tensorrt_use_conforms(version, check, tmp_path_factory):
    result = results_for(version, tmp_path_factory)["results"]
    assert check in result, f"TensorRT {version}: {check} did not run (the build_engine check it needs failed)"
    outcome = result[check]
    if outcome["status"] == "na":
        pytest.skip(f"version gate: {outcome['detail']}")
    assert outcome["status"] == "pass", f"TensorRT {version} {check}: {outcome['detail']}"


def test_every_release_exercises_the_whole_surface(tmp_path_factory):
    """Each use the table lists is exercised on at least one release (a check silently skipping everything would
    leave a row unverified), and the gated checks are exactly the plan's version gates."""
    results = {v: results_for(v, tmp_path_factory) for v in VERSIONS}
    passing = {v: {k for k, o in r["results"].items() if o["status"] == "pass"} for v, r in results.items()}
    assert all("runner/layer-profile" in p and "build_engine/dynamic-fp16" in p for p in passing.values()), passing
    gated = {v: sorted(k for k, o in r["results"].items() if o["status"] == "na") for v, r in results.items()}
    assert "build/desktop-int8-cache-EntropyCalibration2" in gated["11.4.0.106"]
    assert "build/desktop-int8-cache-EntropyCalibration2" not in gated["10.13.0.35"]
    assert (
        "build/desktop-hardware-same-cc" in gated["10.3.0"]
        and "build/desktop-hardware-same-cc" not in gated["10.13.0.35"]
    )


# ---------------------------------------------------------------- the attribute table


def _exists(name: str, surface: dict) -> bool:
    owner, _, member = name.partition(".")
    if owner == "tensorrt":
        return member in surface
    return member in (surface.get(owner) or [])


def render_table(results: dict[str, dict]) -> str:
    versions = list(results)
    used = {v: set(r["used"]) for v, r in results.items()}
    names = sorted(set().union(*used.values()), key=lambda n: (n.split(".")[0] != "tensorrt", n.lower()))
    lines = [
        "# TensorRT attributes edgecnn uses, per TensorRT release",
        "",
        "Generated by `tests/test_trt_conformance.py` (regenerate: `EDGECNN_WRITE_TRT_TABLE=1 .venv/bin/python -m",
        "pytest tests/test_trt_conformance.py -k table`) from the real Python bindings of each release: every",
        "attribute the build, runner, profiler and inspector code touched while the conformance checks ran, and",
        "whether the release has it. How this is checked, and what it does not prove: docs/tensorrt.md,",
        '"What is verified, and how".',
        "",
        "`used`: present and used by edgecnn on that release · `present`: present, not used there (the build plan",
        "gates it off) · `absent`: the release does not have it (edgecnn never uses it there) · `deprecated in X`:",
        "the release's docstring marks it deprecated.",
        "",
        "| attribute | " + " | ".join(f"TensorRT {v}" for v in versions) + " |",
        "|---|" + "---|" * len(versions),
    ]
    for name in names:
        cells = []
        for v in versions:
            here = _exists(name, results[v]["surface"])
            cell = ("used" if name in used[v] else "present") if here else ("MISSING" if name in used[v] else "absent")
            note = results[v]["deprecated"].get(name)
            cells.append(f"{cell}, {note}" if note and here else cell)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_attribute_table_is_current(tmp_path_factory):
    results = {v: results_for(v, tmp_path_factory) for v in VERSIONS}
    text = render_table(results)
    assert "MISSING" not in text
    if os.environ.get("EDGECNN_WRITE_TRT_TABLE"):
        TABLE.parent.mkdir(exist_ok=True)
        TABLE.write_text(text)
    assert TABLE.is_file() and TABLE.read_text() == text, (
        f"{TABLE.relative_to(ROOT)} is out of date: EDGECNN_WRITE_TRT_TABLE=1 .venv/bin/python -m pytest "
        "tests/test_trt_conformance.py -k table"
    )


# ---------------------------------------------------------------- trtexec flags


def _flag_file(name: str) -> dict[str, set[str] | None]:
    flags: dict[str, set[str] | None] = {}
    for line in (FLAGS / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            flag, _, values = line.partition("=")
            flags[flag] = set(values.split("|")) if values else None
    return flags


def trtexec_flags(version: str) -> dict[str, set[str] | None]:
    """The flags trtexec of `version` documents (see the sources named in tests/data/trtexec/*.txt)."""
    old, new = _flag_file("flags-8.6.txt"), _flag_file("flags-10.x.txt")
    if version.startswith("8.6"):
        return old
    if version.startswith("10.3"):  # in both the 8.6 and the late 10.x help text; sameComputeCapability is 10.9+
        both = {k: (old[k] & new[k] if old[k] and new[k] else None) for k in old if k in new}
        return both
    if version.startswith("10."):
        return new
    removed = set(_flag_file("removed-11.x.txt"))
    return {k: v for k, v in new.items() if k not in removed}


@pytest.mark.parametrize("version", list(VERSIONS))
def test_print_trtexec_uses_documented_flags(version):
    from trt_conformance_checks import build_cases

    from edgecnn.errors import UserInputError
    from edgecnn.trt.devices import get_device
    from edgecnn.trt.plan import BuildOptions, OnnxFacts, make_plan, parse_batch
    from edgecnn.trt.trtexec import trtexec_argv

    documented = trtexec_flags(version)
    seen: set[str] = set()
    for case, device, opts, kind in build_cases():
        opts = {k: v for k, v in opts.items() if k != "progress"}
        plan_for = opts.pop("plan_for", None)
        if plan_for and plan_for.split(".")[:2] != version.split(".")[:2]:
            continue
        if "batch" in opts:
            opts["batch"] = parse_batch(opts["batch"])
        if "calib" in opts:
            opts["calib_cache"] = f"{opts.pop('calib')}.cache"
        if "timing_cache" in opts:
            opts["timing_cache"] = "timing.cache"
        facts = OnnxFacts(
            "input", (None if kind == "dynamic" else 1, 3, 32, 32), ("logits",), 6 * (kind == "qdq"), False
        )
        try:
            plan = make_plan(BuildOptions(**opts), facts, plan_for or version, get_device(device), "8.9")
        except UserInputError:
            continue  # a version gate: nothing printed
        for arg in trtexec_argv(plan, "model.onnx", "model.engine")[1:]:
            flag, _, value = arg.partition("=")
            seen.add(flag)
            assert flag in documented, f"{case}: trtexec {version} has no {flag}"
            allowed = documented[flag]
            assert allowed is None or value in allowed, f"{case}: trtexec {version} {flag} takes {allowed}, not {value}"
    assert {"--onnx", "--saveEngine", "--skipInference", "--minShapes", "--useDLACore"} <= seen, seen


# ---------------------------------------------------------------- the hand-made stand-ins in other tests


def test_trt_cli_stand_in_matches_the_real_layer(tmp_path_factory):
    """tests/test_trt_cli.py replaces `_apply_plan` (and the runtime facts) for its CLI tests: what its stand-in
    returns must have the shape the real layer returns on the release it claims."""
    from test_trt_cli import FAKE_HERE, fake_apply_plan

    from edgecnn.trt.devices import get_device
    from edgecnn.trt.plan import BuildOptions, OnnxFacts, make_plan, parse_batch

    version = next(v for v in VERSIONS if v.startswith(FAKE_HERE["tensorrt"]))
    real_io = results_for(version, tmp_path_factory)["io_example"]
    facts = OnnxFacts("input", (None, 3, 32, 32), ("logits",), 0, False)
    plan = make_plan(BuildOptions(precision="fp16", batch=parse_batch("1:4:8")), facts, version, get_device("desktop"))
    serialized, fake_io = fake_apply_plan([])(plan, Path("model.onnx"), None)
    assert isinstance(serialized, bytes)
    assert set(fake_io) == set(real_io)
    for side in ("inputs", "outputs"):
        for fake, real in zip(fake_io[side], real_io[side]):
            assert set(fake) == set(real), (fake, real)
            assert type(fake["shape"]) is type(real["shape"]) and fake["dtype"] == real["dtype"], (fake, real)


# ---------------------------------------------------------------- the harness itself


def test_missing_tools_become_a_skip_reason():
    from trt_conformance_bindings import _run

    with pytest.raises(Unavailable, match="no-such-compiler"):
        _run(["/nonexistent/no-such-compiler", "--version"], "no-such-compiler")


def test_stub_symbols_are_the_tensorrt_entry_points(tmp_path_factory):
    from trt_conformance_bindings import CACHE, needed_symbols, stub_source

    results_for("8.6.1", tmp_path_factory)  # the wheel is fetched (or the test skips with the reason)
    symbols = needed_symbols(CACHE / "site-8.6.1" / "tensorrt_bindings" / "tensorrt.so")
    assert {"createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createNvOnnxParser_INTERNAL"} <= set(symbols)
    assert "_ZN11nvuffparser15createUffParserEv" in symbols  # 8.6 still links the UFF parser
    assert '__asm__("_ZN11nvuffparser15createUffParserEv")' in stub_source(symbols)
