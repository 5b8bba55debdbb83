"""Training data: dataset discovery, the validation split, source activity detection and remixing."""

import importlib.util
import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import write_track

from stemsplit.card import MUSIC_STEMS
from stemsplit.datasets.musdb import dataset_split, find_tracks, split_train_valid
from stemsplit.datasets.musdb_layout import DatasetError, musdb_validation_names, validation_names
from stemsplit.train import data
from stemsplit.train.data import RemixDataset, SalientIndex, salient_segments

SR = 22050
VALID = "Actions - One Minute Smile"


def noise_track(folder, seconds=14.0, amplitude=0.07, seed=0, stems=MUSIC_STEMS, mixture=True, edit=None):
    """A stereo track of uniform noise per stem (peak ``amplitude``); ``edit(stem, audio)`` alters one."""
    rng = np.random.default_rng(seed)
    frames = round(seconds * SR)
    audio = {}
    for stem in stems:
        audio[stem] = rng.uniform(-amplitude, amplitude, (frames, 2)).astype(np.float32)
        if edit is not None:
            audio[stem] = edit(stem, audio[stem])
    write_track(folder, audio, SR, mixture)


def silent_start(stem, audio):
    """Vocals silent for their first 6 s: only later segments are salient."""
    if stem == "vocals":
        audio[: 6 * SR] = 0
    return audio


def make_dataset(root, amplitude=0.07):
    noise_track(root / "train" / VALID, amplitude=amplitude, seed=1)
    noise_track(root / "train" / "B - Second", amplitude=amplitude, seed=2, edit=silent_start)
    noise_track(root / "train" / "C - Third", amplitude=amplitude, seed=3, mixture=False)
    noise_track(root / "test" / "D - Test", seconds=4.0, seed=4)
    return root


@pytest.fixture
def musdb(tmp_path):
    return make_dataset(tmp_path / "musdb")


@pytest.fixture
def dataset(musdb, tmp_path):
    tracks = find_tracks(musdb, "train")
    index = SalientIndex.build(tracks, MUSIC_STEMS, cache_dir=tmp_path / "cache")
    return RemixDataset(tracks, epoch_size=400, seed=7, index=index)


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- find_tracks --------------------------------------------------------------------------------


def test_find_tracks_reads_the_musdb_hq_layout(musdb):
    tracks = find_tracks(musdb, "train")
    assert [t.name for t in tracks] == [VALID, "B - Second", "C - Third"]
    track = tracks[1]
    assert (track.sample_rate, track.frames, track.channels) == (SR, 14 * SR, 2)
    assert track.stems == MUSIC_STEMS and track.folder == musdb / "train" / "B - Second"
    assert track.stem_path("bass") == track.folder / "bass.wav"

    whole = track.read("drums")
    assert whole.shape == (2, 14 * SR) and whole.dtype == np.float32
    np.testing.assert_array_equal(track.read("drums", 1000, 500), whole[:, 1000:1500])
    # mixture.wav when there is one, else the sum of the stems.
    np.testing.assert_array_equal(
        track.read_mixture(), sf.read(track.folder / "mixture.wav", dtype="float32")[0].T
    )
    summed = tracks[2].read_mixture()
    np.testing.assert_allclose(summed, sum(tracks[2].read(s) for s in MUSIC_STEMS), atol=1e-7)
    assert [t.name for t in find_tracks(str(musdb), "test")] == ["D - Test"]


def test_find_tracks_with_other_stem_names(tmp_path):
    noise_track(tmp_path / "mine" / "train" / "song", seconds=1.0, stems=("guitar", "keys"), mixture=False)
    (track,) = find_tracks(tmp_path / "mine", "train", stems=["guitar", "keys"])
    assert track.stems == ("guitar", "keys")
    assert "drums.wav: missing" in error_of(find_tracks, tmp_path / "mine", "train")


