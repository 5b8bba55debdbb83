"""Two-talker speech mixtures (``stemsplit.datasets.speech_synth``) and ``stemsplit synth-speech``.

Renders real mixtures with espeak-ng and pyroomacoustics; the tests that need
them are skipped, saying so, where they are not installed.
"""

import csv
import hashlib
import importlib.util
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import cli, stemsplit_without_torch
from typer.testing import CliRunner

from stemsplit.cli import app
from stemsplit.datasets import speech_synth as speech
from stemsplit.datasets.libri2mix import SpeechSynthError, find_speech_mixtures
from stemsplit.datasets.sentences import sentence
from stemsplit.datasets.speech_synth import (
    FOLDERS,
    SAMPLE_RATE,
    draw_room,
    generate_mixture,
    write_dataset,
)

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HAVE_PRA = importlib.util.find_spec("pyroomacoustics") is not None
needs_espeak = pytest.mark.skipif(
    not HAVE_ESPEAK, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
needs_pra = pytest.mark.skipif(
    not HAVE_PRA, reason="pyroomacoustics is not installed (pip install -e '.[speech]')"
)
needs_both = [needs_espeak, needs_pra]

SECONDS = 1.5
FRAMES = round(SECONDS * SAMPLE_RATE)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.wav"))
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def wav(root: Path, split: str, folder: str, name: str) -> np.ndarray:
    audio, rate = sf.read(root / split / folder / f"{name}.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two training, one validation and one test mixture, 1.5 s each, seed 5."""
    if not (HAVE_ESPEAK and HAVE_PRA):
        pytest.skip("needs espeak-ng and pyroomacoustics")
    out = tmp_path_factory.mktemp("speech") / "data"
    write_dataset(out, train=2, dev=1, test=1, seconds=SECONDS, seed=5)
    return out


# --- the recipe's parts, without espeak-ng or pyroomacoustics ----------------------------------------


def test_sentences_are_random_english_sentences_and_repeat_with_the_seed():
    first = [sentence(np.random.default_rng(1)) for _ in range(3)]
    assert len(set(first)) == 1  # same generator state, same sentence
    many = [sentence(rng) for rng in [np.random.default_rng(2)] for _ in range(50)]
    assert len(set(many)) >= 45
    for text in many:
        assert text[0].isupper() and text[-1] in ".?!" and 3 <= len(text.split()) <= 20, text
        assert text.isascii() and not text.startswith("-"), text  # never read as an espeak-ng option
    assert not [t for t in many if re.search(r"\ba [aeiou]", t, flags=re.I)]  # "an orchard"


def test_rooms_and_placements_follow_table_one():
    rooms = [draw_room(np.random.default_rng(seed)) for seed in range(300)]
    for room in rooms:
        length, width, height = room.size
        assert 5 <= length <= 10 and 5 <= width <= 10 and 3 <= height <= 4
        assert 0.2 <= room.t60 <= 0.6
        rx, ry, rz = room.receiver
        assert abs(rx - length / 2) <= 0.2 and abs(ry - width / 2) <= 0.2 and 0.9 <= rz <= 1.8
        for x, y, z in room.sources:
            assert 0.66 <= math.hypot(x - rx, y - ry) <= 2.0 and 0.9 <= z <= 1.8
            assert 0 < x < length and 0 < y < width
    # The draws spread over their ranges (uniform, not stuck at one value).
    t60 = [room.t60 for room in rooms]
    assert min(t60) < 0.25 and max(t60) > 0.55
    angles = [
        math.atan2(y - room.receiver[1], x - room.receiver[0]) for room in rooms for x, y, _ in room.sources
    ]
    assert np.histogram(angles, bins=4, range=(-math.pi, math.pi))[0].min() > 100


def test_mixture_seeds_differ_by_split_and_index_and_are_full_64_bit():
    seeds = {speech.mixture_seed(0, split, i) for split in speech.SPLITS for i in range(100)}
    assert len(seeds) == 300
    assert max(seeds) >= 2**63 and any(s % 1024 for s in seeds)  # not rounded through float64
    assert speech.mixture_seed(1, "dev", 0) != speech.mixture_seed(0, "dev", 0)


# --- rooms ----------------------------------------------------------------------------------------


@needs_pra
def test_impulse_responses_reverberate_for_the_drawn_t60():
    import pyroomacoustics as pra

    measured = []
    for seed in range(6):
        room = draw_room(np.random.default_rng(seed))
        for ir in speech.impulse_responses(room):
            t60 = pra.experimental.measure_rt60(ir, fs=SAMPLE_RATE, decay_db=30)
            assert 0.6 * room.t60 < t60 < 1.6 * room.t60, (room, t60)  # Sabine's design is approximate
            measured.append((room.t60, t60))
    drawn, got = np.array(measured).T
    assert np.corrcoef(drawn, got)[0, 1] > 0.7  # a longer T60 drawn, a longer one measured


@needs_pra
def test_direct_path_is_the_first_arrival_of_the_reverberant_response():
    import pyroomacoustics as pra

    room = draw_room(np.random.default_rng(3))
    reverberant, direct = speech.impulse_responses(room), speech.impulse_responses(room, reflections=False)
    offsets = []
    for source, full, dry in zip(room.sources, reverberant, direct, strict=True):
        peak = int(np.argmax(np.abs(dry)))
        assert int(np.argmax(np.abs(full))) == peak  # the direct sound arrives first and loudest
        assert np.sum(dry**2) < 0.8 * np.sum(full**2)  # the reflections carry real energy
        assert np.sum(dry[peak - 8 : peak + 9] ** 2) > 0.99 * np.sum(dry**2)  # one pulse
        offsets.append(peak - math.dist(source, room.receiver) / pra.constants.get("c") * SAMPLE_RATE)
    # The pulse sits at the propagation delay (23 samples a metre) plus one fixed filter delay.
    assert abs(math.dist(room.sources[0], room.receiver) - math.dist(room.sources[1], room.receiver)) > 0.1
    assert abs(offsets[0] - offsets[1]) < 1.5


# --- one mixture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(seed=-1, seconds=1.0), dict(seed=0, seconds=0.0)])
def test_generate_mixture_refuses_bad_arguments(bad):
    with pytest.raises(SpeechSynthError):
        generate_mixture(**bad)


@needs_espeak
@needs_pra
def test_a_mixture_is_two_voiced_talkers_in_a_room_with_noise():
    mixture = generate_mixture(11, 2.0)
    parts = mixture.parts()
    assert set(parts) == set(FOLDERS)
    for name, audio in parts.items():
        assert audio.dtype == np.float32 and audio.shape == (16000,), name
        assert float(np.abs(audio).max()) <= speech.MAX_AMP + 1e-6, name
    np.testing.assert_array_equal(mixture.mix_clean, mixture.s1_reverb + mixture.s2_reverb)
    np.testing.assert_array_equal(mixture.mix_both, mixture.mix_clean + mixture.noise)
    assert mixture.talkers[0].variant != mixture.talkers[1].variant
    for target, image, other in ((mixture.s1, mixture.s1_reverb, mixture.s2_reverb),
                                 (mixture.s2, mixture.s2_reverb, mixture.s1_reverb)):  # fmt: skip
        assert correlation(target, image) > 0.5 > abs(correlation(target, other))
        assert not np.allclose(target, image, atol=1e-3)  # the reverberant talker is not the target
        assert 60 <= pitch_hz(target) <= 400  # speech: voiced, at a speaking pitch
    # Libri2Mix's levels: each talker -33..-25 dB RMS, noise 5 dB lower, unless one gain was needed
    # to keep every file under 0.9.
    scaled = max(float(np.abs(a).max()) for a in parts.values()) > speech.MAX_AMP - 1e-6
    if not scaled:
        for image in (mixture.s1_reverb, mixture.s2_reverb):
            assert -33.01 <= rms_db(image) <= -24.99
        assert -38.01 <= rms_db(mixture.noise) <= -29.99


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def rms_db(audio: np.ndarray) -> float:
    return 20 * math.log10(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))))


