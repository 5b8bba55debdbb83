"""The same kind of song played by General MIDI programs through FluidSynth (``stemsplit synth
--soundfont``): drum kits, basses, chords and arpeggios, voices; the arrangements are the additive
songs' own (the note functions are shared), the mixing stage too."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import fluidsynth
from .instruments import BASS_RHYTHMS, CHORD_RHYTHMS, arpeggio_notes, bass_notes, chord_notes, drum_hits
from .plan import STEMS, Plan, draw_plan
from .song import Song, assemble_song, mix_stems
from .voice import melody, render_vocals

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
FORMANT_SHARE = 0.35  # of soundfont songs, those sung by the formant voice (see render_vocals) instead
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
    groove, hits = drum_hits(plan)
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
    played = _humanise(plan, bass_notes(plan, rhythm), rng.uniform(80, 105), 0.004, mono=True)
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
        for start, hold, voicing in chord_notes(plan, rhythm, seventh)
        for i, key in enumerate(voicing)
    ]
    pan = rng.uniform(-0.6, 0.6)
    events = _desk(CHORDS, chords, pan, rng.uniform(*sends)) + _notes(
        CHORDS, _humanise(plan, notes, rng.uniform(60, 95), 0.006)
    )
    if arpeggio is not None:
        events += _desk(ARPEGGIO, arpeggio, -pan * rng.uniform(0.5, 1.0), rng.uniform(0, 30))
        events += _notes(
            ARPEGGIO, _humanise(plan, list(arpeggio_notes(plan, seventh)), rng.uniform(55, 90), 0.004)
        )
    return play(events)


def _gm_vocals(plan: Plan, font: fluidsynth.Soundfont, play: Play, info: dict[str, str]) -> np.ndarray:
    rng, sr = plan.rng, plan.sr
    if rng.random() < FORMANT_SHARE:
        return render_vocals(plan, info)
    high_voice = rng.random() < 0.5
    low, high = (57, 77) if high_voice else (47, 67)  # A3..F5 or B2..G4, as the formant voice
    voice = int(rng.choice(GM_VOICES))
    info["vocals"] = f"{font.presets[0, voice]}, {'high' if high_voice else 'low'}"
    played = _humanise(plan, melody(plan, low, high), rng.uniform(85, 115), 0.01, mono=True)
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


def soundfont_song(
    seed: int, seconds: float, sr: int, font: fluidsynth.Soundfont, scratch: Path | None
) -> Song:
    """:func:`generate_song` through FluidSynth: the same arrangements, played with General MIDI
    programs chosen per song, the same mixing stage."""
    # Streams of their own: a soundfont song never shares its plan (tempo, key, chords, arrangement)
    # with the additive song of the same seed, so sets of both can be used side by side.
    streams = np.random.SeedSequence([seed, 1]).spawn(7)
    plan = draw_plan(np.random.default_rng(streams[0]), seconds, sr)
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
    stems, rt60 = mix_stems(dry, np.random.default_rng(streams[5]), sr)
    info["reverb"] = f"RT60 {rt60:.1f} s"
    info["soundfont"] = font.path.name
    return assemble_song(stems, sr, seed, plan, info)
