"""Keep libjpeg's warnings about damaged JPEGs off the terminal.

libjpeg (inside OpenCV) prints "Corrupt JPEG data: 20 extraneous bytes before marker 0xda" and the like straight to
file descriptor 2, with no switch in OpenCV to turn it off. edgecnn already counts and reports damaged images itself
(one line, with the count), so these lines are noise, one per file, in the middle of progress bars.

The `edgecnn` command therefore runs with descriptor 2 on a pipe whose reader process forwards everything but those
lines to the real stderr, while Python's own `sys.stderr` (rich's progress bars, messages, tracebacks) writes to the
real stderr directly: a terminal stays a terminal. A child process whose lines must keep their place among
edgecnn's own (ssh in `deploy bundle --host`) is given `sys.stderr`'s descriptor, not 2. EDGECNN_RAW_STDERR=1 turns
the filter off.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import time

# libjpeg's warning texts (jerror.h) that a damaged but decodable file produces
NOISE = re.compile(
    rb"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Warning: unknown JFIF revision|"
    rb"Inconsistent progression sequence|Invalid JPEG file structure|JPEG datastream contains no image)"
)


def install() -> None:
    """Put the filter in place for the rest of this process (once; a no-op where descriptors cannot be moved).

    The reader is a forked process, not a thread: when the CLI dies at C level (a C++ "terminate called ..." then
    abort), whatever it wrote to descriptor 2 is still in the pipe, and a thread would die with it unread."""
    if os.environ.get("EDGECNN_RAW_STDERR") or getattr(install, "done", False) or not hasattr(os, "fork"):
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        stream = open(real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace")
        pid = os.fork()  # early in the CLI, before any thread exists
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (tests' captured streams, embedded use)
        return
    if pid == 0:
        _forward(read_end, write_end, real)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    install.done = True
    sys.stderr = stream

    def restore() -> None:
        """At exit: descriptor 2 back to the real stderr, so the pipe ends and the reader forwards what is left."""
        try:
            sys.stderr.flush()
            os.dup2(real, 2)
        except (OSError, ValueError):
            return
        for _ in range(200):  # up to 2 s: its last lines come before the shell's prompt
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)

    atexit.register(restore)


def _forward(read_end: int, write_end: int, real: int) -> None:
    """The reader process: forward the pipe to the real stderr until every writer has closed it, then exit."""
    try:
        os.close(write_end)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the CLI decides, this drains
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)  # holding the CLI's stdout open would keep `| head` or `$(...)` waiting
        _pump(read_end, real)
    finally:
        os._exit(0)


def _pump(read_end: int, real: int) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(read_end, 65536)
        except OSError:
            break
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
        if kept:
            _write(real, kept)
    if pending and not NOISE.match(pending):
        _write(real, pending)
    os.close(read_end)


def _write(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass
