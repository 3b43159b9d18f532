"""`quantize()`: FP32 ONNX + calibration images -> INT8 Q/DQ ONNX (+ TensorRT calibration table, accuracy, report).

The one library entry point the CLI calls, as a short sequence of named stages over one prepared model (the FP32
file is read once):

    prepare_model   resolve and check the paths, read the model and its contract, clean up the graph, resolve
                    which layers stay in float
    calibrate       decode the calibration set, collect activation statistics (and GPTQ's input statistics) in
                    one pass, compute the ranges
    Builder         FP32 reference on the evaluation images; build(excluded) -> a measured INT8 candidate
    gate            --max-drop: rank layers by sensitivity, keep the most sensitive in float until the drop fits
    write_outputs   the model, its TensorRT table and the report, staged and put in place together

Progress goes through a callback; nothing is written until every stage has succeeded.
"""

from __future__ import annotations

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
from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.files import check_output_file, ensure_distinct, refuse_existing, staged_files
from edgecnn.onnx_io import model_bytes, onnx_external_data, onnx_sha256, save_onnx
from edgecnn.preprocess import PreprocessConfig
from edgecnn.quant import accuracy, calibrators, graph, qdq, select, weights
from edgecnn.quant.calib_data import CalibrationSet, load_calibration
from edgecnn.quant.options import ROUNDINGS, OutputPolicy, QuantOptions
from edgecnn.trt import calib_cache as trt_cache  # the TensorRT calibration table writer

# progress(stage, done, total): stages 'decode', 'calibrate', 'round', 'finetune', 'evaluate', 'sensitivity', 'gate'
StageProgress = Callable[[str, int, int], None]

__all__ = ["ROUNDINGS", "OutputPolicy", "QuantOptions", "quantize"]


def quantize(
    model: str | os.PathLike,
    out: str | os.PathLike,
    calib: str | os.PathLike,
    options: QuantOptions | None = None,
    progress: StageProgress | None = None,
    output: OutputPolicy | None = None,
) -> dict:
    """Quantize `model` (a file or registered pretrained name) to INT8 Q/DQ ONNX at `out`; returns a JSON-able result.

    Raises UserInputError for bad input (nothing is written), AccuracyGateError when --max-drop cannot be met.
    """
    options, output = options or QuantOptions(), output or OutputPolicy()
    options.validate()
    output.validate()
    prog = progress or (lambda stage, done, total: None)
    pm = prepare_model(model, Path(out), calib, options, output)
    calib_set = load_calibration(
        calib, pm.contract.preprocess, options.num_images, options.every, progress=lambda d, t: prog("decode", d, t)
    )
    every_tensor = output.cache is not None or options.max_drop is not None  # the table lists every tensor
    cal = calibrate(pm, calib_set, options, every_tensor, prog)
    with tempfile.TemporaryDirectory(prefix="edgecnn-quant-") as tmp:
        builder = Builder(pm, cal, options, Path(tmp), calib_set, prog)
        chosen = builder.build([e["node"] for e in pm.exclusions], "int8.onnx")
        gate = None
        if options.max_drop is not None and chosen.measured["drop"] > options.max_drop:
            chosen, gate = run_gate(builder, chosen, options, prog)
        result = describe(pm, cal, chosen, gate, options, calib_set.summary())
        if output.report is not None and output.latency_runs > 0:
            result["latency"] = _latency_of(pm, builder, chosen, output.latency_runs, options.threads)
        write_outputs(pm, cal, chosen, output, result)
    return result


# ---------------------------------------------------------------- stage 1: the prepared model


