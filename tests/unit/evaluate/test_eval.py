"""Evaluation: uSDR is its formula, cSDR is museval's, aggregation as in the paper; ``stemsplit eval``."""

import importlib.util
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import GOLDEN_WEIGHTS, cli, stemsplit_without_torch, tiny_model, write_track
from typer.testing import CliRunner

from stemsplit.cli import app
from stemsplit.evaluate.metrics import _museval, csdr, speech_scores, usdr
from stemsplit.evaluate.scoring import (
    EvalReport,
    SpeechReport,
    SpeechScores,
    TrackScores,
    evaluate_tracks,
    write_report,
)
from stemsplit.separate import Separator

STEMS = ("drums", "bass", "other", "vocals")
RATE = 16000  # the model runs at 44.1 kHz; a lower file rate also exercises resampling and speeds BSSEval


class WavTrack:
    """A MUSDB18-HQ-style track folder, read with soundfile ([channels, frames])."""

    def __init__(self, folder: Path, stems=STEMS) -> None:
        self.folder, self.name, self.stems = folder, folder.name, tuple(stems)
        self.sample_rate = sf.info(folder / "mixture.wav").samplerate

    def read(self, stem: str) -> np.ndarray:
        return sf.read(self.folder / f"{stem}.wav", dtype="float32", always_2d=True)[0].T

    def read_mixture(self) -> np.ndarray:
        return self.read("mixture")


