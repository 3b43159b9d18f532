"""`python -m edgecnn` and the `edgecnn` script run the CLI.

The entry point lives here, in a module that imports nothing at load time, so that Ctrl-C while the CLI itself is
still importing or Typer is still building the command (Typer, rich, pydantic: a noticeable moment on a Jetson's SD
card) ends with one line and exit 130, not a traceback. Once a command runs, `cli_command` handles Ctrl-C.
"""

import sys


def _interrupted() -> None:
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130)


def main() -> None:
    try:
        from edgecnn.cli.main import run

        run()
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # an import interrupted half-way can surface as another error (RuntimeError, ...)
        from edgecnn.errors import caused_by_ctrl_c  # no imports of its own: safe after a broken import

        if caused_by_ctrl_c(exc):
            _interrupted()
        raise


if __name__ == "__main__":
    main()
