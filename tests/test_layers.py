"""The layer rule, checked on the source: no import cycles between edgecnn modules, and the bottom layer (floor 0,
preprocess among it) and the inference path (runtime/, camera/, profiling/, predict, evaluate, zoo) import nothing
above their floor and never PyTorch. Then the torch-free inference path for real: predict, live and profile run with
torch made unimportable.

The import graph is read from the AST of every module (tests/import_graph.py), module-level AND function-level
imports, so a lazy import inside a function cannot hide a dependency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA, build_tiny_onnx, write_video
from import_graph import PACKAGE_DIR, build

ROOT = Path(__file__).resolve().parents[1]

# Floor 0: facts and files. Imports nothing from edgecnn above it; no torch, no optional packages.
FLOOR_0 = {
    "edgecnn",  # the package itself: __version__
    "edgecnn.errors",
    "edgecnn.contract",
    "edgecnn.files",
    "edgecnn.onnx_io",
    "edgecnn.platform",
    "edgecnn.preprocess",
    "edgecnn.postprocess",
    "edgecnn.data",
    "edgecnn.jsonout",
    "edgecnn.masking",  # credentials out of URLs and messages
    "edgecnn.imagesize",  # an image's size from its header, before decoding
}
# Floor 1: running models. The TensorRT modules here are the facts running an engine needs (version rules and the
# Q/DQ forms TensorRT takes, presets, the engine manifest, environment probes, the logger); the engine builder
# (trt.builder) is not among them.
FLOOR_1_PREFIXES = ("edgecnn.runtime", "edgecnn.camera", "edgecnn.profiling")
FLOOR_1 = {"edgecnn.predict", "edgecnn.evaluate", "edgecnn.zoo"}
FLOOR_1_TRT = {
    "edgecnn.trt",
    "edgecnn.trt.env",
    "edgecnn.trt.cudart",
    "edgecnn.trt.devices",
    "edgecnn.trt.plan",
    "edgecnn.trt.int8",
    "edgecnn.trt.manifest",
    "edgecnn.trt.logger",
}
# The one exemption: the PyTorch backend runs .pt checkpoints, so it imports torch and edgecnn.checkpoint (floor 2),
# lazily (inside the functions that open a checkpoint). The backend registry loads it by name, so nothing imports it.
TORCH_BACKEND = "edgecnn.runtime.torch_runner"
TORCH_BACKEND_MAY_IMPORT = {"edgecnn.checkpoint"}
# The zoo turns registered names into files: it reads the model registry (torch-free; builders import torch inside)
# and, only to make a pretrained file the first time, checkpoint and export (PyTorch), lazily.
ZOO = "edgecnn.zoo"
ZOO_MAY_IMPORT = {"edgecnn.models.registry": False, "edgecnn.checkpoint": True, "edgecnn.export": True}  # lazily?
TORCH = {"torch", "torchvision"}


def floor(module: str) -> int | None:
    if module in FLOOR_0:
        return 0
    if module.startswith(FLOOR_1_PREFIXES) or module in FLOOR_1 | FLOOR_1_TRT:
        return 1
    return None  # floor 2 and up: not checked here


@pytest.fixture(scope="module")
def graph():
    return build(PACKAGE_DIR)


def test_the_graph_sees_every_module_and_lazy_imports(graph):
    """Guards the checker itself: it finds the modules and the imports inside functions."""
    assert {"edgecnn.contract", "edgecnn.runtime.onnxrt", "edgecnn.cli.main"} <= set(graph.modules)
    lazy = {(i.source, i.target) for i in graph.imports if i.in_function}
    assert (TORCH_BACKEND, "edgecnn.checkpoint") in lazy  # runtime/torch_runner imports it inside a function


def test_no_import_cycles(graph):
    assert graph.cycles() == [], "import cycles between edgecnn modules (function-level imports included)"


def test_floors_import_nothing_above_them_and_never_torch(graph):
    problems = []
    for imp in graph.imports:
        own = floor(imp.source)
        if own is None:
            continue
        where = f"{imp.source}:{imp.line}"
        if imp.source == TORCH_BACKEND:
            if imp.target in TORCH | TORCH_BACKEND_MAY_IMPORT:
                if not imp.in_function:
                    problems.append(f"{where} imports {imp.target} at module level (the torch backend must be lazy)")
                continue
        elif imp.source == ZOO and imp.target in ZOO_MAY_IMPORT:
            if ZOO_MAY_IMPORT[imp.target] and not imp.in_function:
                problems.append(f"{where} imports {imp.target} at module level (only to make a file, lazily)")
            continue
        elif imp.target in TORCH:
            problems.append(f"{where} imports {imp.target}")
            continue
        if not imp.internal:
            continue
        if imp.target == TORCH_BACKEND:
            problems.append(f"{where} imports the torch backend (the registry loads it by name)")
        target = floor(imp.target)
        if target is None or target > own:
            problems.append(
                f"{where} (floor {own}) imports {imp.target} (floor {target if target is not None else '2+'})"
            )
    for name in graph.modules:  # torch through the one helper that imports it (errors.py defines it)
        if floor(name) is not None and name not in (TORCH_BACKEND, "edgecnn.errors"):
            text = graph.modules[name].read_text(encoding="utf-8")
            if "require_torch(" in text or "require('torch'" in text or 'require("torch"' in text:
                problems.append(f"{name} asks for torch (require_torch)")
    problems = sorted(set(problems))  # one line per import statement
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- the inference path with torch unimportable

TORCH_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"{name} is blocked by test_layers (the inference path must not need it)")
            return None

    sys.meta_path.insert(0, _NoTorch())
    """
)


