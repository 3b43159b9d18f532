"""The repository's deploy/ folder is the package templates rendered for EfficientNet-Lite0, and stays that way."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edgecnn.deploy.examples import render_examples
from edgecnn.deploy.templates import TEMPLATE_DIR, placeholders, render

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_deploy_folder_is_up_to_date():
    expected = render_examples()
    stale = [
        rel for rel, text in expected.items() if not (DEPLOY / rel).is_file() or (DEPLOY / rel).read_text() != text
    ]
    assert not stale, f"deploy/ is out of date ({stale}): run `python -m edgecnn.deploy.examples deploy`"


def test_rendered_shell_scripts_parse():
    for script in ("jetson/start.sh", "jetson/run-docker.sh"):
        proc = subprocess.run(["bash", "-n", str(DEPLOY / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_templates_ship_in_the_package_and_render_strictly():
    names = sorted(p.name[:-3] for p in TEMPLATE_DIR.glob("*.in"))
    assert names == ["Dockerfile", "bundle-README.md", "edgecnn-app.service", "run-docker.sh", "start.sh"]
    assert '"templates/*"' in (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()  # package-data
    needed = placeholders("edgecnn-app.service")
    assert {"name", "app_dir", "user"} <= needed
    try:
        render("edgecnn-app.service", name="x")
    except KeyError as exc:
        assert "needs values for" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a missing value must not render")
