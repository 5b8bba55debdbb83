"""The ``stemsplit`` command line: parsing and printing only (the work is in :mod:`stemsplit.engine`).

This module holds the app, ``main()`` and the error handling; one module per command group holds the
commands: ``separate`` (separate, batch, speakers; ``ray_batch`` for ``batch --ray``), ``models``,
``train`` (train, finetune), ``eval``, ``synth`` (synth, synth-speech), ``doctor``; ``common`` what
they share (consoles, ``Commands``: the one place a StemsplitError becomes its line and exit status).
"""

from __future__ import annotations

import os
import signal


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C while the modules below load: nothing has been done yet, so one line and exit 130."""
    os.write(2, b"stemsplit: error: interrupted\n")
    os._exit(130)


# Importing what follows takes a while (numpy, rich, typer); Ctrl-C then used to print a traceback.
# Installed only where Python's own handler is (not where SIGINT is ignored: nohup, background jobs),
# and put back at the end of this module, where main() takes over.
_sigint_before = signal.getsignal(signal.SIGINT)
if _sigint_before is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import json  # noqa: E402
import sys  # noqa: E402

import typer  # noqa: E402

from .. import audio  # noqa: E402
from ..version import __version__  # noqa: E402
from .common import (  # noqa: E402
    EXAMPLES,
    EXIT_INTERNAL,
    Commands,
    best_effort_output,
    error_line,
    one_line,
    out_console,
    reopen_closed_standard_fds,
)
from .doctor import doctor_command  # noqa: E402
from .eval import eval_command  # noqa: E402
from .models import models_app  # noqa: E402
from .separate import separation_command, speakers_command  # noqa: E402
from .synth import synth_command, synth_speech_command  # noqa: E402
from .train import finetune_command, train_command  # noqa: E402

app = typer.Typer(
    cls=Commands,  # every StemsplitError ends there: one line and its exit status
    name="stemsplit",
    help="Split songs into drums, bass, other and vocals with TS-BSMamba2.\n\n" + EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out_console.print(f"stemsplit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Split songs into drums, bass, other and vocals with TS-BSMamba2."""


app.command("separate", no_args_is_help=True)(separation_command(batch=False))
app.command("batch", no_args_is_help=True)(separation_command(batch=True))
app.command("speakers", no_args_is_help=True)(speakers_command)
app.add_typer(models_app, name="models")
app.command("eval")(eval_command)
app.command("train")(train_command)
app.command("finetune")(finetune_command)
app.command("synth")(synth_command)
app.command("synth-speech")(synth_speech_command)
app.command("doctor")(doctor_command)


SUBCOMMANDS = {
    "separate",
    "batch",
    "speakers",
    "doctor",
    "models",
    "train",
    "finetune",
    "eval",
    "synth",
    "synth-speech",
}
GLOBAL_FLAGS = {"--help", "-h", "--version"}
MODELS_SUBCOMMANDS = {"download", "path", "verify", "show"}


def _click_error(exc: Exception) -> tuple[str, int] | None:
    """(``format_message()``, ``exit_code``) of a usage error raised by click, whichever copy of click
    (Typer's or click's own); None for any other exception."""
    format_message, exit_code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
    if callable(format_message) and isinstance(exit_code, int):
        return format_message(), exit_code
    return None


