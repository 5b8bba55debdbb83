"""A song's plan (tempo, key, chords, which stems play in which bar) and the signal building blocks
every synthesised instrument uses (band-limited saw, ADSR envelope, panning)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import numpy as np

from ...card import MUSIC_STEMS

STEMS: tuple[str, ...] = tuple(MUSIC_STEMS)

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Chord progressions as 0-based scale degrees, one chord per bar (pop staples).
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (5, 3, 0, 4), (0, 3, 0, 4), (0, 2, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 6, 4), (0, 0, 5, 6)),
}


@overload
def midi_hz(note: np.ndarray) -> np.ndarray: ...
@overload
def midi_hz(note: float) -> float: ...
def midi_hz(note: np.ndarray | float) -> np.ndarray | float:
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


def draw_plan(rng: np.random.Generator, seconds: float, sr: int) -> Plan:
    tempo = float(rng.integers(80, 151))
    mode = "major" if rng.random() < 0.55 else "minor"
    tonic = int(rng.integers(0, 12))
    step = sr * 60.0 / tempo / 4.0
    bars = math.ceil(seconds * sr / (16 * step)) + 1
    progression: tuple[int, ...] = PROGRESSIONS[mode][rng.integers(len(PROGRESSIONS[mode]))]
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


def blep_saw(increment: np.ndarray, offset: float = 0.0) -> np.ndarray:
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


def adsr(length: int, sr: int, attack: float, decay: float, sustain: float, release: float, hold: int):
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


def add_at(buffer: np.ndarray, start: int, sound: np.ndarray, gain: float = 1.0) -> None:
    """Mix ``sound`` into ``buffer`` at ``start``, clipped to the buffer's bounds."""
    if start >= buffer.shape[-1] or start + sound.shape[-1] <= 0:
        return
    skip = max(0, -start)
    end = min(buffer.shape[-1], start + sound.shape[-1])
    buffer[..., start + skip : end] += gain * sound[..., skip : skip + end - start - skip]


def panned(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan, ``position`` in [-1 (left), 1 (right)]: [2, frames]."""
    angle = (position + 1.0) * math.pi / 4.0
    return np.stack([mono * math.cos(angle), mono * math.sin(angle)])


def widened(mono: np.ndarray, sr: int, position: float, width: float, delay_ms: float) -> np.ndarray:
    """Pan, then a Haas-style delayed copy on the opposite side: a stereo image ``width`` wide."""
    stereo = panned(mono, position)
    if width > 0:
        d = max(1, round(delay_ms * sr / 1000))
        delayed = np.concatenate([np.zeros(d), mono[:-d]])
        side = 1 if position <= 0 else 0
        stereo[side] += width * delayed
    return stereo
