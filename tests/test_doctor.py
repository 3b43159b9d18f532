"""`edgecnn doctor`: runs on this CPU-only machine; the Jetson paths are fed fake /etc and /proc texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecnn.doctor import (
    FAIL,
    OK,
    SKIP,
    DoctorPaths,
    opencv_video_io,
    parse_cudnn_header,
    run_doctor,
)
from edgecnn.platform import parse_nv_tegra_release, parse_nvpmodel

EXPECTED = {
    "platform",
    "jetpack",
    "gpu",
    "cuda",
    "cudnn",
    "tensorrt",
    "onnxruntime",
    "opencv",
    "opencv.gstreamer",
    "opencv.v4l2",
    "opencv.ffmpeg",
    "opencv.window",
    "live.outputs",
    "cameras",
    "power_mode",
    "python",
}


def test_doctor_on_this_machine_json():
    from edgecnn.cli.main import app

    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == EXPECTED
    assert all(c["status"] in (OK, FAIL, SKIP) for c in checks.values())
    failures = [c for c in checks.values() if c["status"] == FAIL]
    assert all(c["fix"] for c in failures), f"every ✗ names its fix: {failures}"
    assert checks["onnxruntime"]["status"] == OK and "CPU" in checks["onnxruntime"]["value"]
    from edgecnn.platform import x86_without_vnni

    assert ("without VNNI" in checks["onnxruntime"]["value"]) == x86_without_vnni()
    assert report["summary"][FAIL] == len(failures)
    if not report["platform"]["jetson"]:
        assert checks["jetpack"]["status"] == SKIP and checks["power_mode"]["status"] == SKIP
    from edgecnn.camera.sinks import display_available

    window = checks["opencv.window"]  # what `edgecnn live` without --headless will meet, with how to get one
    assert (window["status"] == OK) == display_available()[0]
    assert window["status"] == OK or ("--headless" in window["fix"] and display_available()[1] in window["fix"])


def test_doctor_human_output_marks_and_fixes():
    from edgecnn.cli.main import app

    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0
    assert "✓ onnxruntime" in res.output
    if "✗" in res.output:
        assert "fix:" in res.output


def fake_jetson(tmp_path: Path, model: str, release: str | None, cameras=("video0",)) -> DoctorPaths:
    """A fake machine root (edgecnn.platform reads ROOT/etc/nv_tegra_release and ROOT/proc/device-tree/model)."""
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    (tmp_path / "etc").mkdir()
    if release is not None:
        (tmp_path / "etc/nv_tegra_release").write_text(release)
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in cameras:
        (dev / name).write_bytes(b"")
    return DoctorPaths(
        root=tmp_path,
        dev_dir=dev,
        cuda_root=tmp_path / "cuda",
        include_dirs=(tmp_path / "include",),
    )


R36_4_3 = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)


def test_fake_orin_nano_jetpack_6_2(tmp_path):
    paths = fake_jetson(tmp_path, "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", R36_4_3)
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}))
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cudnn_version.h").write_text(
        "#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 3\n#define CUDNN_PATCHLEVEL 0\n"
    )
    calls = []

    def run(argv):
        calls.append(argv[0])
        return "NV Power Mode: 25W\n1\n" if argv[0] == "nvpmodel" else None

    report = run_doctor(paths, run=run)
    checks = {c.name: c for c in report.checks}
    assert report.platform["jetson"] and report.platform["preset"] == "orin-nano"
    assert (
        checks["platform"].value.startswith("NVIDIA Jetson Orin Nano")
        and "--device orin-nano" in checks["platform"].value
    )
    assert checks["jetpack"].status == OK and "L4T 36.4.3 = JetPack 6.2" in checks["jetpack"].value
    assert checks["gpu"].status == OK and "compute capability 8.7" in checks["gpu"].value
    assert checks["cuda"].value == "12.6.68" and checks["cudnn"].value == "9.3.0"
    assert checks["cameras"].status == OK and checks["cameras"].value.endswith("video0")
    assert checks["power_mode"].status == OK and checks["power_mode"].value.startswith("25W")
    assert "jetson_clocks" in checks["power_mode"].value  # not MAXN: say how to get full speed
    assert "nvidia-smi" not in calls  # a Jetson's GPU is known from its model
    if checks["tensorrt"].status == FAIL:
        assert "JetPack" in checks["tensorrt"].fix  # the Jetson fix, not the desktop pip one


@pytest.mark.parametrize(
    "release,status,text",
    [
        (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 2023",
            FAIL,
            "JetPack 5.1.2",
        ),
        ("# R99 (release), REVISION: 1.0, GCID: 1", FAIL, "does not know"),
        ("garbage", FAIL, "cannot parse"),
        (None, FAIL, "not found"),
    ],
)
def test_fake_jetson_release_problems(tmp_path, release, status, text):
    paths = fake_jetson(tmp_path, "NVIDIA Jetson AGX Orin Developer Kit", release, cameras=())
    report = run_doctor(paths, run=lambda argv: None)
    checks = {c.name: c for c in report.checks}
    assert checks["jetpack"].status == status and text in checks["jetpack"].value
    assert checks["jetpack"].fix
    assert checks["cameras"].status == FAIL and "jetson-io" in checks["cameras"].fix
    assert checks["power_mode"].status == FAIL and "nvpmodel" in checks["power_mode"].fix


R35_4_1 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 2023"


@pytest.mark.parametrize(
    "model,fix,not_in_fix",
    [
        ("NVIDIA Jetson Xavier NX Developer Kit", "stops at JetPack 5.1.x", "Upgrade to JetPack 6"),
        ("NVIDIA Jetson AGX Xavier Developer Kit", "stops at JetPack 5.1.x", "Upgrade to JetPack 6"),
        ("NVIDIA Jetson AGX Orin Developer Kit", "Upgrade to JetPack 6", "stops at"),
    ],
)
def test_jetpack5_fix_fits_the_board(tmp_path, model, fix, not_in_fix):
    """Xavier boards have no JetPack 6: the fix there is what works on JetPack 5, not an impossible upgrade."""
    checks = {c.name: c for c in run_doctor(fake_jetson(tmp_path, model, R35_4_1), run=lambda argv: None).checks}
    assert checks["jetpack"].status == FAIL and "Python 3.8" in checks["jetpack"].value
    assert fix in checks["jetpack"].fix and not_in_fix not in checks["jetpack"].fix
    if "stops at" in fix:
        assert "--print-trtexec" in checks["jetpack"].fix and "ONNX Runtime" in checks["jetpack"].fix


def test_desktop_gpu_from_nvidia_smi(tmp_path):
    paths = DoctorPaths(
        root=tmp_path / "none",
        dev_dir=tmp_path,
        cuda_root=tmp_path / "cuda",
        include_dirs=(),
    )

    def run(argv):
        if argv[0] == "nvidia-smi":
            return "NVIDIA H100 80GB HBM3, 9.0, 550.54.15\n"
        if argv[0].endswith("nvcc"):
            return "Cuda compilation tools, release 12.4, V12.4.131\n"
        return None

    checks = {c.name: c for c in run_doctor(paths, run=run).checks}
    assert (
        checks["gpu"].status == OK
        and checks["gpu"].value == "NVIDIA H100 80GB HBM3 (compute capability 9.0, driver 550.54.15)"
    )
    assert checks["cuda"].value == "12.4"
    assert checks["jetpack"].status == SKIP
    if checks["onnxruntime"].status == FAIL:  # CPU-only ORT on a GPU machine: say how to get the GPU one
        assert "onnxruntime-gpu" in checks["onnxruntime"].fix


def test_parsers():
    assert parse_nv_tegra_release(R36_4_3) == "36.4.3"
    assert parse_nv_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref") == "32.7.1"
    assert parse_nv_tegra_release("nothing") is None
    assert parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == "MAXN_SUPER (id 2)"  # the id is what nvpmodel -m takes
    assert parse_cudnn_header("#define CUDNN_MAJOR 8\n#define CUDNN_MINOR 9\n#define CUDNN_PATCHLEVEL 4\n") == "8.9.4"
    info = (
        "  Video I/O:\n    DC1394:   NO\n    FFMPEG:   YES\n      avcodec: YES (58.134.100)\n"
        "    GStreamer:  YES (1.20.3)\n    v4l/v4l2:   YES (linux/videodev2.h)\n"
    )
    assert opencv_video_io(info) == {"gstreamer": True, "v4l2": True, "ffmpeg": True}
    assert opencv_video_io("    GStreamer:                   NO\n") == {
        "gstreamer": False,
        "v4l2": False,
        "ffmpeg": False,
    }
