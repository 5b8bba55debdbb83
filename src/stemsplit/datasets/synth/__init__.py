"""Deterministic synthetic multitrack songs: drums, bass, other and vocals from one integer seed.

The songs are for training a small demo separation model and for tests that
check it separates fresh songs, so they aim at "realistic enough that
separation is non-trivial, but learnable", and at speed (numpy and scipy only;
a 30 s stereo song renders in a fraction of a second on one core).

Each song draws a tempo, a key and mode, a chord progression, an arrangement
(an intro without drums or vocals, vocal rests between phrases, breaks) and a
timbre per instrument:

- **drums**: kick (pitch-swept sine and click), snare (tone and filtered noise),
  closed and open hi-hats (metallic squares and high-passed noise), toms and a
  crash, on one of several grooves with fills, velocity and timing variation.
- **bass**: a monophonic line on the chord roots with fifths, octaves and
  approach notes; a subtractive saw or square with a filter envelope, a driven
  sine or a two-operator FM bass.
- **other**: one or two of an FM electric piano, a Karplus-Strong pluck, a pad
  of detuned saws and an additive organ, playing chords and/or arpeggios.
- **vocals**: a formant synthesiser: a band-limited sawtooth source at the
  melody pitch (scoops, glides, delayed vibrato, jitter) through a cascade of
  five resonators moving between vowels, syllable envelopes, and fricative and
  plosive noise bursts at syllable onsets; phrases with rests.

Every stem is then levelled (a random gain within ±6 dB around its base level),
panned, widened and sent through its own share of one song-wide noise reverb.
One gain scales all stems so the mixture peaks at 0.6 to 0.9: the mixture is
exactly the sum of the stems.

With a General MIDI soundfont (``stemsplit synth --soundfont``), FluidSynth
plays the same kind of arrangement instead (the note functions are shared;
:mod:`stemsplit.datasets.fluidsynth` drives FluidSynth): a drum kit on channel 10
(standard, room, power, electronic, TR-808, jazz or brush), one of the eight
bass programs, a piano, organ, guitar, strings or pad for the chords and
perhaps a mallet, plucked or lead arpeggio for "other", and a choir, voice or
synth voice with pitch scoops and vibrato (or, in about a third of the songs,
the formant voice) for the vocals; velocities and timing humanised, panning,
chorus and each channel's chorus send drawn per song. Each stem is rendered on
its own, then mixed as above.

:func:`write_dataset` writes a MUSDB18-HQ-layout folder that
:func:`stemsplit.datasets.musdb.find_tracks` reads.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import fft as sp_fft
from scipy import signal

from ...audio import sf_name
from ...card import MUSIC_STEMS
from .. import fluidsynth
from ..synth_request import synth_request_problem

__all__ = ["STEMS", "Song", "SynthError", "generate_song", "song_seed", "write_dataset", "write_song"]

STEMS: tuple[str, ...] = tuple(MUSIC_STEMS)
SUBSETS = ("train", "valid", "test")
MIN_SAMPLE_RATE = 22050  # the drums' and consonants' filters reach 10 kHz, which needs more than 20 kHz
NAME_PREFIX = {"train": "song", "valid": "valid", "test": "test"}

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Chord progressions as 0-based scale degrees, one chord per bar (pop staples).
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (5, 3, 0, 4), (0, 3, 0, 4), (0, 2, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 6, 4), (0, 0, 5, 6)),
}


class SynthError(Exception):
    """A synthetic dataset cannot be written as asked; the one-line message says why."""


@dataclass
class Song:
    """One generated song.

    ``stems`` maps each name of :data:`STEMS` to float32 audio of shape
    [2, frames] (channels first); :attr:`mixture` is their sum.
    """

    stems: dict[str, np.ndarray]
    sample_rate: int
    seed: int
    tempo: float = 0.0
    key: str = ""
    description: str = ""
    info: dict[str, str] = field(default_factory=dict)

    @property
    def mixture(self) -> np.ndarray:
        """The sum of the stems, float32 [2, frames]."""
        return np.sum([self.stems[name] for name in STEMS], axis=0, dtype=np.float32)

    @property
    def frames(self) -> int:
        return self.stems[STEMS[0]].shape[-1]


def _midi_hz(note: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


# --- song plan: tempo, key, chords, arrangement ------------------------------------------------


@dataclass
class Plan:
    """The musical skeleton shared by all instruments. Times are in samples."""

    rng: np.random.Generator
    sr: int
    frames: int
    tempo: float
    tonic: int  # pitch class 0..11
    mode: str
    scale: tuple[int, ...]
    bars: int
    chords: list[int]  # scale degree per bar
    step: float  # one 16th note, in samples
    swing: float  # delay of odd 16ths, fraction of a step
    drums_on: np.ndarray  # bool per bar
    bass_on: np.ndarray
    other_on: np.ndarray
    vocals_on: np.ndarray

    def time(self, bar: int, step: float) -> int:
        """Sample index of 16th ``step`` of ``bar`` (swing applied to odd steps)."""
        swung = step + (self.swing if int(step) % 2 == 1 and step == int(step) else 0.0)
        return round((bar * 16 + swung) * self.step)

    def degree_midi(self, degree: int, octave_base: int) -> int:
        """MIDI note of scale ``degree`` (any integer; 7 is the tonic an octave up) above ``octave_base``."""
        octave, index = divmod(degree, 7)
        return octave_base + self.tonic + 12 * octave + self.scale[index]

    def chord_degrees(self, bar: int, seventh: bool = False) -> list[int]:
        root = self.chords[bar % len(self.chords)]
        return [root, root + 2, root + 4, *([root + 6] if seventh else [])]


def _plan(rng: np.random.Generator, seconds: float, sr: int) -> Plan:
    tempo = float(rng.integers(80, 151))
    mode = "major" if rng.random() < 0.55 else "minor"
    tonic = int(rng.integers(0, 12))
    step = sr * 60.0 / tempo / 4.0
    bars = math.ceil(seconds * sr / (16 * step)) + 1
    progression = PROGRESSIONS[mode][rng.integers(len(PROGRESSIONS[mode]))]
    if rng.random() < 0.4:  # some songs hold each chord for two bars
        progression = tuple(d for d in progression for _ in range(2))
    chords = [progression[b % len(progression)] for b in range(bars)]

    # Arrangement: stems are sometimes silent, as in real songs.
    on = {name: np.ones(bars, dtype=bool) for name in STEMS}
    intro = min(int(rng.integers(0, 3)), (bars - 1) // 3)  # short songs get a short intro, if any
    intro_kind = rng.choice(["no drums", "no vocals", "keys only"])
    on["vocals"][:intro] = False  # nobody sings in the intro
    if intro_kind in ("no drums", "keys only"):
        on["drums"][:intro] = False
    if intro_kind == "keys only":
        on["bass"][:intro] = False
    # Vocal phrases with rests: one bar rest every 4 (or 3) bars of singing.
    period = int(rng.choice([4, 4, 3, 0]))
    if period:
        for b in range(intro, bars):
            if (b - intro) % period == period - 1:
                on["vocals"][b] = False
    if bars > intro + 4 and rng.random() < 0.4:  # a break: drums (and sometimes bass) drop out
        b = int(rng.integers(intro + 3, bars))
        on["drums"][b] = False
        if rng.random() < 0.5:
            on["bass"][b] = False
    if bars > intro + 4 and rng.random() < 0.25:  # the keys drop out in one bar
        on["other"][int(rng.integers(intro + 2, bars))] = False
    return Plan(
        rng=rng,
        sr=sr,
        frames=round(seconds * sr),
        tempo=tempo,
        tonic=tonic,
        mode=mode,
        scale=MAJOR if mode == "major" else MINOR,
        bars=bars,
        chords=chords,
        step=step,
        swing=float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.1, 0.3)])),
        drums_on=on["drums"],
        bass_on=on["bass"],
        other_on=on["other"],
        vocals_on=on["vocals"],
    )


# --- shared building blocks --------------------------------------------------------------------


def _blep_saw(increment: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Band-limited sawtooth in [-1, 1] for a per-sample phase increment (f / sr): PolyBLEP removes
    most of the aliasing of a naive saw, which would otherwise fold the upper harmonics back down."""
    phase = (np.cumsum(increment) + offset) % 1.0
    dt = np.maximum(increment, 1e-9)
    out = 2.0 * phase - 1.0
    low = phase < dt
    x = phase[low] / dt[low]
    out[low] -= x + x - x * x - 1.0
    high = phase > 1.0 - dt
    x = (phase[high] - 1.0) / dt[high]
    out[high] -= x * x + x + x + 1.0
    return out


