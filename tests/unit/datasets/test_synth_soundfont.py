"""``stemsplit synth --soundfont``: synthetic songs played by FluidSynth through a General MIDI soundfont.

The renders need the ``fluidsynth`` program and the TimGM6mb soundfont (Debian packages ``fluidsynth``
and ``timgm6mb-soundfont``; ``.ci/run`` installs them); without them those tests skip, saying so. The
errors for a missing program or soundfont are checked either way where they can be.
"""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import stemsplit
from typer.testing import CliRunner

from stemsplit.cli import app
from stemsplit.datasets import fluidsynth
from stemsplit.datasets.fluidsynth import FluidSynthError, find_soundfont
from stemsplit.datasets.musdb import find_tracks
from stemsplit.datasets.synth import STEMS, SynthError, generate_song, write_dataset

SR = 44100


def _timgm6mb() -> fluidsynth.Soundfont | str:
    try:
        return find_soundfont("timgm6mb")
    except FluidSynthError as exc:
        return str(exc)


FONT = _timgm6mb()
needs_font = pytest.mark.skipif(
    isinstance(FONT, str),
    reason=f"needs FluidSynth and TimGM6mb (Debian: apt-get install fluidsynth timgm6mb-soundfont): {FONT}",
)
needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None, reason="needs FluidSynth (Debian: apt-get install fluidsynth)"
)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def songs():
    """Two 4 s songs, rendered once for the module."""
    return [generate_song(seed, 4.0, soundfont=FONT) for seed in (0, 1)]


# --- the songs ------------------------------------------------------------------------------------


