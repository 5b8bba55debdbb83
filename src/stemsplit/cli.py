"""The ``stemsplit`` command line: parsing and printing only (the work is in :mod:`stemsplit.separate`)."""

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
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import typer  # noqa: E402
from rich.table import Table  # noqa: E402

from . import __version__, audio  # noqa: E402
from .cli_common import (  # noqa: E402
    EXAMPLES,
    EXIT_INTERNAL,
    Commands,
    best_effort_output,
    error_line,
    fail,
    interrupted_status,
    interrupts_as_exceptions,
    one_line,
    out_console,
    reopen_closed_standard_fds,
)
from .cli_eval import eval_command  # noqa: E402
from .cli_finetune import finetune_command  # noqa: E402
from .cli_models import models_app  # noqa: E402
from .cli_separate import separation_command, speakers_command  # noqa: E402
from .cli_train import train_command  # noqa: E402
from .errors import UsageError  # noqa: E402

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


@app.command()
def synth(
    out: Path = typer.Argument(..., help="New (or empty) folder for the dataset.", show_default=False),
    songs: int = typer.Option(100, "--songs", help="Training songs (in OUT/train)."),
    valid: int = typer.Option(10, "--valid", help="Validation songs (in OUT/train, named in valid.txt)."),
    test: int = typer.Option(10, "--test", help="Test songs (in OUT/test)."),
    seconds: float = typer.Option(20.0, "--seconds", help="Length of every song."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same songs."),
    sample_rate: int = typer.Option(44100, "--sample-rate", help="Sample rate in Hz."),
    workers: int = typer.Option(1, "--workers", help="Processes generating songs."),
    soundfont: str | None = typer.Option(
        None,
        "--soundfont",
        help="Play the songs with FluidSynth through this General MIDI soundfont: an .sf2 or .sf3 file, or "
        "timgm6mb, fluidr3 or musescore for the one Debian installs (other songs than without it).",
        show_default=False,
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write a synthetic multitrack dataset (MUSDB18-HQ layout) for demos and tests.

    \b
    stemsplit synth data/synth --songs 100 --valid 10 --test 10 --seconds 20
    stemsplit synth data/gm --soundfont timgm6mb --songs 20 --seconds 20
    stemsplit train --musdb data/synth -o runs/demo
    """
    from .datasets.fluidsynth import FluidSynthError, find_soundfont

    font = None
    if soundfont is not None:  # checked before the synthesiser (and scipy) loads: a usage error is quick
        try:
            font = find_soundfont(soundfont)
        except FluidSynthError as exc:
            raise UsageError(f"--soundfont: {exc}") from exc
    from .datasets.synth import SynthError, check_dataset, write_dataset

    try:  # what was asked wrong is a usage error, before anything is written
        check_dataset(out, songs, valid, test, seconds, seed, sample_rate, workers, font)
    except SynthError as exc:
        raise UsageError(str(exc)) from exc
    try:
        with interrupts_as_exceptions():  # SIGTERM and SIGHUP too: the song being made is removed
            write_dataset(
                out,
                train=songs,
                valid=valid,
                test=test,
                seconds=seconds,
                seed=seed,
                sample_rate=sample_rate,
                workers=workers,
                soundfont=font,
            )
    except KeyboardInterrupt as exc:
        message = f"interrupted; the finished songs are in {out}, delete it to start again"
        raise fail(message, interrupted_status(exc)) from None
    out_console.print(
        f"wrote {songs} training, {valid} validation and {test} test songs "
        f"({seconds:g} s, {sample_rate} Hz, seed {seed}{f', {font.path.name}' if font else ''}) to {out}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command("synth-speech")
def synth_speech(
    out: Path = typer.Argument(..., help="New (or empty) folder for the dataset.", show_default=False),
    train: int = typer.Option(100, "--train", help="Training mixtures (in OUT/train-100)."),
    dev: int = typer.Option(10, "--dev", help="Validation mixtures (in OUT/dev)."),
    test: int = typer.Option(10, "--test", help="Test mixtures (in OUT/test)."),
    seconds: float = typer.Option(4.0, "--seconds", help="Length of every mixture."),
    seed: int = typer.Option(0, "--seed", help="Same seed (and espeak-ng version), same files."),
    workers: int = typer.Option(1, "--workers", help="Processes generating mixtures."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write two-talker noisy, reverberant speech mixtures (Libri2Mix layout, 8 kHz) for U-Mamba-Net.

    Talkers are espeak-ng voices reading random sentences; rooms, T60 and
    placements are drawn as the U-Mamba-Net paper's Table I (pyroomacoustics);
    s1/s2 hold each talker's direct sound (the targets), mix_both the noisy,
    reverberant mixture.

    \b
    stemsplit synth-speech data/speech --train 100 --dev 10 --test 10 --seconds 4
    """
    from .datasets.libri2mix import SpeechSynthError
    from .datasets.speech_synth import check_request, check_tools, write_dataset

    counts = {"train": train, "dev": dev, "test": test}
    try:  # everything that can be checked before work starts: exit 2, nothing written
        check_request(out, seconds=seconds, seed=seed, workers=workers, **counts)
        check_tools()
    except SpeechSynthError as exc:
        raise UsageError(str(exc)) from exc
    try:
        with interrupts_as_exceptions():  # SIGTERM and SIGHUP too: nothing is left behind
            write_dataset(out, seconds=seconds, seed=seed, workers=workers, **counts)
    except SpeechSynthError as exc:
        raise fail(f"{exc}; nothing was written") from exc
    except KeyboardInterrupt as exc:
        raise fail("interrupted; nothing was written", interrupted_status(exc)) from None
    out_console.print(
        f"wrote {train} training, {dev} validation and {test} test mixtures "
        f"({seconds:g} s, 8000 Hz, seed {seed}) to {out}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command()
def doctor() -> None:
    """What runs here: versions, devices, Mamba-2 kernels, model cache, audio codecs."""
    import soundfile
    import soxr
    import torch

    from .model.mamba2 import BACKEND_ENV, cuda_kernels, resolve_backend

    table = Table(show_header=False, box=None)
    table.add_row("stemsplit", __version__)
    table.add_row("python", f"{platform.python_version()} ({platform.platform()})")
    table.add_row("torch", torch.__version__)
    table.add_row("cpu threads", str(torch.get_num_threads()))
    cuda = torch.cuda.is_available()
    table.add_row("cuda", torch.cuda.get_device_name(0) if cuda else "not available")
    if cuda:
        kernels = cuda_kernels()
        if kernels is None:
            kernels_text = "mamba_ssm not importable (see warning above)"
        else:
            kernels_text = "mamba_ssm fused" if kernels.fused else "mamba_ssm unfused (no causal_conv1d)"
        table.add_row("cuda kernels", kernels_text)
    device = torch.device("cuda" if cuda else "cpu")
    try:
        backend = f"{resolve_backend(None, device)} (on {device.type})"
    except (ValueError, RuntimeError) as exc:  # STEMSPLIT_MAMBA_BACKEND asks for what cannot run here
        backend = f"{BACKEND_ENV}={os.environ.get(BACKEND_ENV)}: {exc}"
    table.add_row("mamba-2 backend", backend)
    from .runtime import cpu_auto_precision

    precision, why = cpu_auto_precision()
    table.add_row(
        "cpu precision",
        f"--precision auto gives {precision} on the CPU: {why}"
        + (" (for models measured faster in bf16: TS-BSMamba2, BSRNN)" if precision == "bf16" else ""),
    )
    table.add_row("libsndfile", soundfile.__libsndfile_version__)
    table.add_row("formats", ", ".join(sorted(soundfile.available_formats())))
    try:
        import av

        codec = ".".join(map(str, av.library_versions["libavcodec"]))
        table.add_row("ffmpeg (PyAV)", f"av {av.__version__}, libavcodec {codec}")
    except ImportError as exc:
        table.add_row("ffmpeg (PyAV)", f"not importable ({exc}): only libsndfile's formats")
    table.add_row("resampler", f"soxr {soxr.__version__}")
    from . import weights

    table.add_row("model cache", str(weights.cache_dir()))
    try:
        registry = weights.load_registry()
        for name in registry.models:
            path = weights.cached_path(name)
            state = f"cached, {path.stat().st_size / 1e6:.0f} MB" if path else "not downloaded"
            table.add_row(f"  {name}", state + (" (default)" if name == registry.default else ""))
    except weights.WeightsError as exc:
        table.add_row("  registry", f"unreadable: {exc}")
    out_console.print(table)


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


def _is_click_error(exc: Exception) -> bool:
    """A usage error raised by click (``format_message()`` and ``exit_code``), whichever copy of click."""
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


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
    user can cause are printed by the app's group (``cli_common.Commands``),
    click's usage errors (exit 2) here as ``stemsplit: error: ...``, and an unexpected
    exception (a bug) prints one ``internal error`` line and exits 70, unless
    ``--debug`` asks for the traceback. Printing is best effort
    (:class:`~stemsplit.cli_common.BestEffortStream`): a closed pipe or a full disk on stdout or
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
        if type(exc).__name__ == "NoArgsIsHelpError":  # `stemsplit batch` alone: its help, as help
            out_console.print(exc.format_message(), soft_wrap=True)
            code = exc.exit_code
        elif _is_click_error(exc):  # click's usage errors (Typer's copy or click's own): one line, exit 2
            # An enum's refusal reads "Invalid value for '--format': Value error, 'ogg' is not one of ...".
            code = _error(args, exc.format_message().replace(": Value error, ", ": "), exc.exit_code)
        elif type(exc).__name__ == "Abort":  # Ctrl-C at a prompt
            code = _error(args, "interrupted", 130)
        elif debug:
            raise
        else:
            message = f"internal error: {type(exc).__name__}: {exc} (run again with --debug and report it)"
            code = _error(args, message, EXIT_INTERNAL)
    return code if isinstance(code, int) else 0


# The commands whose --json prints events on stdout (cli_separate.Reporter).
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
