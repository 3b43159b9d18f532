"""INT8 post-training quantization: calibration data, calibrators (minmax, percentile, entropy), Q/DQ ONNX writer for
TensorRT and CPU targets, TensorRT calibration table, accuracy gate with per-layer sensitivity, report.

Entry point: `edgecnn.quant.quantize(model, out, calib, QuantOptions(...), progress=None) -> dict`.
"""

from edgecnn.quant.pipeline import QuantOptions, quantize

__all__ = ["QuantOptions", "quantize"]
