"""The `edgecnn` Typer app. One module per command in this package, each exposing `register(app)`.

Command modules import only Typer and light helpers at import time; the library (and torch, ONNX Runtime, ...) is
imported inside the command function, so `edgecnn --help` is fast and works with optional packages missing.
"""

from __future__ import annotations

import importlib

import typer

from edgecnn import __version__
from edgecnn.cli.common import STATE

# Order = order in `edgecnn --help`.
COMMAND_MODULES = (
    "models_cmd",
    "train_cmd",
    "export_cmd",
    "adopt_cmd",
    "predict_cmd",
    "eval_cmd",
    "quantize_cmd",
    "calibrate_cmd",
    "build_engine_cmd",
    "live_cmd",
    "profile_cmd",
    "compare_cmd",
    "deploy_cmd",
    "doctor_cmd",
)

app = typer.Typer(
    name="edgecnn",
    help="Train, export, quantize, build and run image-classification CNNs: from a laptop CPU to NVIDIA Jetson.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        typer.echo(f"edgecnn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """edgecnn: every command takes a model file (.pt, .onnx, .engine) or a registered pretrained name."""
    STATE["debug"] = debug


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"edgecnn.cli.{name}").register(app)


_register_all()


def run() -> None:
    """Run the CLI. A usage error (a missing or bad option, met by Click before any command runs) is Click's message
    and exit 2; with --json on the command line the error object goes to stdout too, like every other failure."""
    import sys

    from edgecnn.cli import stderr_filter
    from edgecnn.cli.common import error_object, print_error_json

    stderr_filter.install()  # libjpeg's "Corrupt JPEG data" lines: edgecnn counts damaged images itself
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="edgecnn", standalone_mode=False)
    except typer.TyperException as exc:  # Click's UsageError, BadParameter, ... (Typer vendors Click)
        _show_usage_error(exc)
        if "--json" in sys.argv[1:]:
            print_error_json(error_object(exc.format_message(), exc.exit_code, "UsageError"))
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _show_usage_error(exc) -> None:
    """Typer's own rendering of a usage error (the boxed message with the usage line)."""
    try:
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
    except (ImportError, AttributeError):
        exc.show()
