"""SCNet (MSST's scnet model type): golden match with the upstream network, the published layouts, the
YAML recognised among the other MSST families, the registry entries equal to their YAMLs, and a .ckpt
with its YAML through the command line.

The fixtures (tests/fixtures/scnet/, README.md there) are the upstream network's outputs on the CPU.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import RATE, ROOT, music, rel_l2, run_cli
from safetensors.torch import load_file

from stemsplit.model import families
from stemsplit.model.scnet import SCNetConfig
from stemsplit.weights import CheckpointError, load_model
from stemsplit.weights.msst import ModelConfigError, read_msst_config

FIXTURES = ROOT / "tests" / "fixtures" / "scnet"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CONFIGS = MANIFEST["configs"]
YAMLS = {Path(layout["yaml"]).stem for layout in MANIFEST["layouts"]}


def options(name: str) -> dict:
    """Fixture ``name``'s constructor kwargs as stemsplit's config takes them (sources counted)."""
    kwargs = json.loads((FIXTURES / f"{name}.json").read_text())
    return {**{k: v for k, v in kwargs.items() if k != "sources"}, "num_sources": len(kwargs["sources"])}


def network(name: str, state_dict: dict | None = None) -> torch.nn.Module:
    """Fixture ``name``'s network, built through the family, with upstream's weights loaded strictly."""
    model = families.build_model("scnet", families.make_config("scnet", overrides=options(name)), ()).eval()
    model.load_state_dict(state_dict or load_file(FIXTURES / f"{name}.safetensors"), strict=True)
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_the_upstream_network(name):
    io_ = load_file(FIXTURES / f"{name}_io.safetensors")
    with torch.no_grad():
        out = network(name)(io_["input"])
    assert out.shape == io_["output"].shape
    assert rel_l2(out, io_["output"]) <= 1e-5


@pytest.mark.parametrize(
    ("key", "index"),
    [
        # the last dual-path layer's time path, a weight reading the backward LSTM (its second half)
        ("separation_net.dp_modules.7.linear_layers.1.weight", 35),
        ("encoder.0.conv_modules.2.layers.2.3.weight", 3),  # the high band's third conv layer, depthwise
        ("decoder.2.1.convtrs.2.weight", 3),  # the high band's last up-sampling
    ],
)
def test_a_weight_nudged_by_005_breaks_the_match(key, index):
    name = "xl_ihf_like"
    state_dict = load_file(FIXTURES / f"{name}.safetensors")
    state_dict[key].view(-1)[index] += 0.05
    io_ = load_file(FIXTURES / f"{name}_io.safetensors")
    with torch.no_grad():
        out = network(name, state_dict)(io_["input"][:1])  # the first song of the batch is enough
    assert rel_l2(out, io_["output"][:1]) > 1e-4


def test_a_stereo_network_takes_mono_as_dual_mono():
    model = network("xl_ihf_like")
    left = torch.randn(1, 1, 3000) * 0.3
    with torch.no_grad():
        mono, dual = model(left), model(left.expand(1, 2, 3000))
    assert mono.shape == (1, 4, 1, 3000)
    assert torch.allclose(mono[:, :, 0], dual.mean(dim=2), atol=1e-6)


def read_layout(path: Path) -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in path.read_text().splitlines() if not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.split(",")) for key, shape in rows}


@pytest.mark.parametrize("stem", sorted(YAMLS))
def test_each_published_yaml_builds_upstreams_layout_key_for_key(stem):
    """Through --model-config's path, on the meta device: every key of upstream's state dict, shape for
    shape, and no other; the window and hop are MSST's chunk_size and chunk_size // num_overlap."""
    msst = read_msst_config(FIXTURES / "configs" / f"{stem}.yaml")
    assert msst.architecture == "scnet" and msst.stems == ("drums", "bass", "other", "vocals")
    assert (msst.window, msst.hop) == (11.0, 2.75)
    config = families.make_config(msst.architecture, overrides=msst.config, stems=msst.stems)
    with torch.device("meta"):
        model = families.build_model("scnet", config, msst.stems)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == read_layout(FIXTURES / "layouts" / f"{stem}.tsv")


