"""The synthesised vocals: a formant voice singing a melody over the song's chords, in phrases."""

from __future__ import annotations

import numpy as np
from scipy import signal

from .plan import Plan, add_at, adsr, blep_saw, midi_hz, widened

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


def melody(plan: Plan, low: int, high: int) -> list[tuple[int, int, int]]:
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


def render_vocals(plan: Plan, info: dict[str, str]) -> np.ndarray:
    rng, sr, n = plan.rng, plan.sr, plan.frames + plan.sr
    high_voice = rng.random() < 0.5
    low, high = (57, 77) if high_voice else (47, 67)  # A3..F5 or B2..G4
    formant_scale = rng.uniform(1.1, 1.2) if high_voice else rng.uniform(0.95, 1.05)
    info["vocals"] = ("high" if high_voice else "low") + " formant voice"
    notes = melody(plan, low, high)

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
        env = adsr(length, sr, attack, 0.4, rng.uniform(0.6, 0.85), release, hold)
        add_at(amp, start, env * rng.uniform(0.75, 1.0))
        t = np.arange(length) / sr
        add_at(vib_depth, start, np.clip((t - 0.15) / 0.2, 0.0, 1.0) * (t < hold / sr))
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
    source = blep_saw(midi_hz(pitch) / sr, rng.random())
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
        add_at(out, start - (round(0.7 * length) if fricative else 0), burst, level)
    return widened(out, sr, rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.15), rng.uniform(10, 25))[
        :, : plan.frames
    ]
