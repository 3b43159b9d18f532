"""TensorRT engines: build plan (pure data), device presets, trtexec equivalent, manifest checks, FP16 conversion,
calibration table, environment detection, and the thin builder. Nothing here imports tensorrt at import time.

Why TensorRT code lives in three places:
- `trt/` builds engines (plan, builder, trtexec, fp16, int8) and holds the TensorRT facts both sides need: the
  version rules (plan.TrtVersion), device presets, the engine manifest, environment probes (env, cudart) and the
  ILogger (logger).
- `runtime/tensorrt.py` runs an engine behind the one Runner protocol, like every other backend; it uses those facts
  and never the builder, so running an engine does not depend on the code that builds one.
- `trt/calib_cache.py` writes and reads the TensorRT calibration table; `quant/` produces its ranges (quantization
  is engine-agnostic) and the builder consumes it.
"""
