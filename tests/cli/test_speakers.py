"""Speaker separation (issue 17) through the commands: ``stemsplit speakers``, training on the
Libri2Mix layout with the PIT SI-SNR loss, ``eval --libri2mix``, and each command refusing a model of
the other task. (The engine's window alignment is tests/unit/engine/test_speaker_alignment.py, the loss
tests/unit/train/test_losses.py, the metrics tests/unit/evaluate/test_speech_metrics.py.)

U-Mamba-Net is not needed here: the engine, the CLI, training and eval work through the model
card, so a small Conv-TasNet-like network defined below (registered as a family for the test)
stands in for any speaker-separation network.
"""

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import SPEECH_RATE, cli, files_under, run_cli, song, stemsplit_without_torch, tiny_model
from torch import nn
from torch.nn import functional as F

from stemsplit.card import SPEAKER_STEMS, ModelCard
from stemsplit.model import families
from stemsplit.weights import save_checkpoint

RATE = SPEECH_RATE
ARCH = "tiny-tasnet"


# --- a small speaker-separation network, as a family ----------------------------------------------


@dataclass(frozen=True)
class TinyTasNetConfig:
    sr: int = RATE
    features: int = 32
    kernel: int = 16  # encoder window, samples (hop: half of it)
    num_speakers: int = 2