def pitch_hz(audio: np.ndarray, frame: int = 512) -> float:
    """The fundamental of the loudest frame (autocorrelation)."""
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame).astype(np.float64)
    x = frames[np.argmax(np.mean(frames**2, axis=1))]
    x = x - x.mean()
    ac = np.correlate(x, x, "full")[frame - 1 :]
    lo, hi = SAMPLE_RATE // 500, SAMPLE_RATE // 50
    lag = lo + int(np.argmax(ac[lo:hi]))
    assert ac[lag] > 0.3 * ac[0], "the loudest frame should be voiced"
    return SAMPLE_RATE / lag


# --- the dataset ----------------------------------------------------------------------------------


def test_dataset_has_the_libri2mix_layout_and_csvs(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == ["dev", "metadata", "test", "train-100"]
    names = {"train-100": ["train-00000", "train-00001"], "dev": ["dev-00000"], "test": ["test-00000"]}
    for split, ids in names.items():
        assert sorted(p.name for p in (dataset / split).iterdir()) == sorted(FOLDERS)
        for folder in FOLDERS:
            assert sorted(p.stem for p in (dataset / split / folder).iterdir()) == ids
        both = read_csv(dataset / "metadata" / f"mixture_{split}_mix_both.csv")
        clean = read_csv(dataset / "metadata" / f"mixture_{split}_mix_clean.csv")
        assert list(both[0]) == [
            "mixture_ID",
            "mixture_path",
            "source_1_path",
            "source_2_path",
            "noise_path",
            "length",
        ]
        assert list(clean[0]) == ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"]
        for table, kind in ((both, "mix_both"), (clean, "mix_clean")):
            assert [row["mixture_ID"] for row in table] == ids
            for row in table:
                name = row["mixture_ID"]
                assert Path(row["mixture_path"]) == dataset.resolve() / split / kind / f"{name}.wav"
                assert Path(row["source_1_path"]) == dataset.resolve() / split / "s1" / f"{name}.wav"
                assert Path(row["source_2_path"]) == dataset.resolve() / split / "s2" / f"{name}.wav"
                assert row["length"] == str(FRAMES)
        info = read_csv(dataset / "metadata" / f"speech_{split}_info.csv")
        assert [row["mixture_ID"] for row in info] == ids
    for path in dataset.rglob("*.wav"):
        meta = sf.info(path)
        assert (meta.samplerate, meta.channels, meta.frames, meta.subtype) == (
            SAMPLE_RATE,
            1,
            FRAMES,
            "FLOAT",
        )
    assert not [p for p in dataset.rglob(".*")], "no staging folder is left"


def test_dataset_files_add_up_exactly(dataset):
    for split, name in (("train-100", "train-00000"), ("train-100", "train-00001"), ("test", "test-00000")):
        part = {folder: wav(dataset, split, folder, name) for folder in FOLDERS}
        np.testing.assert_array_equal(part["mix_clean"], part["s1_reverb"] + part["s2_reverb"])
        np.testing.assert_array_equal(part["mix_both"], part["mix_clean"] + part["noise"])
        assert not np.allclose(part["mix_clean"], part["s1"] + part["s2"], atol=1e-3)  # targets are dry


def test_dataset_holds_the_generated_mixtures_and_records_the_draw(dataset):
    info = read_csv(dataset / "metadata" / "speech_train-100_info.csv")[1]
    mixture = generate_mixture(int(info["seed"]), SECONDS)
    assert int(info["seed"]) == speech.mixture_seed(5, "train-100", 1)
    for folder, audio in mixture.parts().items():
        np.testing.assert_array_equal(wav(dataset, "train-100", folder, "train-00001"), audio)
    assert float(info["t60"]) == pytest.approx(mixture.room.t60, abs=1e-3)
    assert info["source_1_voice"] == mixture.talkers[0].espeak_voice
    assert float(info["source_2_dB"]) == pytest.approx(rms_db(mixture.s2_reverb), abs=0.01)
    assert info["source_1_text"] and info["source_1_text"] != info["source_2_text"]


def test_voices_differ_within_and_across_mixtures(dataset):
    rows = [
        row for split in speech.SPLITS for row in read_csv(dataset / "metadata" / f"speech_{split}_info.csv")
    ]
    voices = [(row["source_1_voice"], row["source_2_voice"]) for row in rows]
    assert all(a != b for a, b in voices)
    assert len({v for pair in voices for v in pair}) >= 5  # 8 talkers
    assert len({row["t60"] for row in rows}) == len(rows)


def test_each_split_draws_talkers_from_its_own_pool(dataset):
    pools = [set(speech.SPLIT_VARIANTS[split]) for split in speech.SPLITS]
    assert set().union(*pools) == set(speech.VARIANTS)
    assert sum(len(pool) for pool in pools) == len(speech.VARIANTS)  # disjoint: no talker in two splits
    for split in speech.SPLITS:
        for row in read_csv(dataset / "metadata" / f"speech_{split}_info.csv"):
            for key in ("source_1_voice", "source_2_voice"):
                assert row[key].split("+")[1] in speech.SPLIT_VARIANTS[split], (split, row[key])


def test_draw_talkers_follows_the_split_and_refuses_an_unknown_one():
    rng = np.random.default_rng(0)
    drawn = {t.variant for _ in range(200) for t in speech.draw_talkers(rng, "test")}
    assert drawn == set(speech.SPLIT_VARIANTS["test"])
    with pytest.raises(SpeechSynthError, match="split must be one of"):
        generate_mixture(1, 1.0, split="train-360")


def test_same_seed_same_bytes_and_more_mixtures_keep_the_earlier_ones(dataset, tmp_path):
    write_dataset(tmp_path / "more", train=3, dev=1, test=0, seconds=SECONDS, seed=5)
    first, more = digests(dataset), digests(tmp_path / "more")
    shared = [path for path in more if path in first]
    assert len(shared) == 3 * len(FOLDERS)  # train-00000, train-00001 and dev-00000
    assert all(more[path] == first[path] for path in shared)
    write_dataset(tmp_path / "other", train=1, dev=0, test=0, seconds=SECONDS, seed=6)
    other = digests(tmp_path / "other")
    assert all(other[path] != first[path] for path in other)


def test_worker_processes_write_the_same_files(tmp_path):
    if not (HAVE_ESPEAK and HAVE_PRA):
        pytest.skip("needs espeak-ng and pyroomacoustics")
    write_dataset(tmp_path / "one", train=2, dev=0, test=0, seconds=0.5, seed=8)
    write_dataset(tmp_path / "two", train=2, dev=0, test=0, seconds=0.5, seed=8, workers=2)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_an_interrupted_run_leaves_nothing(tmp_path):
    if not (HAVE_ESPEAK and HAVE_PRA):
        pytest.skip("needs espeak-ng and pyroomacoustics")

    def interrupt(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "new", train=2, dev=0, test=0, seconds=0.5, seed=0, progress=interrupt)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "empty", train=2, dev=0, test=0, seconds=0.5, seed=0, progress=interrupt)
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_non_empty_folder_or_a_file_is_refused_untouched(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SpeechSynthError, match="not an empty folder"):
        write_dataset(tmp_path, train=1, dev=0, test=0, seconds=1.0, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    with pytest.raises(SpeechSynthError, match="not an empty folder"):
        write_dataset(tmp_path / "mine.txt", train=1, dev=0, test=0, seconds=1.0, seed=0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# --- reading a Libri2Mix-layout folder --------------------------------------------------------------


def test_loader_round_trips_from_the_csvs(dataset):
    tracks = find_speech_mixtures(dataset, "train-100")
    assert [t.name for t in tracks] == ["train-00000", "train-00001"]
    for track in tracks:
        assert (track.sample_rate, track.frames) == (SAMPLE_RATE, FRAMES)
        mix, s1, s2 = track.read()
        np.testing.assert_array_equal(mix, wav(dataset, "train-100", "mix_both", track.name))
        np.testing.assert_array_equal(s1, wav(dataset, "train-100", "s1", track.name))
        np.testing.assert_array_equal(s2, wav(dataset, "train-100", "s2", track.name))
        part = track.read(start=100, frames=50)
        assert [a.shape for a in part] == [(50,)] * 3
        np.testing.assert_array_equal(part[1], s1[100:150])
    (clean,) = find_speech_mixtures(dataset, "test", mixture="mix_clean")
    np.testing.assert_array_equal(clean.read()[0], wav(dataset, "test", "mix_clean", "test-00000"))


def test_loader_follows_a_moved_dataset_and_reads_one_without_metadata(dataset, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)  # the CSVs still name the old place
    (track,) = find_speech_mixtures(moved, "dev")
    assert track.mixture == moved / "dev" / "mix_both" / "dev-00000.wav"
    shutil.rmtree(moved / "metadata")
    tracks = find_speech_mixtures(moved, "train-100")
    assert [t.name for t in tracks] == ["train-00000", "train-00001"]
    assert tracks[1].sources == (
        moved / "train-100/s1/train-00001.wav",
        moved / "train-100/s2/train-00001.wav",
    )


def test_loader_errors_name_the_file(dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "train-100" / "s2" / "train-00001.wav").unlink()
    # The CSV names the copy's own files (else the loader would find the original dataset's).
    table = broken / "metadata" / "mixture_train-100_mix_both.csv"
    table.write_text(table.read_text().replace(str(dataset.resolve()), str(broken)))
    with pytest.raises(SpeechSynthError, match=r"s2/train-00001\.wav: missing"):
        find_speech_mixtures(broken, "train-100")

    table.write_text("mixture_ID,mixture_path\nx,y.wav\n")
    with pytest.raises(SpeechSynthError, match=r"mixture_train-100_mix_both\.csv: missing the columns"):
        find_speech_mixtures(broken, "train-100")

    sf.write(broken / "dev" / "s1" / "dev-00000.wav", np.zeros((FRAMES, 2), np.float32), SAMPLE_RATE)
    with pytest.raises(SpeechSynthError, match=r"dev-00000\.wav: has 2 channels"):
        find_speech_mixtures(broken, "dev")
    sf.write(broken / "dev" / "s1" / "dev-00000.wav", np.zeros(FRAMES - 1, np.float32), SAMPLE_RATE)
    with pytest.raises(SpeechSynthError, match="mixture dev-00000: files differ"):
        find_speech_mixtures(broken, "dev")

    with pytest.raises(SpeechSynthError, match="no such folder"):
        find_speech_mixtures(broken, "train-360")
    with pytest.raises(SpeechSynthError, match="no such folder"):
        find_speech_mixtures(tmp_path / "nowhere", "dev")
    with pytest.raises(SpeechSynthError, match="one of mix_both, mix_clean"):
        find_speech_mixtures(broken, "dev", mixture="mix_single")


# --- the command ----------------------------------------------------------------------------------


def test_synth_speech_command_writes_a_dataset(tmp_path):
    if not (HAVE_ESPEAK and HAVE_PRA):
        pytest.skip("needs espeak-ng and pyroomacoustics")
    out = tmp_path / "speech"
    args = ["synth-speech", str(out), "--train", "1", "--dev", "1", "--test", "0", "--seconds", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and "1 training, 1 validation and 0 test mixtures" in result.stdout
    assert len(find_speech_mixtures(out, "train-100")) == 1 and len(find_speech_mixtures(out, "dev")) == 1
    assert not (out / "test").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train", "-1"], "0 or more"),
        (["--train", "0", "--dev", "0", "--test", "0"], "nothing to write"),
        (["--seconds", "0"], "seconds"),
        (["--seconds", "nan"], "seconds"),
        (["--seed", "-3"], "seed"),
        (["--workers", "0"], "workers"),
        # Before: an internal error (ZeroDivisionError) for a length under one sample, and the OOM killer
        # for a huge count (the job list) or --workers (a pool starts every worker at once).
        (["--seconds", "0.00001"], "at least one sample"),
        (["--train", "99999999999999"], "at most 1000000"),
        (["--workers", "100000"], "from 1 to 64"),
    ],
)
def test_synth_speech_command_rejects_bad_values_writing_nothing(tmp_path, extra, message):
    out = tmp_path / "speech"
    result = CliRunner().invoke(app, ["synth-speech", str(out), *extra])
    assert result.exit_code == 2
    assert result.stderr.startswith("stemsplit: error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not out.exists()


def test_synth_speech_command_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(app, ["synth-speech", str(tmp_path), "--train", "1"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "not an empty folder" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_without_espeak_ng_one_line_names_the_debian_package(tmp_path):
    bin_dir = Path(sys.executable).parent  # stemsplit and python, but not /usr/bin's espeak-ng
    env = {**os.environ, "PATH": str(bin_dir)}
    if shutil.which("espeak-ng", path=env["PATH"]):
        pytest.skip("espeak-ng is installed next to python")
    result = cli("synth-speech", tmp_path / "out", "--train", "1", env=env, check=2)
    assert result.stderr.count("\n") == 1 and "apt-get install espeak-ng" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_without_pyroomacoustics_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyroomacoustics", None)  # what an import sees when it is missing
    result = CliRunner().invoke(app, ["synth-speech", str(tmp_path / "out"), "--train", "1"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "pip install 'stemsplit-cli[speech]'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_usage_errors_do_not_import_torch(tmp_path):
    result = stemsplit_without_torch("synth-speech", tmp_path / "x", "--seconds", "0")
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr


def test_synth_speech_is_a_subcommand_not_a_file_to_separate():
    from stemsplit.cli import SUBCOMMANDS

    assert "synth-speech" in SUBCOMMANDS