@dataclass
class PreparedModel:
    """The FP32 model, read once: the file, its graph as read (with the contract written in), the cleaned-up graph
    quantization works on, and the layers kept in float with the reason for each."""

    source: Path
    out: Path
    original: object  # onnx.ModelProto as read, carrying the contract (the FP32 reference)
    contract: ModelContract
    prepared: object  # onnx.ModelProto after graph.prepare
    runnable: object  # the prepared graph with a free batch dimension, or None (the batch is baked in)
    batch_size: int
    exclusions: list[dict] = field(default_factory=list)  # [{node, op, reason}]

    def int8_contract(self, **provenance) -> ModelContract:
        c = self.contract
        return ModelContract(
            labels=c.labels,
            preprocess=c.preprocess,
            arch=c.arch,
            label_keys=c.label_keys,
            precision="int8",
            provenance={**c.provenance, **provenance},
            output=c.output,
        )


def prepare_model(model, out: Path, calib, options: QuantOptions, output: OutputPolicy) -> PreparedModel:
    from edgecnn.zoo import resolve_model

    src = resolve_model(model)
    _check_outputs(src, out, calib, options, output)
    original = graph.load_model(src)
    graph.check_not_quantized(original, str(src))
    contract = model_contract(original, src, options)
    write_onnx_contract(original, contract)
    prepared = graph.prepare(original, source=src)
    exclusions = select.resolve(
        prepared, original, list(dict.fromkeys(options.exclude)), options.exclude_patterns, options.exclude_op_types
    )
    runnable = graph.batch_agnostic(prepared)
    batch_size = options.batch if runnable is not None else graph.fixed_batch(prepared)
    return PreparedModel(src, out, original, contract, prepared, runnable, batch_size, exclusions)


# ---------------------------------------------------------------- stage 2: calibration


@dataclass
class Calibration:
    """What one pass over the calibration images yields."""

    stats: dict  # tensor -> calibrators.TensorStats
    ranges: dict[str, tuple[float, float]]
    means: dict[str, np.ndarray]  # per-channel input means, for bias correction
    rounded: dict[str, np.ndarray]  # GPTQ-rounded weights (empty with --rounding nearest)
    seconds: float  # calibration proper (inference + statistics + ranges)
    rounding_seconds: float
    images: int


def calibrate(
    pm: PreparedModel, calib_set: CalibrationSet, options: QuantOptions, every_tensor: bool, progress: StageProgress
) -> Calibration:
    """Activation statistics of the tensors the Q/DQ writer needs (every tensor when a table is written or the gate
    may change which layers are quantized), per-channel means and GPTQ statistics from the same pass; ranges."""
    everything = graph.activation_tensors(pm.prepared)
    excluded = [e["node"] for e in pm.exclusions]
    tensors = everything if every_tensor else qdq.needed_tensors(pm.prepared, everything, options.target, excluded)
    mean_inputs = set(weights.correctable_inputs(pm.prepared).values()) if options.bias_correction else set()
    tensors = tensors + [t for t in everything if t in mean_inputs and t not in tensors]

    hessian = None
    if options.rounding == "gptq":  # GPTQ's input statistics come from the same calibration pass
        from edgecnn.quant.rounding import HessianAccumulator

        hessian = HessianAccumulator(pm.prepared, total=len(calib_set))
    t0 = time.perf_counter()
    stats, hessian_seconds = _collect(pm, calib_set, options, tensors, mean_inputs, hessian, progress)
    ranges = calibrators.compute_ranges(stats, options.method, options.percentile)
    seconds = time.perf_counter() - t0 - hessian_seconds
    rounded: dict = {}
    t0 = time.perf_counter()
    if hessian is not None:
        rounded = hessian.round(progress=lambda d, t: progress("round", d, t), qmax=options.weight_qmax)
    rounding_seconds = hessian_seconds + time.perf_counter() - t0
    means = {name: s.channel_mean for name, s in stats.items() if s.channel_mean is not None}
    return Calibration(stats, ranges, means, rounded, seconds, rounding_seconds, len(calib_set))


