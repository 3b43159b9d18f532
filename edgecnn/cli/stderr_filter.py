"""Keep libjpeg's warnings about damaged JPEGs off the terminal.

libjpeg (inside OpenCV) prints "Corrupt JPEG data: 20 extraneous bytes before marker 0xda" and the like straight to
file descriptor 2, with no switch in OpenCV to turn it off. edgecnn already counts and reports damaged images itself
(one line, with the count), so these lines are noise, one per file, in the middle of progress bars.

The `edgecnn` command therefore runs with descriptor 2 on a pipe whose reader thread forwards everything but those
lines to the real stderr, while Python's own `sys.stderr` (rich's progress bars, messages, tracebacks) writes to the
real stderr directly: a terminal stays a terminal. A child process whose lines must keep their place among
edgecnn's own (ssh in `deploy bundle --host`) is given `sys.stderr`'s descriptor, not 2. EDGECNN_RAW_STDERR=1 turns
the filter off.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

# libjpeg's warning texts (jerror.h) that a damaged but decodable file produces
NOISE = re.compile(
    rb"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Warning: unknown JFIF revision|"
    rb"Inconsistent progression sequence|Invalid JPEG file structure|JPEG datastream contains no image)"
)


def install() -> None:
    """Put the filter in place for the rest of this process (once; a no-op where descriptors cannot be moved)."""
    if os.environ.get("EDGECNN_RAW_STDERR") or getattr(install, "done", False):
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        stream = open(real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace")
        os.dup2(write_end, 2)
        os.close(write_end)
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (tests' captured streams, embedded use)
        return
    install.done = True
    sys.stderr = stream
    thread = threading.Thread(target=_pump, args=(read_end, real), name="edgecnn-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        """At exit: descriptor 2 back to the real stderr, so the pipe ends and the thread forwards what is left."""
        try:
            sys.stderr.flush()
            os.dup2(real, 2)
        except (OSError, ValueError):
            return
        thread.join(timeout=2.0)

    atexit.register(restore)


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