class TinyTasNet(nn.Module):
    """Conv-TasNet in miniature: mixture [B, C, T] -> talkers [B, S, C, T], channels folded into the batch.

    Encoder Conv1d(1 -> F, kernel, hop kernel/2) + ReLU; three dilated convs make S sigmoid masks
    [S, F, frames]; a transposed conv decodes each masked representation.
    """

    def __init__(self, config: TinyTasNetConfig, stems=SPEAKER_STEMS) -> None:
        super().__init__()
        f, k, s = config.features, config.kernel, config.num_speakers
        self.config = config
        self.encoder = nn.Conv1d(1, f, k, stride=k // 2, bias=False)
        layers = []
        for dilation in (1, 2, 4):
            layers += [nn.Conv1d(f, f, 3, padding=dilation, dilation=dilation), nn.PReLU()]
        self.masks = nn.Sequential(*layers, nn.Conv1d(f, s * f, 1))
        self.decoder = nn.ConvTranspose1d(f, 1, k, stride=k // 2, bias=False)
        self.card = ModelCard(
            architecture=ARCH,
            stems=tuple(stems) or SPEAKER_STEMS,
            sample_rate=config.sr,
            min_samples=k,
            stft=(256, 64),
            channels=1,
            task="speakers",
            permutation_invariant=True,
        )

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        b, c, t = mixture.shape
        k, s = self.config.kernel, self.config.num_speakers
        x = mixture.reshape(b * c, 1, t)
        x = F.pad(x, (0, k - t if t < k else -(t - k) % (k // 2)))  # whole encoder frames
        w = torch.relu(self.encoder(x))  # [BC, F, frames]
        masks = torch.sigmoid(self.masks(w)).reshape(b * c, s, *w.shape[1:])
        out = self.decoder((masks * w[:, None]).flatten(0, 1))[..., :t]  # [BC S, 1, t]
        return out.reshape(b, c, s, t).transpose(1, 2)


FAMILY = families.Family(
    name=ARCH,
    summary="a tiny Conv-TasNet for the speaker tests",
    config_type=TinyTasNetConfig,
    presets={"tiny": TinyTasNetConfig()},
    default_preset="tiny",
    build=lambda config, stems: TinyTasNet(config, stems),
    shrink=lambda config: config,
    stem_field="num_speakers",
)


@pytest.fixture
def tiny_family(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, ARCH, FAMILY)


@pytest.fixture
def speaker_checkpoint(tmp_path, tiny_family):
    torch.manual_seed(0)
    path = tmp_path / "talkers.safetensors"
    save_checkpoint(TinyTasNet(TinyTasNetConfig()), path)
    return path


# --- stemsplit speakers --------------------------------------------------------------------------


def test_speakers_writes_mono_talkers_and_residual_at_the_input_rate(tmp_path, capsys, speaker_checkpoint):
    audio = song(tmp_path / "interview.wav", seconds=2.0, rate=44100, channels=2)
    out = tmp_path / "out"
    args = ["speakers", tmp_path / "interview.wav", "-o", out, "--residual", "--model", speaker_checkpoint]
    code, stdout, stderr = run_cli(
        capsys, *args, "--window", "1", "--hop", "0.5", "--device", "cpu", "--json"
    )
    assert code == 0, stderr
    assert files_under(out) == ["interview/residual.wav", "interview/speaker1.wav", "interview/speaker2.wav"]
    assert json.loads(stdout.splitlines()[-1])["event"] == "result"
    parts = {}
    for name in ("speaker1", "speaker2", "residual"):
        parts[name], rate = sf.read(out / "interview" / f"{name}.wav", dtype="float32")
        assert rate == 44100 and parts[name].shape == (len(audio),)  # mono, every frame of the input
    assert np.abs(parts["speaker1"]).max() > 1e-3 and np.abs(parts["speaker2"]).max() > 1e-3
    # The residual is the (mono) mixture minus both talkers: the three add up to the mixture, every frame.
    total = parts["speaker1"] + parts["speaker2"] + parts["residual"]
    np.testing.assert_allclose(total, audio.mean(axis=1), atol=1e-5)

    # All or nothing: with speaker2.wav already there, nothing is written and nothing replaced.
    (out / "interview" / "speaker1.wav").unlink()
    (out / "interview" / "residual.wav").unlink()
    code, _, stderr = run_cli(capsys, *args, "--window", "1", "--device", "cpu")
    assert code == 1 and "speaker2.wav" in stderr and len(stderr.strip().splitlines()) == 1
    assert files_under(out) == ["interview/speaker2.wav"]


def test_surround_input_is_folded_as_the_command_folds_it(tmp_path, capsys, speaker_checkpoint):
    """A mono network averages the channels anyway: the API folds 6 channels down as the CLI does a
    5.1 file (ITU-R BS.775, then averaged), instead of refusing them; the summary says so."""
    from stemsplit.audio import downmix_to_stereo
    from stemsplit.separate import Separator

    rng = np.random.default_rng(3)
    surround = (0.1 * rng.standard_normal((6, 8000))).astype(np.float32)
    separator = Separator(speaker_checkpoint, task="speakers", device="cpu", window=1.0, hop=0.5)
    folded = separator.separate(surround, 8000)
    stereo = separator.separate(downmix_to_stereo(surround.T).T, 8000)
    for name in ("speaker1", "speaker2"):
        assert folded[name].shape == (1, 8000)
        np.testing.assert_array_equal(folded[name], stereo[name])

    sf.write(tmp_path / "surround.wav", surround.T, 8000, subtype="FLOAT")
    code, stdout, stderr = run_cli(
        capsys,
        "speakers",
        tmp_path / "surround.wav",
        "-o",
        tmp_path / "out",
        "--model",
        speaker_checkpoint,
        *("--window", "1", "--hop", "0.5", "--device", "cpu"),
    )
    assert code == 0, stderr
    assert "folded to stereo" in stdout + stderr and "then averaged to mono" in stdout + stderr


def test_the_residual_keeps_what_is_above_the_models_band(tmp_path, capsys, speaker_checkpoint):
    """Before: the mixture went through 8 kHz and back, so residual.wav of a 44.1 kHz recording lost
    everything above 4 kHz (music, hiss): talkers plus residual missed 85% of white noise's peak."""
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (2 * 44100 + 7, 1)).astype(np.float32)
    sf.write(tmp_path / "hiss.wav", noise, 44100, subtype="FLOAT")
    out = tmp_path / "out"
    args = ["speakers", tmp_path / "hiss.wav", "-o", out, "--residual", "--model", speaker_checkpoint]
    code, _, stderr = run_cli(capsys, *args, "--window", "1", "--device", "cpu", "--batch-size", "3")
    assert code == 0, stderr
    total = sum(
        sf.read(out / "hiss" / f"{name}.wav", dtype="float32")[0] for name in (*SPEAKER_STEMS, "residual")
    )
    np.testing.assert_allclose(total, noise[:, 0], atol=1e-5)


def test_speakers_refuses_music_models_and_separate_refuses_speaker_models(
    tmp_path, capsys, tiny_checkpoint, speaker_checkpoint
):
    song(tmp_path / "a.wav")
    result = cli("speakers", tmp_path / "a.wav", "-o", tmp_path / "out", "--model", tiny_checkpoint, check=2)
    assert result.stderr.strip() == (
        "stemsplit: error: --model: tiny.safetensors separates music (drums, bass, other, vocals), "
        "not speakers; use stemsplit separate for it"
    )
    code, _, stderr = run_cli(
        capsys, tmp_path / "a.wav", "-o", tmp_path / "out", "--model", speaker_checkpoint
    )
    assert code == 2
    assert stderr.strip() == (
        "stemsplit: error: --model: talkers.safetensors separates speakers (speaker1, speaker2), "
        "not music; use stemsplit speakers for it"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--musdb", "--libri2mix"])
def test_eval_refuses_a_model_of_the_other_task_before_torch(flag, tmp_path, speaker_checkpoint):
    """Before: exit 1 once torch and the model had loaded."""
    (tmp_path / "set" / "test" / "mix_both").mkdir(parents=True)  # each layout, by name
    (tmp_path / "set" / "test" / "track").mkdir()
    save_checkpoint(tiny_model(), tmp_path / "music.safetensors")
    model, task = (
        (speaker_checkpoint, "music") if flag == "--musdb" else (tmp_path / "music.safetensors", "speakers")
    )
    result = stemsplit_without_torch(
        "eval", flag, tmp_path / "set", "--model", model, "--no-csdr", cwd=tmp_path
    )
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert f"--model: {model.name} separates" in result.stderr and result.stderr.count("\n") == 1
    assert f"not {task}; {flag} scores {task} models" in result.stderr


@pytest.mark.parametrize("command", ["speakers", "separate"])
def test_a_checkpoint_of_the_other_task_is_refused_before_torch(command, tmp_path, speaker_checkpoint):
    """Before: the model was loaded (torch imported, seconds for a large one) to find its task. Files
    now carry it in their metadata; a file that says one task and holds the other is refused on load."""
    song(tmp_path / "a.wav")
    save_checkpoint(tiny_model(), tmp_path / "music.safetensors")
    model = tmp_path / "music.safetensors" if command == "speakers" else speaker_checkpoint
    result = stemsplit_without_torch(command, tmp_path / "a.wav", "-o", tmp_path / "out", "--model", model)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert f"--model: {model.name} separates" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()

    from safetensors.torch import load_file, save_file

    from stemsplit.weights import CheckpointError, load_model
    from stemsplit.weights.metadata import read_metadata

    wrong = "speakers" if command == "speakers" else "music"  # the task this file's network lacks
    doctored = tmp_path / "doctored.safetensors"
    save_file(load_file(model), doctored, metadata=read_metadata(model, model.name) | {"task": wrong})
    with pytest.raises(CheckpointError, match=f"metadata says task='{wrong}', but"):
        load_model(doctored)


def test_speakers_default_model_comes_from_the_registry(tmp_path, capsys, monkeypatch, speaker_checkpoint):
    song(tmp_path / "a.wav", seconds=1.0)
    music = """
default = "music"

[models.music]
description = "d"
architecture = "ts-bsmamba2"
stems = ["drums", "bass", "other", "vocals"]
sample_rate = 44100
normalization = "none"
url = "https://example.invalid/music.ckpt"
sha256 = ""
license = "x"
"""
    music_only = tmp_path / "music.toml"
    music_only.write_text(music)
    env = {**os.environ, "STEMSPLIT_REGISTRY": str(music_only)}
    result = cli("speakers", tmp_path / "a.wav", "-o", tmp_path / "out", check=2, env=env)
    assert "no speakers model to use" in result.stderr and "--model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()

    registry = tmp_path / "weights.toml"
    shutil.copy(speaker_checkpoint, tmp_path / "shipped.safetensors")
    digest = hashlib.sha256((tmp_path / "shipped.safetensors").read_bytes()).hexdigest()
    registry.write_text(
        music
        + f"""
[models.talkers]
description = "d"
architecture = "{ARCH}"
stems = ["speaker1", "speaker2"]
sample_rate = 8000
normalization = "none"
path = "shipped.safetensors"
sha256 = "{digest}"
license = "x"
task = "speakers"
"""
    )
    monkeypatch.setenv("STEMSPLIT_REGISTRY", str(registry))
    code, _, stderr = run_cli(
        capsys, "speakers", tmp_path / "a.wav", "-o", tmp_path / "out", "--device", "cpu", "-q"
    )
    assert code == 0, stderr
    assert files_under(tmp_path / "out") == ["a/speaker1.wav", "a/speaker2.wav"]
    # The music default is refused by name before anything loads.
    code, _, stderr = run_cli(
        capsys, "speakers", tmp_path / "a.wav", "-o", tmp_path / "o2", "--model", "music"
    )
    assert code == 2 and "music separates music" in stderr and not (tmp_path / "o2").exists()


# --- training and evaluation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_dataset(tmp_path_factory):
    """Four training, one validation and two test mixtures of 1 s, made by `stemsplit synth-speech`."""
    if shutil.which("espeak-ng") is None or importlib.util.find_spec("pyroomacoustics") is None:
        pytest.skip("stemsplit synth-speech needs espeak-ng (Debian package) and pyroomacoustics")
    root = tmp_path_factory.mktemp("speech") / "data"
    cli("synth-speech", root, "--train", "4", "--dev", "1", "--test", "2", "--seconds", "1", check=0)
    return root


def test_training_on_libri2mix_layout_drops_the_loss_and_eval_reports(
    tmp_path, capsys, tiny_family, speech_dataset
):
    run = tmp_path / "run"
    code, _, stderr = run_cli(
        capsys,
        "train",
        "--libri2mix",
        speech_dataset,
        "--arch",
        ARCH,
        "-o",
        run,
        "--epochs",
        "3",
        "--epoch-size",
        "48",
        "--batch-size",
        "4",
        "--crop-seconds",
        "0.5",
        "--lr",
        "3e-3",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--valid-window",
        "1",
    )
    assert code == 0, stderr
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"] - 1.0  # negative SI-SNR, in dB: at least 1 dB better
    assert all(np.isfinite(r["valid_si_snri"]) for r in log)
    assert "valid SI-SNRi" in stderr

    report = tmp_path / "report.json"
    code, stdout, stderr = run_cli(
        capsys,
        "eval",
        "--libri2mix",
        speech_dataset,
        "--model",
        run / "best.safetensors",
        "--json",
        report,
        "--window",
        "1",
        "--device",
        "cpu",
    )
    assert code in (0, None), stderr
    data = json.loads(report.read_text())
    assert [m["name"] for m in data["mixtures"]] == ["test-00000", "test-00001"]
    expected = {"si_snri", "sdri"} | ({"stoi"} if importlib.util.find_spec("pystoi") else set())
    assert set(data["metrics"]) == expected
    for mixture in data["mixtures"]:
        assert len(mixture["si_snri"]) == 2 and len(mixture["sdri"]) == 2
    assert np.isclose(data["metrics"]["si_snri"], np.mean([m["si_snri"] for m in data["mixtures"]]))
    assert "SI-SNRi" in stdout

    # A speaker dataset for a music family, and a music model for --libri2mix: one line each.
    code, _, stderr = run_cli(
        capsys, "train", "--libri2mix", speech_dataset, "--arch", "bsrnn", "-o", tmp_path / "r2"
    )
    assert code == 1 and "--libri2mix: bsrnn separates music" in stderr
