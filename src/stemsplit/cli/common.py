"""What every ``stemsplit`` command shares: the consoles, the one error printer, option enums.

User text (file names, messages quoting them) is never read as rich markup:
both consoles have markup off, so ``a[/b].wav`` prints as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any

from rich.console import Console
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click.core import Context  # (the click that Typer vendors)

# The exit statuses live in errors.py; the command modules take them from here with the printers.
from ..errors import EXIT_FAILED, EXIT_INTERNAL, EXIT_USAGE, StemsplitError, UsageError  # noqa: F401


def _width() -> int | None:
    """The consoles' width: rich's own choice (COLUMNS, else the terminal), unless COLUMNS is below 20
    (0 from a misconfigured shell made rich print nothing at all, errors included): then 80."""
    columns = os.environ.get("COLUMNS", "").strip()
    return 80 if columns.isdigit() and int(columns) < 20 else None


# --- printing is best effort -------------------------------------------------------------------


class BestEffortStream:
    """A standard stream whose failures end its printing, never the run.

    ``stemsplit song.wav --json | head -1`` closes stdout after one line; ``> /full/disk/log`` fills
    up; ``2>&1 | less`` quits. Printing is a courtesy and the stems are the work: the first write or
    flush that fails (EPIPE, EBADF, ENOSPC, EIO: any ``OSError``) marks the stream lost, and every later
    write goes nowhere. The file descriptor underneath is pointed at /dev/null, so that nobody else
    (the interpreter's last flush at exit, which turned a closed pipe into exit 120, a C library) fails
    on it either. ``lost`` says why it was lost (None while it works).
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.lost: OSError | None = None

    def write(self, text: str) -> int:
        if self.lost is None:
            try:
                self.stream.write(text)
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.lost is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        self.lost = exc
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self.stream.fileno()  # (a test's in-memory stream has none: io.UnsupportedOperation)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)

    def isatty(self) -> bool:
        try:
            return self.lost is None and self.stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(getattr(self.stream, "closed", False))

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:
        return getattr(self.stream, "errors", None)


def reopen_closed_standard_fds() -> None:
    """Put /dev/null on file descriptors 0, 1 and 2 where they are closed (``stemsplit x.wav >&-``).

    Otherwise the next file opened (a stem, a manifest) takes the number, and whatever writes to
    "standard output" or a C library's "standard error" writes into it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)


@contextmanager
def best_effort_output() -> Iterator[tuple[BestEffortStream | None, BestEffortStream | None]]:
    """``sys.stdout`` and ``sys.stderr`` as :class:`BestEffortStream` for the body (every writer:
    print, both consoles, warnings, logging); the streams as they were afterwards. Yields the two
    wrappers (None for a stream that is None: closed when the process started)."""
    saved = sys.stdout, sys.stderr
    out = None if saved[0] is None else BestEffortStream(saved[0])
    err = None if saved[1] is None else BestEffortStream(saved[1])
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield out, err
    finally:
        for wrapper in (out, err):
            if wrapper is not None:
                wrapper.flush()
        sys.stdout, sys.stderr = saved


# Both consoles look sys.stdout and sys.stderr up at each print: the best-effort streams while main() runs.
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True, width=_width())
out_console = Console(markup=False, highlight=False, width=_width())

# "\b" keeps click from re-wrapping the paragraph in --help.
EXAMPLES = """Examples:

\b
  stemsplit song.wav -o stems/                separate one song (stems/song/vocals.wav, ...)
  stemsplit a.mp3 b.flac --light -o stems/    fast mode, several files
  stemsplit song.wav --two-stems vocals       vocals and no_vocals only
  stemsplit song.wav -m demo,mine.ckpt:2      an ensemble: the stems of both, averaged 1:2
  stemsplit batch music/ -o stems/            a whole folder, resumable
  stemsplit doctor                            what runs here (paste into bug reports)
"""


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, ESC, ...) escaped: one line, no terminal tricks."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def error_line(message: str) -> None:
    """Print ``stemsplit: error: MESSAGE`` on stderr as one line (control characters escaped)."""
    err_console.print(f"stemsplit: error: {one_line(message)}")


def warning_line(message: str) -> None:
    """Print ``stemsplit: warning: MESSAGE`` on stderr as one line: something that will fail later."""
    err_console.print(f"stemsplit: warning: {one_line(message)}")


# Library option names -> the flags that set them (the library names problems, the CLI adds flags).
FLAGS = {
    "window": "--window",
    "hop": "--hop",
    "batch_size": "--batch-size",
    "device": "--device",
    "precision": "--precision",
    "compile": "--compile",
    "stage": "--stage",
    "filename": "--filename",
    "fmt": "--format",
    "bit_depth": "--bit-depth",
    "clip_mode": "--clip-mode",
    "stems": "--stems",
    "two_stems": "--two-stems",
    "out": "--out",
    "model": "--model",
    "model_config": "--model-config",
    "residual": "--residual",
    "shifts": "--shifts",
    "shard": "--shard",
}


def flag_problem(exc: Exception) -> str:
    """A library error about a setting (its ``option`` and ``problem``) as one line naming the flag."""
    option = getattr(exc, "option", None)
    problem = getattr(exc, "problem", str(exc))
    return f"{FLAGS.get(option, option)}: {problem}" if option else problem


def usage_error(exc: Exception) -> UsageError:
    """A library error about a setting -> a usage error (exit 2) naming the flag."""
    return UsageError(flag_problem(exc))


def fail(message: str, code: int = EXIT_FAILED) -> StemsplitError:
    """The error to raise for ``message`` (already naming its flag) and exit status ``code``: ``cli.main``
    prints it, as it prints every :class:`StemsplitError`."""
    return StemsplitError(message, exit_code=code)


class Commands(TyperGroup):
    """stemsplit's command groups (``stemsplit``, ``stemsplit models``): the one place where an error a user
    can cause (:class:`StemsplitError`, from any command or from the library) becomes its line on stderr,
    its flag named, and its exit status. ``--debug`` shows the traceback of any but a usage error."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        except StemsplitError as exc:
            if "--debug" in argv and exc.exit_code != EXIT_USAGE:
                raise
            error_line(flag_problem(exc))
            if standalone_mode:
                sys.exit(exc.exit_code)
            return exc.exit_code

    # Typer turns a Ctrl-C it sees (while it parses the flags, or in a command that does not catch its
    # own) into a silent exit 130: it is said here, as every other way out is.
    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        with _interrupt_said():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Context) -> Any:
        with _interrupt_said():
            return super().invoke(ctx)


@contextmanager
def _interrupt_said() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt as exc:
        raise StemsplitError("interrupted", exit_code=interrupted_status(exc)) from None


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP: the song in progress is discarded, and the exit status is 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Interrupted` like Ctrl-C, so cleanup runs for all three."""

    def handler(signum: int, frame: object) -> None:
        for s in wanted:  # a second Ctrl-C must not cut the cleanup of the first short
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {s: signal.getsignal(s) for s in wanted}
    for s in wanted:
        if previous[s] is not signal.SIG_IGN:  # nohup'd or backgrounded: keep ignoring
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The exit status after an interruption: 128 + the signal's number (Ctrl-C: 130)."""
    return 128 + exc.signum if isinstance(exc, Interrupted) else 130
