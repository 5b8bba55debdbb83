"""MSST RoFormer checkpoints through the command line: a .ckpt with its YAML, and a registry entry downloaded
from a loopback server. The network is the golden Mel-Band RoFormer fixture (upstream weights, small)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import RATE, ROOT, music, run_cli
from safetensors.torch import load_file
from weights_server import tiny_entry, write_registry

from stemsplit.model import families
from stemsplit.separate import Separator

FIXTURES = ROOT / "tests" / "fixtures" / "roformer"
OPTIONS = json.loads((FIXTURES / "mel_stereo_1stem.json").read_text())
CHUNK = 11025  # 0.25 s windows, every 0.125 s (num_overlap 2)


def ckpt_bytes() -> bytes:
    """The fixture's upstream weights as MSST saves a checkpoint: a pickled plain state dict."""
    buffer = io.BytesIO()
    torch.save(load_file(FIXTURES / "mel_stereo_1stem.safetensors"), buffer)
    return buffer.getvalue()


def msst_yaml(path: Path, **model: object) -> Path:
    """An MSST config for the fixture, as MSST writes one (tuples tagged !!python/tuple)."""
    config = {
        "audio": {"chunk_size": CHUNK, "sample_rate": RATE, "num_channels": 2},
        "model": {**OPTIONS, "multi_stft_resolutions_window_sizes": (4096, 2048), **model},
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
        "inference": {"batch_size": 1, "num_overlap": 2},
    }
    path.write_text(yaml.dump(config))  # the default Dumper writes tuples as !!python/tuple
    assert "!!python/tuple" in path.read_text()
    return path


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model_mel_band_roformer_ep_1_sdr_1.0.ckpt"
    path.write_bytes(ckpt_bytes())
    return path, msst_yaml(tmp_path / "config.yaml")


def upstream_network() -> torch.nn.Module:
    config = families.make_config("mel-band-roformer", overrides=OPTIONS, stems=("vocals", "other"))
    model = families.build_model("mel-band-roformer", config, ("vocals", "other")).eval()
    model.load_state_dict(load_file(FIXTURES / "mel_stereo_1stem.safetensors"))
    return model


def test_one_window_is_the_network_on_the_song(tmp_path, capsys, checkpoint):
    """--window and --hop of the song's length: the network runs once, on the song as it is."""
    ckpt, config = checkpoint
    mix = music(CHUNK / RATE)
    sf.write(tmp_path / "song.wav", mix, RATE, subtype="FLOAT")
    seconds = str(CHUNK / RATE)
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", ckpt, "--model-config", config,
        "--window", seconds, "--hop", seconds, "-o", tmp_path / "out", "-q",
    )  # fmt: skip
    assert status == 0, err
    vocals, _ = sf.read(tmp_path / "out" / "song" / "vocals.wav", dtype="float32")
    other, _ = sf.read(tmp_path / "out" / "song" / "other.wav", dtype="float32")
    with torch.no_grad():
        expected = upstream_network()(torch.from_numpy(mix.T.copy())[None])[0]  # [2, ch, samples]
    np.testing.assert_allclose(vocals, expected[0].numpy().T, atol=2e-6)
    np.testing.assert_allclose(other, mix - vocals, atol=2e-6)  # the rest: the mixture minus the target
    assert np.abs(vocals).max() > 1e-3


