"""``stemsplit finetune``: the teacher's clean/pseudo decisions, the examples, self-boosting, resume, export.

The classification runs through a real BSRNN bag whose mask heads are set to a fixed
band-pass (bass below 1 kHz, other above): a real network that is an oracle for
constructed signals, so stem-only and stem-silent crops have a known answer.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import cli, stemsplit_without_torch
from safetensors import safe_open
from safetensors.torch import load_file

from stemsplit.datasets.musdb import find_tracks
from stemsplit.model import build_model, make_config
from stemsplit.train.data import SalientIndex
from stemsplit.train.finetune import FinetuneDataset
from stemsplit.train.teacher import (
    CLEAN_RESIDUAL,
    CLEAN_TARGET,
    LABELED,
    PSEUDO,
    RESIDUAL,
    TARGET,
    teacher_estimates,
    teacher_sources,
    view_offsets,
)
from stemsplit.train.unlabeled import UnlabeledSong
from stemsplit.weights import load_model, save_checkpoint

RATE = 44100
CUT_HZ = 1000


def band_pass_bag() -> torch.nn.Module:
    """A 2-stem BSRNN bag (bass, other) whose masks are exactly 1 in its bands and 0 elsewhere."""
    stems = ("bass", "other")
    config = make_config("bsrnn", overrides={"feature_dim": 8, "num_layers": 1, "bands": "v7"}, stems=stems)
    bag = build_model("bsrnn", config, stems).eval()
    for stem, network in bag.targets.items():
        first_bin = 0
        for head in network.mask:
            low = (first_bin + head.width / 2) * RATE / config.n_fft < CUT_HZ
            first_bin += head.width
            bias = torch.zeros(4 * head.width)  # (value, gate) x (real, imag) x bins
            bias[: head.width] = float(low if stem == "bass" else not low)  # real part of the mask
            bias[2 * head.width :] = 30.0  # gates open: sigmoid(30) = 1 - 1e-13
            with torch.no_grad():
                head.fc2.weight.zero_()
                head.fc2.bias.copy_(bias)
    return bag


def stereo(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, 0.7 * x])


def test_stem_only_is_clean_target_silent_target_is_clean_residual():
    t = torch.arange(RATE) / RATE
    bass = 0.3 * torch.sin(2 * np.pi * 110 * t) + 0.2 * torch.sin(2 * np.pi * 220 * t)
    other = 0.2 * torch.sin(2 * np.pi * 3000 * t) + 0.1 * torch.sin(2 * np.pi * 4400 * t)
    crops = torch.stack([stereo(bass), stereo(other), stereo(bass + other), stereo(bass + 0.1 * other)])
    teacher = band_pass_bag()
    bass_out, other_out = torch.zeros(4, dtype=torch.int64), torch.ones(4, dtype=torch.int64)
    targets = torch.full((4,), TARGET)

    # Target bass: bass alone -> clean target; bass silent -> clean residual; both -> pseudo-labels.
    signals, classes = teacher_sources(teacher, crops, bass_out, targets)
    assert classes.tolist() == [CLEAN_TARGET, CLEAN_RESIDUAL, PSEUDO, PSEUDO]
    assert torch.equal(signals[0], crops[0])  # a clean target is the mixture itself, not the estimate
    assert torch.equal(signals[1], torch.zeros_like(crops[1]))  # target absent: silence
    error = (signals[2] - stereo(bass)).square().sum() / stereo(bass).square().sum()
    assert error < 1e-3  # the pseudo target is the teacher's (here nearly exact) bass

    # The same crops for target other: the roles swap.
    _, classes = teacher_sources(teacher, crops, other_out, targets)
    assert classes.tolist() == [CLEAN_RESIDUAL, CLEAN_TARGET, PSEUDO, PSEUDO]

    # A residual slot takes the mixture when the target is absent, the mixture minus the estimate if pseudo.
    residuals = torch.full((4,), RESIDUAL)
    signals, _ = teacher_sources(teacher, crops, bass_out, residuals)
    assert torch.equal(signals[1], crops[1]) and torch.equal(signals[0], torch.zeros_like(crops[0]))
    error = (signals[2] - stereo(other)).square().sum() / stereo(other).square().sum()
    assert error < 1e-3

    # The threshold is a flag: other 20 dB under bass is a pseudo-label at 30 dB, a clean bass at 15.
    assert teacher_sources(teacher, crops[3:], bass_out[3:], targets[3:], 15.0)[1].tolist() == [CLEAN_TARGET]

    # With context around each crop (the same tones going on, 0.25 s each side) and three teacher
    # views, the decision and the signals are the crop's: the same classes, crop-length signals.
    context = RATE // 4
    longer = torch.arange(RATE + 2 * context) / RATE
    bass = 0.3 * torch.sin(2 * np.pi * 110 * longer) + 0.2 * torch.sin(2 * np.pi * 220 * longer)
    other = 0.2 * torch.sin(2 * np.pi * 3000 * longer) + 0.1 * torch.sin(2 * np.pi * 4400 * longer)
    regions = torch.stack([stereo(bass), stereo(other), stereo(bass + other), stereo(bass + 0.1 * other)])
    signals, classes = teacher_sources(teacher, regions, bass_out, targets, context=context, views=3)
    assert classes.tolist() == [CLEAN_TARGET, CLEAN_RESIDUAL, PSEUDO, PSEUDO]
    assert torch.equal(signals[0], regions[0, :, context:-context]) and signals.shape == crops.shape


class Ramp(torch.nn.Module):
    """A 'teacher' whose stem k is its window times k + 1 times a ramp from 0 to 1 over the window:
    where a crop sits in each window shows in its estimate."""

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, mixture.shape[-1])
        return torch.stack([mixture * ramp, 2 * mixture * ramp], dim=1)


def test_the_teacher_averages_windows_that_each_hold_the_whole_crop():
    frames, context = 50, 20
    assert view_offsets(context, 3) == [0, 10, 20]  # the crop at the window's end, middle, start
    assert view_offsets(context, 1) == [10] and view_offsets(0, 5) == [0]  # centred; no context: the crop
    regions = torch.randn(3, 2, frames + 2 * context)
    outputs = torch.tensor([0, 1, 0])
    ramp = torch.linspace(0, 1, frames + context)
    seen = torch.stack([ramp[context - o : context - o + frames] for o in (0, 10, 20)]).mean(0)
    crop = regions[..., context : context + frames]
    expected = crop * seen * torch.tensor([1.0, 2.0, 1.0])[:, None, None]
    estimate = teacher_estimates(Ramp(), regions, outputs, context, views=3, batch=2)
    assert torch.allclose(estimate, expected, atol=1e-6)
    alone = teacher_estimates(Ramp(), regions[..., context:-context], outputs)  # no context: one pass
    assert torch.allclose(
        alone, crop * torch.linspace(0, 1, frames) * torch.tensor([1.0, 2.0, 1.0])[:, None, None]
    )


# --- data and a real tiny model ---------------------------------------------------------------------


def stemsplit(*args, cwd=None, env_dir=None):
    """``stemsplit ARGS`` in this process (helpers.cli); ``env_dir`` holds the model cache."""
    env = {**os.environ, "STEMSPLIT_CACHE": str(env_dir / "cache")} if env_dir else None
    return cli(*args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """A tiny labeled set (stemsplit synth), a folder of unlabeled songs, a tiny TS-BSMamba2 checkpoint."""
    root = tmp_path_factory.mktemp("finetune")
    made = stemsplit("synth", root / "labeled", "--songs", 2, "--valid", 1, "--test", 2, "--seconds", 3)
    assert made.returncode == 0, made.stderr
    unlabeled = root / "unlabeled"
    (unlabeled / "a" / "b").mkdir(parents=True)
    shutil.copy(root / "labeled" / "test" / "test-00000" / "mixture.wav", unlabeled / "one.wav")
    audio, rate = sf.read(root / "labeled" / "test" / "test-00001" / "mixture.wav")
    sf.write(unlabeled / "a" / "b" / "two.flac", audio, rate)
    (unlabeled / "a" / "broken.wav").write_bytes(b"RIFF" + bytes(100))  # skipped, with a line saying so
    (unlabeled / "notes.txt").write_text("not audio")  # not an audio file name: not even looked at
    stems = ("drums", "bass", "other", "vocals")
    torch.manual_seed(0)
    small = {"feature_dim": 16, "num_repeat_mask": 1, "num_repeat_map": 1}
    model = build_model("ts-bsmamba2", make_config("ts-bsmamba2", overrides=small, stems=stems), stems)
    save_checkpoint(model, root / "tiny.safetensors")
    return root


def finetune_args(material, out, *extra):
    # lr 1e-3 (not the paper's 1e-4): two steps from random weights then surely beat the start.
    return [
        "finetune", "--model", material / "tiny.safetensors", "--musdb", material / "labeled",
        "--unlabeled", material / "unlabeled", "-o", out, "--lr", "1e-3",
        "--crop-seconds", "1", "--sad-seconds", "2", "--batch-size", "2", "--epoch-size", "4",
        "--workers", "0",
        "--valid-window", "1.5", "--valid-hop", "1.5", "--device", "cpu", *extra,
    ]  # fmt: skip


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def weights(path):
    return load_file(path)


WINDOWS = ("--teacher-window", "2", "--teacher-views", "2")  # each 1 s crop labelled through two 2 s windows


@pytest.fixture(scope="module")
def resumed_run(material):
    """One epoch, then --resume for a second; what the first left behind is kept for the checks."""
    out = material / "run"
    first = stemsplit(*finetune_args(material, out, "--epochs", "1", *WINDOWS), env_dir=material)
    assert first.returncode == 0, first.stderr
    after_first = {
        "log": read_log(out),
        "teachers": sorted(p.name for p in (out / "teachers").iterdir()),
        "last": weights(out / "last.safetensors"),
        "stderr": first.stderr,
    }
    after_first["teacher"] = weights(out / "teachers" / after_first["teachers"][-1])
    second = stemsplit(*finetune_args(material, out, "--epochs", "2", "--resume", *WINDOWS), env_dir=material)
    assert second.returncode == 0, second.stderr
    return out, after_first, second.stderr


def test_finetune_swaps_the_teacher_resumes_and_exports(material, resumed_run):
    out, first, resumed_stderr = resumed_run
    initial = weights(material / "tiny.safetensors")

    # Generation 0 is the given model, scored before any step; epoch 1 beat it: the student is the teacher.
    log = first["log"]
    assert [r["epoch"] for r in log] == [0, 1] and log[0]["teacher"] == 0
    assert log[1]["valid_usdr"] > log[0]["valid_usdr"] and log[1]["best"] and log[1]["teacher"] == 1
    assert first["teachers"] == ["gen-1.safetensors"]  # generation 0 went once last.pt named generation 1
    for key, value in first["last"].items():  # teacher 1 is exactly the student of epoch 1 ...
        assert torch.equal(first["teacher"][key], value), key
    assert any(not torch.equal(initial[k], v) for k, v in first["teacher"].items())  # ... not the start
    separated = log[1]["unlabeled_targets"]
    assert sum(separated.values()) > 0 and log[1]["unlabeled_residuals"] == dict.fromkeys(separated, 0)

    # The unlabeled songs: both formats, the nested one too; the broken file skipped with one line.
    index = json.loads((out / "unlabeled" / "index.json").read_text())
    assert sorted(Path(s["source"]).name for s in index["songs"]) == ["one.wav", "two.flac"]
    assert "skipped" in first["stderr"] and "broken.wav" in first["stderr"]
    assert (
        "labels each unlabeled crop of 1 s through 2 windows of 2 s, its estimates averaged"
        in first["stderr"]
    )
    assert len(list((out / "unlabeled").glob("*.flac"))) == 2

    # --resume: the same teacher generation and best score; a teacher swap only with a better score.
    assert "resumed" in resumed_stderr and "teacher generation 1 from" in resumed_stderr
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[2]["teacher"] == 1 + log[2]["best"]
    assert log[2]["best"] == (log[2]["valid_usdr"] > log[1]["valid_usdr"])
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["teacher_generation"] == log[2]["teacher"]
    assert state["plateau"]["best"] == max(r["valid_usdr"] for r in log)
    assert sorted(p.name for p in (out / "teachers").iterdir()) == [f"gen-{log[2]['teacher']}.safetensors"]

    # Exports: loadable by path; best.safetensors is the current teacher.
    best = load_model(out / "best.safetensors")
    assert best.stems == ("drums", "bass", "other", "vocals") and best.card.architecture == "ts-bsmamba2"
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        assert f.metadata()["generation"] == str(log[2]["teacher"])
    teacher = weights(out / "teachers" / f"gen-{log[2]['teacher']}.safetensors")
    for key, value in weights(out / "best.safetensors").items():
        assert torch.equal(teacher[key], value), key
    assert load_model(out / "last.safetensors").model.config.feature_dim == 16


@pytest.mark.slow
def test_resumed_finetune_equals_an_uninterrupted_one(material, resumed_run):
    """The teacher and the unlabeled draws are restored exactly: the same weights as two epochs in one go."""
    out, _, _ = resumed_run
    reference = material / "reference"
    result = stemsplit(*finetune_args(material, reference, "--epochs", "2", *WINDOWS), env_dir=material)
    assert result.returncode == 0, result.stderr
    resumed = torch.load(out / "last.pt", weights_only=True)["model"]
    for key, value in torch.load(reference / "last.pt", weights_only=True)["model"].items():
        assert torch.equal(resumed[key], value), key


def test_examples_take_unlabeled_sources_as_the_ratio_says(material):
    tracks = find_tracks(material / "labeled", "train")
    stems = ("drums", "bass", "other", "vocals")
    index = SalientIndex.build(tracks, stems, 2.0, cache_dir=material / "cache")
    frames = 3 * RATE
    song = UnlabeledSong(
        "x", material / "labeled" / "test" / "test-00000" / "mixture.wav", frames, np.array([0])
    )

    def item(ratio, target="all"):
        dataset = FinetuneDataset(
            tracks, stems, 1.0, 10, 0, songs=[song], target=target, ratio=ratio, index=index, drop_prob=0.0
        )
        return dataset.sample(0, 3)

    labeled, crops, kinds, gains = item(0.0)
    assert kinds.tolist() == [LABELED] * 4 and not crops.any() and labeled.any()
    labeled, crops, kinds, gains = item(1.0)  # a 4-stem model: every stem from its own unlabeled crop
    assert kinds.tolist() == [TARGET] * 4 and not labeled.any() and (gains > 0).all()
    assert crops.abs().amax(dim=(1, 2)).min() > 0
    # A one-target model: the target and one residual crop, which stands for all the other stems.
    labeled, crops, kinds, _ = item(1.0, "vocals")
    assert kinds.tolist() == [RESIDUAL, LABELED, LABELED, TARGET] and not labeled.any()

    # The teacher's context: the same crops with 0.5 s of their song on each side, zeros before the
    # song's start (a read before frame 0 is zero-padded, not wrapped to the end).
    context = RATE // 2
    _, crops, _, _ = item(1.0)
    _, wider, _, _ = FinetuneDataset(
        tracks, stems, 1.0, 10, 0, songs=[song], ratio=1.0, index=index, drop_prob=0.0, context=context
    ).sample(0, 3)
    assert wider.shape[-1] == crops.shape[-1] + 2 * context
    assert torch.equal(wider[..., context:-context], crops)
    before = song.read(-100, 300)
    assert not before[:, :100].any() and np.array_equal(before[:, 100:], song.read(0, 200))


def test_usage_errors_exit_2_before_any_work(material, tmp_path):
    out = tmp_path / "run"
    cases = [
        (["--unlabeled-ratio", "1.5"], "--unlabeled-ratio must be between 0 and 1"),
        (["--clean-db", "0"], "--clean-db must be positive"),
        (["--teacher-window", "0.5"], "--teacher-window 0.5 is shorter than the --crop-seconds 1"),
        (["--teacher-views", "0"], "--teacher-views must be from 1 to 16, not 0"),
        (
            ["--teacher-views", "3"],
            "--teacher-views 3 needs a --teacher-window longer than the --crop-seconds 1",
        ),
        # before: an internal error, after decoding every unlabeled song into -o
        (["--lr", "-1"], "--lr must be a finite number above 0, not -1"),
        (
            ["--crop-seconds", "2", "--sad-seconds", "1"],
            "--crop-seconds 2 is longer than the --sad-seconds 1",
        ),
        (["--override"], "--override only applies with --resume"),
        (["--model", "no-such-model"], "--model: no model named 'no-such-model'"),
        # the stems pass their check (they were once checked as the letters of "drums,bass")
        (["--model", "no-such-model", "--stems", "drums,bass"], "--model: no model named 'no-such-model'"),
    ]
    for extra, message in cases:
        result = stemsplit(*finetune_args(material, out, *extra))
        assert result.returncode == 2 and message in result.stderr, result.stderr
    args = finetune_args(material, out)
    args[args.index("--unlabeled") + 1] = tmp_path / "nowhere"
    result = stemsplit(*args)
    assert result.returncode == 2 and f"--unlabeled: {tmp_path / 'nowhere'}: no such folder" in result.stderr
    args[args.index("--unlabeled") + 1] = material / "labeled" / "valid.txt"
    result = stemsplit(*args)
    assert result.returncode == 2 and "valid.txt: not a folder" in result.stderr
    args = finetune_args(material, out)
    args[args.index("--musdb") + 1] = tmp_path / "nowhere"
    result = stemsplit_without_torch(*args)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert f"--musdb: {tmp_path / 'nowhere'}: no such folder" in result.stderr
    typo = tmp_path / "labeled"  # a valid.txt naming a missing track: before, exit 1 after the model loaded
    shutil.copytree(material / "labeled", typo)
    (typo / "valid.txt").write_text("valid-00007\n")
    args = finetune_args(material, out)
    args[args.index("--musdb") + 1] = typo
    result = stemsplit_without_torch(*args)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert f"--musdb: {typo / 'valid.txt'}: names tracks that are not in" in result.stderr
    assert not out.exists()


def test_decoded_songs_are_cleaned_up_but_never_the_users_own_files(material, tmp_path):
    """Before: every .flac in OUT/unlabeled that was not a decoded song of this run was deleted as
    stale: with -o naming a folder that has an 'unlabeled' folder of music, the user's songs were lost."""
    from stemsplit.train.unlabeled import prepare_unlabeled

    songs = tmp_path / "songs"
    shutil.copytree(material / "unlabeled", songs)
    into = tmp_path / "library" / "unlabeled"
    into.mkdir(parents=True)
    shutil.copy(songs / "a" / "b" / "two.flac", into / "mine.flac")

    def prepare():
        return prepare_unlabeled(songs, into, 44100, 2, 2.0, 0.15, log=lambda text: None)

    assert len(prepare()) == 2
    decoded = sorted(p.name for p in into.glob("*.flac") if p.name != "mine.flac")
    assert len(decoded) == 2
    (songs / "one.wav").unlink()
    assert len(prepare()) == 1
    left = sorted(p.name for p in into.glob("*.flac"))
    assert "mine.flac" in left and len(left) == 2  # the removed song's decoded file went, the user's stayed


