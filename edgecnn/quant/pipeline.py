"""`quantize()`: FP32 ONNX + calibration images -> INT8 Q/DQ ONNX (+ TensorRT calibration table, accuracy, report).

The one library entry point the CLI calls. Steps: read the model's contract (preprocessing comes from the model),
prepare the graph, decode the calibration set, collect activation statistics in one pass, compute ranges, write Q/DQ
for the target, measure FP32 vs INT8, optionally keep the most sensitive layers in float until the drop is within
bound, then write the outputs atomically (never over the input). Progress goes through a callback.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.calib_pair import bind_table
from edgecnn.contract import ModelContract, write_onnx_contract
from edgecnn.errors import AccuracyGateError, ArtifactError, UserInputError
from edgecnn.files import check_output_file, ensure_distinct, refuse_existing, staged_files
from edgecnn.onnx_io import model_bytes, onnx_external_data, onnx_sha256, save_onnx
from edgecnn.preprocess import PreprocessConfig
from edgecnn.quant import accuracy, calibrators, graph, qdq, trt_cache, weights
from edgecnn.quant.calib_data import load_calibration

# progress(stage, done, total): stages 'decode', 'calibrate', 'round', 'finetune', 'evaluate', 'sensitivity'
StageProgress = Callable[[str, int, int], None]


ROUNDINGS = ("gptq", "nearest")


@dataclass
class QuantOptions:
    target: str = "tensorrt"
    method: str = "percentile"
    percentile: float = 99.99
    num_images: int | None = 500
    batch: int = 16
    every: int | None = None  # video: every k-th frame (default: spread num_images over the video)
    exclude: tuple[str, ...] = ()
    cache: str | os.PathLike | None = None
    trt_version: str | None = None  # for the cache header; default: installed TensorRT, else 8.6.1
    val: str | os.PathLike | None = None
    max_drop: float | None = None
    max_steps: int = 8
    sensitivity_images: int = 32
    report: str | os.PathLike | None = None
    latency_runs: int = 30
    bias_correction: bool = True
    rounding: str = "gptq"  # how INT8 weights are rounded: gptq (error-compensating) or nearest
    # INT8 weights on [-64, 64] instead of [-127, 127]. None (resolved at construction): on for --target cpu (see
    # weights.REDUCED_WEIGHT_QMAX: without it the model saturates, or needs ORT's slow exact kernels, on x86 CPUs
    # without VNNI), off for tensorrt.
    reduce_range: bool | None = None
    finetune: int = 0  # epochs of quantization-aware fine-tuning on the calibration images (0: pure PTQ)
    finetune_lr: float = 1e-5
    threads: int | None = None
    force: bool = False  # replace an existing --out / --cache (without it, an existing file is refused)
    # Only for a model WITHOUT edgecnn metadata (foreign ONNX): how its inputs are made, and its class names.
    preprocess: PreprocessConfig | None = None
    labels: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.reduce_range is None:
            self.reduce_range = self.target == "cpu"

    def validate(self) -> None:
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
        if self.trt_version is not None:
            trt_cache.version_number(self.trt_version)  # a clear error now, not after calibration
        if self.reduce_range and self.target == "tensorrt":
            raise UserInputError(
                "--reduce-range is for --target cpu: TensorRT computes INT8 without int16 "
                "saturation, so full-range weights only gain precision there"
            )

    @property
    def weight_qmax(self) -> int:
        return weights.weight_qmax(self.reduce_range)


def model_contract(model_proto, path: Path, options: QuantOptions) -> ModelContract:
    """The model's own contract; preprocessing flags are accepted only for a model that has none."""
    from edgecnn.contract import META_PREFIX

    props = {p.key: p.value for p in model_proto.metadata_props}
    try:
        contract = ModelContract.from_onnx_props(props, source=str(path))
    except ArtifactError as exc:
        if all(META_PREFIX + key in props for key in ("labels", "preprocess")):  # there, but unreadable: say so
            raise UserInputError(
                f"{path} has edgecnn metadata that cannot be used ({exc}); re-export it with `edgecnn export`"
            ) from None
        if options.preprocess is None:
            raise UserInputError(
                f"{path} has no edgecnn metadata, so its preprocessing is unknown: export it with `edgecnn export`, "
                "or give --input-size H,W --mean R,G,B --std R,G,B (0-255 scale) [--resize ...] [--labels FILE]"
            ) from None
        outputs = model_proto.graph.output[0].type.tensor_type.shape.dim
        n = outputs[-1].dim_value if outputs and outputs[-1].dim_value > 0 else None
        labels = options.labels or ([f"class_{i}" for i in range(n)] if n else None)
        if not labels:
            raise UserInputError(f"{path}: cannot tell the number of classes; give --labels FILE") from None
        if n and len(labels) != n:
            raise UserInputError(f"--labels has {len(labels)} names but {path.name} outputs {n} classes") from None
        _check_input_size(model_proto, path, options.preprocess)
        return ModelContract(
            labels=list(labels),
            preprocess=options.preprocess,
            arch=None,
            provenance={"source": "foreign onnx", "preprocess_from": "command line"},
        )
    if options.preprocess is not None or options.labels is not None:
        raise UserInputError(
            f"{path} carries its own preprocessing and labels (edgecnn metadata); --input-size/--mean/--std/--labels "
            "are only for models without it"
        )
    if contract.precision == "int8":
        raise UserInputError(f"{path} is already an INT8 model: quantize the FP32 model it came from")
    return contract


