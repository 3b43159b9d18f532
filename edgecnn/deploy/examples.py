"""Render the repository's `deploy/` folder: the deployment files for the pretrained EfficientNet-Lite0, for reading.

    python -m edgecnn.deploy.examples deploy

The source of truth is `edgecnn/templates/` plus the code in this package; `deploy/` is their output for one
concrete model (ImageNet labels, the Lite0 contract, dynamic batch), so a reader sees real files and a test
(`tests/test_deploy_examples.py`) fails when a template changes without re-rendering them. No model file is
needed: the configs depend only on the contract and the tensor names that `edgecnn export` writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgecnn.contract import ModelContract, imagenet_labels
from edgecnn.deploy.bundle import L4T_BASE_IMAGES, BundleOptions, app_files, plan_models
from edgecnn.deploy.deepstream import DeepStreamOptions, nvinfer_config, readme
from edgecnn.deploy.model_io import ModelIO
from edgecnn.deploy.triton import TritonOptions, config_text
from edgecnn.models.efficientnet_lite import LITE0_PREPROCESS
from edgecnn.platform import DEFAULT_L4T

NAME = "efficientnet-lite0"


def lite0_io() -> ModelIO:
    """EfficientNet-Lite0 as `edgecnn export --dynamic-batch` writes it (tensor names 'input' -> 'logits')."""
    names, wnids = imagenet_labels()
    contract = ModelContract(labels=names, label_keys=wnids, preprocess=LITE0_PREPROCESS, arch=NAME)
    return ModelIO(
        Path(f"{NAME}.onnx"), "onnx", "input", (None, 3, 224, 224), "logits", (None, 1000), contract, max_batch=None
    )


def render_examples() -> dict[str, str]:
    """Relative path -> file text, for the deploy/ folder."""
    io = lite0_io()
    files: dict[str, str] = {}
    options = BundleOptions(precision="fp16", device="orin-nano", source="csi://0", sinks=("json",))
    plan = plan_models(options.precision, True, False, False, options.device)
    jetson = app_files(
        NAME,
        io.contract,
        options,
        plan,
        model_id="<sha256 of the ONNX, 12 hex>",
        base_image=L4T_BASE_IMAGES[DEFAULT_L4T],
        model_files=["model.onnx"],
        created="(bundle time)",
    )
    for rel, (text, _) in jetson.items():
        files[f"jetson/{rel}"] = text
    triton, _, _ = config_text(io, NAME, TritonOptions(max_batch=8, instances=1, dynamic_batching=True))
    files[f"triton/{NAME}/config.pbtxt"] = triton
    files[f"triton/{NAME}/labels.txt"] = "".join(f"{label}\n" for label in io.contract.labels)
    ds = nvinfer_config(io, DeepStreamOptions(precision="fp16"), "model.softmax.onnx", "probs")
    files["deepstream/nvinfer_config.txt"] = ds.text
    files["deepstream/labels.txt"] = ds.labels_text
    files["deepstream/README.md"] = readme(f"{NAME}.onnx", ds.warnings)
    return files


def write_examples(root: str | Path) -> list[Path]:
    root = Path(root)
    written = []
    for rel, text in sorted(render_examples().items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if path.suffix == ".sh":
            path.chmod(0o755)
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - a maintainer's command
    for p in write_examples(sys.argv[1] if len(sys.argv) > 1 else "deploy"):
        sys.stdout.write(f"{p}\n")
