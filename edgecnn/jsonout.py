"""Strict JSON: NaN and infinities become null.

Python's json writes them as NaN / Infinity, which is not JSON: jq, JavaScript and most other parsers reject the whole
document. A model with an overflowing output (FP16) or a diverged training run produces them, so every JSON edgecnn
writes (--json output, JSON lines, reports, metrics) goes through `strict_json` first. No imports: the CLI's startup
and the library both use it.
"""

from __future__ import annotations

import math


def strict_json(obj):
    """`obj` with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj
