"""The one base of every error a user can cause, and the exit statuses the command line ends with.

Every library error (a file that is not audio, a setting out of range, a checkpoint that is not a
model, a dataset in the wrong layout...) is a :class:`StemsplitError`: its message is one line naming
the file or the setting and the problem. The command line turns it into ``stemsplit: error: ...`` and
its ``exit_code`` in one place (``cli.common.Commands``), adding the flag for the setting the error names
(``option``). Subclasses exist where a caller handles one kind apart (``except OutputExistsError``).

No imports: every module (``model/`` and ``audio`` included) can take its error from here.
"""

from __future__ import annotations

# Exit statuses (docs/guarantees.md, "Exit status"): the work's, whether or not its output could be printed.
EXIT_FAILED = 1  # a file failed; the others were done
EXIT_USAGE = 2  # a bad flag or argument; nothing was done
EXIT_INTERNAL = 70  # a bug: an unexpected exception (sysexits' EX_SOFTWARE)


class StemsplitError(Exception):
    """A problem the user can fix, said in one line.

    ``problem`` is the message without the setting's name, ``option`` the library option at fault (the
    command line shows its flag: ``window`` is ``--window``), if one is. ``exit_code`` is the command's
    exit status when it ends on this error: 1 (failed) unless the class or the caller says 2 (usage).
    """

    exit_code: int = EXIT_FAILED

    def __init__(self, problem: str = "", option: str | None = None, *, exit_code: int | None = None) -> None:
        super().__init__(f"{option}: {problem}" if option else problem)
        self.problem, self.option = problem, option
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(StemsplitError):
    """A bad flag or argument, found before anything ran: exit 2."""

    exit_code = EXIT_USAGE


def first_line(exc: BaseException) -> str:
    """The first non-empty line of a library's or the system's error, to quote in one of ours (its
    type's name when it says nothing)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