def _write_track(folder: Path, seed: int, seconds: float = 2.0) -> None:
    """Four distinct stereo stems (vocals silent in the first second) and their sum as the mixture."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    stems = {
        "drums": rng.standard_normal(t.size) * (np.sin(2 * np.pi * 4 * t) > 0.7),
        "bass": np.sin(2 * np.pi * (55 + 10 * seed) * t),
        "other": np.sin(2 * np.pi * 440 * t) + 0.2 * rng.standard_normal(t.size),
        "vocals": np.sin(2 * np.pi * (300 + 200 * t) * t) * (t >= 1.0),
    }
    stereo = {}
    for name, mono in stems.items():
        stereo[name] = 0.2 * np.stack([mono, rng.uniform(0.5, 1.0) * mono], axis=1).astype(np.float32)
    write_track(folder, stereo, RATE)


@pytest.fixture(scope="module")
def musdb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("musdb18hq")
    for seed, name in enumerate(["Artist A - Song", "Artist B - Song"]):
        _write_track(root / "test" / name, seed)
    return root


@pytest.fixture(scope="module")
def separator() -> Separator:
    return Separator(str(GOLDEN_WEIGHTS), device="cpu", window=1.0, hop=0.5)


def _tracks(root: Path) -> list[WavTrack]:
    return [WavTrack(folder) for folder in sorted((root / "test").iterdir())]


# --- the metrics --------------------------------------------------------------------------------


def test_usdr_is_the_mdx_formula():
    rng = np.random.default_rng(0)
    ref, est = rng.standard_normal((2, 2, 1000))
    expected = 10 * math.log10((np.sum(ref**2) + 1e-7) / (np.sum((ref - est) ** 2) + 1e-7))
    assert usdr(ref, est) == pytest.approx(expected, rel=1e-12)
    assert usdr(ref, ref + 0.1) > usdr(ref, ref + 0.2)
    # The oracle: a perfect estimate scores very high yet finite (eps), a silent stem silently 0 dB.
    perfect = usdr(ref, ref)
    assert math.isfinite(perfect) and perfect > 90
    assert usdr(np.zeros(10), np.zeros(10)) == 0.0


def test_csdr_is_museval_median_over_frames():
    rng = np.random.default_rng(1)
    rate = 8000
    refs = rng.standard_normal((3, 3 * rate + 100, 2))
    refs[2, :rate] = 0  # a silent reference frame: museval scores it NaN
    ests = refs + rng.uniform(0.1, 1.0, (3, 1, 1)) * rng.standard_normal(refs.shape)
    scores = csdr(refs, ests, rate)
    sdr = _museval().evaluate(refs, ests, win=rate, hop=rate)[0]
    assert np.isnan(sdr).any()
    assert scores.shape == (3,)
    np.testing.assert_array_equal(scores, np.nanmedian(sdr, axis=1))


# --- aggregation and the report ---------------------------------------------------------------


def test_aggregation_median_over_tracks_for_csdr_mean_for_usdr(tmp_path):
    scores = [
        TrackScores("a", csdr={"bass": 1.0, "vocals": 4.0}, usdr={"bass": 1.0, "vocals": 4.0}),
        TrackScores("b", csdr={"bass": 2.0, "vocals": math.nan}, usdr={"bass": 2.0, "vocals": 5.0}),
        TrackScores("c", csdr={"bass": 9.0, "vocals": 6.0}, usdr={"bass": 9.0, "vocals": 9.0}),
    ]
    report = EvalReport(scores, ("bass", "vocals"), {"hop": 0.5})
    assert report.csdr() == {"bass": 2.0, "vocals": 5.0, "avg": 3.5}  # NaN (unscorable) left out
    assert report.usdr() == {"bass": 4.0, "vocals": 6.0, "avg": 5.0}

    path = tmp_path / "out" / "report.json"
    write_report(report, path)
    data = json.loads(path.read_text())
    assert data["csdr"] == report.csdr() and data["usdr"] == report.usdr()
    assert data["stems"] == ["bass", "vocals"] and data["settings"] == {"hop": 0.5}
    assert data["tracks"][1] == {"name": "b", "csdr": {"bass": 2.0, "vocals": None}, "usdr": scores[1].usdr}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left


class EqualSplit:
    """A stand-in separator: every stem is a quarter of the mixture (deterministic, no model)."""

    name, stems, sample_rate, stage, precision, device = "split", STEMS, RATE, 2, "fp32", "cpu"
    window = hop = RATE  # samples at the model's rate

    def separate(self, mixture, rate):
        return {stem: mixture / len(self.stems) for stem in self.stems}


def test_scores_equal_museval_and_the_formula_on_the_same_files(musdb):
    report = evaluate_tracks(EqualSplit(), _tracks(musdb)[:1])
    folder = sorted((musdb / "test").iterdir())[0]
    read = {n: sf.read(folder / f"{n}.wav", dtype="float32")[0] for n in ("mixture", *STEMS)}
    refs = np.stack([read[s] for s in STEMS])
    ests = np.stack([read["mixture"] / 4] * 4)
    expected = np.nanmedian(_museval().evaluate(refs, ests, win=RATE, hop=RATE)[0], axis=1)
    [track] = report.tracks
    assert track.name == folder.name
    assert list(track.csdr.values()) == pytest.approx(expected.tolist(), rel=1e-9)
    for i, stem in enumerate(STEMS):
        assert track.usdr[stem] == pytest.approx(usdr(refs[i], ests[i]), rel=1e-9)


def test_evaluate_tracks_without_csdr(musdb):
    """uSDR only (validation during training): no BSSEval, no museval needed."""
    report = evaluate_tracks(EqualSplit(), _tracks(musdb), compute_csdr=False)
    assert all(t.csdr == {} for t in report.tracks) and report.csdr() == {}
    assert list(report.usdr()) == [*STEMS, "avg"] and report.settings["csdr"] is None


def test_evaluate_tracks_with_the_small_model(musdb, separator):
    lines = []
    tracks = _tracks(musdb)
    tracks[1].stems = ("bass", "vocals")  # a track without some stems: only those it has are scored
    report = evaluate_tracks(separator, tracks, progress=lines.append)
    assert [t.name for t in report.tracks] == ["Artist A - Song", "Artist B - Song"]
    assert set(report.tracks[0].csdr) == set(report.tracks[0].usdr) == set(STEMS)
    assert set(report.tracks[1].csdr) == set(report.tracks[1].usdr) == {"bass", "vocals"}
    for scores in (report.csdr(), report.usdr()):
        assert list(scores) == [*STEMS, "avg"] and all(math.isfinite(v) for v in scores.values())
    assert report.usdr()["bass"] == pytest.approx(np.mean([t.usdr["bass"] for t in report.tracks]))
    assert report.settings["window"] == 1.0 and report.settings["hop"] == 0.5
    assert len(lines) == 2 and "Artist B - Song" in lines[1]


# --- stemsplit eval ---------------------------------------------------------------------------


@pytest.fixture
def find_tracks_available(monkeypatch):
    """The MUSDB reader's find_tracks; a stand-in reading the same layout while it is not there yet."""
    if importlib.util.find_spec("stemsplit.datasets.musdb") is not None:
        return
    data = types.ModuleType("stemsplit.datasets.musdb")
    data.DatasetError = type("DatasetError", (Exception,), {})
    data.find_tracks = lambda root, subset, stems: [
        WavTrack(folder, stems) for folder in sorted((Path(root) / subset).iterdir())
    ]
    monkeypatch.setitem(sys.modules, "stemsplit.datasets.musdb", data)