def test_find_tracks_errors_name_the_path(tmp_path, musdb):
    assert error_of(find_tracks, tmp_path / "nope", "train") == f"{tmp_path / 'nope'}: no such folder"
    assert error_of(find_tracks, musdb, "valid").startswith(f"{musdb / 'valid'}: no such folder")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert "no track folders" in error_of(find_tracks, tmp_path / "empty", "train")
    (tmp_path / "afile").write_text("")
    assert error_of(find_tracks, tmp_path / "afile", "train") == f"{tmp_path / 'afile'}: not a folder"
    (tmp_path / "empty" / "test").write_text("")
    assert error_of(find_tracks, tmp_path / "empty", "test").startswith(
        f"{tmp_path / 'empty' / 'test'}: not a folder"
    )

    (musdb / "train" / "B - Second" / "bass.wav").unlink()
    assert error_of(find_tracks, musdb, "train").startswith(
        f"{musdb / 'train' / 'B - Second' / 'bass.wav'}: missing"
    )


@pytest.mark.parametrize(
    ("shape", "rate", "problem"),
    [
        (
            (2 * SR, 2),
            SR,
            "different lengths (drums.wav 22050 frames, bass.wav 22050 frames, other.wav 44100 frames",
        ),
        ((SR, 2), 44100, "different sample rates (drums.wav 22050 Hz, bass.wav 22050 Hz, other.wav 44100 Hz"),
        (
            (SR, 1),
            SR,
            "different channel counts (drums.wav 2 channels, bass.wav 2 channels, other.wav 1 channels",
        ),
    ],
)
def test_find_tracks_rejects_mismatched_stems(tmp_path, shape, rate, problem):
    folder = tmp_path / "train" / "song"
    noise_track(folder, seconds=1.0, mixture=False)
    sf.write(folder / "other.wav", np.zeros(shape), rate)
    assert error_of(find_tracks, tmp_path, "train").startswith(f"{folder}: stems have {problem}")


def test_find_tracks_refuses_compressed_musdb(tmp_path):
    (tmp_path / "musdb18" / "train").mkdir(parents=True)
    (tmp_path / "musdb18" / "train" / "A - Song.stem.mp4").write_bytes(b"")
    message = error_of(find_tracks, tmp_path / "musdb18", "train")
    assert "compressed MUSDB18" in message and "MUSDB18-HQ" in message and "wav" in message


# --- the validation split -----------------------------------------------------------------------


def test_musdb_validation_names_come_from_the_musdb_package():
    imported = "musdb" in sys.modules
    names = musdb_validation_names()
    assert len(names) == 14 == len(set(names)) and VALID in names
    assert ("musdb" in sys.modules) == imported  # read, not imported


def test_musdb_validation_names_without_musdb(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "musdb" else find_spec(name, *a)
    )
    assert "pip install 'stemsplit-cli[train]'" in error_of(musdb_validation_names)


def test_split_train_valid(musdb):
    tracks = find_tracks(musdb, "train")
    train, valid = split_train_valid(tracks)
    assert [t.name for t in valid] == [VALID] and [t.name for t in train] == ["B - Second", "C - Third"]
    train, valid = split_train_valid(tracks, ["C - Third", "not there"])
    assert [t.name for t in valid] == ["C - Third"] and len(train) == 2
    assert split_train_valid(tracks, []) == (tracks, [])