@needs_font
def test_songs_have_four_playing_stems_that_sum_to_the_mixture(songs):
    for song in songs:
        assert "soundfont TimGM6mb.sf2" in song.description
        total = np.zeros((2, round(4.0 * SR)))
        for name in STEMS:
            audio = song.stems[name]
            assert audio.dtype == np.float32 and audio.shape == (2, round(4.0 * SR))
            assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
            # Every stem plays: some quarter second of it is clearly audible.
            quarters = audio[:, : 16 * SR // 4].reshape(2, 16, SR // 4)
            assert np.sqrt(np.mean(quarters**2, axis=(0, 2))).max() > 0.005, (name, song.description)
            total += audio
        np.testing.assert_allclose(song.mixture, total, atol=1e-6)
        assert 0.3 < float(np.abs(song.mixture).max()) <= 0.9 + 1e-6
        # Panning, stereo presets and the room make at least two stems stereo.
        assert sum(np.abs(a[0] - a[1]).max() > 1e-3 for a in song.stems.values()) >= 2


@needs_font
def test_programs_vary_from_song_to_song():
    infos = [generate_song(seed, 1.5, soundfont=FONT).info for seed in range(2, 6)]
    for part in ("drums", "bass", "other"):
        assert len({info[part] for info in infos}) >= 3, [info[part] for info in infos]
    programs = {info["bass"].split(",")[0] for info in infos}
    assert len(programs) >= 2 and programs <= set(FONT.presets.values())


@needs_font
def test_same_seed_same_bytes_and_not_the_additive_songs(tmp_path):
    for name in ("a", "b"):
        write_dataset(tmp_path / name, train=1, valid=0, test=1, seconds=2.0, seed=3, soundfont=FONT)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    write_dataset(tmp_path / "additive", train=1, valid=0, test=1, seconds=2.0, seed=3)
    mixture = "train/song-00000/mixture.wav"
    assert digests(tmp_path / "additive")[mixture] != digests(tmp_path / "a")[mixture]


@needs_font
def test_notes_sound_when_and_at_the_pitch_asked(tmp_path):
    """The MIDI file's clock and FluidSynth's sample rate agree: A4 (a square wave, which starts at
    once) at 0.25 s and 1.25 s starts then (within a few ms: FluidSynth starts notes on its 64-sample
    blocks), at 440 Hz."""
    for rate in (44100, 22050):
        events = [fluidsynth.program(0, 80)]
        for start in (rate // 4, rate + rate // 4):
            events += fluidsynth.note(0, start, rate // 2, 69, 100)
        audio = fluidsynth.render(FONT, events, rate, rate * 2, scratch=tmp_path)
        assert audio.shape == (2, rate * 2) and audio.dtype == np.float32
        mono = audio.mean(axis=0)
        latencies = []
        for start in (rate // 4, rate + rate // 4):
            sounding = np.flatnonzero(np.abs(mono[start - rate // 10 : start + rate // 10]) > 1e-3)
            latencies.append(int(sounding[0]) - rate // 10)
        assert all(0 <= latency < 0.008 * rate for latency in latencies), (rate, latencies)
        assert abs(latencies[1] - latencies[0]) < 0.004 * rate, (rate, latencies)
        held = mono[rate // 2 - 4096 : rate // 2 + 4096] * np.hanning(8192)
        peak = np.argmax(np.abs(np.fft.rfft(held))) * rate / 8192
        assert abs(peak - 440.0) < 6.0, (rate, peak)
    assert list(tmp_path.iterdir()) == [], "the MIDI and WAV files are removed"


# --- the command ----------------------------------------------------------------------------------


@needs_font
def test_synth_command_writes_a_soundfont_dataset(tmp_path):
    out = tmp_path / "gm"
    args = ["synth", str(out), "--songs", "1", "--valid", "1", "--test", "1", "--seconds", "1.5"]
    result = CliRunner().invoke(app, [*args, "--soundfont", "timgm6mb"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and "TimGM6mb.sf2" in result.stdout
    train, test = find_tracks(out, "train"), find_tracks(out, "test")
    assert len(train) == 2 and len(test) == 1
    mix = train[0].read_mixture()
    assert sf.info(train[0].stem_path("mixture")).samplerate == SR
    np.testing.assert_allclose(mix, sum(train[0].read(name) for name in STEMS), atol=4 / 32768)
    assert not [p for p in out.rglob(".*")], "no temporary files or folders are left"


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("stemsplit: error: --soundfont: ") and result.stderr.count("\n") == 1
    return result.stderr


def test_missing_fluidsynth_is_one_line_naming_the_debian_package(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # a PATH without fluidsynth
    out = tmp_path / "gm"
    result = CliRunner().invoke(app, ["synth", str(out), "--soundfont", "timgm6mb"])
    assert "install the Debian package fluidsynth" in one_error_line(result)
    assert not out.exists()


@needs_fluidsynth
def test_a_missing_or_unreadable_soundfont_is_one_line_naming_the_file(tmp_path, monkeypatch):
    out = tmp_path / "gm"
    missing = tmp_path / "none.sf2"
    message = one_error_line(CliRunner().invoke(app, ["synth", str(out), "--soundfont", str(missing)]))
    assert str(missing) in message and "timgm6mb-soundfont" in message

    not_a_font = tmp_path / "song.sf2"
    sf.write(not_a_font, np.zeros((100, 2)), SR, format="WAV")
    message = one_error_line(CliRunner().invoke(app, ["synth", str(out), "--soundfont", str(not_a_font)]))
    assert f"{not_a_font}: not a soundfont" in message

    # A soundfont with two presets, laid out as the format says: a General MIDI set needs all 128.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return kind + len(data).to_bytes(4, "little") + data

    def preset(name: bytes, program: int, bank: int) -> bytes:
        return name.ljust(20, b"\0") + program.to_bytes(2, "little") + bank.to_bytes(2, "little") + bytes(14)

    headers = preset(b"Piano", 0, 0) + preset(b"Kit", 0, 128) + preset(b"EOP", 0, 0)
    small = tmp_path / "small.sf2"
    small.write_bytes(
        chunk(b"RIFF", b"sfbk" + chunk(b"LIST", b"INFO") + chunk(b"LIST", b"pdta" + chunk(b"phdr", headers)))
    )
    assert fluidsynth.read_presets(small) == {(0, 0): "Piano", (128, 0): "Kit"}
    message = one_error_line(CliRunner().invoke(app, ["synth", str(out), "--soundfont", str(small)]))
    assert f"{small}: not a General MIDI soundfont (it has no bank 0, program 1)" in message

    # A name stands for Debian's file; when that is missing, the message names the package.
    monkeypatch.setitem(fluidsynth.SOUNDFONTS, "timgm6mb", (tmp_path / "TimGM6mb.sf2", "timgm6mb-soundfont"))
    message = one_error_line(CliRunner().invoke(app, ["synth", str(out), "--soundfont", "timgm6mb"]))
    assert "TimGM6mb.sf2 is missing; install the Debian package timgm6mb-soundfont" in message
    assert not out.exists()


@needs_fluidsynth
def test_a_fifo_or_a_folder_named_as_a_soundfont_is_refused_at_once(tmp_path):
    """Before: a FIFO given as --soundfont blocked the usage check forever (open() waits for a writer)."""
    out = tmp_path / "gm"
    fifo, folder = tmp_path / "pipe.sf2", tmp_path / "folder.sf2"
    os.mkfifo(fifo)
    folder.mkdir()
    for path, problem in ((fifo, "not a regular file"), (folder, "a folder, not a soundfont file")):
        result = stemsplit("synth", out, "--soundfont", path, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"stemsplit: error: --soundfont: {path}: {problem}\n"
    assert not out.exists()


@needs_font
def test_damaged_soundfont_and_too_high_a_rate_are_refused_writing_nothing(tmp_path):
    out = tmp_path / "gm"
    damaged = tmp_path / "cut.sf2"
    damaged.write_bytes(FONT.path.read_bytes()[:4096])
    message = one_error_line(CliRunner().invoke(app, ["synth", str(out), "--soundfont", str(damaged)]))
    assert f"{damaged}: a damaged soundfont" in message
    result = CliRunner().invoke(
        app, ["synth", str(out), "--soundfont", "timgm6mb", "--sample-rate", "192000"]
    )
    assert result.exit_code == 2 and "up to 96000 Hz" in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(SynthError, match="96000"):
        generate_song(0, 1.0, 192000, soundfont=FONT)
    assert not out.exists()
