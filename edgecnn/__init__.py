"""edgecnn: image-classification CNNs from training to real-time inference on Jetson and desktop GPUs.

Importing the package is cheap and needs neither PyTorch nor TensorRT: heavy modules are imported where used.
"""

__version__ = "0.1.0"