def test_validation_names_from_valid_txt_else_musdb(musdb):
    assert validation_names(musdb) == musdb_validation_names()
    (musdb / "valid.txt").write_text("# synthetic split\nC - Third\n\nB - Second  # two\n")
    assert validation_names(musdb) == ["C - Third", "B - Second"]
    train, valid = split_train_valid(find_tracks(musdb, "train"), validation_names(musdb))
    assert [t.name for t in train] == [VALID] and len(valid) == 2
    (musdb / "valid.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DatasetError, match=r"valid\.txt: cannot read"):
        validation_names(musdb)


def test_a_valid_txt_naming_missing_tracks_or_a_folder_is_an_error(musdb):
    """Before: a misspelt name in valid.txt was dropped without a word (the track it meant was trained on,
    and with no other name the run had no validation set); a valid.txt folder meant MUSDB18's 14 names."""
    tracks = find_tracks(musdb, "train")
    (musdb / "valid.txt").write_text("C - Thrid\nB - Second\n")
    message = error_of(dataset_split, musdb, tracks)
    assert message == f"{musdb / 'valid.txt'}: names tracks that are not in {musdb / 'train'}: C - Thrid"
    (musdb / "valid.txt").write_text("C - Third\n")
    assert [t.name for t in dataset_split(musdb, tracks)[1]] == ["C - Third"]
    (musdb / "valid.txt").unlink()
    assert [t.name for t in dataset_split(musdb, tracks)[1]] == [VALID]  # MUSDB18's names: no file, no check
    (musdb / "valid.txt").mkdir()
    assert error_of(dataset_split, musdb, tracks).startswith(f"{musdb / 'valid.txt'}: not a file")


def test_stems_of_more_than_two_channels_are_refused_naming_the_file(tmp_path):
    """Before: a 6-channel dataset trained a whole epoch, then failed validation with exit 70 (eval named no
    file and gave a Python hint)."""
    folder = tmp_path / "train" / "song"
    noise_track(folder, seconds=1.0, mixture=False)
    for stem in MUSIC_STEMS:
        sf.write(folder / f"{stem}.wav", np.zeros((SR, 6)), SR)
    message = error_of(find_tracks, tmp_path, "train")
    assert message == f"{folder / 'drums.wav'}: 6 channels; training and evaluation take mono or stereo stems"


# --- source activity detection ------------------------------------------------------------------


def noise(seconds, std, seed=0):
    return np.random.default_rng(seed).normal(0, std, (2, round(seconds * SR))).astype(np.float32)


def test_salient_segments_skip_a_silent_start():
    audio = noise(18, 0.5)
    audio[:, : 6 * SR] = 0
    # Segments start every 3 s; the one at 3 s is half silent, and half is not "more than half".
    np.testing.assert_array_equal(salient_segments(audio, SR), [6 * SR, 9 * SR, 12 * SR])
    assert salient_segments(noise(18, 0.5), SR).tolist() == [0, 3 * SR, 6 * SR, 9 * SR, 12 * SR]


def test_salient_segments_drop_isolated_bursts():
    audio = np.zeros((2, 18 * SR), dtype=np.float32)
    for second in range(0, 18, 2):  # a 0.3 s hit every 2 s: at most 2 loud chunks of 10 per segment
        audio[:, second * SR : second * SR + round(0.3 * SR)] = noise(0.3, 0.5, seed=second)
    assert salient_segments(audio, SR).size == 0


def test_salient_segments_threshold_is_the_larger_of_quantile_and_floor():
    # A 3 s quiet passage (well above the 1e-3 floor) in a loud 60 s song is under the 15% quantile.
    audio = noise(60, 0.5)
    audio[:, 30 * SR : 33 * SR] = noise(3, 0.1, seed=1)
    kept = salient_segments(audio, SR).tolist()
    assert kept == [s * SR for s in range(0, 55, 3) if s not in (27, 30)]
    # Threshold at the quietest chunk instead: the passage is kept.
    assert 30 * SR in salient_segments(audio, SR, quantile=0.0)
    # Quiet everywhere (mean square 1e-4 < floor): nothing is salient, whatever the quantile says.
    assert salient_segments(noise(18, 0.01), SR).size == 0
    assert salient_segments(noise(5, 0.5), SR).size == 0  # shorter than one segment


# --- the salient-segment index ------------------------------------------------------------------


def test_salient_index_is_computed_once_and_cached(musdb, tmp_path, monkeypatch):
    tracks = find_tracks(musdb, "train")
    cache = tmp_path / "cache"
    index = SalientIndex.build(tracks, MUSIC_STEMS, cache_dir=cache)
    (path,) = cache.glob("sad-*.json")
    for i, track in enumerate(tracks):
        for stem in MUSIC_STEMS:
            np.testing.assert_array_equal(index.starts(i, stem), salient_segments(track.read(stem), SR))
    assert index.starts(1, "vocals").tolist() == [6 * SR]  # B's vocals start at 6 s
    assert index.starts(1, "drums").size > 0

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(data, "salient_segments", fail)
    again = SalientIndex.build(tracks, MUSIC_STEMS, cache_dir=cache)
    for i in range(len(tracks)):
        for stem in MUSIC_STEMS:
            np.testing.assert_array_equal(again.starts(i, stem), index.starts(i, stem))

    # Other settings or other tracks: another cache file, computed afresh.
    with pytest.raises(AssertionError, match="recomputed"):
        SalientIndex.build(tracks, MUSIC_STEMS, cache_dir=cache, quantile=0.2)
    with pytest.raises(AssertionError, match="recomputed"):
        SalientIndex.build(tracks[:2], MUSIC_STEMS, cache_dir=cache)
    monkeypatch.undo()

    path.write_text('{"version": 1, "key"')  # corrupt: recomputed and rewritten
    rebuilt = SalientIndex.build(tracks, MUSIC_STEMS, cache_dir=cache)
    assert rebuilt.starts(1, "vocals").tolist() == [6 * SR]
    assert json.loads(path.read_text())["tracks"][1]["vocals"] == [6 * SR]
    assert not list(cache.glob(".*.tmp"))


def test_salient_index_default_cache_dir(musdb, tmp_path, monkeypatch):
    monkeypatch.setenv("STEMSPLIT_CACHE", str(tmp_path / "stemsplit"))
    SalientIndex.build(find_tracks(musdb, "test"), MUSIC_STEMS)
    assert len(list((tmp_path / "stemsplit" / "datasets").glob("sad-*.json"))) == 1


# --- remixing -----------------------------------------------------------------------------------


def test_remix_shapes_and_salient_crops(dataset):
    mixture, targets = dataset[0]
    assert mixture.shape == (2, 3 * SR) and targets.shape == (4, 2, 3 * SR)
    assert mixture.dtype == targets.dtype == torch.float32
    assert len(dataset) == 400
    crop = 3 * SR
    for i in range(100):
        for stem, draw in zip(MUSIC_STEMS, dataset._draws(0, i), strict=True):
            segments = dataset.index.starts(draw.track, stem)
            assert any(s <= draw.start <= s + 6 * SR - crop for s in segments)
            assert -10 <= draw.gain_db <= 10


def test_remix_gains_are_within_10_db_of_the_source(dataset):
    low, high = 10 ** (-10 / 20), 10 ** (10 / 20)
    gains = []
    for i in range(12):
        mixture, targets = dataset.sample(0, i)
        assert mixture.abs().max() < 1  # quiet stems: no rescaling, so targets are the gained crops
        for stem, target, draw in zip(MUSIC_STEMS, targets.numpy(), dataset._draws(0, i), strict=True):
            if draw.dropped:
                assert not target.any()
                continue
            source = dataset.tracks[draw.track].read(stem, draw.start, 3 * SR)
            gain = float((target * source).sum() / (source * source).sum())
            np.testing.assert_allclose(target, source * gain, rtol=1e-5, atol=1e-7)
            assert low * 0.9999 <= gain <= high * 1.0001
            assert gain == pytest.approx(10 ** (draw.gain_db / 20), rel=1e-5)
            gains.append(gain)
    assert min(gains) < 0.7 < 1.4 < max(gains)  # gains are spread, not fixed


def test_remix_drops_about_one_stem_in_ten(dataset):
    dropped = [not target.any() for i in range(250) for target in dataset.sample(1, i)[1]]
    assert 0.07 < np.mean(dropped) < 0.13


def test_remix_rescales_mixture_and_targets_together(tmp_path):
    root = make_dataset(tmp_path / "loud", amplitude=0.6)
    tracks = find_tracks(root, "train")
    dataset = RemixDataset(tracks, seed=3, index=SalientIndex.build(tracks, MUSIC_STEMS, cache_dir=tmp_path))
    rescaled = 0
    for i in range(25):
        mixture, targets = dataset.sample(0, i)
        assert torch.equal(mixture, targets.sum(0))
        peak = max(mixture.abs().max(), targets.abs().max())
        assert peak <= 1 + 1e-6
        if peak < 0.999:
            continue
        rescaled += 1
        # One common factor: every kept target is its crop times gain / factor.
        factors = []
        for stem, target, draw in zip(MUSIC_STEMS, targets.numpy(), dataset._draws(0, i), strict=True):
            if not draw.dropped:
                source = dataset.tracks[draw.track].read(stem, draw.start, 3 * SR)
                factors.append(10 ** (draw.gain_db / 20) * (source * source).sum() / (target * source).sum())
        np.testing.assert_allclose(factors, factors[0], rtol=1e-4)
        assert factors[0] > 1
    assert rescaled > 10


def test_remix_is_a_function_of_seed_epoch_and_index(musdb, dataset):
    first = dataset.sample(2, 5)
    again = RemixDataset(dataset.tracks, epoch_size=400, seed=7, index=dataset.index).sample(2, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    dataset.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, dataset[5], strict=True))
    assert not torch.equal(first[1], dataset.sample(3, 5)[1])
    assert not torch.equal(first[1], dataset.sample(2, 6)[1])
    other_seed = RemixDataset(dataset.tracks, seed=8, index=dataset.index)
    assert not torch.equal(first[1], other_seed.sample(2, 5)[1])


