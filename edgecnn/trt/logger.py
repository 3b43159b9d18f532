"""The TensorRT ILogger edgecnn hands to the builder and to the runtime: it keeps warnings and errors for the error
message instead of printing them. Its own module so that running an engine (runtime/tensorrt.py) does not import the
engine builder."""

from __future__ import annotations


def make_logger(trt):
    """An ILogger that keeps warnings and errors (for the error message) instead of printing them."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(str(msg))

        def last(self, n: int = 3) -> str:
            return " | ".join(m.strip() for m in self.messages[-n:]) or "no message from TensorRT"

    return _Logger()