def test_eval_command_prints_a_table_and_writes_json(musdb, tmp_path, monkeypatch, find_tracks_available):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--musdb", str(musdb), "-m", str(GOLDEN_WEIGHTS), "--window", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--tracks", "1"])
    assert result.exit_code == 0, result.output
    for text in ("cSDR (dB)", "uSDR (dB)", *STEMS, "avg"):
        assert text in result.stdout
    data = json.loads((tmp_path / "eval-golden_small_weights-test.json").read_text())
    assert [t["name"] for t in data["tracks"]] == ["Artist A - Song"]
    assert set(data["csdr"]) == set(data["usdr"]) == {*STEMS, "avg"}
    assert data["settings"]["subset"] == "test" and data["settings"]["window"] == 1.0

    # Nothing a user had is overwritten: a second run writes -2; an existing --json needs --overwrite.
    first = (tmp_path / "eval-golden_small_weights-test.json").read_bytes()
    assert CliRunner().invoke(app, [*args, "--tracks", "1", "--no-csdr"]).exit_code == 0
    assert (tmp_path / "eval-golden_small_weights-test.json").read_bytes() == first
    second = json.loads((tmp_path / "eval-golden_small_weights-test-2.json").read_text())
    assert second["tracks"][0]["csdr"] == {}  # the --no-csdr run's report
    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    refused = CliRunner().invoke(app, [*args, "--tracks", "1", "--json", str(mine)])
    assert refused.exit_code == 2 and "--json: " in refused.stderr and "--overwrite" in refused.stderr
    assert mine.read_text() == "my notes"
    replaced = CliRunner().invoke(
        app, [*args, "--tracks", "1", "--no-csdr", "--json", str(mine), "--overwrite"]
    )
    assert replaced.exit_code == 0 and json.loads(mine.read_text())["tracks"][0]["name"] == "Artist A - Song"


