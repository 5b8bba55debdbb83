"""Six stems (htdemucs_6s: drums, bass, other, vocals, guitar, piano), and any other stem set, through
every command: output names, --stems, --two-stems, --exact, --format, batch manifests, ensembles of
models with different stems, eval against test sets with other stems, the model list, training.

The 6-stem network is a real HTDemucs: the tiny upstream-golden one of tests/fixtures/htdemucs
(``ht6_published_like``: 8 channels, 4096-sample segments, the published 6-source layout) saved as a
stemsplit checkpoint. Where the network is beside the point (the numbers of an ensemble), helpers.StubNet
stands in. The library's side of other stem sets has its own tests: the rest of an ensemble in
tests/unit/engine/test_ensemble.py, which stems eval scores in tests/unit/evaluate/test_stems.py, a test
set's stems in tests/unit/datasets/test_musdb_layout.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (
    FIXTURES,
    RATE,
    cli,
    files_under,
    json_events,
    music,
    run_train,
    stemsplit_without_torch,
    train_args,
    write_track,
)
from safetensors.torch import load_file
from typer.testing import CliRunner
from weights_server import write_registry

from stemsplit.card import MUSIC_STEMS
from stemsplit.model import families
from stemsplit.model.htdemucs import SIX_STEMS, config_from_kwargs
from stemsplit.separate import Separator
from stemsplit.weights import file_info, save_checkpoint

HT6 = FIXTURES / "htdemucs" / "ht6_published_like"
SECONDS = 0.6  # 9 windows of the tiny network's 4096-sample segment every 3072 samples


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny networks run hundreds of small ops: on a busy 2-core machine two threads wait on each
    other at each (see test_htdemucs.py; the training run took 7.6 s with 1 thread, 17.5 s with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ht6(tmp_path_factory) -> Path:
    """The tiny 6-stem HTDemucs with the upstream-golden weights, as a stemsplit checkpoint."""
    config, stems = config_from_kwargs(json.loads(HT6.with_suffix(".json").read_text()))
    model = families.build_model("htdemucs", config, stems)
    model.load_state_dict(load_file(HT6.with_suffix(".safetensors")), strict=True)
    path = tmp_path_factory.mktemp("models") / "ht6.safetensors"
    save_checkpoint(model.eval(), path)
    return path


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("songs")
    audio = music(SECONDS, RATE)
    sf.write(folder / "song.wav", audio, RATE, subtype="FLOAT")
    return folder / "song.wav", audio


@pytest.fixture(scope="module")
def separated(ht6, song, tmp_path_factory) -> dict[str, np.ndarray]:
    """The song through `stemsplit --model ht6`: {stem: [frames, channels]} as written."""
    out = tmp_path_factory.mktemp("separated")
    cli(song[0], "-o", out, "--model", ht6, "--device", "cpu", "--quiet", check=0)
    return _read(out / "song")


def _read(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: sf.read(p, dtype="float32")[0] for p in sorted(folder.iterdir())}


# --- separate -----------------------------------------------------------------------------------


def test_six_stems_are_written_as_the_model_names_them(ht6, song, separated):
    assert sorted(separated) == sorted(SIX_STEMS)
    expected = Separator(str(ht6), device="cpu").separate(song[1].T, RATE)  # the API, by name
    for stem in SIX_STEMS:
        assert separated[stem].shape == song[1].shape
        np.testing.assert_allclose(separated[stem], expected[stem].T, atol=1e-6)
    assert not np.allclose(separated["guitar"], separated["piano"], atol=1e-3)


def test_stems_two_stems_exact_and_format_with_guitar_and_piano(ht6, song, separated, tmp_path):
    path, audio = song
    base = [path, "--model", ht6, "--device", "cpu", "--quiet"]
    cli(
        *base,
        "-o",
        tmp_path / "gp",
        "--stems",
        "guitar,piano",
        "--format",
        "flac",
        "--bit-depth",
        "24",
        check=0,
    )
    assert files_under(tmp_path / "gp") == ["song/guitar.flac", "song/piano.flac"]
    piano, _ = sf.read(tmp_path / "gp" / "song" / "piano.flac", dtype="float32")
    np.testing.assert_allclose(piano, separated["piano"], atol=2e-6)  # 24-bit: one step is 1.2e-7

    cli(*base, "-o", tmp_path / "two", "--two-stems", "guitar", check=0)
    two = _read(tmp_path / "two" / "song")
    assert sorted(two) == ["guitar", "no_guitar"]
    np.testing.assert_allclose(two["guitar"], separated["guitar"], atol=1e-6)
    np.testing.assert_allclose(two["no_guitar"], audio - separated["guitar"], atol=1e-6)

    result = cli(*base, "-o", tmp_path / "exact", "--exact", "--json", check=0)
    exact = _read(tmp_path / "exact" / "song")
    [event] = [e for e in json_events(result) if e["event"] == "result"]
    assert sorted(exact) == sorted(SIX_STEMS) and event["residual_db"] is not None
    np.testing.assert_allclose(sum(exact.values()), audio, atol=1e-5)  # all six sum to the song

    refused = cli(*base, "-o", tmp_path / "no", "--two-stems", "banjo")
    assert refused.returncode == 2
    assert "'banjo' is not a stem of this model (drums, bass, other, vocals, guitar, piano)" in refused.stderr


def test_batch_records_six_stems_and_resumes(ht6, song, tmp_path):
    music_folder = tmp_path / "music"
    music_folder.mkdir()
    for name in ("a", "b"):
        (music_folder / f"{name}.wav").write_bytes(song[0].read_bytes())
    out = tmp_path / "out"

    def batch(*extra) -> list[str]:
        result = cli("batch", music_folder, "-o", out, "--model", ht6, "--device", "cpu", "--json", *extra)
        assert result.returncode == 0, result.stderr
        return sorted(e["event"] for e in json_events(result) if e["event"] in ("result", "skipped"))

    assert batch() == ["result", "result"]
    assert files_under(out, state=False) == [f"{s}/{stem}.wav" for s in "ab" for stem in sorted(SIX_STEMS)]
    [record] = [
        json.loads(p.read_text())
        for p in (out / ".stemsplit" / "done").iterdir()
        if json.loads(p.read_text())["source"].endswith("a.wav")
    ]
    assert record["settings"]["stems"] == list(SIX_STEMS) and set(record["outputs"]) == set(SIX_STEMS)
    assert batch() == ["skipped", "skipped"]  # resumed: every song done
    assert batch("--two-stems", "guitar") == ["result", "result"]  # other stems: separated again
    assert {"a/no_guitar.wav", "b/guitar.wav"} <= set(files_under(out, state=False))
    assert batch("--two-stems", "guitar") == ["skipped", "skipped"]


# --- ensembles ----------------------------------------------------------------------------------


def test_an_ensemble_of_six_and_four_stems(ht6, song, separated, stub_checkpoint, tmp_path):
    """htdemucs_6s + a 4-stem model: guitar and piano are the 6-stem model's, the four shared stems are
    averaged, and the 4-stem model's other gives the ensemble's less the guitar and piano it holds."""
    path, _audio = song
    stub_out = tmp_path / "stub"
    cli(path, "-o", stub_out, "--model", stub_checkpoint, "--device", "cpu", "--quiet", check=0)
    stub = _read(stub_out / "song")
    result = cli(
        path, "-o", tmp_path / "ens", "--model", f"{ht6},{stub_checkpoint}", "--device", "cpu", "--json"
    )
    assert result.returncode == 0, result.stderr
    ens = _read(tmp_path / "ens" / "song")
    assert sorted(ens) == sorted(SIX_STEMS)
    for stem in ("guitar", "piano"):
        np.testing.assert_allclose(ens[stem], separated[stem], atol=1e-5)
    for stem in ("drums", "bass", "vocals"):
        np.testing.assert_allclose(ens[stem], (separated[stem] + stub[stem]) / 2, atol=1e-5)
    rest = stub["other"] - separated["guitar"] - separated["piano"]
    np.testing.assert_allclose(ens["other"], (separated["other"] + rest) / 2, atol=1e-5)
    # the stems sum to the average of the members' sums: nothing is counted twice
    np.testing.assert_allclose(
        sum(ens.values()), (sum(separated.values()) + sum(stub.values())) / 2, atol=1e-4
    )
    [event] = [e for e in json_events(result) if e["event"] == "ensemble"]
    assert event["other_less"] == {stub_checkpoint: ["guitar", "piano"]}
    assert event["stems"]["guitar"] == {str(ht6): 1.0}
    said = cli(path, "-o", tmp_path / "said", "--model", f"{ht6},{stub_checkpoint}", "--device", "cpu")
    assert (
        f"other: average of {ht6} (0.5) and {stub_checkpoint} (0.5) "
        f"({stub_checkpoint}'s less guitar, piano, which its other holds)"
    ) in said.stderr


def test_stem_choices_across_six_and_four_stems(ht6, song, stub_checkpoint, tmp_path):
    path, _audio = song
    args = [path, "--device", "cpu", "--quiet"]
    cli(
        *args,
        "-o",
        tmp_path / "a",
        "--model",
        f"vocals={stub_checkpoint},guitar={ht6}",
        "--stems",
        "vocals,guitar",
        check=0,
    )
    cli(*args, "-o", tmp_path / "b", "--model", stub_checkpoint, "--stems", "vocals", check=0)
    chosen, alone = _read(tmp_path / "a" / "song"), _read(tmp_path / "b" / "song")
    assert sorted(chosen) == ["guitar", "vocals"]
    np.testing.assert_allclose(chosen["vocals"], alone["vocals"], atol=1e-6)  # the 4-stem model's alone
    refused = cli(path, "-o", tmp_path / "c", "--model", f"{ht6},guitar={stub_checkpoint}")
    assert (
        refused.returncode == 2
        and f"guitar={stub_checkpoint}: {stub_checkpoint} has no stem 'guitar'" in (refused.stderr)
    )
    assert not (tmp_path / "c").exists()


# --- eval ---------------------------------------------------------------------------------------


def test_eval_command_with_six_stems_on_four_and_six_stem_test_sets(ht6, tmp_path):
    audio = music(0.5, RATE)
    write_track(tmp_path / "four" / "test" / "song", {s: audio / 4 for s in MUSIC_STEMS}, RATE)
    write_track(tmp_path / "six" / "test" / "song", {s: audio / 6 for s in SIX_STEMS}, RATE, mixture=False)
    # The network's 4096 samples, overlap 0.25: given for one set, the model's own (its card's) for the other.
    segment = {"four": ["--window", "0.0928798", "--hop", "0.0696599"], "six": []}
    reports = {}
    for name in ("four", "six"):
        result = cli(
            "eval", "--musdb", tmp_path / name, "-m", ht6, *segment[name], "--device", "cpu", "--no-csdr",
            "--json", tmp_path / f"{name}.json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        reports[name] = (json.loads((tmp_path / f"{name}.json").read_text()), result.stdout)
    four, stdout = reports["four"]
    assert four["stems"] == list(MUSIC_STEMS) and set(four["usdr"]) == {*MUSIC_STEMS, "avg"}
    assert four["settings"]["other_scored_as"]["other"]["model"] == ["other", "guitar", "piano"]
    assert "other is scored as the rest of the song: the model's other + guitar + piano" in " ".join(
        stdout.split()
    )
    six, stdout = reports["six"]
    assert six["stems"] == list(SIX_STEMS) and six["notes"] == [] and "scored as" not in stdout
    assert six["settings"]["window"] == pytest.approx(4096 / RATE)  # no --window: the model's segment
    assert six["settings"]["hop"] == pytest.approx(0.75 * 4096 / RATE) == four["settings"]["hop"]
    assert six["settings"]["other_scored_as"] == {}

    write_track(tmp_path / "keys" / "test" / "song", {"keys": audio / 2, "voice": audio / 2}, RATE)
    # no stem in common: a usage error, from the file's metadata, before torch and the model load
    result = stemsplit_without_torch("eval", "--musdb", tmp_path / "keys", "-m", ht6, "--no-csdr")
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr == (
        f"stemsplit: error: --musdb: {tmp_path / 'keys' / 'test'} has the stems keys, voice and {ht6} "
        "gives drums, bass, other, vocals, guitar, piano: none to score\n"
    )


# --- the model list -----------------------------------------------------------------------------


def test_the_model_list_names_six_stems_in_80_columns(env):
    from stemsplit.cli.models import models_app

    six = {
        "description": "a 6-stem HTDemucs for the tests (htdemucs_6s' layout)",
        "architecture": "htdemucs",
        "preset": "htdemucs_6s",
        "stems": list(SIX_STEMS),
        "sample_rate": 44100,
        "normalization": "meanstd",
        "url": "https://127.0.0.1/never-downloaded.safetensors",
        "sha256": "",
        "size": 84_000_000,
        "license": "MIT",
    }
    four = {**six, "description": "a 4-stem one", "preset": "htdemucs", "stems": list(MUSIC_STEMS)}
    write_registry(env / "weights.toml", {"ht-six-stems-for-the-tests": six, "ht-four": four})
    listing = CliRunner().invoke(models_app, [], env={"COLUMNS": "80"})
    assert listing.exit_code == 0, listing.output
    assert max(len(line) for line in listing.output.splitlines()) <= 80
    [row] = [line for line in listing.output.splitlines() if line.startswith("ht-six-stems-for-the-tests")]
    assert row.split()[1:3] == ["htdemucs", "6"]
    text = " ".join(listing.output.split())
    assert "stems 6: drums, bass, other, vocals, guitar, piano; 4: drums, bass, other, vocals" in text
    shown = CliRunner().invoke(models_app, ["show", "ht-six-stems-for-the-tests"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0 and "drums, bass, other, vocals, guitar, piano" in shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 80


# --- training -----------------------------------------------------------------------------------


def test_training_on_a_folder_of_six_stems(tmp_path):
    """A MUSDB18-HQ-layout folder whose tracks have guitar.wav and piano.wav trains a 6-stem model."""
    root = tmp_path / "data"
    t = np.arange(round(1.2 * RATE)) / RATE
    for k, name in enumerate(["A", "B", "V"]):
        tones = {s: np.sin(2 * np.pi * (110 * (i + 1) + 7 * k) * t) for i, s in enumerate(SIX_STEMS)}
        write_track(root / "train" / name, {s: 0.1 * np.stack([x, x], 1) for s, x in tones.items()}, RATE)
    (root / "valid.txt").write_text("V\n")
    (root / "tiny.toml").write_text("feature_dim = 16\nnum_repeat_mask = 1\nnum_repeat_map = 1\n")
    args = train_args(root, tmp_path / "run", "--stems", ",".join(SIX_STEMS), "--epochs", "1")
    args[args.index("--epoch-size") + 1] = "2"
    result = run_train(args)
    assert result.returncode == 0, result.stderr
    assert file_info(tmp_path / "run" / "best.safetensors").stems == SIX_STEMS
