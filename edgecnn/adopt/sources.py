"""What a model says about itself (timm's pretrained config beside it, Ultralytics' metadata_props) and the
labels files adopt reads."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from edgecnn.contract import imagenet_labels, read_labels_file
from edgecnn.errors import ArtifactError, UserInputError

_WNID = re.compile(r"^n\d{8}$")
_TIMM_INTERP = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest", "area": "area"}


# ---------------------------------------------------------------- what the model says about itself


def ultralytics_facts(model) -> dict:
    """Labels, size and preset from Ultralytics' metadata_props (`names`, `imgsz`, `task`), read as data."""
    props = {p.key: p.value for p in model.metadata_props}
    if "names" not in props or props.get("task", "classify") != "classify":
        return {}
    facts: dict = {"from": "Ultralytics metadata", "preset": "ultralytics-cls"}
    try:
        names = ast.literal_eval(props["names"])
        if isinstance(names, dict):
            facts["labels"] = [str(names[k]) for k in sorted(names, key=int)]
        elif isinstance(names, (list, tuple)):
            facts["labels"] = [str(n) for n in names]
        size = ast.literal_eval(props["imgsz"]) if "imgsz" in props else None
        if isinstance(size, int):
            facts["size"] = (size, size)
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            facts["size"] = (int(size[0]), int(size[1]))
    except (ValueError, SyntaxError, TypeError, KeyError) as exc:
        raise ArtifactError(f"Ultralytics metadata (names/imgsz) cannot be read: {exc}") from exc
    return facts


def timm_config_path(path: Path) -> Path | None:
    """timm's pretrained config beside the model: MODEL.json, MODEL.config.json or config.json (Hugging Face)."""
    for cand in (path.with_suffix(".json"), path.with_name(path.stem + ".config.json"), path.with_name("config.json")):
        if cand.is_file():
            return cand
    return None


def timm_facts(path: Path) -> dict:
    """Preprocessing (and labels) from a timm pretrained config JSON (`pretrained_cfg` or its keys at the top)."""
    cfg_path = timm_config_path(path)
    if cfg_path is None:
        return {}
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{cfg_path} (beside the model) is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        return {}
    pre = data.get("pretrained_cfg", data)
    if not isinstance(pre, dict) or not {"mean", "std"} <= set(pre):
        return {}
    facts: dict = {"from": f"timm config {cfg_path.name}"}
    try:
        facts["mean"] = tuple(float(v) * 255 for v in pre["mean"])
        facts["std"] = tuple(float(v) * 255 for v in pre["std"])
        if "input_size" in pre:
            facts["size"] = (int(pre["input_size"][-2]), int(pre["input_size"][-1]))
        if "crop_pct" in pre:
            facts["crop_ratio"] = min(1.0, float(pre["crop_pct"]))
        mode = pre.get("crop_mode", "center")
        facts["resize"] = "resize" if mode == "squash" else "shorter_crop"
        if pre.get("interpolation") in _TIMM_INTERP:
            facts["interpolation"] = _TIMM_INTERP[pre["interpolation"]]
    except (TypeError, ValueError, IndexError) as exc:
        raise UserInputError(f"{cfg_path}: pretrained config values cannot be read ({exc})") from exc
    names = data.get("label_names")
    if isinstance(names, list) and names:
        facts["labels"] = [str(n) for n in names]
    return facts


# ---------------------------------------------------------------- labels


def read_adopt_labels(path: Path) -> tuple[list[str], list[str] | None]:
    """(labels, label keys) from a labels file: one name per line; or ImageNet wnids (named from edgecnn's ImageNet
    table); or `wnid name, other names` lines (synset_words.txt): the wnids become the keys."""
    lines = read_labels_file(path)
    if all(_WNID.match(line) for line in lines):
        names, wnids = imagenet_labels()
        by_wnid = dict(zip(wnids, names))
        return [by_wnid.get(w, w) for w in lines], list(lines)
    split = [line.split(None, 1) for line in lines]
    if all(len(parts) == 2 and _WNID.match(parts[0]) for parts in split):
        return [parts[1].split(",")[0].strip() for parts in split], [parts[0] for parts in split]
    return lines, None
