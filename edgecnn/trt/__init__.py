"""TensorRT engines: build plan (pure data), device presets, trtexec equivalent, manifest checks, FP16 conversion,
environment detection, and the thin builder. Nothing here imports tensorrt at import time."""
