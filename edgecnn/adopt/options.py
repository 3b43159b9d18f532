"""What `adopt` is asked (AdoptOptions) and what it reports (AdoptReport)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

Progress = Callable[[str], None]


@dataclass
class AdoptOptions:
    """What the command line can say; None: decided from the graph, the model's own metadata or the preset."""

    labels: Path | None = None
    preset: str | None = None
    size: tuple[int, int] | None = None
    resize: str | None = None
    crop_ratio: float | None = None
    interpolation: str | None = None
    channel_order: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    scale: str | None = None  # '0-1' or '0-255': the scale mean/std are given on (default: 0-1 when every std < 1)
    layout: str | None = None
    dtype: str | None = None
    input: str | None = None
    output: str | None = None
    output_kind: str | None = None  # 'logits' or 'probabilities'
    dynamic_batch: bool = True  # keep a dynamic batch, or add one where the graph allows it
    data: Path | None = None  # a labelled folder: top-1 is reported
    check_preprocessing: bool = False  # score every preset on `data`
    limit: int = 200  # images of `data` used (spread over the folder)
    force: bool = False


@dataclass
class AdoptReport:
    out: str
    source: str
    input: dict
    output: dict
    labels: int
    preprocess: dict
    decided_by: dict  # setting -> where it came from ('graph', 'preset tf-lite', 'timm config', 'option', ...)
    batch: str  # 'dynamic' or the fixed size
    sha256: str = ""
    top1: float | None = None  # on `data` (None: no data, or its folders do not name the model's classes)
    confidence: float | None = None  # mean top-1 probability on `data`
    scored_images: int = 0
    candidates: list[dict] = field(default_factory=list)  # check_preprocessing: every preset's score, best first
    best: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)
