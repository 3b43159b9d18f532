"""Getting a model onto devices and into serving engines.

- `bundle`:     a self-contained, checksummed tar.gz for a Jetson (ONNX + contract + start script + unit + Dockerfile)
- `install`:    verify and safely extract a bundle on the device, build the engine, install the service
- `triton`:     a Triton Inference Server model repository
- `deepstream`: a DeepStream nvinfer config derived from the preprocessing contract

(What a machine has, and how to fix what is missing, is `edgecnn.doctor`: not a deploy step.)
Nothing here imports torch or tensorrt at module level; nothing prints.
"""
