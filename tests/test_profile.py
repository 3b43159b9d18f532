"""edgecnn profile: statistics, interleaved multi-model timing, per-layer traces, end-to-end path, environment,
reports."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from asserts import assert_error, raises
from conftest import build_tiny_onnx
from typer.testing import CliRunner

from edgecnn import platform as edge_platform
from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.profiling import environment as envmod
from edgecnn.profiling.latency import ModelSpec, ProfileOptions, profile_models, synthetic_frame, top5
from edgecnn.profiling.layers import parse_ort_trace
from edgecnn.profiling.report import markdown, write_report
from edgecnn.profiling.stats import latency_stats

FAST = dict(warmup=1, iterations=5)


@pytest.fixture
def two_models(tmp_path):
    a = build_tiny_onnx(tmp_path / "a.onnx")
    b = build_tiny_onnx(tmp_path / "b.onnx", size=(64, 64), seed=1)
    return a, b


# ---------------------------------------------------------------- statistics


def test_latency_stats_on_known_samples():
    s = latency_stats(list(range(1, 101)), batch=4)  # 1..100 ms
    assert (s.min_ms, s.max_ms, s.iterations) == (1.0, 100.0, 100)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 101)))
    assert s.throughput == pytest.approx(4 * 1000 / 50.5)


def test_latency_stats_single_sample_and_bad_input():
    s = latency_stats([2.0])
    assert s.min_ms == s.p99_ms == s.max_ms == 2.0 and s.throughput == 500.0
    with pytest.raises(UserInputError):
        latency_stats([])
    with pytest.raises(UserInputError):
        latency_stats([1.0, -1.0])


def test_model_spec_parsing(tmp_path):
    assert ModelSpec.parse("m.onnx@openvino") == ModelSpec("m.onnx", "openvino")
    assert ModelSpec.parse("m.onnx") == ModelSpec("m.onnx")
    odd = tmp_path / "we@ird.onnx"
    odd.write_bytes(b"x")
    assert ModelSpec.parse(str(odd)).backend is None  # an existing file keeps its '@'


# ---------------------------------------------------------------- profiling


def test_two_models_side_by_side_with_ratios(two_models):
    a, b = two_models
    result = profile_models([str(a), str(b)], ProfileOptions(batches=(1, 2), threads=1, **FAST))
    assert [m.label for m in result.models] == ["a.onnx", "b.onnx"]
    assert [(m.label, m.batch, m.mode) for m in result.measurements] == [
        ("a.onnx", 1, "model"),
        ("b.onnx", 1, "model"),
        ("a.onnx", 2, "model"),
        ("b.onnx", 2, "model"),
    ]
    for m in result.measurements:
        s = m.stats
        assert s.iterations == 5 and len(m.samples_ms) == 5
        assert 0 < s.min_ms <= s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
        assert s.throughput == pytest.approx(m.batch * 1000 / s.mean_ms)
    for batch in (1, 2):
        first, second = result.get("a.onnx", batch), result.get("b.onnx", batch)
        assert first.latency_ratio == 1.0 and first.speedup == 1.0
        assert second.latency_ratio == pytest.approx(second.stats.p50_ms / first.stats.p50_ms)
        assert second.speedup == pytest.approx(1 / second.latency_ratio)
    info = result.models[1]
    assert info.backend == "onnxrt" and info.input_shape == ["N", 3, 64, 64]
    assert info.file_size_mb == pytest.approx(b.stat().st_size / 1e6, abs=1e-3)  # MB, as export/quantize say
    assert info.rss_delta_mb is not None and result.peak_rss_mb > 0
    assert result.environment["threads"] == 1
    assert "onnxruntime" in result.environment["packages"]


def test_blocks_give_every_model_exactly_its_iterations(two_models):
    result = profile_models([str(m) for m in two_models], ProfileOptions(warmup=1, iterations=5, block=2, settle_s=0.0))
    assert [m.stats.iterations for m in result.measurements] == [5, 5]


def test_same_model_twice_gets_distinct_labels(tiny_onnx):
    result = profile_models([str(tiny_onnx), str(tiny_onnx)], ProfileOptions(**FAST))
    assert [m.label for m in result.models] == ["tiny.onnx", "tiny.onnx#2"]


def test_duration_mode_runs_for_about_that_long(tiny_onnx):
    t0 = time.perf_counter()
    result = profile_models([str(tiny_onnx)], ProfileOptions(warmup=1, iterations=None, duration=0.2))
    assert 0.2 <= time.perf_counter() - t0 < 10
    assert result.measurements[0].stats.iterations > 1


def test_per_layer_lists_the_nodes_of_tiny_onnx(tiny_onnx):
    result = profile_models([str(tiny_onnx)], ProfileOptions(per_layer=True, top_layers=50, layer_iterations=5, **FAST))
    layers = result.models[0].layers
    ops = [r["op"] for r in layers]
    names = [r["name"] for r in layers]
    assert ops.count("Conv") == 2 and "Gemm" in ops and "GlobalAveragePool" in ops
    assert "fc" in names and "flatten" in names  # unfused nodes keep their graph names
    assert all(r["mean_ms"] >= 0 for r in layers)
    assert [r["mean_ms"] for r in layers] == sorted((r["mean_ms"] for r in layers), reverse=True)
    assert sum(r["share"] for r in layers) == pytest.approx(1.0)
    assert all(r["calls"] == 5 for r in layers)  # warm-up runs excluded


def test_parse_ort_trace_skips_warmup_runs():
    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(name, ts, dur, op="Conv"):
        return {
            "cat": "Node",
            "name": f"{name}_kernel_time",
            "ts": ts,
            "dur": dur,
            "args": {"op_name": op, "provider": "CPU"},
        }

    events = [
        run(0, 100),
        node("conv", 10, 90),
        run(200, 100),
        node("conv", 210, 30),
        node("fc", 250, 10, "Gemm"),
        run(400, 100),
        node("conv", 410, 50),
        node("fc", 470, 10, "Gemm"),
        node("conv", 600, 999),
    ]
    rows, runs = parse_ort_trace(events, skip_runs=1)
    assert runs == 2
    by = {r["name"]: r for r in rows}
    assert (
        by["conv"]["mean_ms"] == pytest.approx(0.040) and by["conv"]["calls"] == 2
    )  # (30+50)/2 us, outside runs ignored
    assert by["fc"]["mean_ms"] == pytest.approx(0.010) and by["fc"]["op"] == "Gemm"
    assert by["conv"]["share"] == pytest.approx(80 / 100)


def test_end_to_end_measures_frame_to_top5(tiny_onnx):
    from edgecnn.profiling.latency import _workload
    from edgecnn.runtime import load

    result = profile_models([str(tiny_onnx)], ProfileOptions(end_to_end=True, **FAST))
    modes = [m.mode for m in result.measurements]
    assert modes == ["model", "end-to-end"]
    frame = synthetic_frame()
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    with load(tiny_onnx) as runner:  # the timed end-to-end call is exactly preprocess -> infer -> top-5
        got = _workload(runner, "end-to-end", 2, frame)()
        want = top5(runner.infer_frames([frame, frame]), runner.labels)
    assert got == want and len(got) == 2 and len(got[0]) == 3  # 3 classes -> top-3
    probs = [p for _, p in got[0]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_top5_orders_and_labels():
    logits = np.array([[0.0, 3.0, 1.0, 2.0, -1.0, 5.0, 4.0]])
    got = top5(logits, list("abcdefg"))[0]
    assert [name for name, _ in got] == ["f", "g", "b", "d", "c"]


def test_stage_split_hook_is_reported(tiny_onnx, monkeypatch):
    from edgecnn.runtime import base
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

    class Staged(OnnxRuntimeRunner):
        """A real ONNX Runtime runner whose calls are split into timed stages the way a GPU runner splits
        H2D/compute/D2H, to check that profile reads the `last_timings` hook."""

        backend = "staged"

        def _infer(self, batch):
            t0 = time.perf_counter()
            staged = np.array(batch, copy=True)  # "upload"
            t1 = time.perf_counter()
            out = self.session.run([self.output_name], {self.input_spec.name: staged})[0]
            t2 = time.perf_counter()
            out = np.array(out, copy=True)  # "download"
            t3 = time.perf_counter()
            self.last_timings = {"h2d_ms": (t1 - t0) * 1e3, "compute_ms": (t2 - t1) * 1e3, "d2h_ms": (t3 - t2) * 1e3}
            return out

    regs = dict(base.backends())
    regs["staged"] = base.Backend("staged", (".staged",), lambda p, **o: Staged(p, **o))
    monkeypatch.setattr(base, "_REGISTRY", regs)
    result = profile_models([ModelSpec(str(tiny_onnx), backend="staged")], ProfileOptions(**FAST))
    stages = result.measurements[0].stages
    assert set(stages) == {"h2d_ms", "compute_ms", "d2h_ms"}
    assert stages["compute_ms"]["mean_ms"] > 0
    assert "Stages" in markdown(result)


# ---------------------------------------------------------------- bad input


def test_static_batch_model_rejects_other_batch_sizes(tmp_path):
    fixed = build_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    with raises(UserInputError, "fixed.onnx", "--batch 1"):
        profile_models([str(fixed)], ProfileOptions(batches=(1, 4), **FAST))
    assert profile_models([str(fixed)], ProfileOptions(batches=(1,), **FAST)).measurements[0].batch == 1


def test_unrunnable_and_unknown_models(tmp_path, tiny_onnx):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with raises(ArtifactError, "broken.onnx"):
        profile_models([str(broken)], ProfileOptions(**FAST))
    with raises(UserInputError, "nosuch"):
        profile_models([f"{tiny_onnx}@nosuch"], ProfileOptions(**FAST))
    with raises(UserInputError, "missing.onnx"):
        profile_models([str(tmp_path / "missing.onnx")], ProfileOptions(**FAST))
    with raises(UserInputError, "tiny.onnx"):  # an ONNX given to the engine backend
        profile_models([f"{tiny_onnx}@tensorrt"], ProfileOptions(**FAST))
    for bad in (
        dict(batches=(0,)),
        dict(iterations=0),
        dict(iterations=None, duration=-1.0),
        dict(threads=0),
        dict(iterations=None, duration=float("nan")),
        dict(iterations=None, duration=float("inf")),
    ):
        with pytest.raises(UserInputError):
            profile_models([str(tiny_onnx)], ProfileOptions(**{**FAST, **bad}))


# ---------------------------------------------------------------- environment


def test_environment_is_recorded():
    env = envmod.capture_environment(threads=2)
    assert env["cpu"]["logical_cores"] == os.cpu_count() and env["cpu"]["model"]
    assert env["threads"] == 2 and env["packages"]["numpy"] == np.__version__
    assert isinstance(env["gpus"], list)


def test_gpu_and_jetson_parsers(tmp_path):
    gpus = envmod.parse_nvidia_smi("NVIDIA H100 80GB HBM3, 550.54.15, 345 MHz, 1980 MHz, 2619 MHz, 700.00 W\n")
    assert gpus == [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "driver": "550.54.15",
            "sm_clock": "345 MHz",
            "sm_clock_max": "1980 MHz",
            "mem_clock": "2619 MHz",
            "power_limit": "700.00 W",
        }
    ]
    assert edge_platform.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (id 0)"
    assert edge_platform.parse_nvpmodel("NVPM WARN: not root") is None
    # a Jetson-like file tree: locked clocks (min == max), then unlocked GPU clocks
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\n")
    cpu = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq"
    gpu = tmp_path / "sys/class/devfreq/17000000.gpu"
    for d in (cpu, gpu):
        d.mkdir(parents=True)
    (cpu / "scaling_min_freq").write_text("2201600")
    (cpu / "scaling_max_freq").write_text("2201600")
    (gpu / "min_freq").write_text("1300500000")
    (gpu / "max_freq").write_text("1300500000")
    info = envmod.jetson_info(tmp_path)
    assert info["l4t"].startswith("# R36") and info["clocks_locked"] is True
    (gpu / "min_freq").write_text("306000000")
    assert edge_platform.clocks_locked(tmp_path) is False
    assert edge_platform.clocks_locked(tmp_path / "nothing-here") is None
    assert envmod.jetson_info(tmp_path / "nothing-here") is None


# ---------------------------------------------------------------- reports and CLI


def test_report_files(tmp_path, two_models):
    result = profile_models(
        [str(m) for m in two_models],
        ProfileOptions(batches=(1, 2), per_layer=True, end_to_end=True, layer_iterations=3, **FAST),
    )
    paths = write_report(result, tmp_path / "report")
    assert set(paths) == {"json", "markdown", "latency_plot", "throughput_plot", "layers_plot"}
    data = json.loads(paths["json"].read_text())
    assert len(data["measurements"]) == 8 and len(data["measurements"][0]["samples_ms"]) == 5
    assert data["environment"]["cpu"]["logical_cores"] == os.cpu_count()
    for key in ("latency_plot", "throughput_plot", "layers_plot"):
        blob = paths[key].read_bytes()
        assert blob.startswith(b"\x89PNG") and len(blob) > 5000
    md = paths["markdown"].read_text()
    assert "| model | batch | mode | min ms |" in md and "| b.onnx | 2 | end-to-end |" in md
    assert "Slowest layers: a.onnx" in md
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]  # no temp files left


def cli(*args):
    from edgecnn.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_json_is_json_only(two_models):
    a, b = two_models
    res = cli("profile", str(a), str(b), "--batch", "1,2", "-n", "3", "--warmup", "1", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [m["model"] for m in data["measurements"]] == ["a.onnx", "b.onnx", "a.onnx", "b.onnx"]
    assert "samples_ms" not in data["measurements"][0] and data["measurements"][0]["latency_ratio"] == 1.0


def test_cli_table_and_report(tmp_path, tiny_onnx):
    res = cli(
        "profile",
        str(tiny_onnx),
        "-n",
        "3",
        "--warmup",
        "1",
        "--end-to-end",
        "--per-layer",
        "--report",
        str(tmp_path / "r"),
    )
    assert res.exit_code == 0, res.output
    assert "x 1st" in res.stdout and "end-to-end" in res.stdout and "slowest layers" in res.stdout  # the result
    assert (tmp_path / "r" / "profile.md").is_file() and (tmp_path / "r" / "layers.png").is_file()


def test_cli_bad_inputs(tmp_path, tiny_onnx):
    a_file = tmp_path / "report.txt"
    a_file.write_text("keep me")
    res = cli("profile", str(tiny_onnx), "-n", "2", "--report", str(a_file))
    assert res.exit_code == 2 and "is a file" in res.output and a_file.read_text() == "keep me"
    res = cli("profile", str(tiny_onnx), "-n", "2", "--report", str(a_file / "sub"))  # under a file: before timing
    assert res.exit_code == 2 and "is a file" in res.output and a_file.read_text() == "keep me"
    res = cli("profile", str(tiny_onnx), "--batch", "1,x")
    assert_error(res, 2, "--batch", "1,x", stream="output")
    fixed = build_tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    res = cli("profile", str(fixed), "--batch", "2", "-n", "2")
    assert_error(res, 2, "fixed.onnx", "--batch 1", stream="output")
    res = cli("profile", str(tmp_path / "nope.onnx"))
    assert_error(res, 2, "nope.onnx", stream="output")


def test_checkpoint_and_its_onnx_side_by_side(tmp_path):
    """The usual comparison: the .pt (PyTorch eager through the torch runner) vs its exported ONNX."""
    pytest.importorskip("torch")
    from edgecnn.checkpoint import save_checkpoint
    from edgecnn.contract import ModelContract
    from edgecnn.export import ExportOptions, export_onnx
    from edgecnn.models.registry import create_model, get_entry

    model = create_model("lenet5", num_classes=3).eval()
    contract = ModelContract(labels=["a", "b", "c"], preprocess=get_entry("lenet5").preprocess, arch="lenet5")
    pt = save_checkpoint(tmp_path / "lenet.pt", model, "lenet5", {"num_classes": 3}, contract)
    onnx_path = tmp_path / "lenet.onnx"
    export_onnx(pt, onnx_path, ExportOptions(dynamic_batch=True))
    result = profile_models(
        [str(pt), str(onnx_path)], ProfileOptions(batches=(1, 2), end_to_end=True, threads=1, **FAST)
    )
    assert [m.backend for m in result.models] == ["torch", "onnxrt"]
    assert len(result.measurements) == 8 and result.get("lenet.onnx", 2, "end-to-end").latency_ratio > 0


# ---------------------------------------------------------------- load time and memory do not depend on the order


def test_backend_setup_is_not_charged_to_the_first_model(tmp_path):
    """Two identical models in a fresh process (ONNX Runtime not yet imported): without priming, the first one was
    charged ORT's import and environment (RSS delta 23 MB vs 0.1 MB)."""
    import subprocess
    import sys
    from pathlib import Path

    a = build_tiny_onnx(tmp_path / "tiny.onnx")
    b = build_tiny_onnx(tmp_path / "tiny_dyn.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "edgecnn", "profile", str(a), str(b), "-n", "5", "--warmup", "1", "--json"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout)["models"]
    assert abs(first["rss_delta_mb"] - second["rss_delta_mb"]) < 8, (first, second)


# ---------------------------------------------------------------- --duration and what the report says about blocks


def test_duration_is_checked_before_every_call_not_once_per_block(tiny_onnx):
    result = profile_models([str(tiny_onnx)], ProfileOptions(warmup=1, iterations=None, duration=0.002, batches=(16,)))
    samples = result.measurements[0].samples_ms
    # every call but the last started before the 2 ms were spent: the budget is overrun by one call at most
    # (a whole block of 10 calls ran before: 3.75 s of timing for --duration 0.5 --batch 16)
    assert sum(samples[:-1]) < 2.0, samples


def test_duration_is_each_models_own(two_models):
    """A shared budget let the first model spend it all: 6 timed calls for one model, 1 for the next. Each model
    gets its own --duration of timed calls, so two alike models get alike sample counts."""
    a, b = two_models
    result = profile_models([str(a), str(b)], ProfileOptions(warmup=1, iterations=None, duration=0.02, settle_s=0.0))
    counts = [len(m.samples_ms) for m in result.measurements]
    assert min(counts) >= 5, counts  # a call of the tiny model takes well under a millisecond
    for m in result.measurements:
        assert sum(m.samples_ms[:-1]) < 20.0  # each model stopped once its own 20 ms were spent


def test_report_says_whether_the_models_were_really_interleaved(two_models):
    a, b = two_models
    few = profile_models([str(a), str(b)], ProfileOptions(warmup=1, iterations=5, settle_s=0.0))
    assert few.timing.startswith("not interleaved") and "one model after the other" in markdown(few)
    assert "interleaved in blocks" not in markdown(few)
    many = profile_models([str(a), str(b)], ProfileOptions(warmup=1, iterations=15, settle_s=0.0))
    assert many.timing.startswith("interleaved in blocks of up to 10 calls over 2 rounds")
    assert many.timing in markdown(many) and many.to_dict()["timing"] == many.timing


def test_torch_backend_on_an_onnx_file_is_a_clear_error(tiny_onnx):
    res = cli("profile", f"{tiny_onnx}@torch", "-n", "2")
    assert res.exit_code == 2
    assert_error(res, 2, tiny_onnx.name, "--backend", stream="output")
    assert "re-save" not in res.output


def test_small_ratios_keep_their_significant_digits(tiny_onnx):
    from edgecnn.profiling.report import measurement_rows

    result = profile_models([str(tiny_onnx)], ProfileOptions(**FAST))
    result.measurements[0].latency_ratio = 0.0014  # e.g. a GPU engine against a CPU baseline
    assert measurement_rows(result)[0][-1] == "0.0014"
    result.measurements[0].latency_ratio = 1.0
    assert measurement_rows(result)[0][-1] == "1.00"
