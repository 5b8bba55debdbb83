"""Ensembles (issue 30): ``--model a,b``, weights ``a:2,b:1``, per-stem choice ``vocals=a,drums=b``.

The members are "fraction" networks (a family registered for these tests): stem k is a fixed
fraction of the mixture, the fractions being the network's weights. Every window of such a
network gives back exact fractions, so an ensemble's stems are exact numbers: the average of
A = [0.1, 0.2, 0.3, 0.4] and B = [0.4, 0.3, 0.2, 0.1] is 0.25 of the mixture in every stem,
at every sample, song edges included, whatever each member's window and hop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import files_under, music, run_cli, stemsplit_without_torch, write_track
from torch import nn

from stemsplit.card import MUSIC_STEMS, SIX_STEMS, ModelCard, other_is_the_rest
from stemsplit.engine.ensemble import Ensemble
from stemsplit.engine.ensemble_spec import EnsembleSpec, parse_models, plan_stems, rest_parts
from stemsplit.engine.settings import SeparationError
from stemsplit.model import families
from stemsplit.separate import window_count
from stemsplit.weights import save_checkpoint

RATE = 8000
ARCH = "fractions"
A = [0.1, 0.2, 0.3, 0.4]
B = [0.4, 0.3, 0.2, 0.1]


@dataclass(frozen=True)
class FractionsConfig:
    sr: int = RATE
    num_stems: int = 4
    window: float = 1.0
    hop: float = 0.5


class Fractions(nn.Module):
    """mixture [B, C, T] -> stems [B, S, C, T]: stem k is ``fractions[k]`` x the mixture (the weights)."""

    def __init__(self, config: FractionsConfig, stems=MUSIC_STEMS, task: str = "music") -> None:
        super().__init__()
        self.config = config
        self.fractions = nn.Parameter(torch.zeros(config.num_stems))
        self.card = ModelCard(
            ARCH, tuple(stems), config.sr, 16, (256, 64), window=config.window, hop=config.hop, task=task
        )
        self.calls = 0

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fractions[None, :, None, None] * mixture[:, None]


FAMILY = families.Family(
    name=ARCH,
    summary="stems as fixed fractions of the mixture, for the ensemble tests",
    config_type=FractionsConfig,
    presets={"base": FractionsConfig()},
    default_preset="base",
    build=lambda config, stems: Fractions(config, stems or MUSIC_STEMS),
    shrink=lambda config: config,
    stem_field="num_stems",
)


def fractions(values, stems=MUSIC_STEMS, **config) -> Fractions:
    model = Fractions(FractionsConfig(num_stems=len(values), **config), stems)
    with torch.no_grad():
        model.fractions.copy_(torch.tensor(values))
    return model.eval()


@pytest.fixture
def models(tmp_path, monkeypatch):
    """Checkpoint files: a (A, 1 s windows every 0.5 s), b (B, 0.7 s every 0.3 s), c (vocals and piano)."""
    monkeypatch.setitem(families.FAMILIES, ARCH, FAMILY)
    folder = tmp_path / "models"
    folder.mkdir()
    save_checkpoint(fractions(A), folder / "a.safetensors")
    save_checkpoint(fractions(B, window=0.7, hop=0.3), folder / "b.safetensors")
    save_checkpoint(
        fractions([0.5, 0.25], ("vocals", "piano"), window=0.5, hop=0.5), folder / "c.safetensors"
    )
    return {name: folder / f"{name}.safetensors" for name in "abc"}


@pytest.fixture
def mix(tmp_path):
    """A 3.3 s stereo song at 8 kHz (float wav): [frames, channels]."""
    audio = music(3.3, RATE)
    sf.write(tmp_path / "song.wav", audio, RATE, subtype="FLOAT")
    return audio


def separate(capsys, tmp_path, model, *extra):
    """``stemsplit song.wav --model MODEL`` -> (status, {stem: [frames, channels]}, stderr)."""
    code, _out, err = run_cli(
        capsys, tmp_path / "song.wav", "-o", tmp_path / "out", "--model", model, "--device", "cpu", *extra
    )
    folder = tmp_path / "out" / "song"
    stems = {p.stem: sf.read(p, dtype="float32")[0] for p in folder.glob("*.wav")} if folder.exists() else {}
    return code, stems, err


def spec(*names):
    return ",".join(str(n) for n in names)


# --- the syntax -----------------------------------------------------------------------------------


def test_the_model_syntax():
    assert parse_models("demo") is None
    assert parse_models("http://localhost:8000") is None  # a port, not a weight
    assert parse_models("a,b") == EnsembleSpec(("a", "b"), (1.0, 1.0))
    assert parse_models(" a:2 , b:0.5 ") == EnsembleSpec(("a", "b"), (2.0, 0.5))
    assert parse_models("vocals=a,drums=b,bass=b,other=b") == EnsembleSpec(
        ("a", "b"), (1.0, 1.0), {"vocals": 0, "drums": 1, "bass": 1, "other": 1}
    )
    assert parse_models("a:2,b,vocals=a") == EnsembleSpec(("a", "b"), (2.0, 1.0), {"vocals": 0})
    url = "https://example.org:8443/models/m.ckpt"
    assert parse_models(f"{url}:3,{url}2") == EnsembleSpec((url, url + "2"), (3.0, 1.0))
    # a '=' in a path is not a stem choice: what comes before it is no stem's name
    assert parse_models("runs/lr=1e-3/best.safetensors,b").models == ("runs/lr=1e-3/best.safetensors", "b")
    assert parse_models("a:2") == EnsembleSpec(("a",), (2.0,))  # one model: the CLI runs it alone


def test_a_file_is_one_model_commas_and_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a,b.safetensors").write_bytes(b"")
    (tmp_path / "c:2").write_bytes(b"")
    assert parse_models("a,b.safetensors") is None
    assert parse_models("c:2") is None
    assert parse_models("c:2,d").models == ("c:2", "d")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a,,b", "an empty model in 'a,,b'"),
        ("a,b,", "an empty model"),
        ("a,a", "a is named twice"),
        ("a:2,a:3", "a is named twice"),
        ("a:0,b", "a:0: the weight must be a positive number, not '0'"),
        ("a:-1,b", "the weight must be a positive number, not '-1'"),
        ("a:1e999,b", "the weight must be a positive number"),
        ("a:1.2.3,b", "not '1.2.3'"),
        ("a:,b", "'a:' has no weight after its ':'"),
        ("vocals=a:2,b", "a weight goes with a model's own item (a:2)"),
        ("vocals=a,vocals=b", "vocals is chosen twice (vocals=a, vocals=b)"),
        ("vocals=,b", "'vocals=' names no model"),
    ],
)
def test_syntax_errors_are_one_line_each(text, problem):
    with pytest.raises(SeparationError, match=r"^model: ") as error:
        parse_models(text)
    assert problem in str(error.value) and "\n" not in str(error.value)


def test_the_plan_of_stems_that_differ():
    four, two = MUSIC_STEMS, ("vocals", "piano")
    plan = plan_stems([four, two], [3.0, 1.0], {}, ["a", "c"])
    assert list(plan) == [*four, "piano"]  # the first member's order, then the new ones
    assert plan["vocals"] == ((0, 0.75), (1, 0.25))
    assert plan["drums"] == ((0, 1.0),) and plan["piano"] == ((1, 1.0),)
    with pytest.raises(SeparationError, match="drums=c: c has no stem 'drums'"):
        plan_stems([four, two], [1.0, 1.0], {"drums": 1}, ["a", "c"])
    with pytest.raises(SeparationError, match=r"b gives no stem: each of its stems .* is chosen from"):
        plan_stems([four, four], [1.0, 1.0], dict.fromkeys(four, 0), ["a", "b"])


def test_the_rest_and_what_comes_out_of_it():
    four, vocals_other = MUSIC_STEMS, ("vocals", "other")
    assert other_is_the_rest(four) and other_is_the_rest(SIX_STEMS)
    assert other_is_the_rest(vocals_other, rest_stem="other") and not other_is_the_rest(vocals_other)
    assert not other_is_the_rest(("other",))  # a one-target network: MUSDB's other, not the rest
    assert not other_is_the_rest(("vocals", "piano"))

    plan = plan_stems([SIX_STEMS, four], [1.0, 1.0], {}, ["a", "b"])
    assert list(plan) == list(SIX_STEMS) and plan["guitar"] == ((0, 1.0),)
    assert rest_parts([SIX_STEMS, four], [True, True], plan) == {1: ("guitar", "piano")}
    assert rest_parts([SIX_STEMS, four], [True, False], plan) == {}  # b's other is not the rest: as it is
    chosen = plan_stems([SIX_STEMS, four], [1.0, 1.0], {"other": 0}, ["a", "b"])
    assert rest_parts([SIX_STEMS, four], [True, True], chosen) == {}  # other from a alone: nothing to take
    plan = plan_stems([vocals_other, four], [1.0, 1.0], {}, ["v", "b"])  # a vocals model's other: no drums
    assert rest_parts([vocals_other, four], [True, True], plan) == {0: ("drums", "bass")}


# --- exact averages through the command line ----------------------------------------------------


def test_two_models_average_exactly(tmp_path, capsys, models, mix):
    code, stems, err = separate(capsys, tmp_path, spec(models["a"], models["b"]), "--quiet")
    assert code == 0, err
    assert sorted(stems) == sorted(MUSIC_STEMS)
    for stem in MUSIC_STEMS:
        assert stems[stem].shape == mix.shape  # every member's windows line up to the song's length
        np.testing.assert_allclose(stems[stem], 0.25 * mix, atol=1e-6)  # edges included


def test_weights(tmp_path, capsys, models, mix):
    code, stems, err = separate(capsys, tmp_path, f"{models['a']}:3,{models['b']}:1", "--quiet")
    assert code == 0, err
    for stem, fa, fb in zip(MUSIC_STEMS, A, B, strict=True):
        np.testing.assert_allclose(stems[stem], (3 * fa + fb) / 4 * mix, atol=1e-6)


def test_each_stem_from_the_model_named(tmp_path, capsys, models, mix):
    a, b = models["a"], models["b"]
    code, stems, err = separate(capsys, tmp_path, f"vocals={a},drums={b},bass={b},other={b}")
    assert code == 0, err
    np.testing.assert_allclose(stems["vocals"], A[3] * mix, atol=1e-6)
    for k, stem in enumerate(MUSIC_STEMS[:3]):
        np.testing.assert_allclose(stems[stem], B[k] * mix, atol=1e-6)
    assert f"vocals: {a} alone (chosen)" in err and f"drums, bass, other: {b} alone (chosen)" in err
    # a stem not named is averaged over every member that gives it
    code, stems, err = separate(capsys, tmp_path, f"{a},{b},vocals={a}", "--overwrite")
    np.testing.assert_allclose(stems["vocals"], A[3] * mix, atol=1e-6)
    np.testing.assert_allclose(stems["drums"], 0.25 * mix, atol=1e-6)


def test_a_stem_only_some_models_give_is_averaged_over_those_and_said(tmp_path, capsys, models, mix):
    code, stems, err = separate(capsys, tmp_path, spec(models["a"], models["c"]))
    assert code == 0, err
    assert sorted(stems) == sorted([*MUSIC_STEMS, "piano"])
    np.testing.assert_allclose(stems["vocals"], (0.4 + 0.5) / 2 * mix, atol=1e-6)
    np.testing.assert_allclose(stems["drums"], 0.1 * mix, atol=1e-6)  # a alone: c has none
    np.testing.assert_allclose(stems["piano"], 0.25 * mix, atol=1e-6)
    # a's other (0.3) holds the piano c gives apart (a's stems are the whole song): it is taken out
    np.testing.assert_allclose(stems["other"], (0.3 - 0.25) * mix, atol=1e-6)
    line = next(line for line in err.splitlines() if "an ensemble of 2 models" in line)
    assert f"drums, bass: only {models['a']} has them" in line
    assert f"other: only {models['a']} has it ({models['a']}'s less piano, which its other holds)" in line
    assert f"vocals: average of {models['a']} (0.5) and {models['c']} (0.5)" in line
    assert f"piano: only {models['c']} has it" in line


def test_json_states_where_each_stem_comes_from(tmp_path, capsys, models, mix):
    code, out, err = run_cli(
        capsys, tmp_path / "song.wav", "-o", tmp_path / "out", "--model", f"{models['a']}:3,{models['c']}",
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    [ensemble] = [e for e in events if e["event"] == "ensemble"]
    assert ensemble["stems"]["vocals"] == {str(models["a"]): 0.75, str(models["c"]): 0.25}
    assert ensemble["stems"]["piano"] == {str(models["c"]): 1.0}
    # the progress counts every member's windows: a (1 s every 0.5 s) and c (0.5 s every 0.5 s)
    [start] = [e for e in events if e["event"] == "start"]
    frames = len(mix)
    assert start["windows"] == window_count(frames, RATE, RATE // 2) + window_count(
        frames, RATE // 2, RATE // 2
    )
    windows = [e for e in events if e["event"] == "windows"]
    assert windows[-1]["done"] == windows[-1]["total"] == start["windows"]
    assert [e["done"] for e in windows] == sorted(e["done"] for e in windows)


# --- everything separate promises ------------------------------------------------------------------


def test_a_stem_no_model_gives_is_a_usage_error_before_any_window(tmp_path, capsys, models, mix):
    for flags in (["--stems", "vocals,guitar"], ["--two-stems", "guitar"]):
        code, out, err = run_cli(
            capsys, tmp_path / "song.wav", "-o", tmp_path / "out", "--model", spec(models["a"], models["c"]),
            "--device", "cpu", "--json", *flags,
        )  # fmt: skip
        assert code == 2
        assert "'guitar' is not a stem of this ensemble (drums, bass, other, vocals, piano)" in err
        assert '"windows"' not in out and not (tmp_path / "out").exists()


def test_usage_errors_come_before_torch(tmp_path, models, mix):
    # the files' metadata say the stems: a stem none gives, or a choice its model lacks, needs no torch
    for model, extra in (
        (spec(models["a"], models["c"]), ["--stems", "guitar"]),
        (f"drums={models['c']},{models['a']}", []),
        (f"{models['a']}:0,{models['b']}", []),
        (spec(models["a"], tmp_path / "missing.safetensors"), []),
    ):
        result = stemsplit_without_torch(
            tmp_path / "song.wav", "-o", tmp_path / "out", "--model", model, *extra
        )
        assert result.stdout.split()[-2:] == ["2", "False"], result.stdout + result.stderr
        assert result.stderr.count("stemsplit: error: --model") + result.stderr.count("--stems") == 1


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--model", "a.safetensors,,b"], "--model: an empty model in"),
        (["--model", "A:x2,B"], "--model: no model named 'A:x2'"),  # not a number: part of the name
        (["--model", "A:-2,B"], "--model: A:-2: the weight must be a positive number, not '-2'"),
        (["--model", "A,A"], "--model: A is named twice"),
        (["--model", "A,./A"], "are the same file; give each model once"),
        (["--model", "vocals=A,vocals=B"], "--model: vocals is chosen twice"),
        (["--model", "piano=A,B"], "--model: piano=A: A has no stem 'piano' (its stems: drums, bass"),
        (["--model", "vocals=A,drums=A,bass=A,other=A,B"], "--model: B gives no stem"),
        (["--model", "A,B", "--model-config", "x.yaml"], "--model-config: goes with one checkpoint, not an"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, models, mix, monkeypatch, flags, problem):
    monkeypatch.chdir(models["a"].parent)

    def named(text):
        return text.replace("A", "a.safetensors").replace("B", "b.safetensors")

    flags = [named(f) for f in flags]
    code, _out, err = run_cli(
        capsys, tmp_path / "song.wav", "-o", tmp_path / "out", "--device", "cpu", *flags
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and named(problem) in err, err
    assert not (tmp_path / "out").exists()


def test_exact_shares_the_residual_of_the_averaged_stems(tmp_path, capsys, models, mix):
    a = tmp_path / "models" / "low.safetensors"  # its stems sum to 0.5 of the mixture; b's to 1
    save_checkpoint(fractions([0.05, 0.1, 0.15, 0.2]), a)
    code, stems, err = separate(capsys, tmp_path, spec(a, models["b"]), "--exact")
    assert code == 0, err
    total = sum(stems.values())
    np.testing.assert_allclose(total, mix, atol=1e-5)  # the averaged stems, corrected, sum to the mix
    # the residual (0.25 of the mix) went to the stems by their magnitude: each keeps its share
    averaged = [(fa + fb) / 2 for fa, fb in zip([0.05, 0.1, 0.15, 0.2], B, strict=True)]
    for stem, f in zip(MUSIC_STEMS, averaged, strict=True):
        np.testing.assert_allclose(stems[stem], f / sum(averaged) * mix, atol=1e-5)
    assert "residual -12.0 dB shared among stems" in err  # 20 log10(0.25)


def test_two_stems_and_no_stem_with_an_ensemble(tmp_path, capsys, models, mix):
    code, stems, err = separate(capsys, tmp_path, spec(models["a"], models["c"]), "--two-stems", "piano")
    assert code == 0, err
    assert sorted(stems) == ["no_piano", "piano"]
    np.testing.assert_allclose(stems["no_piano"], 0.75 * mix, atol=1e-6)


def test_a_member_failing_mid_song_leaves_nothing(tmp_path, mix):
    class Failing(Fractions):
        def forward(self, mixture):
            if self.calls >= 3:
                raise RuntimeError("the network broke")
            return super().forward(mixture)

    broken = Failing(FractionsConfig(window=0.7, hop=0.3))
    ensemble = Ensemble([fractions(A), broken], device="cpu")
    with pytest.raises(RuntimeError, match="the network broke"):
        ensemble.separate_file(tmp_path / "song.wav", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no files, no temporaries, not even the folders it made


def test_windows_hops_and_rates_of_their_own_still_line_up(tmp_path):
    """Three members at other windows, hops and rates than the song's: every output is the song's
    length; same-rate members average exactly; one at another rate matches within resampling."""
    audio = music(2.05, RATE).T
    a, b = fractions(A), fractions(B, window=0.35, hop=0.1)
    out = Ensemble([a, b], device="cpu", batch_size=3).separate(audio, RATE)
    for stem in MUSIC_STEMS:
        assert out[stem].shape == audio.shape
        np.testing.assert_allclose(out[stem], 0.25 * audio, atol=1e-6)
    odd = fractions(B, sr=11025, window=0.5, hop=0.25)  # resampled to 11025 Hz and back
    out = Ensemble([a, odd], device="cpu").separate(audio, RATE)
    for stem in MUSIC_STEMS:
        assert out[stem].shape == audio.shape
        middle = slice(RATE // 10, -RATE // 10)  # the resamplers' edges aside
        np.testing.assert_allclose(out[stem][:, middle], 0.25 * audio[:, middle], atol=2e-3)


def test_members_of_other_tasks_or_speaker_models_are_refused():
    speakers = Fractions(FractionsConfig(num_stems=2), ("speaker1", "speaker2"), task="speakers")
    with pytest.raises(SeparationError, match="network 2 separates speakers and network 1 music"):
        Ensemble([fractions(A), speakers], device="cpu")
    with pytest.raises(SeparationError, match="model: network 2 is given twice"):
        a = fractions(A)
        Ensemble([a, a], device="cpu")
    with pytest.raises(SeparationError, match="weights: must be 2 positive numbers"):
        Ensemble([fractions(A), fractions(B)], weights=[1, 0], device="cpu")


def test_speakers_refuses_ensembles(tmp_path, capsys, models, mix):
    code, _out, err = run_cli(
        capsys,
        "speakers",
        tmp_path / "song.wav",
        "--model",
        spec(models["a"], models["b"]),
        "--device",
        "cpu",
    )
    assert code == 2 and "ensembles are for music" in err


def test_batch_re_separates_when_the_ensemble_changes(tmp_path, capsys, models, mix):
    music_folder = tmp_path / "music"
    music_folder.mkdir()
    (tmp_path / "song.wav").rename(music_folder / "song.wav")

    def batch(model):
        code, out, err = run_cli(
            capsys,
            "batch",
            music_folder,
            "-o",
            tmp_path / "out",
            "--model",
            model,
            "--device",
            "cpu",
            "--json",
        )
        assert code == 0, err
        return [json.loads(line)["event"] for line in out.splitlines()]

    a, b = models["a"], models["b"]
    assert "result" in batch(spec(a, b))
    assert "skipped" in batch(spec(a, b))  # the same ensemble: done
    assert "result" in batch(f"{a}:2,{b}")  # another weight: separated again
    assert "result" in batch(f"vocals={a},{b}")  # another choice
    assert "skipped" in batch(f"vocals={a},{b}")
    assert files_under(tmp_path / "out", state=False) == [f"song/{stem}.wav" for stem in sorted(MUSIC_STEMS)]
    vocals, _ = sf.read(tmp_path / "out" / "song" / "vocals.wav", dtype="float32")
    np.testing.assert_allclose(vocals, A[3] * mix, atol=1e-6)


def test_eval_scores_an_ensemble_as_it_scores_one_model(tmp_path, capsys, models):
    """Songs whose stems are each a quarter of the mixture: a (A) is off on every stem, a,b (A and B
    averaged: exactly a quarter) is perfect; both reports share the protocol compare_evals reads."""
    audio = music(2.5, RATE)
    write_track(tmp_path / "musdb" / "test" / "song", {s: 0.25 * audio for s in MUSIC_STEMS}, RATE)
    reports = {}
    for name, model in (("single", models["a"]), ("ensemble", spec(models["a"], models["b"]))):
        code, _out, err = run_cli(
            capsys, "eval", "--musdb", tmp_path / "musdb", "-m", model, "--window", "1", "--hop", "0.5",
            "--device", "cpu", "--no-csdr", "--json", tmp_path / f"{name}.json",
        )  # fmt: skip
        assert code == 0, err
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    single, ensemble = reports["single"], reports["ensemble"]
    assert ensemble["settings"]["model"] == "a+b"
    for key in ("window", "hop", "stage"):
        assert ensemble["settings"][key] == single["settings"][key]
    assert single["usdr"]["drums"] == pytest.approx(20 * np.log10(0.25 / 0.15), abs=1e-3)
    assert min(ensemble["usdr"][stem] for stem in MUSIC_STEMS) > 80


def test_every_member_reads_the_same_blocks_and_each_is_let_go_once_all_have():
    """What keeps memory flat on a long song: a block read by every member is not held (itertools.tee
    held 57 blocks, ten minutes of song, and memory grew with the song)."""
    import weakref

    from stemsplit.engine.ensemble import _fan_out

    class Block:
        pass

    made = []

    def blocks():
        for _ in range(200):
            block = Block()
            made.append(weakref.ref(block))
            yield block

    first, second = _fan_out(blocks(), 2)
    for _ in range(200):
        a, b = next(first), next(second)
        assert a is b
        del a, b  # (no gc.collect(): a block must go by its count alone, and 200 collections took 50 s)
        assert sum(ref() is not None for ref in made) <= 1
    assert next(first, None) is None and next(second, None) is None
