"""The classic CIFAR-10 network of the Keras/TensorFlow tutorial, and the CIFAR preprocessing shared by small nets.

conv32-pool-conv64-pool-conv64-dense64-dense10 on 32×32×3, 3×3 valid convolutions, ReLU: exactly 122,570
parameters. Kept parameter-for-parameter identical to the tutorial so accuracy claims are comparable; the only
addition is dropout (no parameters) before the dense layers, off by default.
"""

from __future__ import annotations

from edgecnn.models.registry import register_model
from edgecnn.preprocess import PreprocessConfig

# CIFAR-10 training-set statistics on the 0–255 scale, RGB order. Images are already 32×32, so 'resize' is a no-op
# for them and a plain stretch for anything else (no crop that would cut the small object away).
CIFAR_PREPROCESS = PreprocessConfig(
    input_size=(32, 32),
    resize="resize",
    interpolation="area",
    channel_order="rgb",
    mean=(125.3, 123.0, 113.9),
    std=(63.0, 62.1, 66.7),
)


@register_model(
    "cifar-cnn",
    preprocess=CIFAR_PREPROCESS,
    description="Classic CIFAR-10 tutorial CNN (conv32-conv64-conv64-dense64, 122,570 params at 10 classes)",
)
def cifar_cnn(num_classes: int = 10, dropout: float = 0.0):
    """The tutorial net; `dropout` (default off) sits before each dense layer."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # 30×30 -> 15×15
        nn.Conv2d(32, 64, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # 13×13 -> 6×6
        nn.Conv2d(64, 64, 3),
        nn.ReLU(inplace=True),  # 4×4
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(64 * 4 * 4, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(64, num_classes),
    )