def test_eval_tracks_n_reads_only_the_first_n_tracks(musdb, tmp_path, monkeypatch, find_tracks_available):
    """Before: --tracks 1 still probed every track, so a broken second track failed a quick check."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "set"
    shutil.copytree(musdb, root)
    (root / "test" / "Artist B - Song" / "vocals.wav").write_bytes(b"RIFF broken")
    args = ["eval", "--musdb", str(root), "-m", str(GOLDEN_WEIGHTS), "--window", "1", "--device", "cpu"]
    result = CliRunner().invoke(
        app, [*args, "--no-csdr", "--tracks", "1", "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0, result.output
    assert [t["name"] for t in json.loads((tmp_path / "r.json").read_text())["tracks"]] == ["Artist A - Song"]
    result = CliRunner().invoke(app, [*args, "--no-csdr", "--json", str(tmp_path / "all.json")])
    assert result.exit_code == 1 and "Artist B - Song/vocals.wav" in result.stderr


def test_eval_command_errors_are_one_line(musdb, tmp_path, monkeypatch, find_tracks_available):
    # a missing checkpoint or test set: usage errors, before anything loads (were exit 1 after the model)
    for root, model in ((musdb, tmp_path / "none.safetensors"), (tmp_path / "nothing", GOLDEN_WEIGHTS)):
        result = CliRunner().invoke(app, ["eval", "--musdb", str(root), "-m", str(model)])
        assert result.exit_code == 2
        assert result.stderr.startswith("stemsplit: error: ") and result.stderr.count("\n") == 1
    (musdb / "test" / "Artist A - Song" / "bass.wav").rename(tmp_path / "bass.wav")
    try:  # a missing stem is found once the model says which stems it has: a file failed, exit 1
        args = ["eval", "--musdb", str(musdb), "-m", str(GOLDEN_WEIGHTS), "--no-csdr"]
        result = CliRunner().invoke(app, args)
    finally:
        (tmp_path / "bass.wav").rename(musdb / "test" / "Artist A - Song" / "bass.wav")
    assert result.exit_code == 1 and "bass.wav: missing" in result.stderr

    monkeypatch.setitem(sys.modules, "museval", None)  # not installed: said before any separating
    result = CliRunner().invoke(app, ["eval", "--musdb", str(musdb), "-m", str(GOLDEN_WEIGHTS)])
    assert result.exit_code == 1 and "museval" in result.stderr and "--no-csdr" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--libri2mix", "data", "--mixture", "mix_noisy"], "--mixture: must be one of mix_both, mix_clean"),
        (["--libri2mix", "data", "--hop", "nan"], "--hop: must be more than 0"),
        (["--musdb", "data", "--window", "1000"], "--window: must be more than 0 and at most 60"),
        (["--musdb", "data", "--device", "tpu"], "--device: must be auto, cpu, cuda or cuda:N"),
        (["--libri2mix", "data", "--json", "."], "--json: . is a folder"),
        # the test set's layout, before the model (was exit 1 once it had loaded)
        (["--musdb", "data"], "--musdb: data: no such folder"),
        (["--musdb", "."], "--musdb: test: no such folder (expected the layout"),
        (["--libri2mix", "data"], "--libri2mix: data: no such folder"),
    ],
)
def test_eval_flags_are_usage_errors_before_torch(flags, message, tmp_path):
    """Before: exit 1 after torch and the model loaded (a bad --mixture only after the model), and a
    --json folder failed only after every track was separated, naming a temporary file."""
    result = stemsplit_without_torch("eval", "--model", GOLDEN_WEIGHTS, "--no-csdr", *flags, cwd=tmp_path)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.startswith(f"stemsplit: error: {message}") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["mixture", "vocals"])
def test_eval_names_the_file_with_a_nan_sample(musdb, tmp_path, monkeypatch, where):
    """Before: 'audio contains NaN or infinite samples', no file named (a NaN in a stem: a NaN score)."""
    root = tmp_path / "set"
    shutil.copytree(musdb, root)
    path = root / "test" / "Artist A - Song" / f"{where}.wav"
    audio, rate = sf.read(path, dtype="float32")
    audio[rate // 2, 1] = np.nan
    sf.write(path, audio, rate, subtype="FLOAT")
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--musdb", str(root), "-m", str(GOLDEN_WEIGHTS), "--window", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--no-csdr"])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"stemsplit: error: {path}: sample {rate // 2} (0.50 s) is NaN or infinite\n"
    assert not list(tmp_path.glob("*.json"))


def test_eval_refuses_a_report_path_under_a_file_before_separating(tmp_path):
    """Before: every track was separated, then 'afile: File exists', exit 1."""
    (tmp_path / "afile").write_text("mine")
    flags = ["--musdb", "data", "--json", "afile/report.json"]
    result = stemsplit_without_torch("eval", "--model", GOLDEN_WEIGHTS, "--no-csdr", *flags, cwd=tmp_path)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    expected = f"stemsplit: error: --json: cannot create {Path('afile/report.json')}: afile is not a folder\n"
    assert result.stderr == expected
    assert (tmp_path / "afile").read_text() == "mine"


def test_eval_scores_a_bsrnn_bag_and_a_one_target_model(musdb, tmp_path, monkeypatch, find_tracks_available):
    """`stemsplit eval` takes any family: a 4-target BSRNN bag, and a vocals-only BSRNN (scored on vocals)."""
    from stemsplit.weights import save_checkpoint

    monkeypatch.chdir(tmp_path)
    for stems in (STEMS, ("vocals",)):
        path = tmp_path / f"bsrnn-{len(stems)}.safetensors"
        save_checkpoint(tiny_model("bsrnn", stems), path)
        args = ["eval", "--musdb", str(musdb), "-m", str(path), "--window", "1", "--device", "cpu"]
        result = CliRunner().invoke(app, [*args, "--tracks", "1", "--no-csdr"])
        assert result.exit_code == 0, result.output
        data = json.loads((tmp_path / f"eval-bsrnn-{len(stems)}-test.json").read_text())
        assert set(data["usdr"]) == {*stems, "avg"} and all(math.isfinite(v) for v in data["usdr"].values())


@pytest.mark.parametrize(
    ("report", "overwrite", "message"),
    [
        ("data/test/Artist A - Song/mixture.wav", True, "is inside --musdb data"),
        ("data/test/../new.json", False, "is inside --musdb data"),
        ("model.safetensors", True, "is the --model checkpoint"),
    ],
)
def test_eval_refuses_a_report_path_among_its_inputs(musdb, tmp_path, report, overwrite, message):
    """Before: the mixture (or the checkpoint) was replaced by the JSON report, exit 0; a new report
    went among the test set's files."""
    shutil.copytree(musdb, tmp_path / "data")
    shutil.copy(GOLDEN_WEIGHTS, tmp_path / "model.safetensors")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    flags = ["--musdb", "data", "--json", report, *(["--overwrite"] if overwrite else [])]
    result = stemsplit_without_torch("eval", "-m", "model.safetensors", "--no-csdr", *flags, cwd=tmp_path)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.startswith(f"stemsplit: error: --json: {report} {message}")
    assert result.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_eval_scores_a_track_with_a_silent_stem(musdb, tmp_path, monkeypatch, find_tracks_available):
    """Before: museval raised 'All the reference sources should be non-silent' on an instrumental
    (vocals all zeros), exit 70 and no report; SDRi raised the same on a silent talker."""
    root = tmp_path / "set"
    audio = {s: sf.read(musdb / "test" / "Artist A - Song" / f"{s}.wav", dtype="float32")[0] for s in STEMS}
    write_track(root / "test" / "Artist C - Instrumental", {**audio, "vocals": 0 * audio["vocals"]}, RATE)
    monkeypatch.chdir(tmp_path)
    with_csdr = importlib.util.find_spec("museval") is not None  # else uSDR alone is checked
    args = ["eval", "--musdb", str(root), "-m", str(GOLDEN_WEIGHTS), "--window", "1", "--device", "cpu"]
    args += ["--json", "report.json", *([] if with_csdr else ["--no-csdr"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report.json").read_text())
    [track] = data["tracks"]
    assert all(math.isfinite(v) for v in track["usdr"].values())  # eps: a silent stem still scores
    if with_csdr:
        others = [track["csdr"][s] for s in STEMS if s != "vocals"]
        assert track["csdr"]["vocals"] is None and all(math.isfinite(v) for v in others)  # as a silent frame
        assert data["csdr"]["vocals"] is None and data["csdr"]["avg"] == pytest.approx(np.mean(others))

    # SDRi: a mixture with a silent talker has none, and the mean is over the others.
    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    talkers = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t) * (t > 0.3)])
    outputs = talkers + 0.1 * rng.standard_normal(talkers.shape)
    scores = [speech_scores(talkers.sum(0), talkers, outputs, RATE, compute_sdr=with_csdr)]
    talkers[1] = 0
    scores.append(speech_scores(talkers.sum(0), talkers, outputs, RATE, compute_sdr=with_csdr))
    assert all(math.isfinite(v) for s in scores for v in s["si_snri"])
    if with_csdr:
        assert all(math.isfinite(v) for v in scores[0]["sdri"]) and np.isnan(scores[1]["sdri"]).all()
        report = SpeechReport([SpeechScores("a", scores[0]), SpeechScores("b", scores[1])], ("sdri",))
        assert report.mean("sdri") == pytest.approx(np.mean(scores[0]["sdri"]))
        assert report.left_out("sdri") == 1


