"""What every command shares: error handling (one line + exit code), JSON output, rich progress on stderr.

Human output goes to stderr through `console`, machine output (`--json`) to stdout through `print_json`, so
`edgecnn eval ... --json | jq` always sees JSON only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgecnn.errors import EdgeCNNError, caused_by_ctrl_c
from edgecnn.jsonout import strict_json

console = Console(stderr=True, highlight=False)
# A command's result in human form (the tables of models, eval, compare): stdout, so `edgecnn models | grep` works;
# --json replaces it there. Progress, messages and warnings stay on stderr.
results = Console(highlight=False)
for _c in (console, results):
    if not _c.is_terminal and "COLUMNS" not in os.environ:
        _c.width = 120  # logs and CI: rich's 80-column default folds every table
STATE = {"debug": False}


def cli_command(fn: Callable) -> Callable:
    """Wrap a command: EdgeCNNError -> one line on stderr + its exit code; Ctrl-C -> 130; other errors -> a
    one-line internal error unless --debug (then the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except EdgeCNNError as exc:
            if STATE["debug"]:
                raise
            error(str(exc))
            raise typer.Exit(exc.exit_code) from exc
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug, not a user error: still no traceback by default
            if STATE["debug"]:
                raise
            if caused_by_ctrl_c(exc):  # a library turned Ctrl-C into its own error (e.g. mid-import)
                error("interrupted")
                raise typer.Exit(130) from exc
            error(f"internal error: {exc.__class__.__name__}: {exc} (run with --debug for the traceback)")
            raise typer.Exit(70) from exc

    return wrapper


def error(message: str) -> None:
    text = " ".join(str(message).split("\n")[0:1]) if "\n" not in str(message).strip() else str(message).strip()
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(str(message))}")  # paths and labels may hold '[': not markup


def print_json(obj) -> None:
    text = json.dumps(strict_json(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, disable: bool = False) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields `update(done, total=None, **fields)` for library callbacks.

    The bar appears at the first update, so a command that fails while checking its inputs prints only its one-line
    error, not an empty bar above it.
    """
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    progress = Progress(*columns, console=console, transient=False, disable=disable)
    task = progress.add_task(description, total=total, info="")
    started = False

    def update(done: int, total: int | None = None, info: str = "", description: str | None = None) -> None:
        nonlocal started
        if not started:
            progress.start()
            started = True
        kw = {"completed": done, "info": info}
        if total is not None:
            kw["total"] = total
        if description:
            kw["description"] = description
        progress.update(task, **kw)

    try:
        yield update
    finally:
        if started:
            progress.stop()