def _exported_onnx(tmp_path: Path) -> Path:
    """What a user deploys: a model exported by `edgecnn export` (when PyTorch is here to export one; else the tiny
    classifier built with onnx.helper, which carries the same contract)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return build_tiny_onnx(tmp_path / "model.onnx")
    from edgecnn.checkpoint import save_checkpoint
    from edgecnn.contract import ModelContract
    from edgecnn.export import ExportOptions, export_onnx
    from edgecnn.models.registry import create_model, get_entry

    model = create_model("lenet5", num_classes=3).eval()
    contract = ModelContract(labels=["a", "b", "c"], preprocess=get_entry("lenet5").preprocess, arch="lenet5")
    pt = save_checkpoint(tmp_path / "lenet.pt", model, "lenet5", {"num_classes": 3}, contract)
    return export_onnx(pt, tmp_path / "model.onnx", ExportOptions(dynamic_batch=True, parity_images=2)).out


def _real_video(tmp_path: Path) -> Path:
    """A video file of real photos (the scenes set) when the shared data is here, else OpenCV-drawn frames."""
    archive = SHARED_DATA / "scenes-jpg.tar.gz"
    if not archive.is_file():
        return write_video(tmp_path / "clip.mp4", frames=8)
    import tarfile

    frames = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                data = tar.extractfile(member).read()
                frames.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
                if len(frames) == 8:
                    break
    path = tmp_path / "scenes.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (160, 120))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.resize(frame, (160, 120)))
    writer.release()
    return path


def _without_torch(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run Python `code` in a fresh interpreter whose sitecustomize (on PYTHONPATH) makes torch unimportable."""
    site = tmp_path / "no-torch-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(TORCH_BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )


def _edgecnn_without_torch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import sys; from edgecnn.__main__ import main; sys.argv = ['edgecnn', *sys.argv[1:]]; main()"
    return _without_torch(tmp_path, code, *args)


def test_predict_live_and_profile_run_with_torch_unimportable(tmp_path):
    model = _exported_onnx(tmp_path)
    video = _real_video(tmp_path)
    image = tmp_path / "frame.png"
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok and cv2.imwrite(str(image), frame)

    blocker = _without_torch(tmp_path, "import torch")  # the blocker really blocks
    assert blocker.returncode != 0 and "blocked by test_layers" in blocker.stderr

    predict = _edgecnn_without_torch(tmp_path, "predict", str(model), str(image), "--json")
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert json.loads(predict.stdout)

    live = _edgecnn_without_torch(tmp_path, "live", str(model), "--source", str(video), "--headless", "--json")
    assert live.returncode == 0, live.stderr[-2000:]
    lines = [json.loads(line) for line in live.stdout.splitlines()]
    assert lines[-1]["type"] == "summary" and lines[-1]["frames"] >= 1

    profile = _edgecnn_without_torch(tmp_path, "profile", str(model), "--warmup", "1", "-n", "3", "--json")
    assert profile.returncode == 0, profile.stderr[-2000:]
    assert json.loads(profile.stdout)["models"]