def expand_shorthands(args: list[str]) -> list[str]:
    """``stemsplit FILE ...`` is ``stemsplit separate FILE ...``; ``stemsplit models NAME`` is the
    hidden ``stemsplit models show NAME``; ``stemsplit help [COMMAND]`` (no file called help here) is
    ``stemsplit [COMMAND] --help``."""
    if args[:1] == ["help"] and not os.path.lexists("help"):
        return [*(args[1:2] if args[1:2] and args[1] in SUBCOMMANDS else []), "--help"]
    if args and args[0] not in SUBCOMMANDS and args[0] not in GLOBAL_FLAGS:
        args = ["separate", *args]
    if args[:1] == ["models"] and len(args) > 1 and args[1] not in MODELS_SUBCOMMANDS and args[1][0] != "-":
        args = ["models", "show", *args[1:]]
    return args


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``stemsplit FILE ...`` means ``stemsplit separate FILE ...``.

    Every way out is one line on stderr and an exit status: the errors a
    user can cause are printed by the app's group (``cli.common.Commands``),
    click's usage errors (exit 2) here as ``stemsplit: error: ...``, and an unexpected
    exception (a bug) prints one ``internal error`` line and exits 70, unless
    ``--debug`` asks for the traceback. Printing is best effort
    (:class:`~stemsplit.cli.common.BestEffortStream`): a closed pipe or a full disk on stdout or
    stderr stops the printing, never the work, and leaves the exit status the work's.
    """
    reopen_closed_standard_fds()
    args = expand_shorthands(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    if not debug:
        audio.redirect_native_stderr()  # C libraries' own messages ("Duh...") never reach the user
    with best_effort_output():  # (after the line above, which puts a new sys.stderr in place)
        code = _run(args, debug)
    sys.exit(code)


def _run(args: list[str], debug: bool) -> int:
    """The command ``args`` asks for; returns its exit status."""
    try:
        code = app(args=args, prog_name="stemsplit", standalone_mode=False)
    except KeyboardInterrupt:
        code = _error(args, "interrupted", 130)
    except Exception as exc:
        click_error = _click_error(exc)
        if click_error and type(exc).__name__ == "NoArgsIsHelpError":  # `stemsplit batch` alone: its help
            out_console.print(click_error[0], soft_wrap=True)
            code = click_error[1]
        elif click_error:  # click's usage errors: one line, exit 2
            code = _error(args, _bad_value(exc) or click_error[0], click_error[1])
        elif type(exc).__name__ == "Abort":  # Ctrl-C at a prompt
            code = _error(args, "interrupted", 130)
        elif debug:
            raise
        else:
            message = f"internal error: {type(exc).__name__}: {exc} (run again with --debug and report it)"
            code = _error(args, message, EXIT_INTERNAL)
    return code if isinstance(code, int) else 0


# Pydantic's error types for an option's value (Typer checks values with pydantic) -> plain words.
_NOT_A = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "finite_number": "a finite number",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def _bad_value(exc: Exception) -> str | None:
    """A value Typer refused, in plain words naming the flag: ``--shifts: 'abc' is not a whole number``,
    ``--epochs: must be at least 1, not 0`` (not pydantic's "Input should be a valid integer, unable to
    parse string as an integer"); None for other usage errors (click's own words are plain)."""
    param, errors = getattr(exc, "param", None), getattr(exc.__cause__, "errors", None)
    if param is None or not callable(errors):
        return None
    longest = max(getattr(param, "opts", None) or [""], key=len)
    flag = longest if longest.startswith("-") else (param.name or "value").upper()
    error = errors()[0]
    kind, value = error.get("type", ""), error.get("input")
    if kind in _NOT_A:
        return f"{flag}: {value!r} is not {_NOT_A[kind]}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"{flag}: must be {words} {error.get('ctx', {}).get(key)}, not {value}"
    # An enum's refusal is Typer's own sentence: "Value error, 'ogg' is not one of 'wav', 'flac', 'mp3'."
    return f"{flag}: {str(error.get('msg', exc)).removeprefix('Value error, ')}"


# The commands whose --json prints events on stdout (cli.separate.Reporter).
JSON_COMMANDS = {"separate", "batch", "speakers"}


def _error(args: list[str], message: str, code: int) -> int:
    """The error line; with --json, also the ``error`` event the command's own errors print (a program
    reading stdout sees every failure, a misspelt flag and a bug included). Returns ``code``."""
    error_line(message)
    flags = args[1 : args.index("--")] if "--" in args else args[1:]
    if args and args[0] in JSON_COMMANDS and "--json" in flags:
        print(json.dumps({"event": "error", "message": one_line(message), "exit_code": code}), flush=True)
    return code


if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:  # loaded: KeyboardInterrupt again
    signal.signal(signal.SIGINT, _sigint_before)