def test_remix_dataloader_workers_give_the_same_samples(dataset):
    dataset.epoch_size = 6
    dataset.set_epoch(4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    mixtures, targets = zip(*loader, strict=True)
    expected = [dataset.sample(4, i) for i in range(6)]
    assert torch.equal(torch.cat(mixtures), torch.stack([m for m, _ in expected]))
    assert torch.equal(torch.cat(targets), torch.stack([t for _, t in expected]))


def test_remix_rejects_what_it_cannot_sample(dataset, musdb):
    tracks = dataset.tracks
    with pytest.raises(DatasetError, match="do not fit"):
        RemixDataset(tracks, seconds=7.0, index=dataset.index)
    with pytest.raises(DatasetError, match="other tracks"):
        RemixDataset(tracks[:2], index=dataset.index)
    with pytest.raises(DatasetError, match="no training tracks"):
        RemixDataset([], index=dataset.index)


def test_tracks_with_another_rate_or_channel_count_are_named(musdb, tmp_path):
    noise_track(musdb / "train" / "E - Mono", seconds=14.0, edit=lambda stem, audio: audio)
    tracks = find_tracks(musdb, "train")
    index = SalientIndex.build(tracks, MUSIC_STEMS, cache_dir=tmp_path / "cache")
    mono = musdb / "train" / "E - Mono"
    for stem in MUSIC_STEMS:
        sf.write(mono / f"{stem}.wav", np.zeros((14 * SR, 1), np.float32), SR)
    (mono / "mixture.wav").unlink()
    tracks = find_tracks(musdb, "train")
    message = error_of(RemixDataset, tracks, index=index)
    assert message == (
        f"{mono / 'drums.wav'}: channel count 1, but {musdb / 'train' / VALID / 'drums.wav'} has 2; "
        "every training track needs the same channel count"
    )


def test_a_file_that_breaks_after_the_scan_is_named_even_in_a_worker(dataset):
    """A stem damaged or removed while training runs: one line naming it, not a worker traceback."""
    broken = dataset.tracks[1].stem_path("bass")
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(64))
    draws = [(i, d) for i in range(50) for d in dataset._draws(0, i)[1:2] if d.track == 1 and not d.dropped]
    i = draws[0][0]  # a sample that reads the broken file
    assert error_of(dataset.sample, 0, i).startswith(f"{broken}: cannot read (")
    dataset.set_epoch(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=[i], num_workers=1)
    with pytest.raises(DatasetError) as info:
        next(iter(loader))
    assert str(info.value).startswith(f"{broken}: cannot read (") and "\n" not in str(info.value)
    sf.write(broken, np.zeros((SR, 1), np.float32), SR)  # now mono: changed since the scan
    assert "changed since the dataset was scanned" in error_of(dataset.sample, 0, i)