def test_the_presets_are_the_published_yamls():
    for preset, stem in [
        ("msst", "config_musdb18_scnet"),
        ("large", "config_musdb18_scnet_large"),
        ("xl", "config_musdb18_scnet_xl"),
        ("xl-ihf", "config_musdb18_scnet_xl_more_wide_v5"),
    ]:
        msst = read_msst_config(FIXTURES / "configs" / f"{stem}.yaml")
        assert families.make_config("scnet", preset) == families.make_config("scnet", overrides=msst.config)


def test_other_msst_yamls_keep_their_families():
    """band_SR, which recognises SCNet, is no option of the other families' published YAMLs."""
    others = {
        "roformer/configs/config_musdb18_bs_roformer.yaml": "bs-roformer",
        "roformer/configs/config_musdb18_mel_band_roformer.yaml": "mel-band-roformer",
        "bs_mamba2/configs/config_bs_mamba2_vocals.yaml": "bs-mamba2",
        "bs_mamba2/configs/config_musdb18_bs_mamba2.yaml": "ts-bsmamba2",
    }
    for rel, architecture in others.items():
        assert read_msst_config(FIXTURES.parent / rel).architecture == architecture


def write_yaml(path: Path, model: dict, instruments=("drums", "bass", "other", "vocals"), chunk=8820) -> Path:
    """An MSST config as MSST writes one (tuples tagged !!python/tuple)."""
    config = {
        "audio": {"chunk_size": chunk, "sample_rate": RATE, "num_channels": 2},
        "model": {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()},
        "training": {"instruments": list(instruments), "target_instrument": None},
        "inference": {"batch_size": 1, "num_overlap": 2, "normalize": False},
    }
    path.write_text(yaml.dump(config))
    return path


def test_an_scnet_tran_yaml_is_refused_in_one_line(tmp_path):
    kwargs = json.loads((FIXTURES / "xl_ihf_like.json").read_text())
    path = write_yaml(tmp_path / "tran.yaml", {**kwargs, "tran_depth": 1, "tran_heads": 8})
    with pytest.raises(ModelConfigError, match="scnet_tran") as error:
        read_msst_config(path)
    assert "\n" not in str(error.value)


def test_sources_count_the_outputs(tmp_path):
    """The YAML's sources are the network's outputs; training.instruments name them (as MSST names them)."""
    kwargs = json.loads((FIXTURES / "xl_ihf_like.json").read_text())
    msst = read_msst_config(write_yaml(tmp_path / "a.yaml", {**kwargs, "sources": ["v", "o"]}, ("x", "y")))
    assert msst.stems == ("x", "y") and msst.config["num_sources"] == 2 and "sources" not in msst.config
    with pytest.raises(ModelConfigError, match="names 4 stems, but the network has 2 outputs"):
        read_msst_config(write_yaml(tmp_path / "b.yaml", {**kwargs, "sources": ["v", "o"]}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_dplayer": 7}, "num_dplayer must be even"),
        ({"dims": (2, 32, 64)}, "dims\\[0\\] must be 2 x audio_channels = 4"),
        ({"conv_kernel": 4}, "conv_kernel must be odd"),
        ({"band_SR": (0.5, 0.5, 0.1)}, "must leave bins for the high one"),
        ({"band_stride": (1, 4)}, "band_stride must have three entries"),
    ],
)
def test_configs_upstream_cannot_run_are_refused_in_one_line(change, message):
    with pytest.raises(families.FamilyError, match=message) as error:
        families.make_config("scnet", overrides=change)
    assert "\n" not in str(error.value)
    assert SCNetConfig(**change).problem() is not None


# The registry's SCNets and the YAML (in fixtures/scnet/configs) each was taken from.
REGISTERED = {
    "scnet-xl-ihf": "config_musdb18_scnet_xl_more_wide_v5",
    "scnet-xl": "config_musdb18_scnet_xl",
    "scnet-large": "config_musdb18_scnet_large",
}


