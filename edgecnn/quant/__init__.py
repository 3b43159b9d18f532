"""INT8 post-training quantization: calibration data, calibrators (minmax, percentile, entropy), Q/DQ ONNX writer for
TensorRT and CPU targets, TensorRT calibration table, accuracy gate with per-layer sensitivity, report.

Entry point: `edgecnn.quant.quantize(model, out, calib, QuantOptions(...), progress=None, output=OutputPolicy(...))
-> dict`: QuantOptions says how to quantize, OutputPolicy what to write besides the model (table, report, --force).
"""

from edgecnn.quant.options import OutputPolicy, QuantOptions
from edgecnn.quant.pipeline import quantize

__all__ = ["OutputPolicy", "QuantOptions", "quantize"]