def _envelope(length: int, sr: int, attack: float, decay: float, sustain: float, release: float, hold: int):
    """ADSR envelope of ``length`` samples: gate open for ``hold`` samples, then the release."""
    t = np.arange(length) / sr
    env = np.where(t < attack, t / max(attack, 1e-6), 0.0)
    after = t >= attack
    env[after] = sustain + (1.0 - sustain) * np.exp(-(t[after] - attack) / max(decay, 1e-6))
    if hold < length:
        level = env[hold - 1] if hold > 0 else 0.0
        tail = np.arange(length - hold) / sr
        env[hold:] = level * np.exp(-tail / max(release / 4.0, 1e-6))
    return env


def _add(buffer: np.ndarray, start: int, sound: np.ndarray, gain: float = 1.0) -> None:
    """Mix ``sound`` into ``buffer`` at ``start``, clipped to the buffer's bounds."""
    if start >= buffer.shape[-1] or start + sound.shape[-1] <= 0:
        return
    skip = max(0, -start)
    end = min(buffer.shape[-1], start + sound.shape[-1])
    buffer[..., start + skip : end] += gain * sound[..., skip : skip + end - start - skip]


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan, ``position`` in [-1 (left), 1 (right)]: [2, frames]."""
    angle = (position + 1.0) * math.pi / 4.0
    return np.stack([mono * math.cos(angle), mono * math.sin(angle)])


def _widen(mono: np.ndarray, sr: int, position: float, width: float, delay_ms: float) -> np.ndarray:
    """Pan, then a Haas-style delayed copy on the opposite side: a stereo image ``width`` wide."""
    stereo = _pan(mono, position)
    if width > 0:
        d = max(1, round(delay_ms * sr / 1000))
        delayed = np.concatenate([np.zeros(d), mono[:-d]])
        side = 1 if position <= 0 else 0
        stereo[side] += width * delayed
    return stereo


# --- drums ---------------------------------------------------------------------------------------

# Grooves on a 16-step bar: (kick steps, snare steps, ghost snare steps, hat steps, open hat steps).
GROOVES = {
    "rock": ((0, 8, 10), (4, 12), (), (0, 2, 4, 6, 8, 10, 12, 14), (14,)),
    "four-on-the-floor": (
        (0, 4, 8, 12),
        (4, 12),
        (),
        (0, 1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15),
        (2, 6, 10, 14),
    ),
    "half-time": ((0, 7, 10), (8,), (14,), (0, 2, 4, 6, 8, 10, 12, 14), ()),
    "funk": ((0, 3, 6, 10), (4, 12), (7, 9, 15), tuple(range(16)), (6,)),
    "breakbeat": ((0, 2, 10, 11), (4, 12), (7, 14), (0, 2, 4, 6, 8, 10, 12, 14), (10,)),
}


def _drum_kit(rng: np.random.Generator, sr: int) -> dict[str, np.ndarray]:
    """One-shot samples with this song's timbre (each drawn once per song)."""
    noise = rng.standard_normal(sr * 2)

    def t(seconds: float) -> np.ndarray:
        return np.arange(round(seconds * sr)) / sr

    kit = {}
    # Kick: a sine swept down from ~150 to ~50 Hz (the "thump"), a short noise click for the beater,
    # a little tanh drive for punch.
    tk = t(0.5)
    f_start, f_end, sweep = rng.uniform(110, 200), rng.uniform(40, 60), rng.uniform(0.02, 0.06)
    freq = f_end + (f_start - f_end) * np.exp(-tk / sweep)
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-tk / rng.uniform(0.12, 0.35))
    click = signal.sosfilt(signal.butter(2, 2000, "highpass", fs=sr, output="sos"), noise[: len(tk)])
    click *= np.exp(-tk / 0.004) * rng.uniform(0.2, 0.6)
    kit["kick"] = np.tanh(rng.uniform(1.0, 2.5) * (body + click))

    # Snare: two body tones (the shell) plus band-passed noise (the wires), balance varies per song.
    ts = t(0.4)
    f0 = rng.uniform(160, 250)
    tone = (np.sin(2 * np.pi * f0 * ts) + 0.5 * np.sin(2 * np.pi * 1.6 * f0 * ts)) * np.exp(-ts / 0.05)
    wires = signal.sosfilt(
        signal.butter(2, [rng.uniform(800, 2000), rng.uniform(7000, 10000)], "bandpass", fs=sr, output="sos"),
        noise[sr // 2 : sr // 2 + len(ts)],
    ) * np.exp(-ts / rng.uniform(0.08, 0.2))
    kit["snare"] = rng.uniform(0.4, 0.9) * tone + 2.0 * wires

    # Hi-hats: six inharmonic square waves (the 808 recipe) plus noise, high-passed so their energy
    # sits at 5-15 kHz where vocal sibilance also lives.
    th = t(0.6)
    ratios = np.array([2.0, 3.0, 4.16, 5.43, 6.79, 8.21]) * rng.uniform(0.9, 1.1)
    metal = np.sign(np.sin(2 * np.pi * np.outer(ratios * rng.uniform(140, 190), th))).sum(axis=0) / 6.0
    hiss = rng.uniform(0.5, 1.5) * noise[sr : sr + len(th)]
    hp = signal.butter(4, rng.uniform(5000, 7500), "highpass", fs=sr, output="sos")
    hat = signal.sosfilt(hp, metal + hiss)
    kit["hat"] = hat[: round(0.08 * sr)] * np.exp(-th[: round(0.08 * sr)] / rng.uniform(0.015, 0.04))
    kit["open_hat"] = hat * np.exp(-th / rng.uniform(0.12, 0.3))

    # Toms: pitched-down sines, a high and a low one for fills.
    tt = t(0.45)
    for name, base in (("tom_high", rng.uniform(140, 200)), ("tom_low", rng.uniform(80, 120))):
        freq = base * (1 + 0.5 * np.exp(-tt / 0.03))
        kit[name] = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-tt / 0.15)

    # Crash: long high-passed noise and metal, slow decay.
    tc = t(1.8)
    crash = noise[: len(tc)] + 0.5 * np.resize(metal, len(tc))
    crash = signal.sosfilt(signal.butter(2, rng.uniform(3000, 5000), "highpass", fs=sr, output="sos"), crash)
    kit["crash"] = crash * np.exp(-tc / rng.uniform(0.5, 0.9)) * 0.6
    return kit


# Which mixing bus each drum sample goes to (the others go to their own: kick, snare, hat, crash).
DRUM_PART = {"open_hat": "hat", "tom_high": "tom", "tom_low": "tom"}