def test_a_file_as_out_or_a_speaker_model_is_one_line(material, tmp_path):
    """Before: -o naming a file was an internal error (NotADirectoryError, decoding the unlabeled songs
    into it), and a speaker model was told to use --libri2mix, which finetune does not have."""
    from stemsplit.model import families

    out = tmp_path / "run.txt"
    out.write_text("keep")
    result = stemsplit(*finetune_args(material, out))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr  # a usage error
    assert f"stemsplit: error: --out: {out} is not a folder" in result.stderr
    assert out.read_text() == "keep"

    family = families.family("u-mamba-net")
    talkers = family.build(family.shrink(families.make_config("u-mamba-net")), ("speaker1", "speaker2"))
    save_checkpoint(talkers, tmp_path / "talkers.safetensors")
    args = finetune_args(material, tmp_path / "run")
    args[args.index("--model") + 1] = tmp_path / "talkers.safetensors"
    result = stemsplit(*args)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "separates speakers; finetune takes music models" in result.stderr
    assert not (tmp_path / "run").exists()


def test_bsrnn_one_target_model_under_torchrun(material, tmp_path):
    """BSRNN --target vocals (the paper's setting): target and residual crops; two DDP processes agree."""
    model = material / "bsrnn-vocals.safetensors"
    small = {"feature_dim": 8, "num_layers": 1}
    save_checkpoint(
        build_model("bsrnn", make_config("bsrnn", overrides=small, stems=("vocals",)), ("vocals",)), model
    )
    args = finetune_args(material, tmp_path / "run", "--epochs", "1", "--unlabeled-ratio", "1")
    args[args.index("--model") + 1] = model
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29541",
    ]
    result = subprocess.run(
        list(map(str, [*torchrun, "-m", "stemsplit", *args])),
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "STEMSPLIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = read_log(tmp_path / "run")
    assert log[-1] == {"event": "finished", "ranks_agree": True, "world": 2}
    # Ratio 1: each of the 4 examples (2 steps of 2, one per rank) has a target and a residual crop.
    assert sum(log[1]["unlabeled_targets"].values()) == sum(log[1]["unlabeled_residuals"].values()) == 4
    assert load_model(tmp_path / "run" / "best.safetensors").stems == ("vocals",)

    args = finetune_args(material, tmp_path / "x", "--stems", "drums,bass")
    args[args.index("--model") + 1] = model
    wrong = stemsplit(*args)
    assert wrong.returncode == 1 and wrong.stderr.strip().splitlines() == [
        "stemsplit: error: --stems: the model separates vocals, which is not one of drums, bass"
    ]


def test_without_validation_tracks_the_teacher_stays_the_pretrained_model(material, tmp_path):
    labeled = tmp_path / "labeled"
    shutil.copytree(material / "labeled", labeled)
    (labeled / "valid.txt").unlink()
    shutil.rmtree(labeled / "train" / "valid-00000")
    out = tmp_path / "run"
    args = finetune_args(material, out, "--epochs", "2")
    args[args.index("--musdb") + 1] = labeled
    done = stemsplit(*args, env_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no validation tracks: the teacher stays the pre-trained model" in done.stderr + done.stdout
    log = read_log(out)
    assert [(r["epoch"], r["valid_usdr"], r["teacher"]) for r in log] == [
        (0, None, 0),
        (1, None, 0),
        (2, None, 0),
    ]
    assert sorted(p.name for p in (out / "teachers").iterdir()) == ["gen-0.safetensors"]
    for key, value in weights(out / "best.safetensors").items():  # the export is still the given model
        assert torch.equal(weights(material / "tiny.safetensors")[key], value), key


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("teachers/gen-0.safetensors", "teachers exists (not this run's)"),
        ("unlabeled/index.json", "unlabeled/index.json exists (not this run's)"),
        ("best.safetensors", "best.safetensors exists (not this run's)"),
        ("last.pt", "last.pt exists: add --resume"),
    ],
)
def test_a_new_run_never_replaces_the_users_files_in_its_folder(material, tmp_path, name, refused):
    """Before: a new run wrote teachers/gen-0.safetensors and unlabeled/index.json over a user's files of
    those names (and then deleted every other teachers/gen-*.safetensors); only best, last and the log
    were looked for."""
    out = tmp_path / "run"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(b"mine")
    result = stemsplit(*finetune_args(material, out))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr  # before any work
    assert f"{out}/{refused}" in result.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [name]
    assert (out / name).read_bytes() == b"mine"