def test_eval_subset_with_tab_completions_slash_is_the_folder(musdb, tmp_path):
    """Before: --subset test/ wrote the report as eval-<model>-test/.json (a new folder, a hidden file).
    Tab completion's '/' names the folder test: scored, the report named after it."""
    flags = ["--musdb", musdb, "--subset", "test/", "--tracks", "1", "--window", "1", "--device", "cpu"]
    result = cli("eval", "--model", GOLDEN_WEIGHTS, "--no-csdr", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["eval-golden_small_weights-test.json"]


@pytest.mark.parametrize("subset", ["../x/test", "test//", "..", ""])
def test_eval_subset_must_be_a_folder_name(musdb, tmp_path, subset):
    """Before: ../x/test named a report outside the working folder; the others failed after loading the
    model. A fresh process: the usage error comes before torch is imported."""
    flags = ["--musdb", musdb, "--subset", subset, "--tracks", "1", "--window", "1", "--device", "cpu"]
    result = stemsplit_without_torch("eval", "--model", GOLDEN_WEIGHTS, "--no-csdr", *flags, cwd=tmp_path)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    message = f"--subset: must be a folder name under --musdb, not {subset!r}"
    assert result.stderr == f"stemsplit: error: {message}\n"
    assert list(tmp_path.iterdir()) == []
