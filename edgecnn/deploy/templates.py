"""The deployment templates (start script, systemd unit, Dockerfile, ...) and their one renderer.

The templates live in `edgecnn/templates/*.in` so they ship inside the package: `deploy install` renders the unit on
the device. The repository's `deploy/` folder holds the same files rendered for the pretrained EfficientNet-Lite0
(`python -m edgecnn.deploy.examples deploy`), so there is one hand-maintained copy; a test keeps them in sync.

Placeholders are `{{ name }}`. Shell scripts and Dockerfiles are full of `$VAR`, so `string.Template` would need
escaping everywhere; this syntax needs none. Rendering fails on a missing value instead of leaving a hole.
"""

from __future__ import annotations

import re
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


def template_path(name: str) -> Path:
    path = TEMPLATE_DIR / f"{name}.in"
    if not path.is_file():
        raise FileNotFoundError(f"edgecnn template {name!r} is missing from {TEMPLATE_DIR} (a broken install?)")
    return path


def placeholders(name: str) -> set[str]:
    """The names a template needs."""
    return set(_PLACEHOLDER.findall(template_path(name).read_text(encoding="utf-8")))


def render(template: str, /, **values) -> str:
    """Template `template` with every `{{ key }}` replaced by str(values[key]); a missing key is a KeyError."""
    text = template_path(template).read_text(encoding="utf-8")
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise KeyError(f"template {template} needs values for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
