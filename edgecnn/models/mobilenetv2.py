"""MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks and ReLU6, a `width_mult` knob.

`mobilenetv2` is the ImageNet layout (224 px, 3.5 M parameters at ×1 and 1000 classes, as the paper).
`mobilenetv2-cifar` is the same network for 32 px inputs: stride 1 in the stem and the first stride-2 stage
(the usual CIFAR adaptation), so 32×32 images still end in a 4×4 feature map instead of 1×1.
ReLU6 and no squeeze-excite keep it friendly to INT8 quantization and TensorRT.
"""

from __future__ import annotations

from edgecnn.models.cifar_cnn import CIFAR_PREPROCESS
from edgecnn.models.registry import register_model
from edgecnn.preprocess import PreprocessConfig

# ImageNet mean/std on the 0–255 scale, RGB, "resize 256 crop 224".
IMAGENET_PREPROCESS = PreprocessConfig(
    input_size=(224, 224),
    resize="shorter_crop",
    crop_ratio=0.875,
    channel_order="rgb",
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
)

# (expansion t, channels c, repeats n, first stride s) from Table 2 of the paper.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8 (never more than 10 % down), as the reference implementation does."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _build(num_classes: int, width_mult: float, small_input: bool, dropout: float):
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, stride, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6(inplace=True)] if act else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden) + conv_bn(hidden, cout, 1, 1, act=False)
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block(x) if self.residual else self.block(x)

    stem = _divisible(32 * width_mult)
    last = _divisible(1280 * max(1.0, width_mult))
    features: list[nn.Module] = [nn.Sequential(*conv_bn(3, stem, 3, 1 if small_input else 2))]
    cin = stem
    for i, (t, c, n, s) in enumerate(SETTINGS):
        cout = _divisible(c * width_mult)
        for j in range(n):
            stride = s if j == 0 else 1
            if small_input and i == 1:
                stride = 1
            features.append(InvertedResidual(cin, cout, stride, t))
            cin = cout
    features.append(nn.Sequential(*conv_bn(cin, last, 1, 1)))
    model = nn.Sequential(
        *features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes)
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


@register_model(
    "mobilenetv2",
    preprocess=IMAGENET_PREPROCESS,
    description="MobileNetV2 (width_mult), ImageNet layout, 224 px; trainable from scratch",
)
def mobilenetv2(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2, small_input: bool = False):
    return _build(num_classes, width_mult, small_input, dropout)


@register_model(
    "mobilenetv2-cifar",
    preprocess=CIFAR_PREPROCESS,
    description="MobileNetV2 (width_mult) for 32 px inputs (stride-1 stem)",
)
def mobilenetv2_cifar(num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.2, small_input: bool = True):
    return _build(num_classes, width_mult, small_input, dropout)