def _collect(pm, calib_set, options, tensors, mean_inputs, hessian, progress) -> tuple[dict, float]:
    """One pass of the calibration images through one session (its buffers are freed on return, before rounding);
    returns the statistics and the seconds spent feeding GPTQ's accumulator."""
    extra = [t for t in hessian.inputs if t not in tensors] if hessian else []
    runner = graph.tensor_runner(pm.runnable or pm.prepared, tensors + extra, options.threads)
    hessian_seconds = 0.0

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal hessian_seconds
        values = runner(batch)
        if hessian is not None:
            t = time.perf_counter()
            hessian.add(values)
            hessian_seconds += time.perf_counter() - t
        return {name: values[name] for name in tensors}

    stats = calibrators.collect_stats(
        calib_set.batches(pm.batch_size),
        run,
        histogram=options.method != "minmax",
        total=len(calib_set),
        progress=lambda d, t: progress("calibrate", d, t),
        channel_means=mean_inputs,
    )
    return stats, hessian_seconds


# ---------------------------------------------------------------- stage 3: building and measuring candidates


@dataclass
class Candidate:
    """One INT8 model with a set of layers in float, and its accuracy against FP32."""

    model: object  # the Q/DQ onnx.ModelProto that would be written
    path: Path  # where it is saved (temporary folder)
    excluded: list[str]
    measured: dict
    finetune: dict | None = None  # what --finetune did for this candidate


class Builder:
    """Builds INT8 candidates from one calibration and measures each against the same FP32 reference."""

    def __init__(
        self,
        pm: PreparedModel,
        cal: Calibration,
        options: QuantOptions,
        tmp: Path,
        calib_set: CalibrationSet,
        progress: StageProgress,
    ):
        from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

        self.pm, self.cal, self.options, self.tmp, self.progress = pm, cal, options, tmp, progress
        self.int8_contract = pm.int8_contract()
        self.fp32_path = tmp / "fp32.onnx"
        save_onnx(pm.original, self.fp32_path)
        self.eval_batch = max(options.batch, 16)
        with OnnxRuntimeRunner(self.fp32_path, threads=options.threads) as r32:
            self.ref = accuracy.reference(
                r32,
                images=calib_set.images,
                val=options.val,
                batch=self.eval_batch,
                progress=lambda d, t: progress("evaluate", d, t),
            )
        self.finetune_inputs = None
        if options.finetune:  # normalised once: the gate's candidates fine-tune again on the same inputs
            from edgecnn.preprocess import normalize

            self.finetune_inputs = normalize(calib_set.images, pm.contract.preprocess)
            if options.val is None:
                self.ref.note = (
                    "no --val: agreement measured on the calibration images, which --finetune also trained on "
                    "(optimistic); give --val held-out images for an unbiased number"
                )
        self.count = 0

    def qdq_model(self, excluded: list[str]) -> tuple[object, dict | None]:
        """The INT8 Q/DQ model with `excluded` in float (corrected biases, rounded weights, optionally fine-tuned),
        and what fine-tuning did."""
        o, cal, prepared = self.options, self.cal, self.pm.prepared
        base = weights.bias_correct(
            prepared, cal.means if o.bias_correction else {}, skip=excluded, rounded=cal.rounded, qmax=o.weight_qmax
        )[0]
        qm = qdq.write_qdq(base, cal.ranges, o.target, excluded, reduce_range=o.reduce_range)
        tuned = None
        if o.finetune:
            from edgecnn.quant.finetune import finetune

            base, tuned = finetune(
                prepared,
                qm,
                self.finetune_inputs,
                o.finetune,
                o.finetune_lr,
                self.pm.batch_size,
                o.threads,
                start=base,
                progress=lambda d, t: self.progress("finetune", d, t),
            )
            tuned = {**tuned, "excluded": list(excluded)}
            qm = qdq.write_qdq(base, cal.ranges, o.target, excluded, reduce_range=o.reduce_range)
        write_onnx_contract(qm, self.int8_contract)
        return qm, tuned

    def build(self, excluded: list[str], name: str | None = None) -> Candidate:
        from edgecnn.runtime.onnxrt import OnnxRuntimeRunner

        self.count += 1
        qm, tuned = self.qdq_model(excluded)
        path = self.tmp / (name or f"int8-{self.count}.onnx")
        save_onnx(qm, path)
        measured_path = path
        if excluded and self.options.high_precision == "fp16":  # measure what TensorRT runs: those layers in FP16
            from edgecnn.quant import fp16

            measured_path = self.tmp / f"fp16sim-{self.count}.onnx"
            save_onnx(fp16.simulate(qm, set(excluded)), measured_path)
        with OnnxRuntimeRunner(measured_path, threads=self.options.threads) as r8:
            measured = accuracy.compare(self.ref, r8, batch=self.eval_batch)
        return Candidate(qm, path, list(excluded), measured, tuned)


