"""FluidSynth: play timed MIDI events through a General MIDI soundfont, for ``stemsplit synth --soundfont``.

This module knows MIDI and FluidSynth, not songs (those are in
:mod:`stemsplit.datasets.synth`): :func:`find_soundfont` checks that the
``fluidsynth`` program is installed and reads which presets a soundfont holds,
:func:`note` and friends make MIDI messages, and :func:`render` writes them as
a Standard MIDI File and has ``fluidsynth`` render it to a float array.

It runs the ``fluidsynth`` command line (Debian package ``fluidsynth``) rather
than a Python binding: a Standard MIDI File is a few dozen lines to write, and
the command line is what Debian packages. Its output is bit-for-bit
repeatable: 32-bit float samples (FluidSynth dithers only when it converts to
16-bit), one rendering thread, and MIDI timed by the samples rendered rather
than by the clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.info import sf_name
from ..errors import StemsplitError

__all__ = [
    "FluidSynthError",
    "Soundfont",
    "control",
    "find_soundfont",
    "midi_file",
    "note",
    "pitch_bend",
    "program",
    "read_presets",
    "render",
]

# The General MIDI soundfonts Debian installs, by the names --soundfont also accepts.
SOUNDFONTS = {
    "timgm6mb": (Path("/usr/share/sounds/sf2/TimGM6mb.sf2"), "timgm6mb-soundfont"),
    "fluidr3": (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), "fluid-soundfont-gm"),
    "musescore": (Path("/usr/share/sounds/sf3/MuseScore_General.sf3"), "musescore-general-soundfont"),
}
PACKAGES = "timgm6mb-soundfont, fluid-soundfont-gm or musescore-general-soundfont"
DRUM_BANK = 128  # where soundfonts keep their drum kits (played on MIDI channel 10)
MAX_SAMPLE_RATE = 96000  # FluidSynth's own limit
# MIDI time: 1000 ticks a quarter note at 10 000 µs a quarter note, so one tick is 10 µs, finer than a
# sample at 48 kHz (FluidSynth itself starts notes on its 64-sample blocks).
TICKS_PER_QUARTER, MICROSECONDS_PER_QUARTER = 1000, 10_000
TICKS_PER_SECOND = 1_000_000 * TICKS_PER_QUARTER // MICROSECONDS_PER_QUARTER

Event = tuple[int, bytes]  # (time in samples, one MIDI message)


class FluidSynthError(StemsplitError):
    """FluidSynth or the soundfont is missing or unusable, or a render failed; the message says why."""


@dataclass(frozen=True)
class Soundfont:
    """A soundfont file that FluidSynth can play: ``presets`` maps (bank, program) to the preset's name."""

    path: Path
    presets: dict[tuple[int, int], str]
    fluidsynth: str  # the program's path


def find_soundfont(spec: str | os.PathLike[str]) -> Soundfont:
    """The soundfont ``spec`` names (a file, or one of :data:`SOUNDFONTS`' names when no such file is
    here), checked to be a General MIDI soundfont, with the ``fluidsynth`` program that will play it."""
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise FluidSynthError(
            "FluidSynth is not installed (no fluidsynth on PATH); install the Debian package fluidsynth"
        )
    path = Path(spec)
    name = str(spec).lower()
    if name in SOUNDFONTS and not path.exists():
        path, package = SOUNDFONTS[name]
        if not path.is_file():
            raise FluidSynthError(f"{name}: {path} is missing; install the Debian package {package}")
    elif not path.exists():
        raise FluidSynthError(
            f"{path}: no such soundfont; give an .sf2 or .sf3 file, or install one (Debian packages "
            f"{PACKAGES}) and give its name ({', '.join(SOUNDFONTS)})"
        )
    if path.is_dir():
        raise FluidSynthError(f"{path}: a folder, not a soundfont file")
    if not path.is_file():  # a FIFO would block the check (open() waits for a writer), a device worse
        raise FluidSynthError(f"{path}: not a regular file")
    presets = read_presets(path)
    missing = [p for p in range(128) if (0, p) not in presets]
    if missing or (DRUM_BANK, 0) not in presets:
        what = f"bank 0, program {missing[0]}" if missing else f"a drum kit at bank {DRUM_BANK}, program 0"
        raise FluidSynthError(
            f"{path}: not a General MIDI soundfont (it has no {what}); try Debian's {PACKAGES}"
        )
    return Soundfont(path, presets, binary)


