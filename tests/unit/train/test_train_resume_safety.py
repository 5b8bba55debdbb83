"""``stemsplit train`` under attack and misuse: a planted last.pt, a changed recipe, a broken
--model-config, a broken dataset. Every case runs the real CLI on real files and expects one
``stemsplit: error:`` line naming the file and the problem, and no traceback.
"""

import io
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import RATE, python, read_log, run_train, train_args

from stemsplit.train.errors import TrainError
from stemsplit.train.model_config import load_model_config
from stemsplit.train.resume import CHECKPOINT_FORMAT


def one_error_line(result, status: int = 1) -> str:
    """The run failed with exit ``status`` and said why in one line; return that line."""
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemsplit: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0].removeprefix("stemsplit: error: ")


@pytest.fixture(scope="module")
def finished_run(tiny_musdb, tmp_path_factory):
    """One real epoch of training, copied by each test that resumes it."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    result = run_train(train_args(tiny_musdb, out, "--epochs", "1"))
    assert result.returncode == 0, result.stderr
    return out


def copy_run(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# --- a planted or damaged last.pt -------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command: the stand-in for an attacker's code in last.pt."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malicious_checkpoint(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "model": Payload(f"touch '{marker}'")}, buffer)
    return buffer.getvalue()


def test_planted_last_pt_is_refused_and_never_run(tiny_musdb, tmp_path):
    marker = tmp_path / "pwned"
    payload = malicious_checkpoint(marker)
    # Control: the payload is live -- an ordinary unpickler runs it (in a throwaway process).
    control = tmp_path / "control.pt"
    control.write_bytes(payload)
    python("-c", f"import torch; torch.load({str(control)!r}, weights_only=False)", timeout=120)
    assert marker.exists()
    marker.unlink()

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(payload)
    message = one_error_line(run_train(train_args(tiny_musdb, out, "--epochs", "2", "--resume")))
    assert message.startswith(f"--resume: {out / 'last.pt'}: refused: it needs arbitrary pickle code")
    assert "posix.system" in message or "os.system" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "foreign", "plain pickle", "config", "epoch", "step", "batch_size"],
)
def test_damaged_last_pt_is_one_line(tiny_musdb, finished_run, tmp_path, damage):
    out = copy_run(finished_run, tmp_path)
    last = out / "last.pt"
    expected = "not a readable checkpoint"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "garbage":
        last.write_bytes(b"this is not a checkpoint\n" * 10)
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "plain pickle":  # before: torch's warning about it came first, 3 lines in all
        last.write_bytes(pickle.dumps({"a": 1}))
    elif damage == "foreign":  # a weights-only-loadable pickle that is not one of ours: a plain state dict
        torch.save({"weight": torch.zeros(3)}, last)
        expected = "not a checkpoint of this version"
    else:  # one of ours, edited by hand; before: an internal error (AttributeError, TypeError)
        state = torch.load(last, weights_only=True)
        if damage == "batch_size":  # before: ZeroDivisionError with --override
            state["config"] = json.dumps({**json.loads(state["config"]), "batch_size": 0})
        else:
            state.update(
                {"config": "[1]"} if damage == "config" else {damage: "x" if damage == "epoch" else -1}
            )
        torch.save(state, last)
        expected = "damaged checkpoint"
    message = one_error_line(run_train(train_args(tiny_musdb, out, "--epochs", "2", "--resume")))
    assert message.startswith(f"--resume: {last}: {expected}")


# --- resuming with another recipe -------------------------------------------------------------


def test_changed_recipe_is_refused_naming_the_flags(tiny_musdb, finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    before = (out / "last.pt").read_bytes()
    changed = train_args(tiny_musdb, out, "--epochs", "2", "--resume", "--lr", "0.0005", "--seed", "3")
    changed[changed.index("--batch-size") + 1] = "4"
    changed[changed.index("--crop-seconds") + 1] = "1.5"
    message = one_error_line(run_train(changed))
    assert message.startswith(f"--resume: {out / 'last.pt'} was trained with another recipe: ")
    changes = (
        "--batch-size 4 (was 2)",
        "--lr 0.0005 (was 0.001)",
        "--crop-seconds 1.5 (was 1.0)",
        "--seed 3 (was 0)",
    )
    assert all(change in message for change in changes), message
    assert "--override" in message
    assert (out / "last.pt").read_bytes() == before  # nothing was trained or written
    assert [r["epoch"] for r in read_log(out)] == [1]


@pytest.mark.slow  # trains again: kept out of the default run for CI's time budget
def test_override_continues_with_the_new_recipe(tiny_musdb, finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    args = train_args(tiny_musdb, out, "--epochs", "2", "--resume", "--override", "--lr", "0.0005")
    result = run_train(args)
    assert result.returncode == 0, result.stderr
    assert "--override: continuing with --lr 0.0005 (was 0.001)" in result.stderr
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[0]["lr"] == 0.001 and log[1]["lr"] == 0.0005  # the new rate took effect


@pytest.mark.slow  # trains again: kept out of the default run for CI's time budget
def test_allowed_changes_need_no_override(tiny_musdb, finished_run, tmp_path):
    """--epochs (to extend), --workers, --device and the save intervals may change on resume."""
    out = copy_run(finished_run, tmp_path)
    args = train_args(tiny_musdb, out, "--epochs", "2", "--resume", "--save-every-steps", "1")
    args[args.index("--workers") + 1] = "1"
    result = run_train(args)
    assert result.returncode == 0, result.stderr
    assert "--override" not in result.stderr
    assert [r["epoch"] for r in read_log(out)] == [1, 2]


def test_another_architecture_is_refused_even_with_override(tiny_musdb, finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    toml = tmp_path / "wider.toml"
    toml.write_text("feature_dim = 32\nnum_repeat_mask = 1\nnum_repeat_map = 1\n")
    args = train_args(tiny_musdb, out, "--epochs", "2", "--resume", "--override")
    args[args.index("--model-config") + 1] = toml
    message = one_error_line(run_train(args))
    expected = f"--resume: {out / 'last.pt'} holds another architecture (feature_dim 32 (was 16))"
    assert message.startswith(expected)


def test_override_without_resume_is_a_usage_error(tiny_musdb, tmp_path):
    result = run_train(train_args(tiny_musdb, tmp_path / "run", "--override"))
    assert result.returncode == 2 and "--override only applies with --resume" in result.stderr
    assert not (tmp_path / "run").exists()


# --- impossible --model-config ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("feature_dim = 10\n", "the network cannot be built with feature_dim = 10 (expand * d_model = 40"),
        ('feature_dim = "wide"\n', 'feature_dim must be a whole number, not "wide"'),
        ("feature_dim = 16.0\n", "feature_dim must be a whole number, not 16.0"),
        ("num_repeat_mask = true\n", "num_repeat_mask must be a whole number, not true"),
        ("win = [2048]\n", "win must be a whole number, not list"),
        ("stride = 0\n", "stride must be at least 1, not 0"),
        ("stride = 4096\n", "stride must be smaller than win"),
        ("sr = 1000\n", "the network cannot be built with sr = 1000 (sr=1000, win=2048 leaves a band"),
        ("feature_dim = 16\nnum_repeat_mask = 1\nnum_output = 2\n", "num_output = 2, but --stems names 4"),
        ("feature_dims = 16\n", "unknown model config field 'feature_dims'"),
        ("feature_dim = \n", "not a valid TOML model config (Invalid value (at line 1"),
        (b"\xff\xfe", "not a valid TOML model config"),
    ],
)
def test_impossible_model_config_is_one_line_naming_file_and_field(tmp_path, text, message):
    path = tmp_path / "arch.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TrainError) as info:
        load_model_config(path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["best.safetensors", "last.safetensors", "log.jsonl"])
def test_a_new_run_never_replaces_files_in_its_folder(tiny_musdb, tmp_path, name):
    """Before: only last.pt was looked for; a folder holding another run's exported best.safetensors
    (or anyone's log.jsonl) had it replaced (or appended to) by a new run."""
    out = tmp_path / "models"
    out.mkdir()
    (out / name).write_bytes(b"mine")
    message = one_error_line(run_train(train_args(tiny_musdb, out, "--epochs", "1")), status=2)  # usage
    assert message == f"{out / name} exists (not this run's); choose another --out"
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_bytes() == b"mine"


def test_u_mamba_net_model_config_is_read(tmp_path):
    """Before: every --model-config for U-Mamba-Net was an internal error (its 'hop' was taken for an STFT
    hop and compared with an 'n_fft' it does not have)."""
    from stemsplit.card import SPEAKER_STEMS

    path = tmp_path / "small.toml"
    path.write_text("feature_dim = 8\nnum_blocks = 1\n")
    config = load_model_config(path, "u-mamba-net", None, SPEAKER_STEMS)
    assert (config.feature_dim, config.num_blocks, config.hop) == (8, 1, 20)
    path.write_text("hop = 100\n")
    with pytest.raises(TrainError, match="the network cannot be built with hop = 100"):
        load_model_config(path, "u-mamba-net", None, SPEAKER_STEMS)


def test_impossible_model_config_through_the_cli(tiny_musdb, tmp_path):
    toml = tmp_path / "arch.toml"
    toml.write_text("feature_dim = 24\n")
    args = train_args(tiny_musdb, tmp_path / "run", "--epochs", "1")
    args[args.index("--model-config") + 1] = toml
    message = one_error_line(run_train(args), status=2)  # a usage error, found before any work
    assert message.startswith(f"{toml}: the network cannot be built with feature_dim = 24")
    args[args.index("--model-config") + 1] = tmp_path / "missing.toml"
    message = one_error_line(run_train(args), status=2)
    assert message == f"{tmp_path / 'missing.toml'}: cannot read model config (No such file or directory)"


def test_model_rate_must_match_the_dataset(tiny_musdb, tmp_path):
    toml = tmp_path / "arch.toml"
    toml.write_text("sr = 48000\nfeature_dim = 16\nnum_repeat_mask = 1\nnum_repeat_map = 1\n")
    args = train_args(tiny_musdb, tmp_path / "run", "--epochs", "1")
    args[args.index("--model-config") + 1] = toml
    message = one_error_line(run_train(args))
    assert "the tracks are at 44100 Hz but the model works at 48000 Hz" in message


# --- a broken dataset -------------------------------------------------------------------------


def broken_copy(tiny_musdb, tmp_path, damage):
    root = tmp_path / "musdb"
    shutil.copytree(tiny_musdb, root)
    folder = root / "train" / "Song B"
    if damage == "missing":
        (folder / "bass.wav").unlink()
    elif damage == "rate":
        sf.write(folder / "bass.wav", np.zeros((4 * RATE, 2), np.float32), 22050)  # same frames, other rate
    elif damage == "length":
        sf.write(folder / "bass.wav", np.zeros((3 * RATE, 2), np.float32), RATE)
    elif damage == "channels":
        sf.write(folder / "bass.wav", np.zeros((4 * RATE, 1), np.float32), RATE)
    elif damage == "unreadable":
        (folder / "bass.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    return root, folder


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("missing", "bass.wav: missing"),
        ("rate", "stems have different sample rates (drums.wav 44100 Hz, bass.wav 22050 Hz"),
        ("length", "stems have different lengths (drums.wav 176400 frames, bass.wav 132300 frames"),
        ("channels", "stems have different channel counts (drums.wav 2 channels, bass.wav 1 channels"),
        ("unreadable", "bass.wav: "),  # the wording is audio.probe's
    ],
)
def test_dataset_errors_name_the_track_and_file(tiny_musdb, tmp_path, damage, problem):
    root, folder = broken_copy(tiny_musdb, tmp_path, damage)
    message = one_error_line(run_train(train_args(root, tmp_path / "run", "--epochs", "1")))
    assert message.startswith(str(folder)) and problem in message


def test_run_saved_before_families_resumes(tiny_musdb, finished_run, tmp_path):
    """A last.pt from before model families (no architecture, no new recipe fields) still resumes."""
    out = copy_run(finished_run, tmp_path)
    state = torch.load(out / "last.pt", weights_only=True)
    config = json.loads(state["config"])
    for added in ("arch", "preset", "target", "lr_schedule", "lr_every", "early_stop", "gain_db"):
        config.pop(added)
    state["config"] = json.dumps(config)
    model_config = json.loads(state["model_config"])
    assert model_config.pop("architecture") == "ts-bsmamba2"
    state["model_config"] = json.dumps(model_config)
    del state["plateau"]["since_best"], state["plateau"]["epochs"]
    torch.save(state, out / "last.pt")
    result = run_train(train_args(tiny_musdb, out, "--epochs", "1", "--resume"))
    assert result.returncode == 0 and "resumed" in result.stderr, result.stderr
    assert "--override" not in result.stderr
