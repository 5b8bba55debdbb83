"""The training loop: loss, schedule, export, resume after SIGKILL, DDP on CPU."""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (
    RATE,
    cli,
    fit,
    python,
    read_log,
    run,
    run_train,
    stemsplit_without_torch,
    tiny_model,
    tiny_toml,
    train_args,
)
from safetensors import safe_open

from stemsplit.train import loop, progress
from stemsplit.train.losses import separation_loss
from stemsplit.train.schedule import LrSchedule
from stemsplit.weights import load_model, save_checkpoint


def test_loss_equals_hand_computation():
    torch.manual_seed(0)
    target = torch.randn(2, 4, 2, 8192)
    estimate = 2 * target  # every difference equals the target itself
    window = torch.hann_window(2048)
    expected = 0.0
    for s in range(4):
        spec = torch.stft(target[:, s].reshape(-1, 8192), 2048, 512, window=window, return_complex=True)
        expected += spec.real.abs().mean() + spec.imag.abs().mean() + target[:, s].abs().mean()
    loss = separation_loss((estimate, estimate), target)
    assert loss.item() == pytest.approx(2 * expected.item(), rel=1e-5)  # two stages
    assert separation_loss((target, target), target).item() == 0


def test_thirty_steps_reduce_the_loss_on_a_fixed_batch():
    model = tiny_model()
    t = torch.arange(RATE // 4) / RATE  # a quarter second (half cost 29 s in CI): the loss ends at 0.32 x
    sources = torch.stack([torch.sin(2 * np.pi * f * t) * 0.2 for f in (60, 110, 440, 880)])  # [S, T]
    targets = sources[None, :, None].expand(2, 4, 2, -1).clone()
    targets[1] *= 0.5
    mixture = targets.sum(1)
    losses = fit(model, lambda: separation_loss(model(mixture), targets), lr=1e-3, clip_norm=5.0)
    assert losses[-1] < 0.7 * losses[0]


def test_lr_decays_after_patience_epochs_without_improvement():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    plateau = LrSchedule(optimizer, factor=0.8, patience=2)
    assert plateau.step(1.0) and optimizer.param_groups[0]["lr"] == 1.0
    assert not plateau.step(0.5) and optimizer.param_groups[0]["lr"] == 1.0
    assert not plateau.step(0.9) and optimizer.param_groups[0]["lr"] == pytest.approx(0.8)
    assert plateau.step(1.1)
    state = plateau.state_dict()
    other = LrSchedule(optimizer)
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_exported_safetensors_load_with_metadata(tmp_path):
    model = tiny_model(stems=("vocals", "accompaniment"))
    save_checkpoint(model, tmp_path / "m.safetensors", epoch=3)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == "3" and f.metadata()["architecture"] == "ts-bsmamba2"
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.stems == ("vocals", "accompaniment")
    assert loaded.model.config == model.config
    assert loaded.card.architecture == "ts-bsmamba2" and loaded.card.stages == 2


# --- whole runs through the CLI --------------------------------------------------------------


def test_killed_run_resumes_exactly(tiny_musdb, tmp_path):
    # Reference: 2 epochs without interruption.
    reference = tmp_path / "reference"
    result = run_train(train_args(tiny_musdb, reference, "--epochs", "2"))
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in read_log(reference)] == [1, 2]

    # The same run, SIGKILLed after its first mid-epoch checkpoint, then resumed.
    killed = tmp_path / "killed"
    args = [
        shutil.which("stemsplit"),
        *train_args(tiny_musdb, killed, "--epochs", "2", "--save-every-steps", "5"),
    ]
    env = {**os.environ, "STEMSPLIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(list(map(str, args)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (killed / "log.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # wait for epoch 1 to finish...
    while time.monotonic() < deadline:
        state = torch.load(killed / "last.pt", weights_only=True) if (killed / "last.pt").exists() else None
        if state and state["global_step"] >= 5:  # ...and for the step-5 checkpoint inside epoch 2
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    torch.load(killed / "last.pt", weights_only=True)  # the checkpoint on disk is whole, and pickle-free
    resumed = run_train(train_args(tiny_musdb, killed, "--epochs", "2", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    assert [r["epoch"] for r in read_log(killed)] == [1, 2]

    final_ref = torch.load(reference / "last.pt", weights_only=True)
    final = torch.load(killed / "last.pt", weights_only=True)
    assert final["global_step"] == final_ref["global_step"] == 8
    for key, value in final_ref["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=0, atol=0, msg=key)
    assert load_model(killed / "best.safetensors").model.config.feature_dim == 16


def test_progress_lines_without_a_terminal(tiny_musdb, tmp_path, monkeypatch):
    """In a log file (no tty) training prints plain progress lines instead of a bar."""
    monkeypatch.setattr(progress, "PROGRESS_LINE_SECONDS", 0.0)
    monkeypatch.setenv("STEMSPLIT_CACHE", str(tmp_path / "cache"))
    lines = []
    config = loop.TrainConfig(
        musdb=tiny_musdb,
        out=tmp_path / "run",
        model_config=tiny_musdb / "tiny.toml",
        crop_seconds=1.0,
        batch_size=2,
        epoch_size=6,
        epochs=1,
        workers=0,
        valid_hop=1.5,
        device="cpu",
    )
    loop.train(config, log=lines.append)
    steps = [line for line in lines if ": step " in line]
    assert [line.split(",")[0] for line in steps] == [
        "epoch 1/1: step 1/3",
        "epoch 1/1: step 2/3",
        "epoch 1/1: step 3/3",
    ]
    assert "samples/s" in steps[0]
    assert any(line.startswith("epoch 1/1: loss") and "valid uSDR" in line for line in lines)


def test_without_a_validation_set_no_score_is_logged(tiny_musdb, tmp_path, monkeypatch):
    """The schedule ranks epochs by -global_step then (the latest is best); that is not a score to show."""
    monkeypatch.setenv("STEMSPLIT_CACHE", str(tmp_path / "cache"))
    musdb = tmp_path / "musdb"
    for name in ("Song A", "Song B", "Song C"):  # not the MUSDB validation track
        shutil.copytree(tiny_musdb / "train" / name, musdb / "train" / name)
    lines = []
    config = loop.TrainConfig(
        musdb=musdb, out=tmp_path / "run", model_config=tiny_musdb / "tiny.toml", crop_seconds=1.0,
        batch_size=2, epoch_size=2, epochs=2, workers=0, device="cpu",
    )  # fmt: skip
    loop.train(config, log=lines.append)
    epochs = [line for line in lines if ": loss " in line]
    assert len(epochs) == 2 and all("no validation set" in line and "dB" not in line for line in epochs)
    log = read_log(tmp_path / "run")
    assert [(r["valid_usdr"], r["best"]) for r in log if "epoch" in r] == [(None, True), (None, True)]
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_existing_run_needs_resume(tiny_musdb, tmp_path):
    out = tmp_path / "run"
    assert run_train(train_args(tiny_musdb, out, "--epochs", "1")).returncode == 0
    again = run_train(train_args(tiny_musdb, out, "--epochs", "1"))
    assert again.returncode == 2 and "--resume" in again.stderr  # a usage error, before any work
    resume = run_train(train_args(tiny_musdb, tmp_path / "none", "--epochs", "1", "--resume"))
    assert (
        resume.returncode == 2
        and f"--resume: no checkpoint at {tmp_path / 'none' / 'last.pt'}" in resume.stderr
    )
    assert not (tmp_path / "none").exists()


def test_two_process_ddp_on_cpu(tiny_musdb, tmp_path):
    out = tmp_path / "ddp"
    args = train_args(tiny_musdb, out, "--epochs", "1")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
    ]
    result = run(
        *torchrun,
        "-m",
        "stemsplit",
        *args,
        timeout=900,
        env={**os.environ, "STEMSPLIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = read_log(out)
    assert log[-1] == {"event": "finished", "ranks_agree": True, "world": 2}
    assert log[0]["epoch"] == 1


# --- BSRNN: the same commands, its own recipe ---------------------------------------------------


def test_step_schedule_and_early_stopping_count():
    """BSRNN's schedule: x0.98 every 2 epochs whatever the score; epochs since the best are counted."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    schedule = LrSchedule(optimizer, "step", factor=0.5, every=2)
    assert schedule.step(1.0) and optimizer.param_groups[0]["lr"] == 1.0
    assert schedule.step(2.0) and optimizer.param_groups[0]["lr"] == 0.5  # improving, still decayed
    assert not schedule.step(1.0) and not schedule.step(1.5)
    assert optimizer.param_groups[0]["lr"] == 0.25 and schedule.since_best == 2
    with pytest.raises(loop.TrainError) as raised:
        LrSchedule(optimizer, "cosine")
    assert raised.value.option == "--lr-schedule"  # the message the Run's TrainError gave before:
    assert (
        str(raised.value)
        == "--lr-schedule: learning-rate schedule must be plateau, step or constant, not 'cosine'"
    )


def test_bsrnn_recipe_is_the_papers_and_flags_win():
    config = loop.TrainConfig.for_arch("bsrnn", musdb=Path("m"), lr=None, early_stop=3)
    assert (config.lr_schedule, config.lr_decay, config.lr_every, config.lr) == ("step", 0.98, 2, 1e-3)
    assert config.early_stop == 3 and config.clip_norm == 5.0 and config.crop_seconds == 3.0
    assert loop.TrainConfig.for_arch(musdb=Path("m")).lr_schedule == "plateau"  # TS-BSMamba2's


def bsrnn_args(musdb, out, *extra):
    (musdb / "bsrnn-tiny.toml").write_text(tiny_toml("bsrnn"))
    args = train_args(musdb, out, "--arch", "bsrnn", *extra)
    args[args.index("--model-config") + 1] = musdb / "bsrnn-tiny.toml"
    return args


def test_bsrnn_trains_resumes_and_separates_as_a_bag(tiny_musdb, tmp_path, monkeypatch):
    out = tmp_path / "bsrnn"
    first = run_train(bsrnn_args(tiny_musdb, out, "--epochs", "1"))
    assert first.returncode == 0, first.stderr
    again = run_train(bsrnn_args(tiny_musdb, out, "--epochs", "2", "--resume"))
    assert again.returncode == 0 and "resumed" in again.stderr, again.stderr
    assert [r["epoch"] for r in read_log(out)] == [1, 2]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["global_step"] == 8 and set(json.loads(state["model_config"])) >= {"architecture", "bands"}

    loaded = load_model(out / "last.safetensors")  # by path: the metadata says what to build
    assert loaded.card.architecture == "bsrnn" and loaded.stems == ("drums", "bass", "other", "vocals")
    assert [m.config.bands for m in loaded.model.targets.values()] == ["drums", "bass", "v7", "v7"]
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)

    # Separated through the CLI, and loaded by a registry entry naming the same file.
    song = tmp_path / "song.wav"
    sf.write(song, sf.read(tiny_musdb / "train" / "Song A" / "mixture.wav")[0][: 2 * RATE], RATE)
    separate = ["--model", out / "last.safetensors", "--window", "1", "--device", "cpu"]
    result = cli(song, "-o", tmp_path / "stems", *separate)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "stems" / "song").iterdir())
    assert written == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert all(np.abs(sf.read(tmp_path / "stems" / "song" / n)[0]).max() > 0 for n in written)

    registry = tmp_path / "weights.toml"
    shutil.copy(out / "last.safetensors", tmp_path / "mine.safetensors")
    digest = hashlib.sha256((tmp_path / "mine.safetensors").read_bytes()).hexdigest()
    registry.write_text(
        'default = "mine"\n[models.mine]\ndescription = "tiny BSRNN"\narchitecture = "bsrnn"\n'
        'config = { feature_dim = 8, num_layers = 1 }\nstems = ["drums", "bass", "other", "vocals"]\n'
        f'sample_rate = 44100\nnormalization = "none"\npath = "mine.safetensors"\nsha256 = "{digest}"\n'
        'license = "MIT"\n'
    )
    monkeypatch.setenv("STEMSPLIT_REGISTRY", str(registry))
    assert "architecture='bsrnn'" in repr(load_model("mine", progress=False).card)


def test_bsrnn_one_target_model(tiny_musdb, tmp_path):
    """--target vocals: one network, trained on remixes of all four stems, outputs vocals only."""
    out = tmp_path / "vocals"
    result = run_train(bsrnn_args(tiny_musdb, out, "--epochs", "1", "--target", "vocals"))
    assert result.returncode == 0, result.stderr
    loaded = load_model(out / "best.safetensors")
    assert loaded.stems == ("vocals",) and list(loaded.model.targets) == ["vocals"]
    bad = run_train(bsrnn_args(tiny_musdb, tmp_path / "piano", "--epochs", "1", "--target", "piano"))
    assert bad.returncode == 2 and "--target must be all or one of --stems" in bad.stderr
    unknown = run_train(train_args(tiny_musdb, tmp_path / "x", "--arch", "transformer"))
    assert unknown.returncode == 2 and "unknown architecture 'transformer'" in unknown.stderr


def test_train_config_is_torch_free_and_names_the_default_family():
    """`stemsplit train --help` shows TrainConfig's defaults: importing it must not import torch."""
    from stemsplit.model.ts_bsmamba2 import ARCHITECTURE
    from stemsplit.train.config import DEFAULT_ARCH

    assert DEFAULT_ARCH == ARCHITECTURE
    code = "import sys, stemsplit.cli, stemsplit.weights; print('torch' in sys.modules)"
    assert python("-c", code).stdout.strip() == "False"


def test_train_usage_errors_come_before_torch(tiny_musdb, tmp_path):
    """Before: the --arch check imported the model package, so every usage error of train took torch's
    start-up (1.3 s on the CI machine). config.family_names answers without it in a fresh process."""
    cases = (
        (["--arch", "nope"], "--arch: unknown architecture 'nope' (known: ts-bsmamba2, bsrnn"),
        (["--lr", "0"], "--lr"),
    )
    for extra, message in cases:
        result = stemsplit_without_torch(*train_args(tiny_musdb, tmp_path / "run", *extra))
        assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
        assert result.stderr.startswith(f"stemsplit: error: {message}") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_family_names_are_the_registry(monkeypatch):
    """The torch-free names are the shipped registry's; once it is imported, a family registered at run
    time (as tests/cli/test_speakers.py registers one) is a name too."""
    code = "from stemsplit.train.config import family_names; print(' '.join(family_names()))"
    fresh = python("-c", code).stdout.split()
    from stemsplit.model import families
    from stemsplit.train.config import family_names

    assert sorted(fresh) == sorted(families.FAMILIES) == sorted(family_names())
    monkeypatch.setitem(families.FAMILIES, "later", families.FAMILIES["bsrnn"])
    assert "later" in family_names()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"lr": -1.0}, "--lr must be a finite number above 0, not -1"),
        ({"lr": math.nan}, "--lr must be a finite number above 0, not nan"),
        ({"lr": math.inf}, "--lr must be a finite number above 0, not inf"),
        ({"lr_decay": 0.0}, "--lr-decay must be a finite number above 0 and at most 1"),
        ({"clip_norm": -1.0}, "--clip-norm must be above 0, not -1"),
        ({"crop_seconds": 0.0}, "--crop-seconds must be a finite number above 0"),
        ({"crop_seconds": math.inf}, "--crop-seconds must be a finite number above 0"),
        ({"gain_db": math.nan}, "--gain-db must be a finite number at least 0"),
        ({"drop_prob": 1.0}, "--drop-prob must be a finite number at least 0 and below 1, not 1"),
        ({"sad_quantile": 5.0}, "--sad-quantile must be a finite number at least 0 and at most 1, not 5"),
        (
            {"valid_window": 1.0, "valid_hop": 5.0},
            "--valid-hop: must be more than 0 and at most the window (1 s), not 5",
        ),
        ({"save_every_minutes": -1.0}, "--save-every-minutes must be above 0"),
        ({"seed": -1}, "--seed must be from 0 to 9223372036854775807, not -1"),
        ({"valid_window": 100.0}, "--valid-window: must be more than 0 and at most 60 seconds, not 100"),
        ({"device": "tpu"}, "--device: must be auto, cpu, cuda or cuda:N, not 'tpu'"),
        ({"valid_tracks": -1}, "--valid-tracks must be at least 0, not -1"),
        ({"save_every_steps": -5}, "--save-every-steps must be at least 0, not -5"),
        ({"lr_schedule": "foo"}, "--lr-schedule must be plateau, step or constant, not 'foo'"),
        (
            {"target": "piano"},
            "--target must be all or one of --stems (drums, bass, other, vocals), not 'piano'",
        ),
        ({"crop_seconds": 1.0, "sad_seconds": 0.5}, "--crop-seconds 1 is longer than the --sad-seconds 0.5"),
        ({"stems": ("drums", "a/b")}, "--stems: 'a/b' is not a stem name"),
    ],
)
def test_recipe_problems_are_named_before_a_run_starts(fields, message, tmp_path):
    """Before: these failed after startup (or after an epoch) with an internal error, or trained silently
    wrong (a negative --clip-norm flips every gradient; --drop-prob 2 drops every stem)."""
    from stemsplit.train.config import FinetuneConfig, TrainConfig

    musdb = tmp_path / "musdb"  # the run goes beside the dataset, never inside it (refused first)
    musdb.mkdir()
    assert message in str(TrainConfig(musdb=musdb, **fields).problem())
    assert message in str(FinetuneConfig(musdb=musdb, **fields).problem())
    with pytest.raises(loop.TrainError) as raised:  # the library checks too, before it makes anything
        loop.Run(TrainConfig(musdb=musdb, out=tmp_path / "run", **fields))
    assert message in str(raised.value) and not (tmp_path / "run").exists()


def test_every_recipe_passes_its_own_checks():
    from stemsplit.train.config import RECIPES, FinetuneConfig, TrainConfig

    for arch in ("ts-bsmamba2", *RECIPES):
        assert TrainConfig.for_arch(arch, musdb=Path("m")).problem() is None, arch
    assert FinetuneConfig(musdb=Path("m")).problem() is None
    # 0 means none or never: no validation tracks, no step-based saves, loading in the main process
    assert TrainConfig(valid_tracks=0, save_every_steps=0, workers=0, seed=2**40).problem() is None
    assert FinetuneConfig(clean_db=0).problem() == "--clean-db must be positive, not 0"


def test_train_usage_errors_exit_2_in_one_line_before_any_work(tiny_musdb, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "bad.toml").write_text("feature_dim = [")
    cases = [
        (["--lr", "nan"], "--lr must be a finite number above 0, not nan"),
        (["--valid-hop", "5", "--valid-window", "1"], "--valid-hop: must be more than 0"),
        (["--preset", "foo"], "no preset 'foo'"),
        (["--model-config", tmp_path / "bad.toml"], "bad.toml: not a valid TOML model config"),
        (["--model-config", tmp_path / "missing.toml"], "missing.toml: cannot read model config"),
    ]
    for extra, message in cases:
        result = run_train(train_args(tiny_musdb, out, *extra))
        assert result.returncode == 2 and message in result.stderr, (extra, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
    assert not out.exists()
    # the dataset's layout, by name (before: exit 1, found after torch and the model were up)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    result = run_train(train_args(empty, out))
    assert result.returncode == 2 and f"--musdb: {empty / 'train'}: no track folders" in result.stderr
    typo = tmp_path / "typo"
    shutil.copytree(tiny_musdb, typo)
    (typo / "valid.txt").write_text("Song Z\n")
    result = run_train(train_args(typo, out))
    assert result.returncode == 2 and f"{typo / 'valid.txt'}: names tracks that are not in" in result.stderr
    (tmp_path / "speech" / "dev").mkdir(parents=True)  # no train-100 split: nothing to train on
    result = run_train(["train", "--libri2mix", tmp_path / "speech", "-o", out])
    assert result.returncode == 2 and "--libri2mix: " in result.stderr, result.stderr
    assert f"{tmp_path / 'speech' / 'train-100' / 'mix_both'}: no such folder" in result.stderr
    assert not out.exists()
    short = run_train(train_args(tiny_musdb, out, "--crop-seconds", "0.001"))  # needs the network: exit 1
    assert short.returncode == 1 and "--crop-seconds 0.001 s is shorter than the network's" in short.stderr
    assert not out.exists()
    out.write_text("mine")
    result = run_train(train_args(tiny_musdb, out))
    assert result.returncode == 2 and "is not a folder" in result.stderr and out.read_text() == "mine"