def test_window_and_hop_come_from_the_yaml(checkpoint):
    ckpt, config = checkpoint
    separator = Separator(ckpt, model_config=config, device="cpu")
    assert (separator.window, separator.hop) == (CHUNK, CHUNK // 2)
    assert separator.stems == ("vocals", "other") and separator.card.rest_stem == "other"
    assert separator.card.architecture == "mel-band-roformer"


@pytest.mark.parametrize(
    ("model_change", "message"),
    [
        ({"sage_attention": True}, "no field 'sage_attention'"),
        ({"use_pope": True}, "use_pope"),
        ({"num_bands": 0}, "num_bands must be positive"),
    ],
)
def test_an_option_the_family_lacks_is_a_usage_error(tmp_path, capsys, checkpoint, model_change, message):
    ckpt, _ = checkpoint
    config = msst_yaml(tmp_path / "bad.yaml", **model_change)
    music_file = tmp_path / "song.wav"
    sf.write(music_file, music(0.3), RATE)
    out = tmp_path / "o"
    status, _, err = run_cli(capsys, music_file, "--model", ckpt, "--model-config", config, "-o", out)
    assert status == 2 and message in err and err.count("\n") == 1 and "--model-config" in err
    assert not out.exists()


def test_model_config_needs_a_checkpoint_file(tmp_path, capsys, checkpoint):
    _, config = checkpoint
    sf.write(tmp_path / "song.wav", music(0.3), RATE)
    status, _, err = run_cli(capsys, tmp_path / "song.wav", "--model-config", config, "-o", tmp_path / "o")
    assert status == 2 and "--model-config: goes with a checkpoint file or URL" in err
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", checkpoint[0], "--model-config", tmp_path / "nope.yaml"
    )
    assert status == 2 and "nope.yaml: no such file" in err


def test_registry_roformer_downloads_from_loopback_and_separates(tmp_path, capsys, env, server, checkpoint):
    """A registry entry in the YAML's terms (config as its model: section, window and hop), its .ckpt
    served on 127.0.0.1: downloaded, converted to safetensors, and separated as --model-config does."""
    server.files["roformer.ckpt"] = ckpt_bytes()
    entry = tiny_entry(
        architecture="mel-band-roformer",
        config={**OPTIONS, "multi_stft_resolutions_window_sizes": [4096, 2048]},
        stems=["vocals", "other"],
        url=server.url("roformer.ckpt"),
        window=CHUNK / RATE,
        hop=CHUNK / RATE / 2,
    )
    write_registry(env / "weights.toml", {"tiny-roformer": entry})
    mix = music(0.6)
    sf.write(tmp_path / "song.wav", mix, RATE, subtype="FLOAT")
    ckpt, config = checkpoint
    runs = {
        "registry": ["--model", "tiny-roformer"],
        "yaml": ["--model", ckpt, "--model-config", config],
    }
    for name, model in runs.items():
        status, _, err = run_cli(capsys, tmp_path / "song.wav", *model, "-o", tmp_path / name, "-q")
        assert status == 0, err
    assert len(server.requests_for("roformer.ckpt")) >= 1
    for stem in ("vocals", "other"):
        ours, _ = sf.read(tmp_path / "registry" / "song" / f"{stem}.wav", dtype="float32")
        theirs, _ = sf.read(tmp_path / "yaml" / "song" / f"{stem}.wav", dtype="float32")
        np.testing.assert_array_equal(ours, theirs)
    vocals, _ = sf.read(tmp_path / "registry" / "song" / "vocals.wav", dtype="float32")
    assert vocals.shape == mix.shape and np.abs(vocals).max() > 1e-3


def test_a_hop_is_checked_against_the_registry_entrys_window(tmp_path, capsys, env, server):
    """A RoFormer entry's own window (here 4 s, not the usual 3): --hop up to it runs; beyond it is a
    usage error before anything downloads."""
    server.files["roformer.ckpt"] = ckpt_bytes()
    entry = tiny_entry(
        architecture="mel-band-roformer",
        config=OPTIONS,
        stems=["vocals", "other"],
        url=server.url("roformer.ckpt"),
        window=4.0,
        hop=2.0,
    )
    write_registry(env / "weights.toml", {"tiny-roformer": entry})
    sf.write(tmp_path / "song.wav", music(0.5), RATE, subtype="FLOAT")
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", "tiny-roformer", "--hop", "5", "-o", tmp_path / "o"
    )
    assert status == 2 and "--hop: must be more than 0 and at most the window (4 s)" in err
    assert server.requests_for("roformer.ckpt") == []
    out = tmp_path / "out"
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", "tiny-roformer", "--hop", "3.5", "-o", out
    )
    assert status == 0, err
    assert (out / "song" / "vocals.wav").is_file()
