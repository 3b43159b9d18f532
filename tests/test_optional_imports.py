"""Optional heavy packages stay optional: with tensorrt, cuda(-python), pycuda and openvino made unimportable by a
meta-path finder, every edgecnn module imports and every command's `--help` works. And `--help` never imports torch.

Each check runs in a fresh interpreter, so modules already imported by other tests cannot hide a module-level import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorrt", "cuda", "pycuda", "openvino")

BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys

    BLOCKED = {BLOCKED!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked by test_optional_imports")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    """
)

HELP_ALL = textwrap.dedent(
    """
    import json, sys
    from typer.testing import CliRunner
    from edgecnn.cli.main import app

    runner = CliRunner()
    results = {}

    def check(args):
        r = runner.invoke(app, args)
        results[" ".join(args)] = [r.exit_code, (r.stdout or "")[:200], (r.stderr or "")[-300:]]

    check(["--help"])
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__.replace("_", "-")
        check([name, "--help"])
    for group in app.registered_groups:
        check([group.name, "--help"])
        for cmd in group.typer_instance.registered_commands:
            check([group.name, cmd.name or cmd.callback.__name__.replace("_", "-"), "--help"])
    print(json.dumps({"results": results, "torch": "torch" in sys.modules,
                      "blocked_loaded": [m for m in sys.modules if m.split(".")[0] in BLOCKED]}))
    """
)


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_optional_packages():
    out = _run(
        textwrap.dedent(
            """
            import importlib, json, pkgutil, sys, traceback
            import edgecnn

            failed = {}
            names = [m.name for m in pkgutil.walk_packages(edgecnn.__path__, "edgecnn.")]
            for name in names:
                try:
                    importlib.import_module(name)
                except Exception as exc:
                    failed[name] = f"{exc.__class__.__name__}: {exc}"
            print(json.dumps({"names": names, "failed": failed,
                              "blocked_loaded": [m for m in sys.modules if m.split(".")[0] in BLOCKED]}))
            """
        )
    )
    assert "edgecnn.runtime.tensorrt" in out["names"] and "edgecnn.trt.builder" in out["names"]
    assert out["failed"] == {}, out["failed"]
    assert out["blocked_loaded"] == []


def test_every_command_help_works_without_optional_packages_and_without_torch():
    out = _run(HELP_ALL)
    results = out["results"]
    assert "build-engine --help" in results and len(results) > 5
    bad = {cmd: r for cmd, r in results.items() if r[0] != 0}
    assert bad == {}, bad
    assert "--print-trtexec" in results["build-engine --help"][1] or results["build-engine --help"][0] == 0
    assert out["blocked_loaded"] == []
    assert out["torch"] is False, "`edgecnn ... --help` imported torch: import heavy code inside the command function"


def test_the_tensorrt_runtime_backend_reports_unavailable_when_blocked():
    out = _run(
        textwrap.dedent(
            """
            import json
            from edgecnn.runtime.base import backends

            b = backends()["tensorrt"]
            print(json.dumps({"available": b.available(), "suffixes": list(b.suffixes)}))
            """
        )
    )
    assert out == {"available": False, "suffixes": [".engine", ".plan"]}


def test_quantize_finetune_without_torch_is_a_clear_error():
    """--finetune is the one quantize option that needs PyTorch: without it, one line saying what to install."""
    code = BLOCKER.replace(f"BLOCKED = {BLOCKED!r}", "BLOCKED = ('torch',)") + textwrap.dedent(
        """
        import json
        from edgecnn.errors import MissingDependencyError, require_torch
        from edgecnn.quant.finetune import FINETUNE_TORCH_HINT

        try:
            require_torch(FINETUNE_TORCH_HINT)
            print(json.dumps({"error": None}))
        except MissingDependencyError as exc:
            print(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] and "edgecnn[train]" in result["error"] and "--finetune" in result["error"]
    assert result["exit_code"] == 3  # the one exit code of a missing package
