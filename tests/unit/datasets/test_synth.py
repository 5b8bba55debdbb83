"""The synthetic multitrack generator (``stemsplit.datasets.synth``) and ``stemsplit synth``."""

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from stemsplit.card import MUSIC_STEMS
from stemsplit.cli import app
from stemsplit.datasets.musdb import find_tracks
from stemsplit.datasets.synth import STEMS, SynthError, generate_song, write_dataset

SR = 44100
SECONDS = 5.0


@pytest.fixture(scope="module")
def songs():
    """Five short songs, generated once for the module."""
    return [generate_song(seed, SECONDS) for seed in range(5)]


@pytest.fixture(scope="module")
def long_songs():
    """Three 20 s songs: long enough for every stem to come in."""
    return [generate_song(seed, 20.0) for seed in (11, 12, 13)]


def band_fraction(audio: np.ndarray, low: float, high: float) -> float:
    """Share of the energy of ``audio`` [2, frames] between ``low`` and ``high`` Hz."""
    power = np.abs(np.fft.rfft(audio.astype(np.float64).mean(axis=0))) ** 2
    freqs = np.fft.rfftfreq(audio.shape[-1], 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def files_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- generate_song ------------------------------------------------------------------------------


def test_stems_match_the_project_and_have_the_documented_shape(songs):
    assert STEMS == MUSIC_STEMS
    for song in songs:
        assert set(song.stems) == set(STEMS)
        for audio in song.stems.values():
            assert audio.dtype == np.float32 and audio.shape == (2, round(SECONDS * SR))
            assert np.isfinite(audio).all()
        assert song.sample_rate == SR and song.mixture.shape == (2, round(SECONDS * SR))


def test_same_seed_same_song_and_different_seeds_differ(songs):
    again = generate_song(3, SECONDS)
    for name in STEMS:
        np.testing.assert_array_equal(again.stems[name], songs[3].stems[name])
    assert again.description == songs[3].description
    for a, b in itertools.pairwise(songs):
        assert not np.allclose(a.mixture, b.mixture, atol=1e-3)
    assert len({s.tempo for s in songs}) >= 3
    assert len({s.key for s in songs}) >= 3
    assert len({s.description for s in songs}) == len(songs)


def test_mixture_is_the_sum_of_the_stems_and_never_clips(songs):
    for song in songs:
        total = np.sum([song.stems[name].astype(np.float64) for name in STEMS], axis=0)
        np.testing.assert_allclose(song.mixture, total, atol=1e-6)
        peak = float(np.abs(song.mixture).max())
        assert 0.3 < peak <= 0.9 + 1e-6
        assert all(float(np.abs(a).max()) <= 1.0 for a in song.stems.values())


def test_stems_are_stereo(songs):
    for song in songs:
        differs = [name for name, a in song.stems.items() if np.abs(a[0] - a[1]).max() > 1e-3]
        assert len(differs) >= 2, song.description


def test_every_stem_plays_somewhere_and_sometimes_rests(long_songs):
    second = SR
    rested = set()
    for song in long_songs:
        for name, audio in song.stems.items():
            rms = np.sqrt(np.mean(audio[:, : 20 * second].reshape(2, 20, second) ** 2, axis=(0, 2)))
            assert (rms > 0.005).sum() >= 5, f"{name} hardly plays in {song.description}"
            if (rms < 1e-3).any():
                rested.add(name)
    assert "vocals" in rested  # phrases have rests; intros leave stems out


def test_stem_levels_vary_across_songs(songs):
    for name in STEMS:
        levels_db = [20 * np.log10(np.sqrt(np.mean(s.stems[name] ** 2)) + 1e-12) for s in songs]
        assert max(levels_db) - min(levels_db) > 2.0, name


def test_stems_overlap_in_frequency(songs):
    for song in songs:
        for name in ("bass", "other", "vocals"):
            assert band_fraction(song.stems[name], 200, 1000) > 0.005, (name, song.description)
        assert band_fraction(song.stems["drums"], 4000, 8000) > 0.01, song.description
        assert band_fraction(song.stems["vocals"], 4000, 8000) > 1e-3, song.description


def test_vocals_are_sung_in_a_singing_range(songs):
    for song in songs:
        mono = song.stems["vocals"].astype(np.float64).mean(axis=0)
        frame = 2048
        frames = mono[: len(mono) // frame * frame].reshape(-1, frame)
        loudest = frames[np.argmax(np.mean(frames**2, axis=1))]
        x = loudest - loudest.mean()
        ac = np.correlate(x, x, "full")[frame - 1 :]
        ac /= ac[0]
        lo, hi = SR // 4000, SR // 40  # search 40 Hz..4 kHz, wider than the range asserted
        lag = lo + int(np.argmax(ac[lo:hi]))
        assert ac[lag] > 0.5, "the loudest vocal frame should be clearly periodic"
        assert 80 <= SR / lag <= 1000, (SR / lag, song.description)


def test_bad_arguments_are_refused():
    with pytest.raises(SynthError, match="seconds"):
        generate_song(0, 0.0)
    with pytest.raises(SynthError, match="seed"):
        generate_song(-1, 1.0)


# --- files --------------------------------------------------------------------------------------


def test_write_dataset_is_musdb_layout_and_round_trips(tmp_path):
    out = tmp_path / "synth"
    write_dataset(out, train=2, valid=1, test=1, seconds=2.0, seed=7)
    train, test = find_tracks(out, "train"), find_tracks(out, "test")
    valid_names = (out / "valid.txt").read_text().split()
    assert len(train) == 3 and len(test) == 1 and len(valid_names) == 1
    assert set(valid_names) <= {t.name for t in train}
    assert not set(valid_names) & {"song-00000", "song-00001"}
    for track in [*train, *test]:
        assert track.sample_rate == SR and track.channels == 2 and track.frames == 2 * SR
        assert sf.info(track.stem_path("mixture")).subtype == "PCM_16"
    assert not [p for p in out.rglob(".*")], "no temporary folders are left"

    # The files hold the generated song (within 16-bit quantisation), under the seed of its slot.
    from stemsplit.datasets.synth import song_seed

    song = generate_song(song_seed(7, "train", 1), 2.0)
    track = next(t for t in train if t.name == "song-00001")
    for name in STEMS:
        np.testing.assert_allclose(track.read(name), song.stems[name], atol=1e-4)
    np.testing.assert_allclose(track.read_mixture(), song.mixture, atol=1e-4)
    seeds = {song_seed(7, subset, 0) for subset in ("train", "valid", "test")}
    assert len(seeds) == 3


def test_more_songs_keep_the_earlier_ones_byte_identical(tmp_path):
    write_dataset(tmp_path / "small", train=1, valid=1, test=1, seconds=1.0, seed=3)
    write_dataset(tmp_path / "big", train=2, valid=2, test=1, seconds=1.0, seed=3)
    small, big = files_digest(tmp_path / "small"), files_digest(tmp_path / "big")
    for path, digest in small.items():
        if path not in ("valid.txt", "synth-request.json"):  # (they list the songs asked for)
            assert big[path] == digest, path
    assert len(big) > len(small)
    other_seed = files_digest_after(tmp_path / "other", seed=4)
    assert other_seed["train/song-00000/mixture.wav"] != small["train/song-00000/mixture.wav"]


def files_digest_after(out: Path, seed: int) -> dict[str, str]:
    write_dataset(out, train=1, valid=0, test=0, seconds=1.0, seed=seed)
    return files_digest(out)


def test_a_non_empty_folder_is_refused_untouched(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(SynthError, match="not an empty folder"):
        write_dataset(out, train=1, valid=0, test=0, seconds=1.0, seed=0)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SynthError):
        write_dataset(a_file, train=1, valid=0, test=0, seconds=1.0, seed=0)


def test_process_pool_writes_the_same_songs(tmp_path):
    write_dataset(tmp_path / "one", train=2, valid=0, test=0, seconds=1.0, seed=5)
    write_dataset(tmp_path / "two", train=2, valid=0, test=0, seconds=1.0, seed=5, workers=2)
    assert files_digest(tmp_path / "one") == files_digest(tmp_path / "two")


# --- the command ---------------------------------------------------------------------------------


def test_synth_command_writes_a_dataset(tmp_path):
    out = tmp_path / "synth"
    args = ["synth", str(out), "--songs", "2", "--valid", "1", "--test", "1", "--seconds", "1", "--seed", "9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and "2 training, 1 validation and 1 test songs" in result.stdout
    assert len(find_tracks(out, "train")) == 3 and len(find_tracks(out, "test")) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--songs", "-1"], "0 or more"),
        (["--test", "-2"], "0 or more"),
        (["--seconds", "0"], "seconds"),
        (["--seconds", "-3"], "seconds"),
        (["--workers", "0"], "workers"),
        (["--sample-rate", "16000"], "at least 22050 Hz"),
        # Before: an internal error for a song under one sample, and the OOM killer for a huge count (the
        # job list) or --workers (a pool starts every worker at once).
        (["--seconds", "0.00001"], "at least one sample"),
        (["--songs", "99999999999999"], "at most 1000000"),
        (["--workers", "100000"], "from 1 to 64"),
        # Before: no limit; 1e7 s would have needed 90 TB of memory (about 9 MB a second)
        (["--seconds", "1e7"], "seconds must be at most 600 (one song), not 1e+07"),
    ],
)
def test_synth_command_rejects_bad_values_writing_nothing(tmp_path, extra, message):
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["synth", str(out), "--seconds", "1", *extra])
    assert result.exit_code == 2  # a usage error
    assert result.stderr.startswith("stemsplit: error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("seconds", [1 / 44100, 0.01])
def test_songs_shorter_than_a_level_frame_are_made(seconds):
    """Before: under 2048 samples (46 ms) the level of a stem was the max of nothing (ValueError)."""
    song = generate_song(3, seconds)
    frames = round(seconds * 44100)
    assert all(audio.shape == (2, frames) and np.isfinite(audio).all() for audio in song.stems.values())


def test_synth_command_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(app, ["synth", str(tmp_path), "--songs", "1", "--seconds", "1"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "not an empty folder" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_synth_commands_refuse_a_folder_under_a_file(tmp_path):
    """Before: 'internal error: NotADirectoryError' (exit 70) once the first song was written."""
    (tmp_path / "afile").write_text("x")
    for args in (
        ["synth", str(tmp_path / "afile" / "sub"), "--songs", "1", "--seconds", "1"],
        ["synth-speech", str(tmp_path / "afile" / "sub"), "--train", "1", "--dev", "0", "--test", "0"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert (
            f"cannot create {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is not a folder"
            in result.stderr
        )
    assert (tmp_path / "afile").read_text() == "x"


def test_synth_is_a_subcommand_not_a_file_to_separate():
    from stemsplit.cli import SUBCOMMANDS

    assert "synth" in SUBCOMMANDS
