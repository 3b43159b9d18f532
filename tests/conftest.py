"""Shared fixtures: real data from ../shared/data (skipped when absent), small real models made on the spot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / ".cache" / "test-data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_model_cache(tmp_path_factory):
    """Pretrained models materialise into a per-checkout cache, not the user's ~/.cache."""
    os.environ.setdefault("EDGECNN_CACHE", str(ROOT / ".cache" / "models"))
    yield


def _extract(archive: str, folder: str) -> Path:
    src = SHARED_DATA / archive
    if not src.is_file():
        pytest.skip(f"{src} not found: real-data tests need the workplace's ../shared/data")
    target = CACHE / folder
    if not (target / ".complete").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(src) as tar:
            tar.extractall(CACHE, filter="data")
        (target / ".complete").touch()
    return target


@pytest.fixture(scope="session")
def scenes_dir() -> Path:
    """1,200 real 150×150 photos: scenes/{buildings,forest}/*.jpg."""
    return _extract("scenes-jpg.tar.gz", "scenes")


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """CIFAR-10 as JPEG: cifar10/{train,test}/<class>/*.jpg."""
    return _extract("cifar10-jpg.tar.gz", "cifar10")


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=6, size=(40, 48), seed=0) -> Path:
    """A labelled folder of real PNG/JPEG files whose classes differ visibly (colour and stripes)."""
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(*size, 3), dtype=np.uint8)
            img[..., ci % 3] += np.uint8(150)
            if ci % 2:
                img[::4] = 255
            ext = ".png" if i % 2 else ".jpg"
            cv2.imwrite(str(d / f"{i:03d}{ext}"), img)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def build_tiny_onnx(path: Path, labels=("cat", "dog", "bird"), size=(32, 32), batch=None, seed=0, opset=17) -> Path:
    """A real, small Conv-ReLU-Conv-ReLU-GlobalAvgPool-Gemm classifier with the edgecnn contract in its metadata.

    Built with onnx.helper (no PyTorch), so torch-free modules can be tested against a real ONNX Runtime session.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.contract import ModelContract, write_onnx_contract
    from edgecnn.onnx_io import save_onnx
    from edgecnn.preprocess import PreprocessConfig

    rng = np.random.default_rng(seed)
    h, w = size
    n = len(labels)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv1.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv1.b"),
        numpy_helper.from_array(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32), "conv2.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16,)).astype(np.float32), "conv2.b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (n, 16)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (n,)).astype(np.float32), "fc.b"),
        # a fixed batch is baked into the Reshape, as a static torch.onnx.export writes it (`edgecnn export` default)
        numpy_helper.from_array(np.array([batch or 0, -1], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch if batch else "N", 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch if batch else "N", n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgecnn-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    contract = ModelContract(
        labels=list(labels),
        preprocess=PreprocessConfig(input_size=size, resize="resize", mean=(120, 120, 120), std=(60, 60, 60)),
        arch="tiny-test",
    )
    write_onnx_contract(model, contract)
    return save_onnx(model, path)


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    return build_tiny_onnx(tmp_path / "tiny.onnx")


def write_video(path, frames=10, size=(64, 48), fps=30.0, fourcc="mp4v") -> Path:
    """A real video file OpenCV decodes; every frame differs (brightness and its index drawn in red)."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((h, w, 3), (i * 7) % 256, np.uint8)
        cv2.putText(img, str(i), (4, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
        writer.write(img)
    writer.release()
    return Path(path)


def build_int8_qdq_onnx(path: Path, weight: int = 127, activations=np.uint8) -> Path:
    """A tiny INT8 Q/DQ model (input Q/DQ, one 3x3 convolution with every weight at `weight`, output Q/DQ, global mean)
    with the edgecnn contract. With weight 127 and inputs at 255 every product pair saturates ORT's int16 sums on x86
    CPUs without VNNI; 64 is the reduced range, which cannot saturate. `activations` np.uint8: the --target cpu form;
    np.int8 (zero points 0): the symmetric form TensorRT takes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecnn.contract import ModelContract, write_onnx_contract
    from edgecnn.onnx_io import save_onnx
    from edgecnn.preprocess import PreprocessConfig

    cout = 2
    inits = [
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, dtype=activations), "x_zp"),
        numpy_helper.from_array(np.full((cout, 3, 3, 3), weight, dtype=np.int8), "w_q"),
        numpy_helper.from_array(np.full((cout,), 1 / weight, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros((cout,), dtype=np.int8), "w_zp"),
        numpy_helper.from_array(np.array(27 / 200, dtype=np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, dtype=activations), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xf"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wf"], axis=0),
        helper.make_node("Conv", ["xf", "wf"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zp"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["yf"]),
        helper.make_node("GlobalAveragePool", ["yf"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "saturating",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", cout])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    contract = ModelContract(
        labels=["a", "b"],
        arch="saturation-test",
        precision="int8",
        preprocess=PreprocessConfig(input_size=(8, 8), resize="resize", mean=(0, 0, 0), std=(255, 255, 255)),
    )
    write_onnx_contract(model, contract)
    return save_onnx(model, path)


def save_with_external_data(
    src: Path, folder: Path, location: str = "model.onnx.data", name: str = "model.onnx", size_threshold: int = 1024
) -> Path:
    """`src` re-saved into its own `folder` with its weights as EXTERNAL DATA (`location`, relative to the model), the
    form torch.onnx.export and models over 2 GB use. The default threshold keeps small tensors (the Reshape's shape)
    inline, as torch does: ONNX Runtime cannot infer shapes through an external shape tensor."""
    import onnx

    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(
        onnx.load(str(src)),
        str(folder / name),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=size_threshold,
    )
    return folder / name


@pytest.fixture
def external_onnx(tmp_path) -> Path:
    """The tiny classifier with its conv2 weights in `model.onnx.data` beside `model.onnx`, in a folder of its own."""
    return save_with_external_data(build_tiny_onnx(tmp_path / "tiny.onnx"), tmp_path / "external")


@pytest.fixture
def small_disk(tmp_path):
    """A real 300 KiB tmpfs: a recording or checkpoint written here runs out of space, and a test can remount it
    read-only (needs root, or a user allowed to mount; skipped otherwise)."""
    mount = shutil.which("mount")
    folder = tmp_path / "small"
    folder.mkdir()
    if mount is None:
        pytest.skip("no mount command: cannot make a small file system to fill")
    proc = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def engine_with_manifest(
    onnx_path: Path, engine: Path, batch: str = "1:4:8", device: str = "orin-nano", tensorrt: str = "10.3.0"
) -> Path:
    """An engine file + the sidecar manifest as `build-engine ONNX --batch BATCH` writes it: the optimization profile
    comes from the project's own planner and the file from its manifest writer. The engine bytes are not a real plan
    (no TensorRT here): the deploy writers read only the manifest and copy the file."""
    from edgecnn.contract import read_onnx_contract
    from edgecnn.trt.devices import get_device
    from edgecnn.trt.manifest import file_record, write_manifest
    from edgecnn.trt.plan import BuildOptions, inspect_onnx, make_plan, parse_batch

    facts = inspect_onnx(onnx_path)
    plan = make_plan(BuildOptions(precision="fp16", batch=parse_batch(batch)), facts, tensorrt, get_device(device))
    engine.write_bytes(b"serialized plan bytes")
    write_manifest(
        engine,
        {
            "engine": file_record(engine),
            "built_with": {"tensorrt": tensorrt, "gpu": "Orin", "compute_capability": "8.7"},
            "contract": read_onnx_contract(onnx_path).to_dict(),
            "io": {
                "inputs": [
                    {
                        "name": plan.input_name,
                        "shape": [-1, *facts.input_shape[1:]],
                        "dtype": "float32",
                        "profile": plan.profile,
                    }
                ],
                "outputs": [{"name": facts.output_names[0], "shape": [-1, 3], "dtype": "float32", "profile": None}],
            },
        },
    )
    return engine