def _drum_hits(plan: Plan) -> tuple[str, list[tuple[str, int, float]]]:
    """A groove and its hits (sample name, start sample, gain), with fills, crashes, ghost notes and a
    drummer's timing and velocity variation. Returns (groove name, hits)."""
    rng = plan.rng
    groove_name = str(rng.choice(list(GROOVES)))
    kick_steps, snare_steps, ghosts, hat_steps, open_steps = GROOVES[groove_name]
    hat_level = rng.uniform(0.25, 0.6)
    hits: list[tuple[str, int, float]] = []

    def hit(sample: str, bar: int, step: float, velocity: float) -> None:
        jitter = rng.normal(0, 0.002 * plan.sr)  # a human drummer is a few ms off the grid
        gain = velocity * float(np.clip(rng.normal(1.0, 0.08), 0.7, 1.3))
        hits.append((sample, max(0, plan.time(bar, step) + round(jitter)), gain))

    for bar in range(plan.bars):
        if not plan.drums_on[bar]:
            continue
        fill = bar + 1 < plan.bars and (bar % 4 == 3 or not plan.drums_on[bar + 1]) and rng.random() < 0.6
        last = 12 if fill else 16
        if bar == 0 or not plan.drums_on[bar - 1] or (bar % 8 == 0 and rng.random() < 0.7):
            hit("crash", bar, 0, rng.uniform(0.6, 1.0))
        for s in kick_steps:
            if s < last:
                hit("kick", bar, s, 1.0 if s % 4 == 0 else 0.8)
        if rng.random() < 0.3:  # variation: an extra syncopated kick
            hit("kick", bar, int(rng.choice([3, 6, 11, 14])), 0.7)
        for s in snare_steps:
            if s < last:
                hit("snare", bar, s, 1.0)
        for s in ghosts:
            if s < last:
                hit("snare", bar, s, rng.uniform(0.15, 0.3))
        for s in hat_steps:
            if s < last and s not in open_steps:
                accent = 1.0 if s % 4 == 0 else (0.75 if s % 2 == 0 else 0.55)
                hit("hat", bar, s, hat_level * accent)
        for s in open_steps:
            if s < last:
                hit("open_hat", bar, s, hat_level * 0.8)
        if fill:  # a fill on the last beat: snare and tom 16ths, getting louder
            for i, s in enumerate(range(12, 16)):
                hit(str(rng.choice(["snare", "tom_high", "tom_low"])), bar, s, 0.6 + 0.1 * i)
    return groove_name, hits


def _drums(plan: Plan, info: dict[str, str]) -> np.ndarray:
    rng, sr = plan.rng, plan.sr
    kit = _drum_kit(rng, sr)
    info["drums"], hits = _drum_hits(plan)
    parts = {name: np.zeros(plan.frames + sr) for name in ("kick", "snare", "hat", "tom", "crash")}
    for sample, start, gain in hits:
        _add(parts[DRUM_PART.get(sample, sample)], start, kit[sample], gain)

    # Stereo: kick and snare centre, hats to one side, toms spread, crash on the other side.
    hat_side = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.5)
    stereo = (
        _pan(parts["kick"], 0.0)
        + _pan(parts["snare"], rng.uniform(-0.1, 0.1))
        + _pan(parts["hat"], hat_side)
        + _widen(parts["tom"], sr, -hat_side, 0.5, 9.0)
        + _widen(parts["crash"], sr, -hat_side, 0.6, 13.0)
    )
    return stereo[:, : plan.frames]


# --- bass ----------------------------------------------------------------------------------------

