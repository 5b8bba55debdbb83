"""Deterministic synthetic multitrack songs: drums, bass, other and vocals from one integer seed.

The songs are for training a small demo separation model and for tests that
check it separates fresh songs, so they aim at "realistic enough that
separation is non-trivial, but learnable", and at speed (numpy and scipy only;
a 30 s stereo song renders in a fraction of a second on one core).

Each song draws a tempo, a key and mode, a chord progression, an arrangement and a timbre per
instrument; every stem is levelled, panned, widened and reverberated, and one gain scales all stems
so the mixture peaks at 0.6 to 0.9: the mixture is exactly the sum of the stems. With a General MIDI
soundfont (``stemsplit synth --soundfont``), FluidSynth plays the same kind of arrangement instead
(:mod:`stemsplit.datasets.fluidsynth`). docs/training.md ("How a song is made") describes the
instruments.

:func:`write_dataset` writes a MUSDB18-HQ-layout folder that
:func:`stemsplit.datasets.musdb.find_tracks` reads.

This module is the front (:func:`generate_song`, the dataset's files); the parts:
:mod:`.plan` (the song's plan, signal building blocks), :mod:`.instruments` (drums, bass,
other), :mod:`.voice` (the formant vocals), :mod:`.song` (:class:`Song`, mixing),
:mod:`.general_midi` (the soundfont songs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from ...audio.info import sf_name
from ...errors import StemsplitError
from ...files import write_atomically, write_failure
from .. import fluidsynth
from ..synth_request import synth_request_problem
from .general_midi import soundfont_song
from .instruments import render_bass, render_drums, render_other
from .plan import STEMS, draw_plan
from .song import Song, assemble_song, mix_stems
from .voice import render_vocals

__all__ = ["STEMS", "Song", "SynthError", "generate_song", "song_seed", "write_dataset", "write_song"]

SUBSETS = ("train", "valid", "test")
MIN_SAMPLE_RATE = 22050  # the drums' and consonants' filters reach 10 kHz, which needs more than 20 kHz
NAME_PREFIX = {"train": "song", "valid": "valid", "test": "test"}


class SynthError(StemsplitError):
    """A synthetic dataset cannot be written as asked; the one-line message says why."""


def generate_song(
    seed: int,
    seconds: float,
    sample_rate: int = 44100,
    soundfont: fluidsynth.Soundfont | None = None,
    scratch: Path | None = None,
) -> Song:
    """Render one song: four stems, each float32 [2, round(seconds * sample_rate)].

    The same ``(seed, seconds, sample_rate)`` always gives the same arrays. With a ``soundfont``
    (:func:`stemsplit.datasets.fluidsynth.find_soundfont`) FluidSynth plays the instruments instead,
    General MIDI programs drawn per song (another song than without one; as repeatable), its
    temporary files in ``scratch`` (the system's temporary folder if None).
    """
    if seed < 0:
        raise SynthError(f"seed must be a non-negative integer, not {seed}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise SynthError(f"seconds must be positive, not {seconds}")
    _check_sample_rate(sample_rate, soundfont)
    if soundfont is not None:
        return soundfont_song(seed, seconds, sample_rate, soundfont, scratch)
    # Each instrument draws from its own stream, so changing one part of the recipe leaves the others.
    streams = np.random.SeedSequence(seed).spawn(6)
    plan = draw_plan(np.random.default_rng(streams[0]), seconds, sample_rate)
    info: dict[str, str] = {}
    renderers = {"drums": render_drums, "bass": render_bass, "other": render_other, "vocals": render_vocals}
    dry = {}
    for i, name in enumerate(STEMS):
        plan.rng = np.random.default_rng(streams[1 + i])
        dry[name] = renderers[name](plan, info)

    stems, rt60 = mix_stems(dry, np.random.default_rng(streams[5]), sample_rate)
    info["reverb"] = f"RT60 {rt60:.1f} s"
    return assemble_song(stems, sample_rate, seed, plan, info)


def _check_sample_rate(sample_rate: int, soundfont: fluidsynth.Soundfont | None) -> None:
    if sample_rate < MIN_SAMPLE_RATE:
        raise SynthError(f"sample rate must be at least {MIN_SAMPLE_RATE} Hz, not {sample_rate}")
    if soundfont is not None and sample_rate > fluidsynth.MAX_SAMPLE_RATE:
        raise SynthError(f"FluidSynth renders at up to {fluidsynth.MAX_SAMPLE_RATE} Hz, not {sample_rate}")


# --- files ----------------------------------------------------------------------------------------


def write_song(song: Song, folder: Path) -> None:
    """Write ``mixture.wav`` and ``<stem>.wav`` (16-bit PCM) into ``folder`` (created if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(sf_name(folder / "mixture.wav"), song.mixture.T, song.sample_rate, subtype="PCM_16")
    for name in STEMS:
        sf.write(sf_name(folder / f"{name}.wav"), song.stems[name].T, song.sample_rate, subtype="PCM_16")


def song_seed(seed: int, subset: str, index: int) -> int:
    """The seed of song ``index`` of ``subset``: a hash of all three, so subsets never share seeds and
    adding songs never changes the earlier ones."""
    entropy = [seed % 2**64, SUBSETS.index(subset), index]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint32).astype(np.uint64) @ [1, 2**32])


def song_name(subset: str, index: int) -> str:
    return f"{NAME_PREFIX[subset]}-{index:05d}"


