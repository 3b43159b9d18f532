"""LeNet-5 (LeCun et al. 1998) on 32×32 inputs: conv6-5×5, pool, conv16-5×5, pool, dense120-dense84-dense.

The one change from the paper: three input channels (edgecnn's preprocessing always yields colour), ReLU and max
pooling instead of scaled tanh and trainable subsampling, as every modern re-implementation does.
"""

from __future__ import annotations

from edgecnn.models.cifar_cnn import CIFAR_PREPROCESS
from edgecnn.models.registry import register_model


@register_model("lenet5", preprocess=CIFAR_PREPROCESS, description="LeNet-5 (3-channel 32×32 input, ReLU, max-pool)")
def lenet5(num_classes: int = 10):
    """LeNet-5: 62,006 parameters at 10 classes."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # 28×28 -> 14×14
        nn.Conv2d(6, 16, 5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # 10×10 -> 5×5
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )
