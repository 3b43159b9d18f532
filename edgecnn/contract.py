"""The model contract: labels, preprocessing and provenance that travel inside every model file.

- `.pt` checkpoints carry a `ModelContract` dict (`contract_from_checkpoint` reads it back; see `edgecnn.checkpoint`),
- ONNX models carry it in `metadata_props` under the `edgecnn.*` keys below,
- TensorRT engines carry it in a sidecar JSON manifest (see `edgecnn.trt.manifest`).

Also here: the label files a contract's labels come from (a text file, the ImageNet-1k list shipped in the package).
Floor 0: imports only errors, preprocess and onnx_io; never torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecnn.errors import ArtifactError, UserInputError
from edgecnn.onnx_io import load_onnx
from edgecnn.preprocess import PreprocessConfig

CONTRACT_VERSION = 1
META_PREFIX = "edgecnn."
META_KEYS = (
    "contract_version",
    "labels",
    "label_keys",
    "preprocess",
    "arch",
    "precision",
    "output",
    "provenance",
)
OUTPUT_KINDS = ("logits", "probabilities")
PRESET_NAMES = ("imagenet", "inception", "tf-lite", "raw-0-1", "ultralytics-cls")  # edgecnn.adopt.PRESETS


def adopt_command(path: str | os.PathLike) -> str:
    """The `edgecnn adopt` line that gives a foreign ONNX its contract (named by every command that refuses one)."""
    import shlex

    path = Path(path)
    out = path.with_name(f"{path.stem}.edgecnn.onnx")
    return (
        f"edgecnn adopt {shlex.quote(str(path))} --labels LABELS.txt --preset "
        f"{{{','.join(PRESET_NAMES)}}} --out {shlex.quote(str(out))}"
    )


@dataclass
class ModelContract:
    """What a model needs to be used correctly, wherever it runs.

    labels:     class names in output order.
    label_keys: optional stable ids in output order (ImageNet wnids), used to map dataset folders to classes.
    preprocess: the transform inputs must go through.
    arch:       registry name of the architecture (None for foreign models).
    precision:  'fp32', 'fp16' or 'int8'.
    output:     what the model outputs: 'logits', or 'probabilities' (a Softmax at its end; runners turn them into
                log-probabilities, which are logits for the same probabilities, so softmax is never applied twice).
    provenance: free-form history (source file sha256, training summary, quantization details, ...).
    """

    labels: list[str]
    preprocess: PreprocessConfig
    arch: str | None = None
    label_keys: list[str] | None = None
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)
    output: str = "logits"

    def __post_init__(self):
        if self.output not in OUTPUT_KINDS:
            raise ArtifactError(f"Model contract: output must be one of {OUTPUT_KINDS}, got {self.output!r}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def with_provenance(self, **items) -> "ModelContract":
        """A copy with `items` added to provenance (the original is left alone)."""
        return replace(self, provenance={**self.provenance, **items})

    def to_dict(self) -> dict:
        d = {
            "contract_version": CONTRACT_VERSION,
            "labels": list(self.labels),
            "label_keys": list(self.label_keys) if self.label_keys else None,
            "preprocess": self.preprocess.to_dict(),
            "arch": self.arch,
            "precision": self.precision,
            "provenance": self.provenance,
        }
        if self.output != "logits":  # written only when used: older readers see the same keys as before
            d["output"] = self.output
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelContract":
        if "labels" in d and not isinstance(d["labels"], list):
            raise ArtifactError(
                f"Model contract: labels must be a list of class names, got {type(d['labels']).__name__}"
            )
        try:
            labels = [str(v) for v in d["labels"]]
            pre = PreprocessConfig.from_dict(d["preprocess"])
        except KeyError as exc:
            raise ArtifactError(f"Model contract is missing {exc}: not an edgecnn artifact, or a damaged one") from exc
        except (TypeError, AttributeError, ValueError) as exc:
            raise ArtifactError(f"Model contract is damaged: {exc}") from exc
        except UserInputError as exc:  # e.g. std 0: the file's preprocessing is wrong, not the user's command line
            raise ArtifactError(str(exc)) from exc
        if not labels:
            raise ArtifactError("Model contract has no labels")
        keys = d.get("label_keys")
        if keys is not None and len(keys) != len(labels):
            raise ArtifactError("Model contract: label_keys and labels differ in length")
        return cls(
            labels=labels,
            preprocess=pre,
            arch=d.get("arch"),
            label_keys=[str(k) for k in keys] if keys else None,
            precision=d.get("precision") or "fp32",
            provenance=dict(d.get("provenance") or {}),
            output=d.get("output") or "logits",
        )

    # ONNX metadata_props: one string per key so other tools (Netron, DeepStream scripts) can read them.
    def to_onnx_props(self) -> dict[str, str]:
        d = self.to_dict()
        return {META_PREFIX + k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in d.items()}

    @classmethod
    def from_onnx_props(cls, props: dict[str, str], source: str = "model") -> "ModelContract":
        if META_PREFIX + "labels" not in props or META_PREFIX + "preprocess" not in props:
            raise ArtifactError(
                f"{source} has no edgecnn metadata (labels, preprocessing): give it them once with "
                f"`{adopt_command(source)}` (add --data DIR --check-preprocessing to find the preset), or export "
                "an edgecnn checkpoint with `edgecnn export`"
            )
        d: dict[str, Any] = {}
        for key in META_KEYS:
            raw = props.get(META_PREFIX + key)
            if raw is None:
                continue
            if key in ("arch", "precision", "output"):
                d[key] = raw
            else:
                try:
                    d[key] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ArtifactError(f"{source}: metadata {META_PREFIX + key} is not valid JSON") from exc
        try:
            return cls.from_dict(d)
        except ArtifactError as exc:  # name the file whose metadata is wrong
            raise ArtifactError(f"{source}: {exc}") from exc


def read_onnx_contract(path: str | os.PathLike) -> ModelContract:
    """The contract stored in an ONNX file's metadata (weights are not loaded)."""
    model = load_onnx(path, external_data=False)
    return ModelContract.from_onnx_props({p.key: p.value for p in model.metadata_props}, source=str(path))


def write_onnx_contract(model, contract: ModelContract) -> None:
    """Replace the edgecnn.* metadata_props of an in-memory onnx.ModelProto with `contract`."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    for key, value in kept + sorted(contract.to_onnx_props().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def contract_from_checkpoint(path: str | os.PathLike, ckpt: dict) -> ModelContract:
    """The ModelContract of a `.pt` checkpoint's dict (`checkpoint.read_checkpoint`; written there as
    `contract.to_dict()`), with errors that name the file and the field."""
    d = ckpt["contract"]
    labels, pre = d.get("labels"), d.get("preprocess")
    if labels is not None and not isinstance(labels, (list, tuple)):
        raise ArtifactError(
            f"checkpoint {path}: contract labels is a {type(labels).__name__}, expected a list of class names"
        )
    if pre is not None and not isinstance(pre, dict):
        raise ArtifactError(
            f"checkpoint {path}: contract preprocess is a {type(pre).__name__}, expected a dict "
            "(PreprocessConfig.to_dict())"
        )
    try:
        return ModelContract.from_dict(d)
    except (ArtifactError, UserInputError) as exc:  # from the file, not the command line: an artifact problem
        raise ArtifactError(f"checkpoint {path}: {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"checkpoint {path}: damaged model contract ({exc.__class__.__name__}: {exc})") from exc


# ---------------------------------------------------------------- labels


def imagenet_labels() -> tuple[list[str], list[str]]:
    """The 1000 ImageNet-1k class names and wnids, in index order, from the copy shipped in the package."""
    tsv = Path(__file__).with_name("data") / "imagenet_classes.tsv"
    names, wnids = [], []
    for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            _, wnid, name = line.split("\t", 2)
            wnids.append(wnid)
            names.append(name)
    return names, wnids


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Labels from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Labels file {path} does not exist")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise UserInputError(f"Labels file {path} is empty")
    return labels
