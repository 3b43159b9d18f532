"""Assertions on errors that check what a message names (an option, a file, a value), never how it is worded, so a
clearer message does not break a test. Exit codes and error classes carry the kind of failure."""

from __future__ import annotations

import traceback
from contextlib import contextmanager

import pytest


def assert_mentions(text: str, mentions) -> None:
    """Each of `mentions` (str() of it) occurs in `text`."""
    missing = [str(m) for m in mentions if str(m) not in text]
    assert not missing, f"the message does not mention {missing}: {text!r}"


@contextmanager
def raises(error: type[BaseException], *mentions):
    """`pytest.raises(error)` whose message must mention each of `mentions`."""
    with pytest.raises(error) as info:
        yield info
    assert_mentions(str(info.value), mentions)
    # The traceback runs through this generator, whose frame holds `info`: a cycle that would keep the failed call's
    # locals (open files on a file system a test remounts next) alive until the garbage collector runs.
    exc, seen = info.value, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    del info


def assert_error(result, exit_code: int, *mentions, stream: str = "stderr") -> None:
    """A CLI result that failed the way a user error does: `exit_code`, no traceback, and one message on `stream`
    (stderr by default) mentioning each of `mentions`."""
    text = getattr(result, stream)
    assert result.exit_code == exit_code, f"exit {result.exit_code}, expected {exit_code}: {result.output}"
    assert "Traceback" not in text, text
    assert_mentions(text, mentions)
