"""The stem writer (``stemsplit.output.StemWriter``): no 4 GiB wall (past it a WAV stem is RF64, whole;
under it a plain WAV), and a full disk is one line that leaves nothing. Through the real writer, no model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import RATE, tone

from stemsplit.audio import probe
from stemsplit.output import OutputError, OutputOptions, SongSource, StemWriter, plan_outputs


def first_bytes(path: Path, count: int = 4) -> bytes:
    with open(path, "rb") as f:
        return f.read(count)


def write_song(folder: Path, blocks, rate: int, channels: int, **options) -> Path:
    """Stream ``blocks`` ([frames, channels] float32) through StemWriter as one song's vocals: its path."""
    opts = OutputOptions(**options)
    [song] = plan_outputs([SongSource(folder / "long.wav")], folder / "out", ["vocals"], opts)
    with StemWriter(song, opts, rate, channels) as writer:
        for block in blocks:
            writer.write({"vocals": block})
        writer.commit()
    return song.paths["vocals"]


def test_a_float_wav_stem_over_4_gib_is_rf64_and_reads_back_whole(tmp_path):
    """1 s of sound, 4 GiB of silence, 1 s of sound, through the real writer (no model): the stem is an
    RF64 whose every frame libsndfile and probe count, the sound at both ends. Silence is written as
    holes, so the file takes kilobytes of disk and seconds of time."""
    rate = 8000
    start, end = tone(1.0, rate, 440)[:, :1], tone(1.0, rate, 660)[:, :1]
    silence = np.zeros((1 << 26, 1), np.float32)  # 256 MiB
    path = write_song(tmp_path, [start, *[silence] * 16, end], rate, 1)
    frames = 2 * rate + 16 * len(silence)
    try:
        assert first_bytes(path) == b"RF64"
        assert path.stat().st_size > 1 << 32 and path.stat().st_blocks * 512 < 1 << 24
        info = probe(path)
        assert (info.frames, info.frames_exact, info.notes) == (frames, True, ())
        with sf.SoundFile(path) as f:
            assert f.frames == frames
            np.testing.assert_array_equal(f.read(rate, dtype="float32", always_2d=True), start)
            f.seek(frames - rate - 10)
            tail = f.read(dtype="float32", always_2d=True)
        np.testing.assert_array_equal(tail, np.concatenate([np.zeros((10, 1), np.float32), end]))
    finally:
        path.unlink()


def test_stems_under_4_gib_stay_plain_wav(tmp_path):
    rate = 8000
    audio = np.concatenate([tone(0.5, rate, 440), np.zeros((rate, 2), np.float32), tone(0.5, rate, 660)])
    path = write_song(tmp_path, [audio[:5000], audio[5000:9000], audio[9000:]], rate, 2)
    with sf.SoundFile(path) as f:
        assert (f.format, f.subtype, f.samplerate, f.channels) == ("WAV", "FLOAT", rate, 2)
        np.testing.assert_array_equal(f.read(dtype="float32", always_2d=True), audio)
    assert first_bytes(path) == b"RIFF"
    converted = write_song(tmp_path / "pcm", [audio], rate, 2, fmt="flac", bit_depth=16, clip_mode="none")
    np.testing.assert_allclose(sf.read(converted, dtype="float32", always_2d=True)[0], audio, atol=1e-4)


@pytest.mark.slow
def test_a_16_bit_wav_stem_over_4_gib_is_rf64(tmp_path):
    """The integer path converts the float temporary (silence: holes) into the output format: past
    4 GiB it is RF64. Writes 4 GiB for real: a minute or more, so marked slow."""
    rate = 8000
    silence, end = np.zeros((1 << 26, 2), np.float32), np.full((rate, 2), 0.25, np.float32)
    path = write_song(tmp_path, [*[silence] * 16, end], rate, 2, bit_depth=16)
    try:
        with sf.SoundFile(path) as f:
            assert (f.format, f.frames) == ("RF64", 16 * len(silence) + rate)
            f.seek(f.frames - rate)
            np.testing.assert_allclose(f.read(dtype="float32"), 0.25, atol=1e-4)
    finally:
        path.unlink()


@pytest.mark.parametrize("when", ["write", "close"])
def test_a_full_disk_while_writing_temporaries_is_one_line_and_leaves_nothing(when, small_disk):
    """The temporaries are plain buffered files now: a full disk shows at a write, or only at the last
    flush and the header (a few samples on a disk already full); either way it is the writer's
    one-line error, with every temporary and folder gone."""
    rng = np.random.default_rng(0)
    frames, blocks = (25_000, 40) if when == "write" else (100, 1)
    if when == "close":
        st = os.statvfs(small_disk)
        (small_disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize))
    opts = OutputOptions()
    [song] = plan_outputs([SongSource(small_disk / "s.wav")], small_disk / "out", ["a", "b", "c"], opts)
    with pytest.raises(OutputError) as error, StemWriter(song, opts, RATE, 2) as writer:
        for _ in range(blocks):
            writer.write({stem: rng.uniform(-0.5, 0.5, (frames, 2)).astype(np.float32) for stem in "abc"})
        writer.commit()
    assert "no space left on device" in str(error.value).lower() and "\n" not in str(error.value)
    assert not (small_disk / "out").exists()