def test_resume_with_no_run_and_unlabeled_with_no_songs_are_usage_errors(material, tmp_path):
    """Before: an --unlabeled folder with no audio failed after the model was loaded and validated, having
    written OUT/unlabeled/index.json; --resume of nothing failed after the model was built (exit 1)."""
    out = tmp_path / "run"
    empty = tmp_path / "no-songs"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("not audio")
    args = finetune_args(material, out)
    args[args.index("--unlabeled") + 1] = empty
    result = stemsplit(*args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"--unlabeled: {empty}: no audio files in it or below it" in result.stderr
    result = stemsplit(*finetune_args(material, out, "--resume"))
    assert result.returncode == 2 and f"--resume: no checkpoint at {out / 'last.pt'}" in result.stderr
    assert not out.exists()


def test_an_interrupted_decoding_keeps_the_songs_it_decoded(material, tmp_path, monkeypatch):
    """With 1,000 songs to decode, Ctrl-C (or a crash) half way once meant decoding all of them again."""
    from stemsplit.train import unlabeled

    decoded = []

    def decode(path, *args):
        if len(decoded) == 1:
            raise KeyboardInterrupt
        decoded.append(path.name)
        return real_decode(path, *args)

    real_decode = unlabeled.decode
    monkeypatch.setattr(unlabeled, "decode", decode)
    monkeypatch.setattr(unlabeled, "INDEX_SAVE_SECONDS", 0.0)
    into = tmp_path / "run" / "unlabeled"

    def prepare():
        return unlabeled.prepare_unlabeled(material / "unlabeled", into, 44100, 2, 2.0, 0.15, log=print)

    with pytest.raises(KeyboardInterrupt):
        prepare()
    assert decoded == ["two.flac"]  # a/b/two.flac comes first (sorted walk), a/broken.wav next
    monkeypatch.setattr(unlabeled, "decode", real_decode)
    first = set(into.glob("*.flac"))
    assert len(first) == 1
    stamp = next(iter(first)).stat().st_mtime_ns
    assert len(prepare()) == 2
    assert next(iter(first)).stat().st_mtime_ns == stamp  # not decoded again
    assert len(list(into.glob("*.flac"))) == 2


def test_a_labeled_set_of_mixed_rates_is_refused_before_decoding_unlabeled_songs(material, tmp_path):
    """Before: every unlabeled song was decoded into OUT/unlabeled first (hours, for a real library), and
    only then was the labeled track at another sample rate named."""
    labeled = tmp_path / "labeled"
    shutil.copytree(material / "labeled", labeled)
    track = sorted((labeled / "train").iterdir())[0]
    for path in track.glob("*.wav"):
        audio, _ = sf.read(path)
        sf.write(path, audio[::2], 22050, subtype="FLOAT")
    args = finetune_args(material, tmp_path / "run", "--epochs", "1")
    args[args.index("--musdb") + 1] = labeled
    result = stemsplit(*args)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "22050" in result.stderr and "44100" in result.stderr
    assert not (tmp_path / "run" / "unlabeled").exists()