# ---------------------------------------------------------------- stage 4: the accuracy gate


def run_gate(builder: Builder, first: Candidate, options: QuantOptions, progress: StageProgress):
    """Rank the INT8 layers (gate.rank_layers), then keep the top ones in float until the drop is within
    --max-drop (gate.search), all within --gate-seconds. Returns (chosen candidate, the gate's record)."""
    from edgecnn.preprocess import normalize
    from edgecnn.quant import gate

    t0 = time.monotonic()
    deadline = t0 + options.gate_seconds
    pm = builder.pm
    images = builder.ref.inputs[: options.sensitivity_images]
    n = pm.batch_size
    batches = [normalize(images[i : i + n], pm.contract.preprocess) for i in range(0, len(images), n)]
    if pm.runnable is None:  # a fixed-batch graph runs whole batches only
        batches = [b for b in batches if len(b) == n] or batches
    excluded = set(first.excluded)
    qmodel = qdq.without_padded_stem(first.model)  # the padded stem's 4-channel input has no FP32 twin
    candidates = [name for name in qdq.quantized_nodes(qmodel) if name not in excluded]
    ranked = gate.rank_layers(
        pm.runnable or pm.prepared,
        qmodel,
        candidates,
        batches,
        options.threads,
        deadline=t0 + options.gate_seconds / 2,  # half the time at most for ranking, the rest for the search
        progress=lambda d, t: progress("sensitivity", d, t),
    )
    rank_seconds = time.monotonic() - t0

    def build(extra: list[str]):
        cand = builder.build(first.excluded + extra)
        return cand, cand.measured

    (chosen, _), steps, extra = gate.search(
        build,
        (first, first.measured),
        ranked,
        options.max_drop,
        options.max_steps,
        deadline,
        progress=lambda d, t: progress("gate", d, t),
    )
    for step in steps:
        step["excluded"] = first.excluded + step["excluded"]
    kl = {r["node"]: r["kl"] for r in ranked}
    record = {
        "measure": f"KL divergence of the output when only that layer is quantized, on {len(images)} evaluation images",
        "metric": first.measured.get("drop_metric"),
        "sensitivity": ranked[:20],
        "steps": steps,
        "excluded": chosen.excluded,
        "added": [{"node": name, "kl": kl.get(name)} for name in extra],
        "rank_seconds": round(rank_seconds, 2),
        "seconds": round(time.monotonic() - t0, 2),
        "high_precision": options.high_precision,
    }
    ops = {node.name: node.op_type for node in pm.prepared.graph.node}
    pm.exclusions = pm.exclusions + [
        {"node": name, "op": ops.get(name, "?"), "reason": f"--max-drop: sensitivity rank {i + 1} (KL {kl[name]:.3g})"}
        for i, name in enumerate(extra)
    ]
    return chosen, record


# ---------------------------------------------------------------- stage 5: the result and the outputs


