"""``stemsplit synth`` and ``stemsplit synth-speech``: synthetic datasets (MUSDB18-HQ, Libri2Mix layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import UsageError
from .common import fail, interrupted_status, interrupts_as_exceptions, out_console


def synth_command(
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
    from ..datasets.fluidsynth import FluidSynthError, find_soundfont

    font = None
    if soundfont is not None:  # checked before the synthesiser (and scipy) loads: a usage error is quick
        try:
            font = find_soundfont(soundfont)
        except FluidSynthError as exc:
            raise UsageError(f"--soundfont: {exc}") from exc
    from ..datasets.synth import SynthError, check_dataset, write_dataset

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
    except SynthError as exc:  # a full disk: one line; the same command finishes the dataset later
        raise fail(str(exc)) from None
    except KeyboardInterrupt as exc:
        message = f"interrupted; the finished songs are in {out}: run the same command again to finish it"
        raise fail(message, interrupted_status(exc)) from None
    out_console.print(
        f"wrote {songs} training, {valid} validation and {test} test songs "
        f"({seconds:g} s, {sample_rate} Hz, seed {seed}{f', {font.path.name}' if font else ''}) to {out}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


def synth_speech_command(
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
    from ..datasets.libri2mix import SpeechSynthError
    from ..datasets.speech_synth import check_request, check_tools, write_dataset

    counts: dict[str, Any] = {"train": train, "dev": dev, "test": test}
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
