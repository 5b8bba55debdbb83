"""Keeping what C libraries print to file descriptor 2 (libsndfile's mpg123: "Duh...") off the terminal.

The command line calls :func:`redirect_native_stderr` once at start-up; Python's own ``sys.stderr``
still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import sys

_native_stderr_redirected = False


def redirect_native_stderr() -> None:
    """Silence what C libraries write to file descriptor 2, keeping Python's ``sys.stderr`` on the terminal.

    libsndfile's mpg123 prints notes ("Illegal Audio-MPEG-Header", "Duh...")
    straight to fd 2, between stemsplit's own messages. This points fd 2 at
    /dev/null and rebinds ``sys.stderr`` to a duplicate of the original fd 2
    (line-buffered, same encoding and error handler), so everything Python
    prints (warnings, rich, tracebacks) still reaches the terminal; faulthandler,
    if enabled, follows it. Call it once at start-up, before logging handlers
    capture ``sys.stderr``; child processes started afterwards inherit the
    silenced fd 2. Idempotent; a no-op where ``sys.stderr`` is not fd 2 (tests
    capturing output, embedded interpreters) or fd 2 cannot be duplicated.
    """
    global _native_stderr_redirected
    if _native_stderr_redirected:
        return
    stream = sys.stderr
    try:
        if stream is None or stream.fileno() != 2:
            return
        stream.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return
    try:
        replacement = open(  # noqa: SIM115 - it becomes sys.stderr, for the life of the process
            saved, "w", buffering=1, encoding=stream.encoding, errors=stream.errors, closefd=True
        )
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(saved)
        return
    sys.stderr = replacement
    _native_stderr_redirected = True
    if faulthandler.is_enabled():
        faulthandler.enable(file=replacement)