def describe(
    pm: PreparedModel, cal: Calibration, chosen: Candidate, gate: dict | None, options: QuantOptions, summary: dict
) -> dict:
    """The JSON-able result (written into the model's provenance in part, and into the report)."""
    spec = qdq.target_spec(options.target)
    weights_text = _weights_text(options.reduce_range)
    provenance = {
        "source": str(pm.source),
        "source_sha256": onnx_sha256(pm.source),
        "target": options.target,
        "method": options.method,
        "percentile": options.percentile if options.method == "percentile" else None,
        "calibration": {k: summary[k] for k in ("source", "kind", "images", "corrupt", "per_class", "brightness")},
        "excluded": chosen.excluded,
        "high_precision": options.high_precision if chosen.excluded else None,
        "activation": "int8 symmetric" if spec.activation_signed else "uint8 asymmetric",
        "weights": weights_text,
        "rounding": options.rounding,
        "bias_correction": options.bias_correction,
        "drop": chosen.measured["drop"],
        "tool": "edgecnn quantize",
        "finetune": {k: chosen.finetune[k] for k in ("epochs", "lr", "images")} if chosen.finetune else None,
    }
    return {
        "model": str(pm.source),
        "output": str(pm.out),
        "target": options.target,
        "method": options.method,
        "percentile": options.percentile,
        "calibration": summary,
        "excluded": chosen.excluded,
        "exclusions": [e for e in pm.exclusions if e["node"] in set(chosen.excluded)],
        "high_precision": options.high_precision,
        "ranges": _range_table(cal.ranges, spec.activation_signed),
        "range_comparison": _range_comparison(cal, options),
        "accuracy": chosen.measured,
        "max_drop": options.max_drop,
        "fallback": gate,
        "sizes": {"fp32_bytes": model_bytes(pm.source), "int8_bytes": None},
        "rounding": {"method": options.rounding, "layers": len(cal.rounded), "seconds": round(cal.rounding_seconds, 3)},
        "weights": {
            "qmax": options.weight_qmax,
            "reduce_range": options.reduce_range,
            "text": weights_text,
            "note": _weights_note(options),
        },
        "timings": {
            "calibration_s": round(cal.seconds, 3),
            "images_per_s": cal.images / cal.seconds if cal.seconds > 0 else 0.0,
        },
        "latency": None,
        "cache": None,
        "report": None,
        "finetune": chosen.finetune,
        "_provenance": provenance,
    }


def _range_comparison(cal: Calibration, options: QuantOptions, rows: int = 12) -> list[dict]:
    """The tensors the chosen calibrator clips hardest (smallest amax / max |x|), with what the other calibrators
    would choose from the same statistics: where to look when one calibrator does worse than another."""
    if options.method == "minmax":
        return []
    table = calibrators.range_comparison(cal.stats, options.percentile)
    chosen = {name: max(abs(lo), abs(hi)) for name, (lo, hi) in cal.ranges.items()}
    out = []
    for name, row in table.items():
        if name not in chosen or row["minmax"] <= 0:
            continue
        out.append({"tensor": name, "chosen": chosen[name], "clip_ratio": chosen[name] / row["minmax"], **row})
    out.sort(key=lambda r: r["clip_ratio"])
    return out[:rows]


def _latency_of(pm: PreparedModel, builder: Builder, chosen: Candidate, runs: int, threads: int | None) -> dict:
    shape = (graph.fixed_batch(pm.prepared) or 1,) + tuple(
        d.dim_value for d in pm.prepared.graph.input[0].type.tensor_type.shape.dim[1:]
    )
    timed = _latency({"fp32": builder.fp32_path, "int8": chosen.path}, runs, threads, shape)
    lf, lq = timed["fp32"], timed["int8"]
    return {
        "fp32": lf,
        "int8": lq,
        "speedup": lf["median_ms"] / max(lq["median_ms"], 1e-9),
        "batch": shape[0],
        "runs": lf["runs"],
        "interleaved_rounds": LATENCY_ROUNDS,
        "threads": threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }


