"""Bring your own model: give a classifier ONNX made elsewhere (PyTorch, timm, tf2onnx, Ultralytics, ...) the edgecnn
contract once, checked, so every command then runs it without preprocessing flags.

What is decided, and from where (a command-line option wins over what the model says, which wins over the preset):
- which input and output: the only ones, or `input`/`output` (the graph is cut down to them);
- input size, layout (NCHW/NHWC) and dtype (float32, or uint8 for models that normalise inside): read from the graph
  where it is unambiguous;
- resize policy, crop ratio, interpolation, colour order, mean/std: a preset (`PRESETS`), timm's pretrained config
  (a JSON beside the model), Ultralytics' metadata (`names`, `imgsz`), or options;
- whether the output is logits or probabilities: a Softmax at the end of the graph means probabilities;
- labels: a file (names, ImageNet wnids, or `wnid name` lines), or Ultralytics' `names`.

Checks before writing: onnx.checker and strict shape inference, labels count against a real run's class dimension,
the input shape against the size, and a dynamic batch kept, or added when a batch of 2 gives the same outputs as two
batches of 1. With labelled `data` the top-1 is measured; `check_preprocessing` scores every preset on it and refuses
a preprocessing that a preset beats by far, naming that preset.
"""

from edgecnn.adopt.core import adopt
from edgecnn.adopt.graph import cut_to, detect_layout, ends_in_softmax
from edgecnn.adopt.options import AdoptOptions, AdoptReport
from edgecnn.adopt.presets import PRESETS, preset_config
from edgecnn.adopt.sources import read_adopt_labels, timm_facts, ultralytics_facts

__all__ = [
    "PRESETS",
    "AdoptOptions",
    "AdoptReport",
    "adopt",
    "cut_to",
    "detect_layout",
    "ends_in_softmax",
    "preset_config",
    "read_adopt_labels",
    "timm_facts",
    "ultralytics_facts",
]
