"""The synthesised drums, bass and "other" (keys, plucks, pads, organ) of a song, from its plan.

Each ``render_*`` draws its instrument's sounds and part from ``plan.rng`` and says what it drew in
``info``; the note functions (``drum_hits``, ``bass_notes``, ``chord_notes``, ``arpeggio_notes``) are
shared with the General MIDI versions (:mod:`.general_midi`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy import signal

from .plan import Plan, add_at, adsr, blep_saw, midi_hz, panned, widened

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


def drum_hits(plan: Plan) -> tuple[str, list[tuple[str, int, float]]]:
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


def render_drums(plan: Plan, info: dict[str, str]) -> np.ndarray:
    rng, sr = plan.rng, plan.sr
    kit = _drum_kit(rng, sr)
    info["drums"], hits = drum_hits(plan)
    parts = {name: np.zeros(plan.frames + sr) for name in ("kick", "snare", "hat", "tom", "crash")}
    for sample, start, gain in hits:
        add_at(parts[DRUM_PART.get(sample, sample)], start, kit[sample], gain)

    # Stereo: kick and snare centre, hats to one side, toms spread, crash on the other side.
    hat_side = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.5)
    stereo = (
        panned(parts["kick"], 0.0)
        + panned(parts["snare"], rng.uniform(-0.1, 0.1))
        + panned(parts["hat"], hat_side)
        + widened(parts["tom"], sr, -hat_side, 0.5, 9.0)
        + widened(parts["crash"], sr, -hat_side, 0.6, 13.0)
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


def bass_notes(plan: Plan, rhythm_name: str) -> list[tuple[int, int, int]]:
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


def render_bass(plan: Plan, info: dict[str, str]) -> np.ndarray:
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
    notes = bass_notes(plan, rhythm_name)
    for start, hold, note in notes:
        if start >= n:
            continue
        length = hold + round(release * sr)
        env = adsr(length, sr, attack, decay, sustain, release, hold)
        end = min(n, start + length)
        amp[start:end] = np.maximum(amp[start:end], env[: end - start])
        pitch[start:] = note  # held until the next note: releases keep their pitch
        fenv = np.exp(-np.arange(end - start) / (filter_decay * sr))
        bright[start:end] = np.maximum(bright[start:end], fenv * rng.uniform(0.6, 1.0))
    # A touch of portamento: the pitch glides over ~10 ms instead of jumping.
    pitch = signal.lfilter([0.02], [1, -0.98], pitch - pitch[0]) + pitch[0]
    increment = midi_hz(pitch) / sr

    if timbre in ("saw", "square"):
        raw = blep_saw(increment)
        if timbre == "square":
            raw = raw - blep_saw(increment, 0.5)
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
    return panned(out * amp, 0.0)[:, : plan.frames]


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
        out += blep_saw(np.full(length, f * 2 ** (cents / 1200) / sr), rng.random())
    env = adsr(length, sr, 0.15, 0.5, 0.8, 0.4, hold)
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


def chord_notes(plan: Plan, rhythm: str, seventh: bool) -> list[tuple[int, int, list[int]]]:
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


def arpeggio_notes(plan: Plan, seventh: bool) -> Iterator[tuple[int, int, int]]:
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


def render_other(plan: Plan, info: dict[str, str]) -> np.ndarray:
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
    for start, hold, voicing in chord_notes(plan, rhythm, seventh):
        for m in voicing:
            sound = INSTRUMENTS[chord_instrument](float(midi_hz(m)), hold, sr, rng)
            add_at(chords, start, sound, rng.uniform(0.7, 1.0) / len(voicing))
    if chord_instrument == "pad":  # the pad's low-pass softens the saws
        chords = signal.sosfilt(signal.butter(2, rng.uniform(1500, 4000), fs=sr, output="sos"), chords)
    if chord_instrument == "organ":  # a slow tremolo, like a rotating speaker
        chords *= 1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(4, 7) * np.arange(n) / sr)
    chord_pan = rng.uniform(-0.6, 0.6)
    stereo += widened(chords, sr, chord_pan, rng.uniform(0.2, 0.6), rng.uniform(7, 18))

    if arp_instrument:
        arp = np.zeros(n)
        for start, hold, m in arpeggio_notes(plan, seventh):
            sound = INSTRUMENTS[arp_instrument](float(midi_hz(m)), hold, sr, rng)
            add_at(arp, start, sound, 0.25 * rng.uniform(0.7, 1.0))
        if arp_instrument == "pad":
            arp = signal.sosfilt(signal.butter(2, 3000, fs=sr, output="sos"), arp)
        stereo += widened(arp, sr, -chord_pan, rng.uniform(0.1, 0.4), rng.uniform(5, 12))
    return stereo[:, : plan.frames]
