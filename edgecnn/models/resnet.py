"""CIFAR-style ResNets (He et al. 2016, section 4.2): 6n+2 layers in three stages of 16/32/64 channels.

`width_mult` scales the channels (ResNet-20 ×1 is 0.27 M parameters); projection shortcuts are 1×1 conv + BN
(option B), which export cleanly to ONNX and TensorRT. Global average pooling makes any input size ≥ 8 px work, so
the same nets fine-tune on larger images with `--img-size`.
"""

from __future__ import annotations

from edgecnn.models.cifar_cnn import CIFAR_PREPROCESS
from edgecnn.models.registry import register_model


def _build(depth: int, num_classes: int, width_mult: float):
    import torch
    from torch import nn

    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    blocks = (depth - 2) // 6

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.shortcut(x))

    widths = [max(4, int(round(c * width_mult))) for c in (16, 32, 64)]
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    cin = widths[0]
    for stage, cout in enumerate(widths):
        for b in range(blocks):
            layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)  # zero-init the last BN of each block: every block starts as identity
    return model


@register_model("resnet8", preprocess=CIFAR_PREPROCESS, description="CIFAR ResNet-8 (width_mult), 78 k params at ×1")
def resnet8(num_classes: int = 10, width_mult: float = 1.0):
    return _build(8, num_classes, width_mult)


@register_model(
    "resnet20", preprocess=CIFAR_PREPROCESS, description="CIFAR ResNet-20 (width_mult), 0.27 M params at ×1"
)
def resnet20(num_classes: int = 10, width_mult: float = 1.0):
    return _build(20, num_classes, width_mult)
