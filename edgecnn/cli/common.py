"""What every command shares: its registration, the options several commands have, error handling (one line + exit
code, and an error object with --json), JSON output, rich progress on stderr.

Human output goes to stderr through `console`, machine output (`--json`) to stdout through `print_json`, so
`edgecnn eval ... --json | jq` always sees JSON only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgecnn.errors import EdgeCNNError, caused_by_ctrl_c, storage_error
from edgecnn.jsonout import strict_json
from edgecnn.masking import mask_credentials


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`| head -1`): let `cli_command` end the command quietly (exit 0), as for every
        other write; rich's own handling exits 1."""
        self.quiet = True
        raise BrokenPipeError


console = _Console(stderr=True, highlight=False)
# A command's result in human form (the tables of models, eval, compare): stdout, so `edgecnn models | grep` works;
# --json replaces it there. Progress, messages and warnings stay on stderr.
results = _Console(highlight=False)
for _c in (console, results):
    if not _c.is_terminal and "COLUMNS" not in os.environ:
        _c.width = 120  # logs and CI: rich's 80-column default folds every table
STATE = {"debug": False}


# ---------------------------------------------------------------- options shared by commands
# Declared once here, used by every command that has them: the same flag, type and wording everywhere. A command
# adds its own sentence through `help=` only where the option means something more there.


def json_option(help: str = "Print the result as JSON only, on stdout.") -> Any:
    """--json: machine output on stdout; a failure then prints {"error": {...}} there too (see `cli_command`)."""
    return typer.Option(False, "--json", help=f'{help} A failure prints {{"error": {{...}}}} there.')


def force_option(help: str = "Replace an existing output.") -> Any:
    return typer.Option(False, "--force", help=help)


def threads_option(help: str = "CPU threads (default: all cores).") -> Any:
    return typer.Option(None, "--threads", min=1, help=help)


def backend_option(
    help: str = "Force a backend (onnxrt, openvino, torch, tensorrt; default: from the model file).",
) -> Any:
    return typer.Option(None, "--backend", help=help)


def add_command(app: typer.Typer, name: str, fn: Callable, **kwargs) -> None:
    """The one way a command is registered: `fn` wrapped by `cli_command`, under `name` (kwargs: typer's)."""
    app.command(name, **kwargs)(cli_command(fn))


def _flag_type_hidden() -> None:
    """Typer shows a `<bool>` type after every flag in --help (which takes no value): show none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_edgecnn", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._edgecnn = True
    TyperOption.display_type_rich = display_type_rich


_flag_type_hidden()


# ---------------------------------------------------------------- running a command


def cli_command(fn: Callable) -> Callable:
    """Wrap a command: EdgeCNNError -> one line on stderr + its exit code; an environment failure (disk full,
    read-only, no permission) met outside the writing helpers -> StorageError (74); Ctrl-C -> 130; stdout closed by
    its reader (`| head -1`) -> a quiet exit 0; other errors -> a one-line internal error (70) unless --debug (then
    the traceback). With --json (`json_out`) every failure also prints {"error": {...}} on stdout."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("json_out"))
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a reader that went away is met here, not at interpreter exit
            return result
        except BrokenPipeError:
            discard_stdout()
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except EdgeCNNError as exc:
            if STATE["debug"]:
                raise
            fail(exc, as_json)
        except KeyboardInterrupt:
            fail(Interrupted("interrupted"), as_json)
        except Exception as exc:  # a bug, not a user error: still no traceback by default
            if caused_by_ctrl_c(exc):  # a library turned Ctrl-C into its own error (e.g. mid-import)
                fail(Interrupted("interrupted"), as_json)
            storage = storage_error(exc)
            if storage is not None and not STATE["debug"]:
                fail(storage, as_json)
            if STATE["debug"]:
                raise
            internal = EdgeCNNError(
                f"internal error: {exc.__class__.__name__}: {exc} (run with --debug for the traceback)"
            )
            internal.exit_code = INTERNAL_ERROR
            fail(internal, as_json, kind="InternalError")

    return wrapper


INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug; please report it with the --debug traceback


class Interrupted(EdgeCNNError):
    exit_code = 130


def error_object(message: str, exit_code: int, kind: str, details: dict | None = None) -> dict:
    """What --json prints on stdout for a failure: {"error": {"message", "exit_code", "type", ...details}}."""
    return {"error": {"message": message, "exit_code": exit_code, "type": kind, **(details or {})}}


def fail(exc: EdgeCNNError, as_json: bool = False, kind: str | None = None) -> None:
    """Report `exc` (one line on stderr; with --json also the error object on stdout) and exit with its code."""
    message = mask_credentials(str(exc))
    error(message)
    if as_json:
        obj = error_object(message, exc.exit_code, kind or type(exc).__name__, getattr(exc, "details", None))
        # a command that has a partial result (what a capture saved before it was stopped) sends it along: one
        # document, the result with the error object in it
        print_error_json({**(getattr(exc, "json_result", None) or {}), **obj})
    raise typer.Exit(exc.exit_code)


def print_error_json(obj: dict) -> None:
    """A failure's JSON on stdout, one line: also a valid last line of a JSON-lines stream (live --json)."""
    try:
        sys.stdout.write(json.dumps(_masked(strict_json(obj)), sort_keys=True, default=str, allow_nan=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()


def discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null once its reader has gone, so Python's final flush has somewhere to go
    (no "Exception ignored ... BrokenPipeError" at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests' captured stdout)
        pass


def error(message: str) -> None:
    text = " ".join(str(message).split("\n")[0:1]) if "\n" not in str(message).strip() else str(message).strip()
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()


def plural(count: float, noun: str) -> str:
    """'1 epoch', '2 epochs', '1.4 epochs': only exactly one is singular."""
    return f"{count:g} {noun}" + ("" if count == 1 else "s")


def article(word: str) -> str:
    """'an int8', 'an fp16' (said 'eff-pee'), 'a best': the article as the word is spoken."""
    return ("an " if word[:1].lower() in "aeiou" or word.lower().startswith("fp") else "a ") + word


def warn(message: str) -> None:
    # paths and labels may hold '[': not markup; a source URL quoted by a library: no credentials
    console.print(f"[yellow]warning:[/] {escape(mask_credentials(str(message)))}")


def _masked(obj):
    """`obj` with credentials masked in every string (sources are stored masked already; this is the backstop for
    a library message quoted in a result)."""
    if isinstance(obj, str):
        return mask_credentials(obj) if "@" in obj or "=" in obj else obj
    if isinstance(obj, dict):
        return {k: _masked(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_masked(v) for v in obj]
    return obj


def print_json(obj) -> None:
    text = json.dumps(_masked(strict_json(obj)), indent=2, sort_keys=True, default=str, allow_nan=False)
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
