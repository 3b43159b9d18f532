"""Inference backends behind one Runner protocol. Needs numpy + OpenCV + the backend, never PyTorch."""

from edgecnn.runtime.base import Backend, InputSpec, Runner, backends, load

__all__ = ["Backend", "InputSpec", "Runner", "backends", "load"]