def read_presets(path: Path) -> dict[tuple[int, int], str]:
    """{(bank, program): name} from a SoundFont 2 (or 3) file's preset headers, reading only them.

    A soundfont is a RIFF file: ``sfbk``, then LIST chunks ``INFO``, ``sdta`` (the samples, most of
    the file) and ``pdta``, whose ``phdr`` chunk holds 38-byte preset headers (name[20], program,
    bank, ...), the last a terminal "EOP" record.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"RIFF" or f.read(8)[4:] != b"sfbk":
                raise FluidSynthError(f"{path}: not a soundfont (.sf2 or .sf3 file)")
            end = None  # the end of the pdta list, once inside it
            while header := f.read(8):
                if len(header) < 8 or (end is not None and f.tell() > end):
                    break
                kind, size = header[:4], int.from_bytes(header[4:], "little")
                if kind == b"LIST" and end is None:
                    if f.read(4) == b"pdta":
                        end = f.tell() + size - 4
                    else:
                        f.seek(size - 4 + size % 2, os.SEEK_CUR)
                elif kind == b"phdr":
                    data = f.read(size)
                    records = [data[i : i + 38] for i in range(0, len(data) - 38, 38)]  # all but "EOP"
                    return {
                        (int.from_bytes(r[22:24], "little"), int.from_bytes(r[20:22], "little")): r[:20]
                        .split(b"\0")[0]
                        .decode("latin-1")
                        .strip()
                        for r in records
                        if len(r) == 38
                    }
                else:
                    f.seek(size + size % 2, os.SEEK_CUR)
    except OSError as exc:
        raise FluidSynthError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    raise FluidSynthError(f"{path}: a damaged soundfont (no preset headers)")


# --- MIDI messages: (time in samples, bytes); channels 0..15 (channel 9 is General MIDI's drums) --------


def note(channel: int, start: int, hold: int, key: int, velocity: int) -> list[Event]:
    """A note-on at ``start`` and its note-off ``hold`` samples later; velocity 1..127."""
    return [(start, bytes([0x90 | channel, key, velocity])), (start + hold, bytes([0x80 | channel, key, 0]))]


def program(channel: int, number: int) -> Event:
    """Select program ``number`` (0..127) at time 0."""
    return (0, bytes([0xC0 | channel, number]))


def control(channel: int, time: int, number: int, value: int) -> Event:
    """Controller ``number`` (7 volume, 10 pan, 1 modulation, 91 reverb, 93 chorus...) set to 0..127."""
    return (time, bytes([0xB0 | channel, number, int(np.clip(value, 0, 127))]))


def pitch_bend(channel: int, time: int, amount: float) -> Event:
    """Bend by ``amount`` of the bend range, -1..1 (General MIDI's default range is ±2 semitones)."""
    value = int(np.clip(8192 + round(amount * 8192), 0, 16383))
    return (time, bytes([0xE0 | channel, value & 0x7F, value >> 7]))


def _variable_length(n: int) -> bytes:
    """MIDI's variable-length number: 7 bits a byte, most significant first, the high bit set on all
    bytes but the last."""
    out = [n & 0x7F]
    while n := n >> 7:
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def midi_file(events: list[Event], sample_rate: int) -> bytes:
    """A Standard MIDI File (format 0: one track) playing ``events``; note-offs go before anything else
    at the same time, so a note repeated at once is not cut short by the previous one's note-off."""
    ordered = sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80))  # stable: ties keep their order
    track = bytearray(b"\x00\xff\x51\x03" + MICROSECONDS_PER_QUARTER.to_bytes(3, "big"))  # tempo
    now = 0
    for time, message in ordered:
        tick = round(time * TICKS_PER_SECOND / sample_rate)
        track += _variable_length(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    header += TICKS_PER_QUARTER.to_bytes(2, "big")
    return header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


def render(
    font: Soundfont,
    events: list[Event],
    sample_rate: int,
    frames: int,
    *,
    settings: dict[str, float] | None = None,
    scratch: Path | None = None,
) -> np.ndarray:
    """Play ``events`` through ``font``: float32 [2, frames] (cut, or padded with silence).

    FluidSynth's reverb is off (the caller adds its own room); ``settings`` are more of its settings
    (``synth.chorus.depth``...). The MIDI and WAV files live in a temporary folder inside
    ``scratch`` (the system's temporary folder if None), removed before this returns.
    """
    if not 8000 <= sample_rate <= MAX_SAMPLE_RATE:
        raise FluidSynthError(f"FluidSynth renders at 8000 to {MAX_SAMPLE_RATE} Hz, not {sample_rate}")
    options = {
        "synth.reverb.active": 0,
        "synth.cpu-cores": 1,
        "player.timing-source": "sample",
        **(settings or {}),
    }
    with tempfile.TemporaryDirectory(prefix=".fluidsynth-", dir=scratch) as folder:
        midi, wav = Path(folder) / "part.mid", Path(folder) / "part.wav"
        midi.write_bytes(midi_file(events, sample_rate))
        command = [font.fluidsynth, "-n", "-i", "-q", "-g", "0.3", "-r", str(sample_rate)]
        command += ["-O", "float", "-T", "wav", "-F", str(wav)]
        for name, value in options.items():
            command += ["-o", f"{name}={value}"]
        done = subprocess.run(
            [*command, str(font.path), str(midi)], stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if done.returncode != 0 or not wav.is_file():
            said = (done.stderr or done.stdout).strip().splitlines() or ["no message"]
            raise FluidSynthError(f"fluidsynth failed on {font.path} (exit {done.returncode}): {said[-1]}")
        audio = sf.read(sf_name(wav), dtype="float32", always_2d=True)[0].T
    out = np.zeros((2, frames), dtype=np.float32)
    out[:, : min(frames, audio.shape[-1])] = audio[:2, :frames]
    return out
