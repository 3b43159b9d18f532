"""What `quantize()` is asked to do, in two parts: how to quantize (QuantOptions: the algorithm, what is measured and
the accuracy gate) and what to write besides the model (OutputPolicy: calibration table, report, overwriting)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from edgecnn.errors import UserInputError
from edgecnn.preprocess import PreprocessConfig

ROUNDINGS = ("gptq", "nearest")
HIGH_PRECISIONS = ("fp16", "fp32")


@dataclass
class QuantOptions:
    """How to quantize. Everything here changes the INT8 model or how its accuracy is measured."""

    target: str = "tensorrt"
    method: str = "percentile"
    percentile: float = 99.99
    num_images: int | None = 500
    batch: int = 16
    every: int | None = None  # video: every k-th frame (default: spread num_images over the video)
    # layers kept in float: exact node names, regular expressions matched against node names, op types
    exclude: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    val: str | os.PathLike | None = None
    # the accuracy gate: keep the most sensitive layers in float until the drop is within max_drop points
    max_drop: float | None = None
    max_steps: int = 8  # most layers the gate may keep in float
    sensitivity_images: int = 32
    gate_seconds: float = 120.0  # time for the gate's ranking and search; it stops there and reports what it reached
    # precision of the layers kept in float on the TensorRT target (fp16: TensorRT builds them in FP16, and the
    # accuracy measured here simulates it). None: fp16 for tensorrt, fp32 for cpu.
    high_precision: str | None = None
    bias_correction: bool = True
    rounding: str = "gptq"  # how INT8 weights are rounded: gptq (error-compensating) or nearest
    # INT8 weights on [-64, 64] instead of [-127, 127]. None (resolved at construction): on for --target cpu (see
    # weights.REDUCED_WEIGHT_QMAX: without it the model saturates, or needs ORT's slow exact kernels, on x86 CPUs
    # without VNNI), off for tensorrt.
    reduce_range: bool | None = None
    finetune: int = 0  # epochs of quantization-aware fine-tuning on the calibration images (0: pure PTQ)
    finetune_lr: float = 1e-5
    threads: int | None = None
    # Only for a model WITHOUT edgecnn metadata (foreign ONNX): how its inputs are made, and its class names.
    preprocess: PreprocessConfig | None = None
    labels: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.reduce_range is None:
            self.reduce_range = self.target == "cpu"
        if self.high_precision is None:
            self.high_precision = "fp16" if self.target == "tensorrt" else "fp32"

    def validate(self) -> None:
        from edgecnn.quant import calibrators, qdq

        if self.target not in qdq.TARGETS:
            raise UserInputError(f"--target must be one of {', '.join(qdq.TARGETS)}, got {self.target!r}")
        if self.method not in calibrators.METHODS:
            raise UserInputError(f"--method must be one of {', '.join(calibrators.METHODS)}, got {self.method!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise UserInputError(f"--percentile must be in (50, 100], got {self.percentile}")
        if self.batch < 1:
            raise UserInputError(f"--batch must be at least 1, got {self.batch}")
        if self.rounding not in ROUNDINGS:
            raise UserInputError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.finetune < 0:
            raise UserInputError(f"--finetune must be a number of epochs >= 0, got {self.finetune}")
        if not 0.0 < self.finetune_lr < 1.0:
            raise UserInputError(f"--finetune-lr must be in (0, 1), got {self.finetune_lr}")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise UserInputError(f"--max-drop must be a number >= 0 (percentage points), got {self.max_drop}")
        if self.max_steps < 1:
            raise UserInputError(f"--max-steps must be at least 1, got {self.max_steps}")
        if not (math.isfinite(self.gate_seconds) and self.gate_seconds > 0):
            raise UserInputError(f"--gate-seconds must be a positive number of seconds, got {self.gate_seconds}")
        if self.high_precision not in HIGH_PRECISIONS:
            raise UserInputError(
                f"--high-precision must be one of {', '.join(HIGH_PRECISIONS)}, got {self.high_precision!r}"
            )
        if self.high_precision == "fp16" and self.target != "tensorrt":
            raise UserInputError(
                "--high-precision fp16 is for --target tensorrt (TensorRT builds float layers in FP16); "
                "ONNX Runtime on a CPU runs them in fp32"
            )
        if self.reduce_range and self.target == "tensorrt":
            raise UserInputError(
                "--reduce-range is for --target cpu: TensorRT computes INT8 without int16 "
                "saturation, so full-range weights only gain precision there"
            )

    @property
    def weight_qmax(self) -> int:
        from edgecnn.quant import weights

        return weights.weight_qmax(self.reduce_range)


@dataclass
class OutputPolicy:
    """What is written besides the INT8 model, and whether existing files may be replaced."""

    cache: str | os.PathLike | None = None  # also write the ranges as a TensorRT calibration table
    trt_version: str | None = None  # for the table header; default: installed TensorRT, else 8.6.1
    report: str | os.PathLike | None = None  # folder for quantization.json + quantization.md
    latency_runs: int = 30  # FP32 vs INT8 timing runs in the report (0: none)
    force: bool = False  # replace an existing --out / --cache (without it, an existing file is refused)

    def validate(self) -> None:
        if self.trt_version is not None:
            from edgecnn.trt import calib_cache as trt_cache

            trt_cache.version_number(self.trt_version)  # a clear error now, not after calibration
