"""Credentials masked everywhere, sources kept off the command line, huge images refused before decoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import build_tiny_onnx
from typer.testing import CliRunner

from edgecnn.cli.main import app
from edgecnn.masking import mask_credentials

runner = CliRunner()
SECRET_URL = "rtsp://admin:Zq@Secret9@cam.local:554/s?token=t0k3n"


@pytest.mark.parametrize(
    "text,hidden,kept",
    [
        (SECRET_URL, ("Zq", "Secret9", "admin", "t0k3n"), "rtsp://***@cam.local:554/s?token=***"),
        ("rtsp://user:pass@host/stream", ("user", "pass"), "rtsp://***@host/stream"),
        ("http://a:b@c@d@host:80/x@y", ("a:b", "c@d@"), "http://***@host:80/x@y"),  # '@' in the path stays
        ("gst:rtspsrc location=rtsp://u:p@w@h/s user-pw=hunter2 ! appsink", ("hunter2", "u:p@w"), "rtsp://***@h/s"),
        ("rtsp://host/stream", (), "rtsp://host/stream"),
    ],
)
def test_mask_up_to_the_last_at_of_the_authority(text, hidden, kept):
    masked = mask_credentials(text)
    assert kept in masked, masked
    for secret in hidden:
        assert secret not in masked, masked


def test_source_display_uses_the_one_masking_function():
    from edgecnn.camera.sources import parse_source, redact

    assert redact(SECRET_URL) == mask_credentials(SECRET_URL)
    assert "Secret9" not in parse_source(SECRET_URL).display


def test_error_messages_are_masked_in_text_and_json(tmp_path):
    """An error that quotes the URL (here: an unsupported scheme) shows no part of the password, on stderr and in
    the --json error object."""
    res = runner.invoke(
        app, ["calibrate", "capture", "--source", "ftp://admin:Zq@Secret9@h/x", "--out", str(tmp_path / "f"), "--json"]
    )
    assert res.exit_code == 2
    assert "Secret9" not in res.output and "Zq" not in res.output
    assert "Secret9" not in json.loads(res.stdout)["error"]["message"]


def test_bundle_printouts_and_files_never_show_the_password(tmp_path):
    tiny = build_tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "b.tar.gz"
    res = runner.invoke(app, ["deploy", "bundle", str(tiny), "--out", str(out), "--source", SECRET_URL, "--json"])
    assert res.exit_code == 0, res.output
    assert "Secret9" not in res.output
    with tarfile.open(out) as tar:
        shown = {m.name: tar.extractfile(m).read().decode() for m in tar if m.name.endswith((".json", ".md"))}
    for name, text in shown.items():
        assert "Secret9" not in text and "Zq@" not in text, name


def test_start_sh_passes_the_source_in_the_environment_not_argv(tmp_path):
    """`ps` shows argv to every user: the installed start.sh must not put the source URL there."""
    from edgecnn.deploy.bundle import BundleOptions, create_bundle
    from edgecnn.deploy.install import install_bundle

    tiny = build_tiny_onnx(tmp_path / "tiny.onnx")
    bundle = tmp_path / "b.tar.gz"
    create_bundle(tiny, bundle, BundleOptions(precision="fp16", source=SECRET_URL))
    app_dir = Path(install_bundle(bundle, tmp_path / "p", build_engine=False).app_dir)
    # a stand-in interpreter records what it was started with (argv, and the source from the environment)
    record = tmp_path / "seen.json"
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/bin/sh\n"
        f'{sys.executable} -c \'import json, os, sys; json.dump({{"argv": sys.argv[1:], '
        f'"source": os.environ.get("EDGECNN_SOURCE")}}, open("{record}", "w"))\' "$@"\n'
    )
    fake.chmod(0o755)
    env = dict(os.environ, EDGECNN_PYTHON=str(fake), EDGECNN_BACKEND="onnxrt")
    env.pop("EDGECNN_SOURCE", None)
    proc = subprocess.run([str(app_dir / "start.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(record.read_text())
    assert "live" in seen["argv"] and "--source" not in seen["argv"]
    assert not any("Secret9" in a for a in seen["argv"])
    assert seen["source"] == SECRET_URL  # the source still arrives, through the environment


def test_live_reads_its_source_from_the_environment(tmp_path):
    from conftest import write_video

    tiny = build_tiny_onnx(tmp_path / "tiny.onnx")
    video = write_video(tmp_path / "clip.mp4", frames=5)
    res = runner.invoke(
        app,
        ["live", str(tiny), "--headless", "--json", "--no-pace", "--max-frames", "2"],
        env={"EDGECNN_SOURCE": str(video)},
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["frames"] == 2


# ---------------------------------------------------------------- the pixel limit


def _huge_png(path: Path, side: int = 30000) -> Path:
    """A real PNG declaring side x side pixels, small on disk (one colour compresses away); written by zlib row by
    row so the test itself never holds the image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" + b"\0" * side  # filter byte + a gray row
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_30000_square_png_is_refused_without_decoding(tmp_path):
    from edgecnn.data import image_problem, read_image

    png = _huge_png(tmp_path / "bomb.png")
    assert png.stat().st_size < 2_000_000
    t0 = time.perf_counter()
    assert read_image(png) is None
    assert time.perf_counter() - t0 < 1.0  # refused by its header: nothing of its 900 MP was decoded
    problem = image_problem(png)
    assert "30000x30000" in problem and "EDGECNN_MAX_PIXELS" in problem


def test_predict_names_the_pixel_limit_and_the_limit_is_configurable(tmp_path):
    tiny = build_tiny_onnx(tmp_path / "tiny.onnx")
    img = tmp_path / "wide.png"
    cv2.imwrite(str(img), np.zeros((100, 400, 3), np.uint8))  # 40,000 pixels
    res = runner.invoke(app, ["predict", str(tiny), str(img), "--json"], env={"EDGECNN_MAX_PIXELS": "10000"})
    assert res.exit_code == 2
    assert "400x100" in json.loads(res.stdout)["results"][0]["error"]
    res = runner.invoke(app, ["predict", str(tiny), str(img), "--json"], env={"EDGECNN_MAX_PIXELS": "50000"})
    assert res.exit_code == 0 and json.loads(res.stdout)["results"][0]["top_k"]


def test_predict_on_the_huge_png_stays_small_in_memory(tmp_path):
    """The CLI end to end, in its own process: peak RSS far below the 2.7 GB the image would decode to.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child started from a large pytest process
    would report the parent's size."""
    tiny = build_tiny_onnx(tmp_path / "tiny.onnx")
    png = _huge_png(tmp_path / "bomb.png")
    code = (
        "import re, sys\n"
        "from edgecnn.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print('peak_mb', int(hwm) // 1024, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "predict", str(tiny), str(png)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    peak = int(proc.stderr.split("peak_mb")[-1].split()[0])
    assert peak < 1000, proc.stderr
    assert "30000x30000" in proc.stdout + proc.stderr


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".gif", ".ppm"])
def test_header_sizes_match_opencv(tmp_path, ext):
    from edgecnn.imagesize import image_size

    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        pytest.skip(f"this OpenCV cannot write {ext}")
    assert image_size(buf.tobytes()) == (53, 37)
