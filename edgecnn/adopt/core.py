"""`adopt()`: read, decide, check, write (see the package docstring)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgecnn.adopt.check import check_and_score
from edgecnn.adopt.graph import (
    cut_to,
    detect_layout,
    dims_of,
    ends_in_softmax,
    graph_inputs,
    input_dtype,
    keep_or_add_dynamic_batch,
    select_one,
)
from edgecnn.adopt.options import AdoptOptions, AdoptReport, Progress
from edgecnn.adopt.presets import decide_preprocess
from edgecnn.adopt.sources import read_adopt_labels, timm_facts, ultralytics_facts
from edgecnn.contract import ModelContract, write_onnx_contract
from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.files import (
    check_output_file,
    ensure_distinct,
    prepare_output_folder,
    refuse_existing,
    remove_created,
    sha256_file,
)
from edgecnn.onnx_io import save_onnx


def adopt(
    model: str | os.PathLike,
    out: str | os.PathLike,
    options: AdoptOptions | None = None,
    progress: Progress | None = None,
) -> AdoptReport:
    """Write `out`: the ONNX `model` with the edgecnn contract in its metadata, after the checks (module docstring).
    Raises UserInputError for what the user can fix (nothing written), AccuracyGateError when check_preprocessing
    finds a preset that scores far better than the chosen preprocessing."""
    import onnx

    options = options or AdoptOptions()
    say = progress or (lambda msg: None)
    src, out = Path(model), Path(out)
    if not src.is_file():
        raise UserInputError(f"{src} does not exist" + (" (it is a folder)" if src.is_dir() else ""))
    for p, flag in ((src, "MODEL"), (out, "--out")):
        if p.suffix.lower() != ".onnx":
            raise UserInputError(f"{flag} {p.name}: adopt reads and writes ONNX files (.onnx)")
    check_output_file(out, "--out")
    ensure_distinct(src, out)
    refuse_existing(out, "--out", options.force)
    if options.check_preprocessing and options.data is None:
        raise UserInputError("--check-preprocessing scores the presets on images: give --data DIR")
    if options.data is not None and not Path(options.data).exists():
        raise UserInputError(f"--data {options.data} does not exist")
    if options.output_kind not in (None, "logits", "probabilities"):
        raise UserInputError(f"--output-kind must be logits or probabilities, got {options.output_kind!r}")

    say(f"reading {src}")
    try:
        proto = onnx.load(str(src))
    except Exception as exc:
        raise ArtifactError(f"{src} is not a readable ONNX model ({exc.__class__.__name__})") from exc
    notes: list[str] = []
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ArtifactError(f"{src}: onnx.checker rejects the graph: {str(exc).splitlines()[0][:300]}") from exc

    in_name = select_one("input", [i.name for i in graph_inputs(proto)], options.input)
    out_name = select_one("output", [o.name for o in proto.graph.output], options.output)
    if len(graph_inputs(proto)) > 1 or len(proto.graph.output) > 1:
        say(f"cutting the graph down to {in_name} -> {out_name}")
        kept_props = list(proto.metadata_props)
        proto = cut_to(proto, in_name, out_name)
        proto.metadata_props.extend(kept_props)
        notes.append(f"graph cut down to input {in_name!r} and output {out_name!r}")
    inp = graph_inputs(proto)[0]
    dims = dims_of(inp)
    if len(dims) != 4:
        raise UserInputError(f"input {in_name!r} has shape {dims}: edgecnn runs image classifiers (a 4-D input)")
    layout = detect_layout(dims)
    if options.layout and layout and options.layout != layout:
        notes.append(f"--layout {options.layout} overrides the graph's look ({layout})")
    hw = (dims[1], dims[2]) if (options.layout or layout) == "nhwc" else (dims[2], dims[3])
    graph = {
        "shape": dims,
        "layout": layout,
        "dtype": input_dtype(inp),
        "size": tuple(hw) if all(isinstance(d, int) for d in hw) else None,
    }
    found = {**timm_facts(src), **ultralytics_facts(proto)}
    cfg, decided = decide_preprocess(options, graph, found, notes)
    channels = dims[1] if cfg.layout == "nchw" else dims[3]
    if isinstance(channels, int) and channels != 3:
        raise UserInputError(
            f"input {in_name!r} {dims} has {channels} channel(s) in {cfg.layout.upper()}: edgecnn feeds 3-channel "
            "images (wrong --layout?)"
        )

    if options.labels is not None:
        labels, keys = read_adopt_labels(Path(options.labels))
        decided["labels"] = f"--labels {Path(options.labels).name}"
    elif found.get("labels"):
        labels, keys = found["labels"], None
        decided["labels"] = found["from"]
    else:
        raise UserInputError("Give the class names with --labels FILE (one per line, in output order)")

    out_dims = dims_of(proto.graph.output[0])
    if out_dims and isinstance(out_dims[-1], int) and out_dims[-1] != len(labels):
        raise UserInputError(
            f"The labels list {len(labels)} classes but the model outputs {out_dims[-1]} scores per image "
            f"(output {out_name!r} {out_dims}): give the labels file of this model"
        )
    kind = options.output_kind or ("probabilities" if ends_in_softmax(proto, out_name) else "logits")
    decided["output"] = "option" if options.output_kind else "graph"
    batch_dim = dims[0]
    proto, batch = keep_or_add_dynamic_batch(proto, batch_dim, options.dynamic_batch, cfg, notes, say)

    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ArtifactError(f"{src}: ONNX shape inference fails: {str(exc).splitlines()[0][:300]}") from exc

    contract = ModelContract(
        labels=list(labels),
        preprocess=cfg,
        arch=None,
        label_keys=keys,
        output=kind,
        provenance={
            "adopted_from": src.name,
            "source_sha256": sha256_file(src),
            "producer": f"{proto.producer_name} {proto.producer_version}".strip() or None,
            "input": in_name,
            "output": out_name,
            "decided_by": decided,
        },
    )
    write_onnx_contract(proto, contract)
    created = prepare_output_folder(out, "--out")
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".adopt-") as tmp:
            candidate = Path(tmp) / out.name
            save_onnx(proto, candidate)
            report = check_and_score(candidate, contract, options, notes, say)
            report.input = {"name": in_name, "shape": dims, "layout": cfg.layout, "dtype": cfg.dtype}
            report.output = {"name": out_name, "kind": kind}
            report.preprocess, report.decided_by, report.batch = cfg.to_dict(), decided, batch
            report.source = str(src)
            os.replace(candidate, out)
    except BaseException:
        remove_created(created, out.parent)
        raise
    report.out, report.sha256 = str(out), sha256_file(out)
    return report
