"""What every ``stemsplit`` command shares: the consoles, the one error printer, option enums.

User text (file names, messages quoting them) is never read as rich markup:
both consoles have markup off, so ``a[/b].wav`` prints as it is.
"""

from __future__ import annotations

from enum import Enum

import typer
from rich.console import Console

err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
out_console = Console(markup=False, highlight=False)

# "\b" keeps click from re-wrapping the paragraph in --help.
EXAMPLES = """Examples:

\b
  stemsplit song.wav -o stems/                separate one song (stems/song/vocals.wav, ...)
  stemsplit a.mp3 b.flac --light -o stems/    fast mode, several files
  stemsplit song.wav --two-stems vocals       vocals and no_vocals only
  stemsplit batch music/ -o stems/            a whole folder, resumable
  stemsplit doctor                            what runs here (paste into bug reports)
"""

# Exit codes (README, "Exit status").
EXIT_FAILED = 1  # a file failed; the others were done
EXIT_USAGE = 2  # a bad flag or argument; nothing was done
EXIT_INTERNAL = 70  # a bug: an unexpected exception (sysexits' EX_SOFTWARE)


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, ESC, ...) escaped: one line, no terminal tricks."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def error_line(message: str) -> None:
    """Print ``stemsplit: error: MESSAGE`` on stderr as one line (control characters escaped)."""
    err_console.print(f"stemsplit: error: {one_line(message)}")


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print the error line and return the ``typer.Exit`` to raise."""
    error_line(message)
    return typer.Exit(code)


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