def _write_one(job: tuple[Path, int, float, int, fluidsynth.Soundfont | None]) -> None:
    """Generate one song and write it atomically: a hidden temporary sibling folder, then a rename.
    FluidSynth's temporary files go in there too (nothing is written outside the dataset's folder).
    A failed write (a full disk) is a :class:`SynthError` in the words of every failed write."""
    folder, seed, seconds, sample_rate, soundfont = job
    temp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        temp.mkdir()
        write_song(generate_song(seed, seconds, sample_rate, soundfont, scratch=temp), temp)
        os.rename(temp, folder)
    except (OSError, sf.LibsndfileError) as exc:  # (raised in a worker process too: plain text crosses)
        dataset = folder.parent.parent
        raise SynthError(
            f"{folder}: writing the song failed: {write_failure(exc, folder.parent)}; the finished songs "
            f"stay in {dataset}: make room and run the same command again to finish it"
        ) from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# The request a dataset folder was made for (beside valid.txt): the same command run again
# finishes an unfinished dataset (a full disk, Ctrl-C, a killed job) instead of refusing its folder.
REQUEST_FILE = "synth-request.json"


def _request(
    train: int, valid: int, test: int, seconds: float, seed: int, sample_rate: int, soundfont
) -> dict[str, object]:
    """What decides a dataset's songs, as :data:`REQUEST_FILE` records it (by the flags' names)."""
    font = None if soundfont is None else soundfont.path.name
    return {
        "songs": train,
        "valid": valid,
        "test": test,
        "seconds": seconds,
        "seed": seed,
        "sample_rate": sample_rate,
        "soundfont": font,
    }


def _resuming(out: Path, request: dict[str, object]) -> bool:
    """Whether ``out`` is this request's unfinished dataset (raises SynthError if it is another's)."""
    try:
        saved = json.loads((out / REQUEST_FILE).read_text())
    except (OSError, ValueError):
        return False  # not a dataset we made (or nothing there): the usual checks answer
    if saved == request:
        return True
    changed = ", ".join(
        f"--{key.replace('_', '-')} {request[key]} (was {saved.get(key)})"
        for key in request
        if isinstance(saved, dict) and saved.get(key) != request[key]
    )
    raise SynthError(
        f"{out}: an unfinished synth dataset made with other settings ({changed or 'unknown'}); "
        "run its own command again to finish it, or choose a new folder"
    )


def check_dataset(
    out: Path,
    train: int,
    valid: int,
    test: int,
    seconds: float,
    seed: int,
    sample_rate: int,
    workers: int,
    soundfont: fluidsynth.Soundfont | None,
) -> list[tuple]:
    """Check a :func:`write_dataset` request before anything is written; -> the songs to make.

    Raises :class:`SynthError` (one line) for what the caller asked wrong.
    """
    _check_sample_rate(sample_rate, soundfont)
    out = Path(out)
    counts = {"train": train, "valid": valid, "test": test}
    resuming = _resuming(out, _request(train, valid, test, seconds, seed, sample_rate, soundfont))
    problem = synth_request_problem(out, counts, "songs", seconds, sample_rate, seed, workers, resuming)
    if problem:
        raise SynthError(problem)
    jobs = []
    for subset, count in (("train", train), ("valid", valid), ("test", test)):
        folder = out / ("test" if subset == "test" else "train")
        jobs += [
            (folder / song_name(subset, i), song_seed(seed, subset, i), seconds, sample_rate, soundfont)
            for i in range(count)
            if not (resuming and (folder / song_name(subset, i)).is_dir())  # finished (renamed whole)
        ]
    seeds = [job[1] for job in jobs]
    if len(set(seeds)) != len(seeds):  # a 64-bit hash collision: astronomically unlikely, but checked
        raise SynthError(f"seed {seed} gives two songs the same seed; choose another --seed")
    return jobs


def write_dataset(
    out: Path,
    *,
    train: int,
    valid: int,
    test: int,
    seconds: float,
    seed: int,
    sample_rate: int = 44100,
    workers: int = 1,
    soundfont: fluidsynth.Soundfont | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write a MUSDB18-HQ-layout dataset into the new or empty folder ``out``.

    ``out/train/song-NNNNN`` (training songs) and ``out/train/valid-NNNNN``
    (validation songs, listed in ``out/valid.txt``), ``out/test/test-NNNNN``;
    each folder holds ``mixture.wav`` and ``<stem>.wav``. ``progress(done,
    total)`` is called after each song. With a ``soundfont``, FluidSynth plays
    the songs (see :func:`generate_song`).
    """
    out = Path(out)
    jobs = check_dataset(out, train, valid, test, seconds, seed, sample_rate, workers, soundfont)
    request = _request(train, valid, test, seconds, seed, sample_rate, soundfont)
    try:
        (out / "train").mkdir(parents=True, exist_ok=True)
        write_atomically(out / REQUEST_FILE, lambda temp: temp.write_text(json.dumps(request)))
        if test:
            (out / "test").mkdir(exist_ok=True)
        valid_names = "".join(song_name("valid", i) + "\n" for i in range(valid))
        write_atomically(out / "valid.txt", lambda temp: temp.write_text(valid_names))
    except OSError as exc:
        raise SynthError(f"{out}: writing the dataset failed: {write_failure(exc, out)}") from None
    if workers == 1 or len(jobs) <= 1:  # (a resumed dataset may have nothing left to make)
        for done, job in enumerate(jobs, 1):
            _write_one(job)
            if progress:
                progress(done, len(jobs))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            for done, _ in enumerate(pool.map(_write_one, jobs), 1):
                if progress:
                    progress(done, len(jobs))