# Rhythms on a 16-step bar: (start step, length in steps, role); roles pick the pitch.
BASS_RHYTHMS = {
    "eighths": [(s, 2, "root") for s in range(0, 16, 2)],
    "long": [(0, 8, "root"), (8, 6, "fifth"), (14, 2, "approach")],
    "syncopated": [(0, 3, "root"), (3, 3, "root"), (6, 2, "octave"), (8, 4, "root"), (12, 2, "fifth"),
                   (14, 2, "approach")],
    "octaves": [(s, 2, "octave" if (s // 2) % 2 else "root") for s in range(0, 16, 2)],
    "walking": [(0, 4, "root"), (4, 4, "third"), (8, 4, "fifth"), (12, 4, "approach")],
}  # fmt: skip


def _bass_base(plan: Plan) -> int:
    """The ``octave_base`` of the bass line: its degree 0 falls between E1 and D#2 (MIDI 28..39)."""
    return 28 + (plan.tonic - 4) % 12 - plan.tonic


def _bass_notes(plan: Plan, rhythm_name: str) -> list[tuple[int, int, int]]:
    """A monophonic line (start sample, hold samples, MIDI note) on the chord roots, with fifths,
    thirds, octaves and approach notes, in one of :data:`BASS_RHYTHMS`."""
    rng, base = plan.rng, _bass_base(plan)
    notes = []
    for bar in range(plan.bars):
        if not plan.bass_on[bar]:
            continue
        root = plan.chords[bar]
        next_root = plan.chords[(bar + 1) % plan.bars] if bar + 1 < plan.bars else root
        for step, length, role in BASS_RHYTHMS[rhythm_name]:
            if rng.random() < 0.08 and step > 0:  # leave a note out now and then
                continue
            note = plan.degree_midi(root, base)
            if role == "fifth":
                note = plan.degree_midi(root + 4, base)
            elif role == "third":
                note = plan.degree_midi(root + 2, base)
            elif role == "octave":
                note += 12
            elif role == "approach":  # a passing note a scale step from the next chord's root
                note = plan.degree_midi(next_root + int(rng.choice([-1, 1])), base)
            while note > base + plan.tonic + 19:
                note -= 12
            notes.append((plan.time(bar, step), round(length * plan.step * rng.uniform(0.6, 0.95)), note))
    return notes


def _bass(plan: Plan, info: dict[str, str]) -> np.ndarray:
    rng, sr, n = plan.rng, plan.sr, plan.frames + plan.sr
    rhythm_name = str(rng.choice(list(BASS_RHYTHMS)))
    timbre = str(rng.choice(["saw", "square", "sine", "fm"]))
    info["bass"] = f"{timbre} bass, {rhythm_name}"

    # A monophonic synth: one pitch track, one amplitude envelope, one filter envelope.
    pitch = np.full(n, float(plan.degree_midi(0, _bass_base(plan))))
    amp = np.zeros(n)
    bright = np.zeros(n)
    attack, decay, sustain = rng.uniform(0.003, 0.012), rng.uniform(0.08, 0.3), rng.uniform(0.5, 0.9)
    release, filter_decay = rng.uniform(0.03, 0.09), rng.uniform(0.05, 0.25)
    notes = _bass_notes(plan, rhythm_name)
    for start, hold, note in notes:
        if start >= n:
            continue
        length = hold + round(release * sr)
        env = _envelope(length, sr, attack, decay, sustain, release, hold)
        end = min(n, start + length)
        amp[start:end] = np.maximum(amp[start:end], env[: end - start])
        pitch[start:] = note  # held until the next note: releases keep their pitch
        fenv = np.exp(-np.arange(end - start) / (filter_decay * sr))
        bright[start:end] = np.maximum(bright[start:end], fenv * rng.uniform(0.6, 1.0))
    # A touch of portamento: the pitch glides over ~10 ms instead of jumping.
    pitch = signal.lfilter([0.02], [1, -0.98], pitch - pitch[0]) + pitch[0]
    increment = _midi_hz(pitch) / sr

    if timbre in ("saw", "square"):
        raw = _blep_saw(increment)
        if timbre == "square":
            raw = raw - _blep_saw(increment, 0.5)
        # Subtractive: two fixed low-pass filters, cross-faded by the filter envelope, sound like one
        # filter sweeping down after each attack, at a fraction of the cost of a time-varying filter.
        dark = signal.sosfilt(signal.butter(2, rng.uniform(250, 500), fs=sr, output="sos"), raw)
        open_ = signal.sosfilt(signal.butter(2, rng.uniform(1200, 3000), fs=sr, output="sos"), raw)
        out = dark + bright * (open_ - dark)
    elif timbre == "sine":
        phase = 2 * np.pi * np.cumsum(increment)
        # The drive adds odd harmonics, so even a sine bass reaches into the low mids.
        out = np.tanh(rng.uniform(2.5, 4.0) * (np.sin(phase) + 0.3 * np.sin(2 * phase)))
    else:
        phase = 2 * np.pi * np.cumsum(increment)
        index = rng.uniform(0.8, 2.0) * (0.4 + bright)
        out = np.sin(phase + index * np.sin(phase * float(rng.choice([1.0, 2.0]))))
    return _pan(out * amp, 0.0)[:, : plan.frames]


# --- other: keys, plucks, pads, organ -------------------------------------------------------------


def _epiano(f: float, hold: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """FM electric piano: a 1:1 modulator whose index decays (bright attack, mellow tail) plus a
    faint high "tine" partial at the attack."""
    length = hold + round(0.15 * sr)
    t = np.arange(length) / sr
    index = 1.5 * np.exp(-t / 0.25) + 0.3
    tone = np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * f * t))
    tine = 0.15 * np.sin(2 * np.pi * 14 * f * t) * np.exp(-t / 0.02) if 14 * f < sr / 2 else 0.0
    env = np.exp(-t / 1.2) * np.minimum(1.0, t / 0.002)
    env[hold:] *= np.exp(-np.arange(length - hold) / (0.03 * sr))
    return (tone + tine) * env


def _pluck(f: float, hold: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong plucked string: a noise burst recirculating through a delay line of one period
    with an averaging low-pass. Computed a period at a time, so numpy does the inner loop."""
    length = hold + round(0.1 * sr)
    period = max(2, round(sr / f - 0.5))  # the averaging filter adds half a sample of delay
    feedback = 0.996
    blocks = -(-length // period) + 1
    out = np.empty(blocks * period)
    out[:period] = rng.uniform(-1, 1, period)
    out[:period] = signal.lfilter([0.5, 0.5], [1.0], out[:period])  # a softer pick
    for b in range(1, blocks):
        prev = out[(b - 1) * period : b * period]
        before = out[(b - 1) * period - 1] if b > 1 else 0.0
        out[b * period : (b + 1) * period] = feedback * 0.5 * (prev + np.concatenate([[before], prev[:-1]]))
    out = out[:length]
    out[hold:] *= np.exp(-np.arange(length - hold) / (0.02 * sr))
    return out


def _pad(f: float, hold: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Three saws detuned by a few cents (the chorus-like beating of a string pad), slow attack."""
    length = hold + round(0.4 * sr)
    out = np.zeros(length)
    for cents in (-9.0, 0.0, 8.0):
        out += _blep_saw(np.full(length, f * 2 ** (cents / 1200) / sr), rng.random())
    env = _envelope(length, sr, 0.15, 0.5, 0.8, 0.4, hold)
    return out * env / 3.0


def _organ(f: float, hold: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Additive drawbar organ: sines at harmonics 1, 2, 3, 4, 6 and 8, instant attack, no decay."""
    length = hold + round(0.05 * sr)
    t = np.arange(length) / sr
    out = np.zeros(length)
    for harmonic, weight in zip((1, 2, 3, 4, 6, 8), (1.0, 0.8, 0.5, 0.4, 0.2, 0.15), strict=True):
        if harmonic * f < sr / 2:
            out += weight * np.sin(2 * np.pi * harmonic * f * t)
    env = np.minimum(1.0, t / 0.005)
    env[hold:] *= np.exp(-np.arange(length - hold) / (0.01 * sr))
    return out * env / 3.0


INSTRUMENTS: dict[str, Callable[[float, int, int, np.random.Generator], np.ndarray]] = {
    "electric piano": _epiano,
    "pluck": _pluck,
    "pad": _pad,
    "organ": _organ,
}
# Chord rhythms on a 16-step bar: (start step, length in steps).
CHORD_RHYTHMS = {
    "whole": [(0, 16)],
    "halves": [(0, 8), (8, 8)],
    "offbeat stabs": [(2, 1), (6, 1), (10, 1), (14, 1)],
    "pushed": [(0, 6), (6, 4), (10, 6)],
    "quarters": [(0, 3), (4, 3), (8, 3), (12, 3)],
}


def _chord_notes(plan: Plan, rhythm: str, seventh: bool) -> list[tuple[int, int, list[int]]]:
    """Chords (start sample, hold samples, MIDI notes) in one of :data:`CHORD_RHYTHMS`, voiced in the
    middle register (C3..C5), where they share the mids with the vocals."""
    chords = []
    for bar in range(plan.bars):
        if not plan.other_on[bar]:
            continue
        voicing = [plan.degree_midi(d, 48) for d in plan.chord_degrees(bar, seventh)]
        voicing = [m + 12 if m < 53 else m for m in voicing]
        for step, length in CHORD_RHYTHMS[rhythm]:
            chords.append((plan.time(bar, step), round(length * plan.step * 0.9), voicing))
    return chords


def _arpeggio(plan: Plan, seventh: bool) -> Iterator[tuple[int, int, int]]:
    """An arpeggio over the chords in 16ths, 8ths or quarters: (start sample, hold samples, MIDI note).

    A generator: each note is drawn from ``plan.rng`` only when asked for, after the previous note
    has been rendered (and drawn from the same generator), as in the songs written before notes and
    rendering were separate functions; that keeps those songs bit-identical.
    """
    rng = plan.rng
    every = int(rng.choice([2, 2, 4]))  # 8ths or quarters... of 16ths: 2 = 8ths
    if rng.random() < 0.4:
        every = 1
    for bar in range(plan.bars):
        if not plan.other_on[bar]:
            continue
        tones = [plan.degree_midi(d, 60) for d in plan.chord_degrees(bar, seventh)]
        tones = [*tones, tones[0] + 12]
        for i, step in enumerate(range(0, 16, every)):
            m = tones[i % len(tones)] if rng.random() < 0.8 else int(rng.choice(tones))
            yield plan.time(bar, step), round(every * plan.step * 0.8), m


def _other(plan: Plan, info: dict[str, str]) -> np.ndarray:
    rng, sr, n = plan.rng, plan.sr, plan.frames + plan.sr
    names = list(INSTRUMENTS)
    chord_instrument = str(rng.choice(["electric piano", "pad", "organ", "electric piano", "pluck"]))
    arp_instrument = (
        str(rng.choice([x for x in names if x != chord_instrument])) if rng.random() < 0.5 else ""
    )
    if chord_instrument == "pad":
        rhythm = str(rng.choice(["whole", "halves"]))  # pads sustain
    else:
        rhythm = str(rng.choice(list(CHORD_RHYTHMS)))
    seventh = rng.random() < 0.4
    info["other"] = f"{chord_instrument} chords ({rhythm})" + (
        f", {arp_instrument} arpeggio" if arp_instrument else ""
    )

    stereo = np.zeros((2, n))
    chords = np.zeros(n)
    for start, hold, voicing in _chord_notes(plan, rhythm, seventh):
        for m in voicing:
            sound = INSTRUMENTS[chord_instrument](float(_midi_hz(m)), hold, sr, rng)
            _add(chords, start, sound, rng.uniform(0.7, 1.0) / len(voicing))
    if chord_instrument == "pad":  # the pad's low-pass softens the saws
        chords = signal.sosfilt(signal.butter(2, rng.uniform(1500, 4000), fs=sr, output="sos"), chords)
    if chord_instrument == "organ":  # a slow tremolo, like a rotating speaker
        chords *= 1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(4, 7) * np.arange(n) / sr)
    chord_pan = rng.uniform(-0.6, 0.6)
    stereo += _widen(chords, sr, chord_pan, rng.uniform(0.2, 0.6), rng.uniform(7, 18))

    if arp_instrument:
        arp = np.zeros(n)
        for start, hold, m in _arpeggio(plan, seventh):
            sound = INSTRUMENTS[arp_instrument](float(_midi_hz(m)), hold, sr, rng)
            _add(arp, start, sound, 0.25 * rng.uniform(0.7, 1.0))
        if arp_instrument == "pad":
            arp = signal.sosfilt(signal.butter(2, 3000, fs=sr, output="sos"), arp)
        stereo += _widen(arp, sr, -chord_pan, rng.uniform(0.1, 0.4), rng.uniform(5, 12))
    return stereo[:, : plan.frames]


# --- vocals: formant synthesis ----------------------------------------------------------------------

# Formant frequencies (Hz) and bandwidths of five vowels (adult male averages; scaled for a higher voice).
VOWELS = {
    "a": ((730, 1090, 2440, 3400, 4200), (80, 90, 120, 175, 250)),
    "e": ((530, 1840, 2480, 3400, 4200), (60, 100, 120, 175, 250)),
    "i": ((270, 2290, 3010, 3500, 4200), (60, 90, 120, 175, 250)),
    "o": ((570, 840, 2410, 3400, 4200), (70, 80, 120, 175, 250)),
    "u": ((300, 870, 2240, 3400, 4200), (60, 80, 120, 175, 250)),
}
VOWEL_KEYS = tuple(VOWELS)
BLOCK = 512  # formant filters are updated every 512 samples (~12 ms): smooth enough for vowel glides


def _resonator_sos(freqs: np.ndarray, bandwidths: np.ndarray, sr: int) -> np.ndarray:
    """Second-order sections of a cascade of two-pole resonators with unit gain at DC (Klatt's
    cascade synthesiser: formant amplitudes then follow from the frequencies, as in a real vocal tract)."""
    r = np.exp(-np.pi * bandwidths / sr)
    c = -2.0 * r * np.cos(2 * np.pi * freqs / sr)
    sos = np.zeros((len(freqs), 6))
    sos[:, 0] = 1.0 + c + r * r
    sos[:, 3] = 1.0
    sos[:, 4] = c
    sos[:, 5] = r * r
    return sos


def _consonant_filters(sr: int) -> dict[str, np.ndarray]:
    return {
        "s": signal.butter(4, 4500, "highpass", fs=sr, output="sos"),  # sibilant: 4.5 kHz and up
        "sh": signal.butter(2, [2000, 6000], "bandpass", fs=sr, output="sos"),
        "f": signal.butter(2, 1500, "highpass", fs=sr, output="sos"),
        "t": signal.butter(2, [2500, 8000], "bandpass", fs=sr, output="sos"),  # plosive bursts
        "k": signal.butter(2, [1200, 4000], "bandpass", fs=sr, output="sos"),
        "p": signal.butter(2, [300, 2000], "bandpass", fs=sr, output="sos"),
    }


def _melody(plan: Plan, low: int, high: int) -> list[tuple[int, int, int]]:
    """Syllables (start sample, hold samples, MIDI note): scale notes, chord tones on strong beats,
    mostly stepwise, each phrase ending in a rest."""
    rng = plan.rng
    notes: list[tuple[int, int, int]] = []
    degree = 7 + int(rng.choice([0, 2, 4]))  # scale degree relative to octave_base
    octave_base = low + ((plan.tonic - low) % 12)
    for bar in range(plan.bars):
        if not plan.vocals_on[bar]:
            continue
        phrase_end = not plan.vocals_on[bar + 1] if bar + 1 < plan.bars else True
        step = int(rng.choice([0, 0, 0, 2]))  # sometimes come in an eighth late
        stop = 16 - (int(rng.choice([2, 4, 6])) if phrase_end or rng.random() < 0.3 else 0)
        while step < stop:
            length = int(rng.choice([2, 2, 2, 4, 4, 6, 1, 1] if rng.random() < 0.2 else [2, 2, 4, 4, 6]))
            length = min(length, stop - step)
            chord = plan.chord_degrees(bar)
            if step % 8 == 0:  # strong beat: the nearest chord tone
                options = [d + 7 * o for d in chord for o in range(-1, 3)]
                degree = min(options, key=lambda d: (abs(d - degree), rng.random()))
            else:
                degree += int(rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]))
            note = plan.degree_midi(degree, octave_base - plan.tonic)
            while note > high:
                degree -= 7
                note = plan.degree_midi(degree, octave_base - plan.tonic)
            while note < low:
                degree += 7
                note = plan.degree_midi(degree, octave_base - plan.tonic)
            if rng.random() < 0.12 and length >= 2:  # a rest inside a phrase: a breath
                step += length
                continue
            notes.append((plan.time(bar, step), round(length * plan.step * rng.uniform(0.8, 0.97)), note))
            step += length
    return notes


def _vocals(plan: Plan, info: dict[str, str]) -> np.ndarray:
    rng, sr, n = plan.rng, plan.sr, plan.frames + plan.sr
    high_voice = rng.random() < 0.5
    low, high = (57, 77) if high_voice else (47, 67)  # A3..F5 or B2..G4
    formant_scale = rng.uniform(1.1, 1.2) if high_voice else rng.uniform(0.95, 1.05)
    info["vocals"] = ("high" if high_voice else "low") + " formant voice"
    notes = _melody(plan, low, high)

    # Pitch (MIDI, per sample): each note held until the next, a scoop into phrase starts, then a
    # one-pole glide (singers slide between notes), delayed vibrato and slow random jitter.
    pitch = np.full(n, float(low + 7))
    amp = np.zeros(n)
    vib_depth = np.zeros(n)
    attack, release = rng.uniform(0.02, 0.05), rng.uniform(0.05, 0.12)
    vowel_targets = np.zeros((n // BLOCK + 2, 5))
    bandwidths = np.zeros((n // BLOCK + 2, 5))
    consonants = []
    previous_end = -(10**9)
    for start, hold, note in notes:
        if start - previous_end > 0.1 * sr:  # a new phrase: scoop up from below
            scoop = round(0.06 * sr)
            pitch[max(0, start - scoop) : start] = note - rng.uniform(1.0, 2.5)
        pitch[start:] = note
        length = hold + round(release * sr)
        env = _envelope(length, sr, attack, 0.4, rng.uniform(0.6, 0.85), release, hold)
        _add(amp, start, env * rng.uniform(0.75, 1.0))
        t = np.arange(length) / sr
        _add(vib_depth, start, np.clip((t - 0.15) / 0.2, 0.0, 1.0) * (t < hold / sr))
        vowel = VOWELS[VOWEL_KEYS[rng.integers(len(VOWEL_KEYS))]]
        vowel_targets[start // BLOCK : (start + length) // BLOCK + 2] = np.array(vowel[0]) * formant_scale
        bandwidths[start // BLOCK : (start + length) // BLOCK + 2] = vowel[1]
        kind = rng.choice(["", "s", "s", "sh", "f", "t", "t", "k", "p"])
        if kind:
            consonants.append((start, str(kind)))
        previous_end = start + hold
    pitch = signal.lfilter([0.003], [1, -0.997], pitch - pitch[0]) + pitch[0]
    vibrato_rate = rng.uniform(4.8, 6.5)
    pitch += (
        rng.uniform(0.2, 0.5)
        * np.minimum(vib_depth, 1.0)
        * np.sin(2 * np.pi * vibrato_rate * np.arange(n) / sr)
    )
    drift = signal.sosfilt(signal.butter(1, 4, fs=sr, output="sos"), rng.standard_normal(n // 64 + 1))
    pitch += 0.6 * np.repeat(drift, 64)[:n] / max(np.abs(drift).max(), 1e-9) * 0.15

    # Source: a band-limited saw. Its -6 dB/octave is the glottal pulse's -12 dB/octave plus the +6 dB
    # of radiation from the lips, so no further tilt; a little breath noise on top.
    source = _blep_saw(_midi_hz(pitch) / sr, rng.random())
    source += 0.1 * rng.standard_normal(n)
    source *= amp

    # Formants: the vowel targets glide (a one-pole smoother over blocks), and the cascade of five
    # resonators is re-designed every block, carrying its state so there are no clicks.
    blocks = len(vowel_targets)
    glide = signal.lfilter([0.25], [1, -0.75], vowel_targets - vowel_targets[0], axis=0) + vowel_targets[0]
    out = np.zeros(n)
    state = np.zeros((5, 2))
    active = np.flatnonzero(np.convolve(amp[: (blocks - 2) * BLOCK].reshape(-1, BLOCK).max(axis=1) > 1e-4,
                                        np.ones(3), "same"))  # fmt: skip
    for b in active:
        if glide[b, 0] <= 0:
            continue
        sos = _resonator_sos(glide[b], np.maximum(bandwidths[b], 50.0), sr)
        segment = source[b * BLOCK : (b + 1) * BLOCK]
        out[b * BLOCK : (b + 1) * BLOCK], state = signal.sosfilt(sos, segment, zi=state)
    # Pre-emphasis: the unit-DC cascade leaves the upper formants (the singer's "presence") too weak.
    out = signal.lfilter([1.0, -0.8], [1.0], out)
    out /= max(np.sqrt(np.mean(out**2)), 1e-9)

    # Consonants: short filtered noise bursts at syllable onsets (fricatives lead into the vowel,
    # plosives are a short click-like burst).
    filters = _consonant_filters(sr)
    for start, kind in consonants:
        fricative = kind in ("s", "sh", "f")
        length = round((rng.uniform(0.06, 0.12) if fricative else rng.uniform(0.01, 0.025)) * sr)
        t = np.arange(length) / length
        env = np.sin(np.pi * t) ** 2 if fricative else np.exp(-t * 5)
        burst = signal.sosfilt(filters[kind], rng.standard_normal(length)) * env
        level = {"s": 2.0, "sh": 1.5, "f": 0.6}.get(kind, 1.2)
        _add(out, start - (round(0.7 * length) if fricative else 0), burst, level)
    return _widen(out, sr, rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.15), rng.uniform(10, 25))[
        :, : plan.frames
    ]


# --- mixing: levels, reverb, normalisation -------------------------------------------------------

BASE_LEVEL_DB = {"drums": 0.0, "bass": -1.0, "other": -3.0, "vocals": 0.0}
REVERB_SEND = {"drums": (0.05, 0.25), "bass": (0.0, 0.08), "other": (0.1, 0.4), "vocals": (0.1, 0.45)}


def _active_rms(audio: np.ndarray, frame: int = 2048) -> float:
    """RMS over the frames where the stem plays (silent sections do not dilute its level)."""
    mono = audio.mean(axis=0)
    usable = mono[: len(mono) // frame * frame].reshape(-1, frame) if len(mono) >= frame else mono[None]
    energy = np.mean(usable**2, axis=1)
    loud = energy[energy > 1e-3 * energy.max()] if energy.max() > 0 else energy
    return float(np.sqrt(loud.mean())) if loud.size else 0.0


def _impulse_response(rng: np.random.Generator, sr: int) -> tuple[np.ndarray, float]:
    """A stereo room: exponentially decaying noise (independent per channel, which is what makes the
    reverb wide), darker as it decays, after a short pre-delay. Returns ([2, taps], RT60 seconds)."""
    rt60 = rng.uniform(0.3, 1.4)
    taps = round(min(rt60, 1.0) * sr)
    t = np.arange(taps) / sr
    noise = rng.standard_normal((2, taps)) * np.exp(-6.9 * t / rt60)
    noise = signal.sosfilt(signal.butter(1, rng.uniform(3000, 8000), fs=sr, output="sos"), noise, axis=-1)
    predelay = round(rng.uniform(0.005, 0.03) * sr)
    ir = np.concatenate([np.zeros((2, predelay)), noise], axis=1)
    return ir / np.sqrt(np.sum(ir**2) / 2), rt60


def _mix(
    dry: dict[str, np.ndarray], rng: np.random.Generator, sr: int
) -> tuple[dict[str, np.ndarray], float]:
    """Level the dry stems ([2, frames] each; a random gain within ±6 dB around their base level),
    send them into one song-wide room, and scale all by one gain so the mixture peaks at 0.6 to 0.9.
    Returns (float32 stems, the room's RT60 in seconds)."""
    ir, rt60 = _impulse_response(rng, sr)
    frames = dry[STEMS[0]].shape[-1]
    # The reverb is a plain FFT convolution (what scipy.signal.fftconvolve does), in float32 and with
    # the room's spectrum computed once for all four stems: it is most of the render time otherwise.
    size = sp_fft.next_fast_len(frames + ir.shape[-1], real=True)
    room = sp_fft.rfft(ir.astype(np.float32), size, axis=-1)
    stems = {}
    for name in STEMS:
        audio = dry[name]
        level = 0.1 * 10 ** ((BASE_LEVEL_DB[name] + rng.uniform(-6.0, 6.0)) / 20)
        audio = audio * (level / max(_active_rms(audio), 1e-9))
        send = rng.uniform(*REVERB_SEND[name])
        # A mono send into the stereo room, as on a mixing desk's aux bus; the two decorrelated
        # channels of the room make every stem a little wide.
        spectrum = sp_fft.rfft((send * audio.mean(axis=0)).astype(np.float32), size)
        audio = audio + sp_fft.irfft(spectrum * room, size, axis=-1)[:, :frames]
        stems[name] = audio

    # One gain for all stems: the mixture peaks between 0.6 and 0.9 and no stem exceeds 0.99.
    mixture = sum(stems.values())
    peak = float(np.abs(mixture).max())
    stem_peak = max(float(np.abs(a).max()) for a in stems.values())
    gain = min(rng.uniform(0.6, 0.9) / max(peak, 1e-9), 0.99 / max(stem_peak, 1e-9))
    return {name: (audio * gain).astype(np.float32) for name, audio in stems.items()}, rt60


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
        return _soundfont_song(seed, seconds, sample_rate, soundfont, scratch)
    # Each instrument draws from its own stream, so changing one part of the recipe leaves the others.
    streams = np.random.SeedSequence(seed).spawn(6)
    plan = _plan(np.random.default_rng(streams[0]), seconds, sample_rate)
    info: dict[str, str] = {}
    renderers = {"drums": _drums, "bass": _bass, "other": _other, "vocals": _vocals}
    dry = {}
    for i, name in enumerate(STEMS):
        plan.rng = np.random.default_rng(streams[1 + i])
        dry[name] = renderers[name](plan, info)

    stems, rt60 = _mix(dry, np.random.default_rng(streams[5]), sample_rate)
    info["reverb"] = f"RT60 {rt60:.1f} s"
    return _song(stems, sample_rate, seed, plan, info)


def _check_sample_rate(sample_rate: int, soundfont: fluidsynth.Soundfont | None) -> None:
    if sample_rate < MIN_SAMPLE_RATE:
        raise SynthError(f"sample rate must be at least {MIN_SAMPLE_RATE} Hz, not {sample_rate}")
    if soundfont is not None and sample_rate > fluidsynth.MAX_SAMPLE_RATE:
        raise SynthError(f"FluidSynth renders at up to {fluidsynth.MAX_SAMPLE_RATE} Hz, not {sample_rate}")


def _song(stems: dict[str, np.ndarray], sr: int, seed: int, plan: Plan, info: dict[str, str]) -> Song:
    key = f"{NOTE_NAMES[plan.tonic]} {plan.mode}"
    description = (
        f"{plan.tempo:.0f} BPM, {key}; drums: {info['drums']}; bass: {info['bass']}; "
        f"other: {info['other']}; vocals: {info['vocals']}; reverb {info['reverb']}"
    )
    if "soundfont" in info:
        description += f"; soundfont {info['soundfont']}"
    return Song(stems, sr, seed, plan.tempo, key, description, info)


# --- General MIDI through FluidSynth (stemsplit synth --soundfont) -------------------------------------

# General MIDI drum keys (channel 10), some chosen per song: kick 35/36, snare 38/40, closed hat 42 (or a
# ride, 51), open hat 46 (or the ride's bell, 53), toms 41..50, crash 49/57.
GM_DRUM_KEYS = {
    "kick": (35, 36),
    "snare": (38, 40),
    "hat": (42, 42, 42, 51),
    "open_hat": (46,),
    "tom_high": (48, 50),
    "tom_low": (41, 43, 45),
    "crash": (49, 57),
}
# Drum kits, programs of bank 128 in the GS layout GM soundfonts follow: standard (twice as likely),
# room, power, electronic, TR-808, jazz, brush. Only those the soundfont has are drawn.
GM_DRUM_KITS = (0, 0, 8, 16, 24, 25, 32, 40)
GM_BASSES = tuple(range(32, 40))  # acoustic, fingered, picked, fretless, two slap and two synth basses
# "other", by family: (programs, chorus send range). Pianos: grand, bright, electric grand, two electric
# pianos, harpsichord, clavinet; drawbar, percussive, rock and church organs; nylon, steel, jazz, clean,
# muted, overdriven and distorted guitars; strings, slow strings, synth strings; seven pads.
GM_CHORDS = {
    "piano": ((0, 1, 2, 4, 5, 6, 7), (0, 30)),
    "organ": ((16, 17, 18, 19), (0, 30)),
    "guitar": ((24, 25, 26, 27, 28, 29, 30), (0, 50)),
    "strings": ((48, 49, 50), (10, 60)),
    "pad": ((88, 89, 90, 91, 92, 94, 95), (20, 80)),
}
SUSTAINED = ("strings", "pad")  # they hold whole or half bars
# Arpeggios: piano, electric piano, harpsichord, celesta, music box, vibraphone, marimba, xylophone,
# nylon, steel and clean guitar, harp, square and saw leads.
GM_ARPEGGIOS = (0, 4, 6, 8, 10, 11, 12, 13, 24, 25, 27, 46, 80, 81)
GM_VOICES = (52, 53, 54, 85)  # choir aahs, voice oohs, synth voice, lead 6 (voice)
FORMANT_SHARE = 0.35  # of soundfont songs, those sung by the formant voice (see _vocals) instead
DRUMS, BASS, CHORDS, ARPEGGIO, VOICE = 9, 0, 1, 2, 3  # MIDI channels (10 is General MIDI's drums)
PAN, CHORUS, MODULATION = 10, 93, 1  # MIDI controllers

Played = tuple[int, int, int, int]  # (start sample, hold samples, MIDI key, velocity)


def _velocity(gain: float) -> int:
    """A MIDI velocity for a linear gain (1.0 gives 112): soundfonts play about (velocity / 127)² loud."""
    return int(np.clip(round(112 * math.sqrt(max(gain, 0.0))), 1, 127))


def _humanise(
    plan: Plan, notes: list[tuple[int, int, int]], velocity: float, timing: float, mono: bool = False
) -> list[Played]:
    """Notes as a player plays them: starts a few ms off the grid (``timing`` s standard deviation),
    velocities around ``velocity`` with the downbeats a little louder. In a monophonic line (``mono``)
    each note ends before the next one starts."""
    rng, sr = plan.rng, plan.sr
    starts = [max(0, start + round(rng.normal(0, timing * sr))) for start, _, _ in notes]
    played = []
    for i, (start, (grid, hold, key)) in enumerate(zip(starts, notes, strict=True)):
        if mono and i + 1 < len(notes):
            hold = min(hold, starts[i + 1] - start - round(0.005 * sr))
        if hold <= 0 or start >= plan.frames:
            continue
        accent = 8 if round(grid / plan.step) % 4 == 0 else 0
        played.append((start, hold, key, int(np.clip(round(velocity + accent + rng.normal(0, 6)), 1, 127))))
    return played


def _notes(channel: int, played: list[Played]) -> list[fluidsynth.Event]:
    return [
        event
        for start, hold, key, velocity in played
        for event in fluidsynth.note(channel, start, hold, key, velocity)
    ]


def _desk(channel: int, program: int, pan: float, chorus: float) -> list[fluidsynth.Event]:
    """A channel's program, pan (-1 left .. 1 right) and chorus send (0..127), at time 0."""
    return [
        fluidsynth.program(channel, program),
        fluidsynth.control(channel, 0, PAN, round(64 + 63 * pan)),
        fluidsynth.control(channel, 0, CHORUS, round(chorus)),
    ]


Play = Callable[[list[fluidsynth.Event]], np.ndarray]  # MIDI events -> [2, frames] audio


def _gm_drums(plan: Plan, font: fluidsynth.Soundfont, play: Play, info: dict[str, str]) -> np.ndarray:
    rng = plan.rng
    groove, hits = _drum_hits(plan)
    kit = int(rng.choice([k for k in GM_DRUM_KITS if (fluidsynth.DRUM_BANK, k) in font.presets]))
    keys = {sample: int(rng.choice(options)) for sample, options in GM_DRUM_KEYS.items()}
    if keys["hat"] == 51:  # a ride instead of the hi-hats: its bell for the open hat
        keys["open_hat"] = 53
    dynamics = rng.uniform(0.75, 1.1)
    info["drums"] = f"{groove} on the {font.presets[fluidsynth.DRUM_BANK, kit]} kit"
    events = _desk(DRUMS, kit, rng.uniform(-0.1, 0.1), rng.uniform(0, 20))
    for sample, start, gain in hits:
        if start < plan.frames:
            events += fluidsynth.note(
                DRUMS, start, round(0.1 * plan.sr), keys[sample], _velocity(gain * dynamics)
            )
    return play(events)


def _gm_bass(plan: Plan, font: fluidsynth.Soundfont, play: Play, info: dict[str, str]) -> np.ndarray:
    rng = plan.rng
    rhythm = str(rng.choice(list(BASS_RHYTHMS)))
    bass = int(rng.choice(GM_BASSES))
    info["bass"] = f"{font.presets[0, bass]}, {rhythm}"
    played = _humanise(plan, _bass_notes(plan, rhythm), rng.uniform(80, 105), 0.004, mono=True)
    return play(_desk(BASS, bass, rng.uniform(-0.1, 0.1), rng.uniform(0, 15)) + _notes(BASS, played))


def _gm_other(plan: Plan, font: fluidsynth.Soundfont, play: Play, info: dict[str, str]) -> np.ndarray:
    rng, sr = plan.rng, plan.sr
    family = str(rng.choice(["piano", "piano", "organ", "guitar", "guitar", "strings", "pad"]))
    programs, sends = GM_CHORDS[family]
    chords = int(rng.choice(programs))
    rhythm = str(rng.choice(["whole", "halves"] if family in SUSTAINED else list(CHORD_RHYTHMS)))
    seventh = rng.random() < 0.4
    arpeggio = int(rng.choice([p for p in GM_ARPEGGIOS if p != chords])) if rng.random() < 0.5 else None
    info["other"] = f"{font.presets[0, chords]} chords ({rhythm})" + (
        f", {font.presets[0, arpeggio]} arpeggio" if arpeggio is not None else ""
    )
    # A guitarist strums (the strings sound one after another, low to high); a pianist's hands are
    # nearly together.
    strum = rng.uniform(0.008, 0.025) if family == "guitar" else rng.uniform(0.0, 0.004)
    notes = [
        (start + round(i * strum * sr), hold - round(i * strum * sr), key)
        for start, hold, voicing in _chord_notes(plan, rhythm, seventh)
        for i, key in enumerate(voicing)
    ]
    pan = rng.uniform(-0.6, 0.6)
    events = _desk(CHORDS, chords, pan, rng.uniform(*sends)) + _notes(
        CHORDS, _humanise(plan, notes, rng.uniform(60, 95), 0.006)
    )
    if arpeggio is not None:
        events += _desk(ARPEGGIO, arpeggio, -pan * rng.uniform(0.5, 1.0), rng.uniform(0, 30))
        events += _notes(
            ARPEGGIO, _humanise(plan, list(_arpeggio(plan, seventh)), rng.uniform(55, 90), 0.004)
        )
    return play(events)


def _gm_vocals(plan: Plan, font: fluidsynth.Soundfont, play: Play, info: dict[str, str]) -> np.ndarray:
    rng, sr = plan.rng, plan.sr
    if rng.random() < FORMANT_SHARE:
        return _vocals(plan, info)
    high_voice = rng.random() < 0.5
    low, high = (57, 77) if high_voice else (47, 67)  # A3..F5 or B2..G4, as the formant voice
    voice = int(rng.choice(GM_VOICES))
    info["vocals"] = f"{font.presets[0, voice]}, {'high' if high_voice else 'low'}"
    played = _humanise(plan, _melody(plan, low, high), rng.uniform(85, 115), 0.01, mono=True)
    events = _desk(VOICE, voice, rng.uniform(-0.15, 0.15), rng.uniform(0, 40)) + _notes(VOICE, played)
    # A singer's expression: a scoop up into each phrase (a pitch bend from up to a semitone below,
    # with the default ±2 semitone range), and vibrato (the modulation wheel) fading in on long notes.
    vibrato, previous_end = rng.uniform(25, 70), -sr
    for start, hold, _, _ in played:
        events.append(fluidsynth.control(VOICE, start, MODULATION, 0))
        if start - previous_end > 0.1 * sr:
            depth, glide = rng.uniform(0.1, 0.5), rng.uniform(0.04, 0.1) * sr
            events += [fluidsynth.pitch_bend(VOICE, max(0, start - round(0.02 * sr)), -depth)]
            events += [
                fluidsynth.pitch_bend(VOICE, start + round(glide * k / 6), -depth * (1 - k / 6))
                for k in range(1, 7)
            ]
        if hold > 0.4 * sr:
            events += [
                fluidsynth.control(
                    VOICE, start + round((0.2 + 0.05 * k) * sr), MODULATION, round(vibrato * k / 4)
                )
                for k in range(1, 5)
            ]
        previous_end = start + hold
    return play(events)


def _soundfont_song(
    seed: int, seconds: float, sr: int, font: fluidsynth.Soundfont, scratch: Path | None
) -> Song:
    """:func:`generate_song` through FluidSynth: the same arrangements, played with General MIDI
    programs chosen per song, the same mixing stage."""
    # Streams of their own: a soundfont song never shares its plan (tempo, key, chords, arrangement)
    # with the additive song of the same seed, so sets of both can be used side by side.
    streams = np.random.SeedSequence([seed, 1]).spawn(7)
    plan = _plan(np.random.default_rng(streams[0]), seconds, sr)
    desk = np.random.default_rng(streams[6])
    # FluidSynth's chorus, one setting per song (each channel sends its own share). Its two channels
    # come out largely in opposite phase, so it stays light: a mix should survive being heard in mono.
    chorus = {
        "synth.chorus.nr": int(desk.integers(2, 5)),
        "synth.chorus.level": round(float(desk.uniform(0.3, 1.2)), 3),
        "synth.chorus.speed": round(float(desk.uniform(0.2, 1.2)), 3),
        "synth.chorus.depth": round(float(desk.uniform(3.0, 12.0)), 3),
    }

    def play(events: list[fluidsynth.Event]) -> np.ndarray:
        audio = fluidsynth.render(font, events, sr, plan.frames, settings=chorus, scratch=scratch)
        return audio.astype(np.float64)  # what the additive parts give the mixing stage

    info: dict[str, str] = {}
    parts = {"drums": _gm_drums, "bass": _gm_bass, "other": _gm_other, "vocals": _gm_vocals}
    dry = {}
    for i, name in enumerate(STEMS):
        plan.rng = np.random.default_rng(streams[1 + i])
        dry[name] = parts[name](plan, font, play, info)
    stems, rt60 = _mix(dry, np.random.default_rng(streams[5]), sr)
    info["reverb"] = f"RT60 {rt60:.1f} s"
    info["soundfont"] = font.path.name
    return _song(stems, sr, seed, plan, info)


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
    FluidSynth's temporary files go in there too (nothing is written outside the dataset's folder)."""
    folder, seed, seconds, sample_rate, soundfont = job
    temp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        temp.mkdir()
        write_song(generate_song(seed, seconds, sample_rate, soundfont, scratch=temp), temp)
        os.rename(temp, folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


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
    counts = {"train": train, "valid": valid, "test": test}
    problem = synth_request_problem(Path(out), counts, "songs", seconds, sample_rate, seed, workers)
    if problem:
        raise SynthError(problem)
    jobs = []
    for subset, count in (("train", train), ("valid", valid), ("test", test)):
        folder = out / ("test" if subset == "test" else "train")
        jobs += [
            (folder / song_name(subset, i), song_seed(seed, subset, i), seconds, sample_rate, soundfont)
            for i in range(count)
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
    (out / "train").mkdir(parents=True, exist_ok=True)
    if test:
        (out / "test").mkdir(exist_ok=True)
    (out / "valid.txt").write_text("".join(song_name("valid", i) + "\n" for i in range(valid)))
    if workers == 1:
        for done, job in enumerate(jobs, 1):
            _write_one(job)
            if progress:
                progress(done, len(jobs))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            for done, _ in enumerate(pool.map(_write_one, jobs), 1):
                if progress:
                    progress(done, len(jobs))