def _check_input_size(model_proto, path: Path, pre: PreprocessConfig) -> None:
    """--input-size must match a model input whose height and width are fixed (NCHW, 1 or 3 channels)."""
    inits = {i.name for i in model_proto.graph.initializer}
    inputs = [i for i in model_proto.graph.input if i.name not in inits]
    dims = (
        [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    )
    if len(dims) == 4 and dims[1] in (1, 3) and dims[2] > 0 and dims[3] > 0 and tuple(dims[2:]) != pre.input_size:
        raise UserInputError(
            f"{path.name} takes {dims[2]}x{dims[3]} inputs: --input-size "
            f"{pre.input_size[0]},{pre.input_size[1]} does not match"
        )


def _check_outputs(src: Path, out: Path, calib, options: QuantOptions) -> None:
    """Every output path checked before any work: none may overwrite an input (the model, a calibration or --val
    image), be a folder, or sit under a file; --cache and --out must differ; --report must be a folder."""
    data = [src.parent / rel for rel in onnx_external_data(src)]  # the model's weights files are inputs too
    inputs = [src, *data, calib] + ([options.val] if options.val is not None else [])
    check_output_file(out, "--out")
    ensure_distinct(inputs, out, "--out")
    refuse_existing(out, "--out", options.force)
    if options.cache is not None:
        check_output_file(options.cache, "--cache")
        refuse_existing(options.cache, "--cache", options.force)
        ensure_distinct(inputs, options.cache, "--cache")
        if Path(options.cache).resolve() == out.resolve():
            raise UserInputError(f"--cache and --out both name {out}: give the calibration table its own file")
    if options.report is not None:
        report = Path(options.report)
        if report.exists() and not report.is_dir():
            raise UserInputError(f"--report {report} is a file; give a folder")
        ensure_distinct(inputs, report / "quantization.json", "--report")
        ensure_distinct(inputs, report / "quantization.md", "--report")


def _check_exclude(prepared, exclude, original) -> None:
    names = set(graph.node_names(prepared))
    unknown = [n for n in exclude if n not in names]
    if unknown:
        import difflib

        hints = []
        for n in unknown[:3]:
            close = difflib.get_close_matches(n, sorted(names), n=3, cutoff=0.5)
            if close:
                hints.append(f"{n} -> did you mean {', '.join(close)}?")
        gone = [n for n in unknown if n in set(graph.node_names(original))]
        extra = f" ({', '.join(gone)} folded away by graph optimisation)" if gone else ""
        sample = ", ".join(sorted(names)[:6])
        raise UserInputError(
            f"Unknown --exclude node(s): {', '.join(unknown)}{extra}. "
            + (" ".join(hints) or f"Node names look like: {sample}, ...")
        )


LATENCY_ROUNDS = 5  # interleaved rounds of the report's FP32 vs INT8 timing


def _latency(
    paths: dict[str, Path], runs: int, threads: int | None, input_shape: tuple, rounds: int = LATENCY_ROUNDS
) -> dict:
    """Median/p90/mean ms per model, the models interleaved: each of `rounds` rounds times every model in turn, so
    load on a shared machine hits them alike (run one after the other, the same FP32 model read 9.7-22.8 ms)."""
    from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    runners: dict[str, OnnxRuntimeRunner] = {}
    try:
        for name, path in paths.items():
            runners[name] = OnnxRuntimeRunner(path, threads=threads)
        for runner in runners.values():
            for _ in range(5):
                runner.infer(x)
        times: dict[str, list[float]] = {name: [] for name in runners}
        per_round = max(1, -(-runs // rounds))
        for _ in range(rounds):
            for name, runner in runners.items():
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    runner.infer(x)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
    finally:
        for runner in runners.values():
            runner.close()
    return {
        name: {
            "median_ms": float(np.median(t)),
            "p90_ms": float(np.percentile(t, 90)),
            "mean_ms": float(np.mean(t)),
            "runs": len(t),
        }
        for name, t in times.items()
    }


def _weights_text(reduced: bool) -> str:
    return (
        "int8 symmetric per-channel, reduced range [-64, 64] (exact and fast on x86 CPUs without VNNI)"
        if reduced
        else "int8 symmetric per-channel, full range [-127, 127]"
    )


def _weights_note(options: QuantOptions) -> str | None:
    """A warning when a full-range --target cpu model is made on a CPU where it cannot run fast."""
    from edgecnn.platform import x86_without_vnni

    if options.target != "cpu" or options.reduce_range or not x86_without_vnni():
        return None
    return (
        "this x86 CPU has no VNNI: full-range INT8 weights run on ONNX Runtime's exact but slow kernels here (edgecnn "
        "sets session.x64quantprecision; other ORT apps must too, or they get saturated, wrong results); "
        "--reduce-range gives a model that is fast and exact on every CPU"
    )


def _range_table(ranges: dict[str, tuple[float, float]], signed: bool) -> dict:
    table = {}
    for name, (lo, hi) in ranges.items():
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(abs(lo), abs(hi)) / 127.0 if signed else (hi - lo) / 255.0
        table[name] = {"low": float(lo), "high": float(hi), "scale": float(scale) if scale > 0 else 1.0}
    return table


def quantize(
    model: str | os.PathLike,
    out: str | os.PathLike,
    calib: str | os.PathLike,
    options: QuantOptions | None = None,
    progress: StageProgress | None = None,
) -> dict:
    """Quantize `model` (a file or registered pretrained name) to INT8 Q/DQ ONNX at `out`; returns a JSON-able result.

    Raises UserInputError for bad input (nothing is written), AccuracyGateError when --max-drop cannot be met.
    """
    from edgecnn.runtime.resolve import resolve_model

    options = options or QuantOptions()
    options.validate()
    prog = progress or (lambda stage, done, total: None)
    src = resolve_model(model)
    out = Path(out)
    _check_outputs(src, out, calib, options)

    original = graph.load_model(src)
    graph.check_not_quantized(original, str(src))
    contract = model_contract(original, src, options)
    prepared = graph.prepare(src)
    exclude = list(dict.fromkeys(options.exclude))
    _check_exclude(prepared, exclude, original)

    runnable = graph.batch_agnostic(prepared)  # None: the batch is baked into the graph, so it runs at its own size
    batch_size = options.batch if runnable is not None else graph.fixed_batch(prepared)
    calib_set = load_calibration(
        calib, contract.preprocess, options.num_images, options.every, progress=lambda d, t: prog("decode", d, t)
    )
    summary = calib_set.summary()

    everything = graph.activation_tensors(prepared)
    if options.cache is not None or options.max_drop is not None:
        tensors = everything  # the table lists every tensor; fallback steps may change which tensors are quantized
    else:
        tensors = qdq.needed_tensors(prepared, everything, options.target, exclude)
    mean_inputs = set(weights.correctable_inputs(prepared).values()) if options.bias_correction else set()
    tensors = tensors + [t for t in everything if t in mean_inputs and t not in tensors]

    hessian = None
    if options.rounding == "gptq":  # GPTQ's input statistics come from the same calibration pass
        from edgecnn.quant.rounding import HessianAccumulator

        hessian = HessianAccumulator(prepared, total=len(calib_set))
    extra = [t for t in hessian.inputs if t not in tensors] if hessian else []
    runner = graph.tensor_runner(runnable or prepared, tensors + extra, options.threads)
    rounding_seconds = 0.0

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal rounding_seconds
        values = runner(batch)
        if hessian is not None:
            t = time.perf_counter()
            hessian.add(values)
            rounding_seconds += time.perf_counter() - t
        return {name: values[name] for name in tensors}

    t0 = time.perf_counter()
    stats = calibrators.collect_stats(
        calib_set.batches(batch_size),
        run,
        histogram=options.method != "minmax",
        total=len(calib_set),
        progress=lambda d, t: prog("calibrate", d, t),
        channel_means=mean_inputs,
    )
    means = {name: s.channel_mean for name, s in stats.items() if s.channel_mean is not None}
    ranges = calibrators.compute_ranges(stats, options.method, options.percentile)
    calib_seconds = time.perf_counter() - t0 - rounding_seconds
    runner = None  # frees the calibration session and its buffers before rounding

    rounded: dict = {}
    if hessian is not None:
        t0 = time.perf_counter()
        rounded = hessian.round(progress=lambda d, t: prog("round", d, t), qmax=options.weight_qmax)
        rounding_seconds += time.perf_counter() - t0
        del hessian

    spec = qdq.target_spec(options.target)
    int8_contract = ModelContract(
        labels=contract.labels,
        preprocess=contract.preprocess,
        arch=contract.arch,
        label_keys=contract.label_keys,
        precision="int8",
        provenance=dict(contract.provenance),
    )

    with tempfile.TemporaryDirectory(prefix="edgecnn-quant-") as tmp:
        tmp = Path(tmp)
        fp32_path = tmp / "fp32.onnx"
        fp32_model = graph.load_model(src)
        write_onnx_contract(fp32_model, contract)
        save_onnx(fp32_model, fp32_path)

        finetune_log: list[dict] = []
        if options.finetune:  # normalised once: --max-drop fallback steps fine-tune again on the same inputs
            from edgecnn.preprocess import normalize

            finetune_inputs = normalize(calib_set.images, contract.preprocess)

        def build(excluded: list[str], name: str) -> tuple[object, Path, dict]:
            base = weights.bias_correct(
                prepared,
                means if options.bias_correction else {},
                skip=excluded,
                rounded=rounded,
                qmax=options.weight_qmax,
            )[0]
            qm = qdq.write_qdq(base, ranges, options.target, excluded, reduce_range=options.reduce_range)
            if options.finetune:
                from edgecnn.quant.finetune import finetune

                base, tuned = finetune(
                    prepared,
                    qm,
                    finetune_inputs,
                    options.finetune,
                    options.finetune_lr,
                    batch_size,
                    options.threads,
                    start=base,
                    progress=lambda d, t: prog("finetune", d, t),
                )
                finetune_log.append({**tuned, "excluded": list(excluded)})
                qm = qdq.write_qdq(base, ranges, options.target, excluded, reduce_range=options.reduce_range)
            write_onnx_contract(qm, int8_contract)
            path = tmp / name
            save_onnx(qm, path)
            from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

            with OnnxRuntimeRunner(path, threads=options.threads) as r8:
                measured = accuracy.compare(ref, r8, batch=max(options.batch, 16))
            return qm, path, measured

        from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

        with OnnxRuntimeRunner(fp32_path, threads=options.threads) as r32:
            ref = accuracy.reference(
                r32,
                images=calib_set.images,
                val=options.val,
                batch=max(options.batch, 16),
                progress=lambda d, t: prog("evaluate", d, t),
            )
        if options.finetune and options.val is None:
            ref.note = (
                "no --val: agreement measured on the calibration images, which --finetune also trained on "
                "(optimistic); give --val held-out images for an unbiased number"
            )
        qmodel, qpath, measured = build(exclude, "int8.onnx")
        fallback = None
        if options.max_drop is not None and measured["drop"] > options.max_drop:
            qmodel, qpath, measured, fallback = _fallback(
                prepared, qmodel, measured, exclude, options, batch_size, build, ref, contract.preprocess, prog
            )
            exclude = fallback["excluded"]

        weights_text = _weights_text(options.reduce_range)
        provenance = {
            "source": str(src),
            "source_sha256": onnx_sha256(src),
            "target": options.target,
            "method": options.method,
            "percentile": options.percentile if options.method == "percentile" else None,
            "calibration": {k: summary[k] for k in ("source", "kind", "images", "corrupt", "per_class", "brightness")},
            "excluded": exclude,
            "activation": "int8 symmetric" if spec.activation_signed else "uint8 asymmetric",
            "weights": weights_text,
            "rounding": options.rounding,
            "bias_correction": options.bias_correction,
            "drop": measured["drop"],
            "tool": "edgecnn quantize",
            "finetune": {k: finetune_log[-1][k] for k in ("epochs", "lr", "images")} if finetune_log else None,
        }
        final_contract = int8_contract.with_provenance(quantization=provenance)
        write_onnx_contract(qmodel, final_contract)

        latency = None
        if options.report is not None and options.latency_runs > 0:
            shape = (graph.fixed_batch(prepared) or 1,) + tuple(
                d.dim_value for d in prepared.graph.input[0].type.tensor_type.shape.dim[1:]
            )
            save_onnx(qmodel, qpath)
            timed = _latency({"fp32": fp32_path, "int8": qpath}, options.latency_runs, options.threads, shape)
            lf, lq = timed["fp32"], timed["int8"]
            latency = {
                "fp32": lf,
                "int8": lq,
                "speedup": lf["median_ms"] / max(lq["median_ms"], 1e-9),
                "batch": shape[0],
                "runs": lf["runs"],
                "interleaved_rounds": LATENCY_ROUNDS,
                "threads": options.threads,
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            }

        # ---- outputs: the model, its table and the report staged side by side and put in place together
        table = None
        if options.cache is not None:
            version = options.trt_version or trt_cache.installed_version() or trt_cache.DEFAULT_VERSION
            # the layers kept in float (--exclude, --max-drop) must stay float in TensorRT's implicit INT8 too: their
            # tensors get no scale (TensorRT then runs them in higher precision), as in the measured Q/DQ model
            excluded = set(exclude)
            float_tensors = {t for n in prepared.graph.node if n.name in excluded for t in (*n.input, *n.output)}
            amax = {name: max(abs(lo), abs(hi)) for name, (lo, hi) in ranges.items() if name not in float_tensors}
            amax = trt_cache.carry_through_pads(fp32_model, amax)
            table = trt_cache.format_table(amax, version)
        # the model first: it is put in place first, so a failure part way never leaves a new table or report
        # beside an old model; a crash part way is finished by the next run (files.staged_files journal)
        if table is not None:  # the model records its table: build-engine / deploy refuse any other (calib_pair)
            write_onnx_contract(qmodel, bind_table(final_contract, options.cache, table))
        with staged_files() as stage:
            model_tmp = stage(out, suffix=".onnx")
            save_onnx(qmodel, model_tmp)
            if table is not None:
                stage(options.cache).write_text(table, encoding="utf-8")
            result = {
                "model": str(src),
                "output": str(out),
                "target": options.target,
                "method": options.method,
                "percentile": options.percentile,
                "calibration": summary,
                "excluded": exclude,
                "ranges": _range_table(ranges, spec.activation_signed),
                "qdq": qdq.qdq_summary(qmodel),
                "accuracy": measured,
                "max_drop": options.max_drop,
                "fallback": fallback,
                "sizes": {"fp32_bytes": model_bytes(src), "int8_bytes": model_tmp.stat().st_size},
                "rounding": {"method": options.rounding, "layers": len(rounded), "seconds": round(rounding_seconds, 3)},
                "weights": {
                    "qmax": options.weight_qmax,
                    "reduce_range": options.reduce_range,
                    "text": weights_text,
                    "note": _weights_note(options),
                },
                "timings": {
                    "calibration_s": round(calib_seconds, 3),
                    "images_per_s": len(calib_set) / calib_seconds if calib_seconds > 0 else 0.0,
                },
                "latency": latency,
                "cache": None,
                "report": None,
                "finetune": finetune_log[-1] if finetune_log else None,
            }
            if table is not None:
                result["cache"] = {
                    "path": str(options.cache),
                    "tensors": len(amax),
                    "left_out_for_float_layers": sorted(set(ranges) & float_tensors),
                    "header": f"TRT-{trt_cache.version_number(version)}-{trt_cache.DEFAULT_ALGORITHM}",
                }
            if options.report is not None:
                from edgecnn.quant.report import stage_report

                stage_report(stage, options.report, result)
    return result


def _fallback(prepared, qmodel, measured, exclude, options, batch_size, build, ref, cfg, prog):
    """Keep the most sensitive INT8 layers in float, one more per step, until the drop is within --max-drop."""
    from edgecnn.preprocess import normalize

    images = ref.inputs[: options.sensitivity_images]
    batches = [normalize(images[i : i + batch_size], cfg) for i in range(0, len(images), batch_size)]
    # the padded stem's 4-channel input has no FP32 twin: rank on the same model unpadded (same values)
    ranked = accuracy.layer_sensitivity(prepared, qdq.without_padded_stem(qmodel), batches, options.threads)
    steps = [{"step": 0, "excluded": list(exclude), "drop": measured["drop"]}]
    candidates = [r["node"] for r in ranked if r["node"] not in exclude]
    current = list(exclude)
    for step in range(1, min(options.max_steps, len(candidates)) + 1):
        current = current + [candidates[step - 1]]
        prog("sensitivity", step, options.max_steps)
        qmodel, qpath, measured = build(current, f"int8-step{step}.onnx")
        steps.append({"step": step, "excluded": list(current), "drop": measured["drop"]})
        if measured["drop"] <= options.max_drop:
            return qmodel, qpath, measured, {"steps": steps, "sensitivity": ranked[:20], "excluded": current}
    tried = "; ".join(f"{s['drop']:.2f} pts with {len(s['excluded'])} layer(s) in float" for s in steps)
    raise AccuracyGateError(
        f"INT8 accuracy drop stays above --max-drop {options.max_drop} points after {len(steps) - 1} fallback step(s) "
        f"({tried}); layers tried in float, most sensitive first: {', '.join(current[len(exclude) :])}. "
        "Try more or more representative calibration images, another --method, or a larger --max-drop. "
        "Nothing was written.",
        details={"max_drop": options.max_drop, "steps": steps, "sensitivity": ranked[:20]},
    )
