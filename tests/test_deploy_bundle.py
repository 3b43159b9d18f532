"""`edgecnn deploy bundle` + `deploy install`: the round trip on this (TensorRT-less) machine, and the pure pieces.

The round trip is real: a tar.gz is written, verified and extracted by `install`, and the installed `start.sh` runs
the model with the bundled edgecnn on ONNX Runtime over a real video file, through the real `edgecnn live`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from asserts import assert_error, raises
from conftest import build_tiny_onnx, write_video
from typer.testing import CliRunner

from edgecnn.contract import ModelContract, read_onnx_contract, write_onnx_contract
from edgecnn.deploy.bundle import (
    BundleOptions,
    create_bundle,
    docker_device_flags,
    parse_sha256sums,
    plan_models,
    runtime_requirements,
    sink_args,
    ssh_commands,
)
from edgecnn.deploy.install import ServiceTarget, install_bundle
from edgecnn.errors import UserInputError
from edgecnn.files import sha256_file
from edgecnn.onnx_io import save_onnx


def members(bundle: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(bundle) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(bundle: Path, name: str) -> str:
    with tarfile.open(bundle) as tar:
        return tar.extractfile(name).read().decode()


@pytest.fixture
def bundle(tmp_path, tiny_onnx) -> Path:
    out = tmp_path / "out" / "app.tar.gz"
    create_bundle(tiny_onnx, out, BundleOptions(precision="fp16", device="orin-nano", source="0"))
    return out


def test_bundle_contents(bundle, tiny_onnx):
    assert bundle.with_name("app.tar.gz.sha256").read_text() == f"{sha256_file(bundle)}  app.tar.gz\n"
    names = members(bundle)
    top = {n.split("/", 1)[1] for n in names if n.count("/") == 1}
    assert top >= {
        "model.onnx",
        "contract.json",
        "labels.txt",
        "bundle.json",
        "start.sh",
        "tiny.service",
        "Dockerfile",
        "run-docker.sh",
        "requirements.txt",
        "README.md",
        "SHA256SUMS",
    }
    assert "tiny/lib/edgecnn/__init__.py" in names and "tiny/lib/edgecnn/templates/start.sh.in" in names
    assert all(m.isfile() for m in names.values()), "only regular files: no links, no devices"
    assert names["tiny/start.sh"].mode == 0o755

    # SHA256SUMS lists every file but itself, with the right digests
    sums = parse_sha256sums(read_member(bundle, "tiny/SHA256SUMS"))
    assert set(sums) == {n.split("/", 1)[1] for n in names} - {"SHA256SUMS"}
    assert sums["model.onnx"] == sha256_file(tiny_onnx)

    # the contract travels as a manifest too
    contract = ModelContract.from_dict(json.loads(read_member(bundle, "tiny/contract.json")))
    assert contract.labels == ["cat", "dog", "bird"]
    assert read_member(bundle, "tiny/labels.txt").split() == ["cat", "dog", "bird"]
    manifest = json.loads(read_member(bundle, "tiny/bundle.json"))
    assert manifest["build_args"] == ["--precision", "fp16", "--device", "orin-nano"]

    start = read_member(bundle, "tiny/start.sh")
    assert "build-engine" in start and '"$APP_DIR/$BUILD_ONNX"' in start and "edgecnn live" in start
    assert "BUILD_ARGS=(--precision fp16 --device orin-nano)" in start
    assert "SINK_ARGS=(--headless --json)" in start  # default sink: JSON lines (the journal under systemd)

    docker = read_member(bundle, "tiny/Dockerfile")
    assert "\nFROM nvcr.io/nvidia/l4t-jetpack:r36.4.0\n" in docker
    assert "sha256sum --check" in docker and "VOLUME /var/lib/edgecnn" in docker
    run_docker = read_member(bundle, "tiny/run-docker.sh")
    assert "--runtime nvidia" in run_docker and "--device /dev/video0" in run_docker

    unit = read_member(bundle, "tiny/tiny.service")
    assert "ExecStart=/opt/edgecnn/tiny/start.sh" in unit and "SupplementaryGroups=video" in unit

    reqs = read_member(bundle, "tiny/requirements.txt")
    assert "torch" not in reqs
    assert 'opencv-python-headless>=4.8; platform_machine != "aarch64"' in reqs
    assert 'numpy>=1.23,<2; platform_machine == "aarch64"' in reqs


def test_round_trip_runs_on_onnxruntime_without_tensorrt(bundle, tmp_path):
    """bundle -> install into a temp prefix -> files verified -> the start script runs the model on ONNX Runtime."""
    pytest.importorskip("onnxruntime")
    if _has_tensorrt():
        pytest.skip("TensorRT is installed here: the start script would build an engine instead")
    report = install_bundle(bundle, tmp_path / "prefix", python=sys.executable)
    app = Path(report.app_dir)
    assert app == tmp_path / "prefix" / "tiny" and report.name == "tiny"
    assert report.archive_checked  # against out/app.tar.gz.sha256, written by create_bundle
    assert app.stat().st_mode & 0o777 == 0o755  # readable by the (non-root) service user
    assert report.files_verified == len(parse_sha256sums((app / "SHA256SUMS").read_text()))
    assert report.runtime == "onnx" and report.model == str(app / "model.onnx")
    assert "TensorRT not found" in report.engine_note
    assert sorted(p.name for p in (tmp_path / "prefix").iterdir()) == [".tiny.releases", "tiny"]
    assert not [p for p in (tmp_path / "prefix" / ".tiny.releases").iterdir() if p.name.startswith(".")], "no staging"

    video = write_video(tmp_path / "clip.avi", frames=8, fps=10, fourcc="MJPG")
    env = dict(os.environ, EDGECNN_PYTHON=sys.executable, EDGECNN_SOURCE=str(video))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [str(app / "start.sh"), "--max-frames", "3", "--no-pace"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TensorRT not found: running on ONNX Runtime" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    frames = [r for r in lines if r["type"] == "frame"]
    summary = [r for r in lines if r["type"] == "summary"][-1]
    assert len(frames) == 3 and summary["frames"] == 3 and summary["end_reason"] == "max_frames"
    assert all(f["label"] in ("cat", "dog", "bird") for f in frames)
    # the bundled lib/ edgecnn ran, not the workspace's
    check = subprocess.run(
        [sys.executable, "-c", "import edgecnn; print(edgecnn.__file__)"],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(app / "lib")),
        cwd=tmp_path,
    )
    assert check.stdout.strip() == str(app / "lib" / "edgecnn" / "__init__.py")


def test_failed_engine_build_falls_back_to_onnx(bundle, tmp_path):
    """A `tensorrt` that cannot build (here: a stand-in module without the API, on a machine with no GPU) makes the
    real `edgecnn build-engine` fail; start.sh must then keep the ONNX model rather than stop."""
    report = install_bundle(bundle, tmp_path / "prefix", build_engine=False)
    fake = tmp_path / "fake-trt"
    fake.mkdir()
    (fake / "tensorrt.py").write_text("__version__ = '10.3.0'\n")
    env = dict(os.environ, EDGECNN_PYTHON=sys.executable, PYTHONPATH=str(fake))
    proc = subprocess.run(
        [str(Path(report.app_dir) / "start.sh"), "--prepare"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "building the TensorRT 10.3.0 engine" in proc.stderr
    assert "engine build failed: falling back to ONNX Runtime" in proc.stderr
    assert proc.stdout.strip() == f"onnx {report.app_dir}/model.onnx"
    assert not list((Path(report.app_dir) / "engines").glob("*.engine"))


def test_reinstall_replaces_app_and_keeps_engines(bundle, tmp_path):
    prefix = tmp_path / "prefix"
    first = install_bundle(bundle, prefix, build_engine=False)
    engines = Path(first.app_dir) / "engines"
    engines.mkdir()
    (engines / "abc-trt10.3.0-fp16.engine").write_bytes(b"engine bytes")
    (Path(first.app_dir) / "stray.txt").write_text("from the old install")
    second = install_bundle(bundle, prefix, build_engine=False)
    assert second.replaced_previous
    assert (Path(second.app_dir) / "engines" / "abc-trt10.3.0-fp16.engine").read_bytes() == b"engine bytes"
    assert not (Path(second.app_dir) / "stray.txt").exists()


def test_install_refuses_to_replace_a_foreign_folder(bundle, tmp_path):
    target = tmp_path / "prefix" / "tiny"
    target.mkdir(parents=True)
    (target / "precious.txt").write_text("keep me")
    with raises(UserInputError, "--prefix", "tiny"):
        install_bundle(bundle, tmp_path / "prefix", build_engine=False)
    assert (target / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "prefix").iterdir()) == ["tiny"]


def test_service_plan_without_root_or_systemd(bundle, tmp_path):
    units = tmp_path / "units"
    report = install_bundle(
        bundle,
        tmp_path / "prefix",
        build_engine=False,
        service=True,
        service_target=ServiceTarget(unit_dir=units, is_root=False, has_systemd=True, user="jetson"),
    )
    svc = report.service
    assert svc["installed"] is False and "not root" in svc["reason"]
    assert svc["unit"] == str(units / "tiny.service")
    assert svc["commands"] == [
        "systemctl daemon-reload",
        "systemctl enable tiny.service",
        "systemctl restart tiny.service",
    ]
    assert not units.exists()

    svc = install_bundle(
        bundle,
        tmp_path / "prefix",
        build_engine=False,
        service=True,
        service_target=ServiceTarget(unit_dir=units, is_root=True, has_systemd=False),
    ).service
    assert svc["installed"] is False and "systemd is not running" in svc["reason"]


def test_cli_service_not_installed_is_a_failure(bundle, tmp_path):
    """`deploy install --service` where the unit cannot be installed: the app is installed and reported, the command
    exits 3 (what this machine lacks), and --json says so too."""
    from edgecnn.cli.main import app

    if Path("/run/systemd/system").is_dir() and os.geteuid() == 0:
        pytest.skip("systemd runs here and we are root: the unit would really be installed")
    runner = CliRunner()
    res = runner.invoke(
        app, ["deploy", "install", str(bundle), "--prefix", str(tmp_path / "p"), "--no-build", "--service", "--json"]
    )
    assert res.exit_code == 3, res.output
    report = json.loads(res.stdout)
    assert report["service"]["installed"] is False and report["error"]["message"].startswith("service not installed")
    assert (tmp_path / "p" / "tiny" / "start.sh").is_file()  # the rest of the install is done and kept
    assert_error(res, 3, str(tmp_path / "p" / "tiny"), "service")

    res = runner.invoke(
        app, ["deploy", "install", str(bundle), "--prefix", str(tmp_path / "q"), "--no-build", "--service"]
    )
    assert res.exit_code == 3
    assert "installed tiny in" in res.stderr and "systemctl enable tiny.service" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith("error: service not installed")

    res = runner.invoke(
        app, ["deploy", "install", str(bundle), "--prefix", str(tmp_path / "r"), "--no-build", "--json"]
    )
    assert res.exit_code == 0 and "error" not in json.loads(res.stdout)  # no --service asked: nothing missing


def test_service_install_writes_unit_for_the_real_prefix(bundle, tmp_path):
    """As root with systemd: the unit is rendered for the actual install folder and systemctl is called (here a
    recording script standing in for systemctl, which cannot run in this container)."""
    import getpass

    me = getpass.getuser()
    log = tmp_path / "systemctl.log"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    units = tmp_path / "units"
    report = install_bundle(
        bundle,
        tmp_path / "prefix",
        build_engine=False,
        service=True,
        service_target=ServiceTarget(unit_dir=units, systemctl=(str(fake),), is_root=True, has_systemd=True, user=me),
        python=sys.executable,
    )
    assert report.service["installed"] is True
    unit = (units / "tiny.service").read_text()
    assert f"ExecStart={report.app_dir}/start.sh" in unit and f"User={me}\n" in unit
    assert f"Environment=EDGECNN_PYTHON={sys.executable}\n" in unit
    assert (Path(report.app_dir) / "engines").owner() == me  # the service user can rebuild the engine
    assert log.read_text().splitlines() == ["daemon-reload", "enable tiny.service", "restart tiny.service"]


# ---------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    "precision,fp32,int8,calib,build,run,args",
    [
        ("fp16", True, False, False, "model.onnx", "model.onnx", ["--precision", "fp16"]),
        ("fp32", True, True, False, "model.onnx", "model.onnx", ["--precision", "fp32"]),
        ("int8", True, True, False, "model.int8.onnx", "model.onnx", ["--precision", "int8"]),
        (
            "int8",
            True,
            False,
            True,
            "model.onnx",
            "model.onnx",
            ["--precision", "int8", "--calib-cache", "model.calib"],
        ),
        ("int8", True, True, True, "model.int8.onnx", "model.onnx", ["--precision", "int8"]),  # Q/DQ wins
        ("int8", False, True, False, "model.int8.onnx", "model.int8.onnx", ["--precision", "int8"]),
        ("best", True, False, False, "model.onnx", "model.onnx", ["--precision", "best"]),
    ],
)
def test_plan_models(precision, fp32, int8, calib, build, run, args):
    plan = plan_models(precision, fp32, int8, calib, None)
    assert (plan.build_onnx, plan.run_onnx, plan.build_args) == (build, run, args)


def test_plan_models_errors_name_the_fix():
    with raises(UserInputError, "edgecnn quantize"):
        plan_models("int8", True, False, False, None)
    with raises(UserInputError, "fp16"):
        plan_models("fp16", False, True, False, None)
    with raises(UserInputError, "int4"):
        plan_models("int4", True, False, False, None)
    assert "FP16/FP32 only" in plan_models("best", True, False, False, None).warnings[0]


def test_sink_args():
    assert sink_args(["display"]) == []
    assert sink_args(["json"]) == ["--headless", "--json"]
    assert sink_args(["json", "record:/data/out.mp4"]) == [
        "--headless",
        "--json",
        "--record",
        "/data/out.mp4",
        "--force",
    ]
    with raises(UserInputError, "--sink"):
        sink_args(["screen"])
    with raises(UserInputError, "--sink display"):
        sink_args(["display", "json"])


def test_docker_device_flags():
    assert docker_device_flags("0") == ["--device", "/dev/video0"]
    assert docker_device_flags("/dev/video2") == ["--device", "/dev/video2"]
    assert docker_device_flags("csi://0") == ["-v", "/tmp/argus_socket:/tmp/argus_socket"]
    assert docker_device_flags("rtsp://cam/stream") == []


def test_runtime_requirements_have_no_torch_and_respect_jetpack():
    reqs = runtime_requirements()
    assert not any(r.startswith(("torch", "efficientnet")) for r in reqs)
    opencv = [r for r in reqs if r.startswith("opencv")]
    assert opencv and all('platform_machine != "aarch64"' in r for r in opencv)
    assert sum(r.startswith("numpy") for r in reqs) == 2


def test_requirements_pin_cuda_python_to_the_targets_jetpack(tmp_path, tiny_onnx):
    """The TensorRT runner and build-engine need cuda-python, which JetPack does not ship: every way of installing a
    bundle (Dockerfile, README steps, --host) installs requirements.txt, so the pin must be in it."""
    from packaging.requirements import Requirement

    assert not any(r.startswith("cuda-python") for r in runtime_requirements())  # no target: nothing to pin
    for l4t, base_image, cuda in (
        ("36.4.0", None, "12.6"),
        ("36.3.0", None, "12.2"),
        ("36.2.0", None, "12.2"),
        ("36.4.3", "registry.local/jp62:latest", "12.6"),
        ("38.2.0", "registry.local/jp7:latest", "13.0"),
    ):
        out = tmp_path / f"l4t{l4t}.tar.gz"
        report = create_bundle(tiny_onnx, out, BundleOptions(l4t=l4t, base_image=base_image))
        reqs = [line for line in read_member(out, "tiny/requirements.txt").splitlines() if not line.startswith("#")]
        cuda_lines = [r for r in reqs if r.startswith("cuda-python")]
        assert cuda_lines == [f'cuda-python=={cuda}.*; platform_machine == "aarch64"'], (l4t, reqs)
        req = Requirement(cuda_lines[0])  # a valid pip requirement, for the Jetson only
        assert req.marker.evaluate({"platform_machine": "aarch64"}) and not req.marker.evaluate(
            {"platform_machine": "x86_64"}
        )
        assert not any("cuda-python" in w for w in report.warnings)
    # every install path installs requirements.txt
    assert "pip install -r requirements.txt" in read_member(out, "tiny/Dockerfile")
    assert "pip install -r tiny/requirements.txt" in read_member(out, "tiny/README.md")
    assert "pip install --quiet -r tiny/requirements.txt" in ssh_commands(out, "orin", "tiny", "ab" * 32)[-1][-1]

    # a release whose CUDA is unknown (only with --base-image): no guess, a clear warning instead
    out = tmp_path / "unknown.tar.gz"
    report = create_bundle(tiny_onnx, out, BundleOptions(l4t="36.9.1", base_image="registry.local/jp6x:latest"))
    assert "cuda-python" not in read_member(out, "tiny/requirements.txt").split("\n", 2)[-1]
    assert any("no cuda-python" in w and "by hand" in w for w in report.warnings)


def test_int8_material_and_contract_checks(tmp_path, tiny_onnx):
    import onnx

    calib = tmp_path / "model.calib"
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    out = tmp_path / "int8.tar.gz"
    report = create_bundle(tiny_onnx, out, BundleOptions(precision="int8", calib_cache=calib))
    assert report.build_onnx == "model.onnx"
    start = read_member(out, "tiny/start.sh")
    assert 'BUILD_ARGS=(--precision int8 --calib-cache "$APP_DIR"/model.calib)' in start

    with raises(UserInputError, "--precision int8", "--int8-model") as exc:
        create_bundle(tiny_onnx, tmp_path / "x.tar.gz", BundleOptions(precision="int8"))
    assert "--cache model.calib" in str(exc.value) and "calibrate" not in str(exc.value)  # quantize writes caches

    other = build_tiny_onnx(tmp_path / "other.onnx", labels=("a", "b", "c"))
    with raises(UserInputError, "other.onnx"):
        create_bundle(tiny_onnx, tmp_path / "y.tar.gz", BundleOptions(precision="int8", int8_model=other))

    # a Q/DQ-marked model of the same contract is accepted and built from
    model = onnx.load(str(tiny_onnx))
    contract = read_onnx_contract(tiny_onnx)
    contract.precision = "int8"
    write_onnx_contract(model, contract)
    int8 = save_onnx(model, tmp_path / "tiny.int8.onnx")
    report = create_bundle(tiny_onnx, tmp_path / "z.tar.gz", BundleOptions(precision="int8", int8_model=int8))
    assert (report.build_onnx, report.run_onnx) == ("model.int8.onnx", "model.onnx")
    with_cache = create_bundle(
        tiny_onnx, tmp_path / "w.tar.gz", BundleOptions(precision="int8", int8_model=int8, calib_cache=calib)
    )
    assert any("--calib-cache is bundled but unused" in w for w in with_cache.warnings)

    # INT8 material the device could not build from is refused here, not at first start on the device
    with raises(UserInputError, "--int8-model"):
        create_bundle(tiny_onnx, tmp_path / "v.tar.gz", BundleOptions(precision="int8", int8_model=tiny_onnx))
    from conftest import make_image_folder

    from edgecnn.quant import QuantOptions, quantize

    cpu_path = tmp_path / "tiny.cpu.int8.onnx"  # a real `edgecnn quantize --target cpu` model: uint8 activations
    quantize(tiny_onnx, cpu_path, make_image_folder(tmp_path / "calib", per_class=4), QuantOptions(target="cpu"))
    with raises(UserInputError, "--target tensorrt"):
        create_bundle(tiny_onnx, tmp_path / "v.tar.gz", BundleOptions(precision="int8", int8_model=cpu_path))
    with raises(UserInputError, "--target cpu", "--target tensorrt"):  # the same model as MODEL itself
        create_bundle(cpu_path, tmp_path / "v.tar.gz", BundleOptions(precision="int8", device="orin-nano"))
    tensorrt_path = tmp_path / "tiny.trt.int8.onnx"  # while a real --target tensorrt model is bundled as MODEL
    quantize(
        tiny_onnx, tensorrt_path, make_image_folder(tmp_path / "calib2", per_class=4), QuantOptions(target="tensorrt")
    )
    report = create_bundle(tensorrt_path, tmp_path / "t.tar.gz", BundleOptions(precision="int8"))
    assert (report.build_onnx, report.run_onnx) == ("model.int8.onnx", "model.int8.onnx")
    # a cache written for another TensorRT than the target JetPack's: build-engine's warning, at bundle time
    stale = create_bundle(tiny_onnx, tmp_path / "s.tar.gz", BundleOptions(precision="int8", calib_cache=calib))
    assert any(
        "written for TensorRT 8.6 (header TRT-8601)" in w
        and "JetPack 6.1 (L4T 36.4.0) has 10.3" in w
        and "--trt-version 10.3.0" in w
        for w in stale.warnings
    ), stale.warnings
    current = tmp_path / "current.calib"
    current.write_bytes(b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    fresh = create_bundle(tiny_onnx, tmp_path / "f.tar.gz", BundleOptions(precision="int8", calib_cache=current))
    assert not any("written for TensorRT" in w for w in fresh.warnings)
    jp60 = create_bundle(
        tiny_onnx, tmp_path / "j.tar.gz", BundleOptions(precision="int8", calib_cache=calib, l4t="36.3.0")
    )
    assert not any("written for TensorRT" in w for w in jp60.warnings)  # JetPack 6.0 has TensorRT 8.6
    garbage = tmp_path / "garbage.calib"
    garbage.write_text("not a table\n")
    with raises(UserInputError, "--calib-cache"):
        create_bundle(tiny_onnx, tmp_path / "v.tar.gz", BundleOptions(precision="int8", calib_cache=garbage))
    assert not (tmp_path / "v.tar.gz").exists()


def test_bundle_refuses_bad_input_and_never_overwrites_it(tmp_path, tiny_onnx):
    before = sha256_file(tiny_onnx)
    with raises(UserInputError, ".tar.gz"):
        create_bundle(tiny_onnx, tmp_path / "app.zip")
    calib = tmp_path / "calib.tar.gz"  # an input that is also the --out path
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    with raises(UserInputError, "--force"):
        create_bundle(tiny_onnx, calib, BundleOptions(precision="int8", calib_cache=calib))
    with raises(UserInputError, "calib.tar.gz", "--out"):  # --force never replaces an input either
        create_bundle(tiny_onnx, calib, BundleOptions(precision="int8", calib_cache=calib, force=True))
    assert calib.read_bytes() == b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n"
    table = tmp_path / "b.tar.gz.sha256"  # the sidecar written beside --out b.tar.gz would replace this input
    table.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    with raises(UserInputError, "b.tar.gz.sha256"):
        create_bundle(tiny_onnx, tmp_path / "b.tar.gz", BundleOptions(precision="int8", calib_cache=table, force=True))
    assert table.read_bytes().startswith(b"TRT-8601") and not (tmp_path / "b.tar.gz").exists()
    with raises(UserInputError, "tiny.onnx"):
        create_bundle(tiny_onnx, tiny_onnx / "a.tar.gz")
    for device in ("nano", "agx-xavier", "thor"):  # boards whose JetPack is not this bundle's L4T 36
        with raises(UserInputError, f"--device {device}", "36.4.0"):
            create_bundle(tiny_onnx, tmp_path / "a.tar.gz", BundleOptions(device=device))
    with raises(UserInputError, "--device desktop"):
        create_bundle(tiny_onnx, tmp_path / "a.tar.gz", BundleOptions(device="desktop"))
    with raises(UserInputError, "--device"):
        create_bundle(tiny_onnx, tmp_path / "a.tar.gz", BundleOptions(device="orin-mega"))
    with raises(UserInputError, "L4T"):
        create_bundle(tiny_onnx, tmp_path / "a.tar.gz", BundleOptions(l4t="35.4.1"))
    # JetPack 5 (Python 3.8) is refused even with its own base image, and Xavier boards are told what works instead
    with raises(UserInputError, "--print-trtexec", "35.4.1", "5.1.2", "3.9"):
        create_bundle(
            tiny_onnx,
            tmp_path / "a.tar.gz",
            BundleOptions(device="xavier-nx", l4t="35.4.1", base_image="nvcr.io/nvidia/l4t-jetpack:r35.4.1"),
        )
    with raises(UserInputError, "32.7.1"):
        create_bundle(tiny_onnx, tmp_path / "a.tar.gz", BundleOptions(l4t="32.7.1", base_image="l4t-base:r32.7.1"))
    with raises(UserInputError, "xavier-nx", "JetPack 5"):
        create_bundle(tiny_onnx, tmp_path / "a.tar.gz", BundleOptions(device="xavier-nx"))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with raises(UserInputError, "m.engine"):
        create_bundle(engine, tmp_path / "a.tar.gz")
    assert sha256_file(tiny_onnx) == before
    assert not (tmp_path / "a.tar.gz").exists()


def test_existing_out_needs_force_and_a_dry_run_never_touches_it(tmp_path, tiny_onnx):
    """As deploy triton/deepstream and live --record: an existing output is replaced only with --force."""
    from edgecnn.cli.main import app

    runner = CliRunner()
    out = tmp_path / "app.tar.gz"
    out.write_bytes(b"an earlier bundle")
    for extra in ([], ["--host", "nvidia@orin", "--dry-run"], ["--host", "nvidia@orin", "--dry-run", "--force"]):
        res = runner.invoke(app, ["deploy", "bundle", str(tiny_onnx), "--out", str(out), *extra])
        assert res.exit_code == (0 if "--force" in extra else 2), res.output
        assert out.read_bytes() == b"an earlier bundle" and not out.with_name("app.tar.gz.sha256").exists()
    assert (
        "already exists: pass --force"
        in runner.invoke(app, ["deploy", "bundle", str(tiny_onnx), "--out", str(out)]).output
    )
    res = runner.invoke(app, ["deploy", "bundle", str(tiny_onnx), "--out", str(out), "--force", "--json"])
    assert res.exit_code == 0, res.output
    assert sha256_file(out) == json.loads(res.stdout)["sha256"]
    assert out.with_name("app.tar.gz.sha256").read_text().startswith(sha256_file(out))
    # a leftover .sha256 alone is an output too: it is not replaced silently
    other = tmp_path / "other.tar.gz"
    other.with_name("other.tar.gz.sha256").write_text("0" * 64 + "  other.tar.gz\n")
    with raises(UserInputError, "other.tar.gz.sha256"):
        create_bundle(tiny_onnx, other)
    assert not other.exists()


def test_credentials_in_source_are_redacted_from_manifest_and_readme(tmp_path, tiny_onnx):
    out = tmp_path / "cam.tar.gz"
    report = create_bundle(tiny_onnx, out, BundleOptions(source="rtsp://admin:hunter2@10.0.0.5/stream"))
    assert any("credentials" in w for w in report.warnings)
    assert "hunter2" not in read_member(out, "tiny/bundle.json")
    assert "hunter2" not in read_member(out, "tiny/README.md")


def test_ssh_commands_are_data():
    cmds = ssh_commands("/tmp/app.tar.gz", "nvidia@orin.local", "tiny", "ab" * 32, prefix="/opt/edgecnn", service=True)
    assert cmds[0] == ["ssh", "nvidia@orin.local", "mkdir -p /tmp/edgecnn-deploy"]
    assert cmds[1] == ["scp", "/tmp/app.tar.gz", "nvidia@orin.local:/tmp/edgecnn-deploy/tiny.tar.gz"]
    assert cmds[2][:3] == ["ssh", "-t", "nvidia@orin.local"]
    steps = cmds[2][3].split(" && ")
    assert steps[1] == "echo '" + "ab" * 32 + "  tiny.tar.gz' | sha256sum --check --quiet -"
    assert steps[2] == "tar -xzf tiny.tar.gz tiny/lib tiny/requirements.txt"
    assert steps[3] == "sudo python3 -m venv --system-site-packages /opt/edgecnn/venv"
    assert steps[4] == "sudo /opt/edgecnn/venv/bin/python -m pip install --quiet -r tiny/requirements.txt"
    assert steps[5] == (
        "sudo env PYTHONPATH=/tmp/edgecnn-deploy/tiny/lib /opt/edgecnn/venv/bin/python -m edgecnn deploy install "
        "/tmp/edgecnn-deploy/tiny.tar.gz --sha256 " + "ab" * 32 + " --prefix /opt/edgecnn --service"
    )
    home = ssh_commands("app.tar.gz", "orin", "tiny", "ab" * 32, prefix="/home/nvidia/apps")[2][1]
    assert "sudo" not in home and "--service" not in home
    with raises(UserInputError, "--host"):
        ssh_commands("/tmp/app.tar.gz", "evil; rm -rf /", "tiny", "ab" * 32)
    with raises(UserInputError, "--prefix"):
        ssh_commands("/tmp/app.tar.gz", "orin", "tiny", "ab" * 32, prefix="apps/../../etc")


def test_host_commands_are_shell_quoted_and_host_only_flags_need_host(tmp_path, tiny_onnx):
    """A --dry-run line pasted into a shell must run what it shows: the remote script is one quoted argument."""
    import shlex

    from edgecnn.cli.main import app

    runner = CliRunner()
    out = tmp_path / "app.tar.gz"
    res = runner.invoke(
        app,
        [
            "deploy",
            "bundle",
            str(tiny_onnx),
            "--out",
            str(out),
            "--json",
            "--host",
            "nvidia@orin.local",
            "--dry-run",
            "--service",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    # the dry run's own archive is thrown away and the real one records its own time: no hash known now would match,
    # so the commands show where the real run's goes (and the report has none)
    assert report["sha256"] is None
    expected = ssh_commands(out, "nvidia@orin.local", "tiny", "SHA256-OF-THE-BUNDLE", service=True)
    assert [shlex.split(line) for line in report["host_commands"]] == expected
    assert report["written"] is False and not out.exists()  # --dry-run writes nothing
    for flags in (["--service"], ["--dry-run"], ["--prefix", "/opt/x"]):
        res = runner.invoke(app, ["deploy", "bundle", str(tiny_onnx), "--out", str(tmp_path / "b.tar.gz"), *flags])
        assert_error(res, 2, flags[0], "--host", stream="output")


def test_remote_output_never_reaches_json_stdout(tmp_path, tiny_onnx):
    """Real ssh/scp stand-ins that talk on stdout, as remote pip and install do: `--json` stdout stays one document."""
    shim = tmp_path / "shim"
    shim.mkdir()
    for tool in ("ssh", "scp"):
        (shim / tool).write_text(f"#!/bin/sh\necho 'remote {tool} chatter'\n")
        (shim / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecnn",
            "deploy",
            "bundle",
            str(tiny_onnx),
            "--out",
            str(tmp_path / "app.tar.gz"),
            "--host",
            "nvidia@orin",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["name"] == "tiny"
    assert "remote ssh chatter" in res.stderr and "remote scp chatter" in res.stderr


def test_push_bundle_runs_the_steps_in_order_and_stops_on_failure():
    """`ssh`/`scp` replaced by the local shell, which runs the same argv lists for real."""
    from edgecnn.deploy.bundle import push_bundle

    ran = []

    def run(argv):
        ran.append(argv[0])
        return subprocess.run(["true" if argv[0] == "ssh" else "false"])

    with raises(UserInputError, "scp"):
        push_bundle(ssh_commands("app.tar.gz", "orin", "tiny", "ab" * 32), run=run)
    assert ran == ["ssh", "scp"]


def test_cli_bundle_and_install(tmp_path, tiny_onnx):
    from edgecnn.cli.main import app

    runner = CliRunner()
    out = tmp_path / "app.tar.gz"
    res = runner.invoke(
        app, ["deploy", "bundle", str(tiny_onnx), "--out", str(out), "--json", "--host", "nvidia@orin", "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["name"] == "tiny" and report["host_commands"][1].startswith("scp ")
    assert not out.exists() and not out.with_name("app.tar.gz.sha256").exists()

    res = runner.invoke(app, ["deploy", "bundle", str(tiny_onnx), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["sha256"] == sha256_file(out) and report["written"] is True

    res = runner.invoke(
        app,
        [
            "deploy",
            "install",
            str(out),
            "--prefix",
            str(tmp_path / "p"),
            "--no-build",
            "--sha256",
            report["sha256"],
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["archive_checked"] is True and rep["files_verified"] > 10

    res = runner.invoke(app, ["deploy", "install", str(out), "--prefix", str(tmp_path / "q"), "--sha256", "0" * 64])
    assert_error(res, 4, "--sha256", stream="output")
    assert not (tmp_path / "q" / "tiny").exists()


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def test_default_names():
    from edgecnn.deploy.bundle import bundle_name, default_name

    assert default_name("efficientnet-lite0") == "efficientnet-lite0"
    assert default_name("/x/runs/Model.INT8.onnx") == "model"
    assert default_name("/x/resnet_v1.5.onnx") == "resnet_v1.5"
    assert default_name("###.onnx") == "edgecnn-app"
    with raises(UserInputError, "--name"):
        bundle_name("m.onnx", "Bad Name")


def test_install_without_permission_names_the_fix(bundle, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with raises(UserInputError, "--prefix"):
        install_bundle(bundle, locked / "apps", build_engine=False)


def test_bundle_from_a_checkpoint_exports_it(tmp_path):
    """A .pt is exported (with the parity check) on the workstation; the device only ever gets ONNX."""
    pytest.importorskip("torch")
    from edgecnn.checkpoint import save_checkpoint
    from edgecnn.models.cifar_cnn import CIFAR_PREPROCESS
    from edgecnn.models.registry import create_model

    labels = [f"class{i}" for i in range(4)]
    ckpt = save_checkpoint(
        tmp_path / "cifar.pt",
        create_model("cifar-cnn", num_classes=4),
        "cifar-cnn",
        {"num_classes": 4},
        ModelContract(labels=labels, preprocess=CIFAR_PREPROCESS, arch="cifar-cnn"),
    )
    report = create_bundle(ckpt, tmp_path / "cifar.tar.gz", BundleOptions(precision="fp32"))
    assert report.name == "cifar"
    names = members(tmp_path / "cifar.tar.gz")
    assert "cifar/model.onnx" in names and not any(n.endswith(".pt") for n in names)
    contract = ModelContract.from_dict(json.loads(read_member(tmp_path / "cifar.tar.gz", "cifar/contract.json")))
    assert contract.labels == labels and contract.preprocess == CIFAR_PREPROCESS