def test_every_registered_scnet_is_checked():
    from stemsplit.weights import load_registry

    assert {n for n, e in load_registry().models.items() if e.architecture == "scnet"} == set(REGISTERED)


def plain(config: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k != "sr"}


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_registry_entry_is_its_published_yaml(name):
    """The entry's config, stems, window, hop and normalisation are its YAML's; the score is MSST's."""
    from stemsplit.weights import load_registry
    from stemsplit.weights.load import entry_config

    entry = load_registry().get(name)
    msst = read_msst_config(FIXTURES / "configs" / f"{REGISTERED[name]}.yaml")
    assert plain(entry.config) == plain(msst.config)
    assert (entry.stems, entry.sample_rate, entry.window, entry.hop, entry.normalization) == (
        msst.stems,
        msst.sample_rate,
        msst.window,
        msst.hop,
        msst.normalization,
    )
    assert entry_config(entry) == families.make_config("scnet", overrides=msst.config)
    assert entry.metrics["test_set"] == "MUSDB18-HQ test" and entry.metrics["metric"]
    assert entry.url.startswith("https://github.com/ZFTurbo/Music-Source-Separation-Training/releases/")


def pickled(state_dict: dict, path: Path) -> Path:
    """A checkpoint as MSST saves one: a pickled plain state dict."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    path.write_bytes(buffer.getvalue())
    return path


CHUNK = 8820  # 0.2 s windows, every 0.1 s (num_overlap 2)


def test_cli_separates_with_a_checkpoint_and_its_yaml(tmp_path, capsys):
    """stemsplit song.wav --model x.ckpt --model-config x.yaml, one window: the four stems as the upstream
    network gives them."""
    name = "xl_ihf_like"
    ckpt = pickled(load_file(FIXTURES / f"{name}.safetensors"), tmp_path / "model_scnet.ckpt")
    kwargs = json.loads((FIXTURES / f"{name}.json").read_text())
    config = write_yaml(tmp_path / "config.yaml", kwargs)
    mix = music(CHUNK / RATE)
    sf.write(tmp_path / "song.wav", mix, RATE, subtype="FLOAT")
    seconds = str(CHUNK / RATE)
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", ckpt, "--model-config", config,
        "--window", seconds, "--hop", seconds, "-o", tmp_path / "out", "--device", "cpu", "-q",
    )  # fmt: skip
    assert status == 0, err
    with torch.no_grad():
        expected = network(name)(torch.from_numpy(mix.T.copy())[None])[0]  # [4, ch, samples]
    for i, stem in enumerate(kwargs["sources"]):
        audio, _ = sf.read(tmp_path / "out" / "song" / f"{stem}.wav", dtype="float32")
        np.testing.assert_allclose(audio, expected[i].numpy().T, atol=2e-5)
        assert np.abs(audio).max() > 1e-3


def test_a_checkpoint_that_does_not_fit_its_yaml_is_named_in_one_line(tmp_path):
    """The XL IHF-like weights with the Large-like YAML: the loader names the keys that differ."""
    ckpt = pickled(load_file(FIXTURES / "xl_ihf_like.safetensors"), tmp_path / "model.ckpt")
    config = write_yaml(tmp_path / "config.yaml", json.loads((FIXTURES / "large_like.json").read_text()))
    with pytest.raises(CheckpointError, match=r"model\.ckpt: architecture differs") as error:
        load_model(ckpt, model_config=config, progress=False)
    assert "\n" not in str(error.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cuda_matches_the_upstream_network(name, monkeypatch):
    """The same fixtures on a GPU, fp32 without TF32 (its 10-bit mantissa is no golden test)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    io_ = load_file(FIXTURES / f"{name}_io.safetensors")
    with torch.no_grad():
        out = network(name).cuda()(io_["input"].cuda()).cpu()
    assert rel_l2(out, io_["output"]) <= 1e-5
