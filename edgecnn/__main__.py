"""`python -m edgecnn` and the `edgecnn` script run the CLI.

The entry point lives here, in a module that imports nothing at load time, so that Ctrl-C while the CLI itself is
still importing (Typer, rich: a noticeable moment on a Jetson's SD card) ends with one line and exit 130, not a
traceback. Once a command runs, `cli_command` handles Ctrl-C.
"""

import sys


def main() -> None:
    try:
        from edgecnn.cli.main import run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    run()


if __name__ == "__main__":
    main()