def write_outputs(pm: PreparedModel, cal: Calibration, chosen: Candidate, output: OutputPolicy, result: dict) -> None:
    """The model (its contract carrying the quantization provenance), its TensorRT table and the report, staged
    side by side and put in place together, the model first (files.staged_files)."""
    qmodel = chosen.model
    contract = pm.int8_contract(quantization=result.pop("_provenance"))
    table = None
    if output.cache is not None:
        version = output.trt_version or trt_cache.installed_version() or trt_cache.DEFAULT_VERSION
        # the layers kept in float (--exclude, --max-drop) must stay float in TensorRT's implicit INT8 too: their
        # tensors get no scale (TensorRT then runs them in higher precision), as in the measured Q/DQ model
        excluded = set(chosen.excluded)
        float_tensors = {t for n in pm.prepared.graph.node if n.name in excluded for t in (*n.input, *n.output)}
        amax = {name: max(abs(lo), abs(hi)) for name, (lo, hi) in cal.ranges.items() if name not in float_tensors}
        amax = trt_cache.carry_through_pads(pm.original, amax)
        table = trt_cache.format_table(amax, version)
        contract = bind_table(contract, output.cache, table)  # build-engine / deploy refuse any other table
        result["cache"] = {
            "path": str(output.cache),
            "tensors": len(amax),
            "left_out_for_float_layers": sorted(set(cal.ranges) & float_tensors),
            "header": f"TRT-{trt_cache.version_number(version)}-{trt_cache.DEFAULT_ALGORITHM}",
        }
    write_onnx_contract(qmodel, contract)
    # the model first: it is put in place first, so a failure part way never leaves a new table or report beside an
    # old model; a crash part way is finished by the next run (files.staged_files journal)
    with staged_files() as stage:
        model_tmp = stage(pm.out, suffix=".onnx")
        save_onnx(qmodel, model_tmp)
        result["sizes"]["int8_bytes"] = model_tmp.stat().st_size
        result["qdq"] = qdq.qdq_summary(qmodel)
        if table is not None:
            stage(output.cache).write_text(table, encoding="utf-8")
        if output.report is not None:
            from edgecnn.quant.report import stage_report

            stage_report(stage, output.report, result)


# ---------------------------------------------------------------- helpers


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
            from edgecnn.contract import adopt_command

            raise UserInputError(
                f"{path} has no edgecnn metadata, so its preprocessing is unknown: give it its contract once with "
                f"`{adopt_command(path)}`, or give --input-size H,W --mean R,G,B --std R,G,B (0-255 scale) "
                "[--resize ...] [--labels FILE]"
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
    if contract.preprocess.dtype != "float32":  # calibration feeds float32 activations from the input on
        raise UserInputError(
            f"{path} takes {contract.preprocess.dtype} pixels (its normalisation is inside the graph): edgecnn "
            "quantizes float32-input models; export it with a float32 input and adopt that with its --mean/--std"
        )
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


def _check_outputs(src: Path, out: Path, calib, options: QuantOptions, output: OutputPolicy) -> None:
    """Every output path checked before any work: none may overwrite an input (the model, a calibration or --val
    image), be a folder, or sit under a file; --cache and --out must differ; --report must be a folder."""
    data = [src.parent / rel for rel in onnx_external_data(src)]  # the model's weights files are inputs too
    inputs = [src, *data, calib] + ([options.val] if options.val is not None else [])
    check_output_file(out, "--out")
    ensure_distinct(inputs, out, "--out")
    refuse_existing(out, "--out", output.force)
    if output.cache is not None:
        check_output_file(output.cache, "--cache")
        refuse_existing(output.cache, "--cache", output.force)
        ensure_distinct(inputs, output.cache, "--cache")
        if Path(output.cache).resolve() == out.resolve():
            raise UserInputError(f"--cache and --out both name {out}: give the calibration table its own file")
    if output.report is not None:
        report = Path(output.report)
        if report.exists() and not report.is_dir():
            raise UserInputError(f"--report {report} is a file; give a folder")
        ensure_distinct(inputs, report / "quantization.json", "--report")
        ensure_distinct(inputs, report / "quantization.md", "--report")


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
