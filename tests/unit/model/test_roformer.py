"""BS-RoFormer and Mel-Band RoFormer: golden outputs of the upstream networks, published layouts, MSST YAMLs.

The fixtures in tests/fixtures/roformer/ were made by running MSST's own networks
(commit and command in its README.md and make_fixtures.py) on small configs with
seeded random weights; the layouts list every state-dict key of the published
configs as upstream builds them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from safetensors.torch import load_file

from stemsplit.model import families
from stemsplit.model.mel_band_roformer import mel_band_members
from stemsplit.weights.msst import ModelConfigError, read_msst_config

FIXTURES = ROOT / "tests" / "fixtures" / "roformer"
GOLDEN = sorted(p.stem for p in FIXTURES.glob("*.json") if p.stem != "manifest")
PUBLISHED = sorted(p for p in (FIXTURES / "configs").glob("*.yaml") if "sage" not in p.name)


def _architecture(name: str) -> str:
    return "bs-roformer" if name.startswith("bs_") else "mel-band-roformer"


def _golden(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    options = json.loads((FIXTURES / f"{name}.json").read_text())
    config = families.make_config(_architecture(name), overrides=options)
    model = families.build_model(_architecture(name), config, ()).eval()
    model.load_state_dict(load_file(FIXTURES / f"{name}.safetensors"), strict=True)
    io = load_file(FIXTURES / f"{name}_io.safetensors")
    expected = io["output"]
    if expected.dim() == 3:  # upstream's Mel-Band RoFormer drops the stem axis of a single stem
        expected = expected[:, None]
    return model, io["input"], expected


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _layout(stem: str) -> dict[str, tuple[int, ...]]:
    """layouts/STEM.tsv: each state-dict key of the upstream network and its shape."""
    layout = {}
    for line in (FIXTURES / "layouts" / f"{stem}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            layout[key] = tuple(int(n) for n in shape.split(",") if n)
    return layout


def test_every_fixture_is_tested():
    assert len(GOLDEN) == 6 and {_architecture(n) for n in GOLDEN} == {"bs-roformer", "mel-band-roformer"}


@pytest.mark.parametrize("name", GOLDEN)
def test_output_matches_the_upstream_network(name):
    model, mixture, expected = _golden(name)
    with torch.no_grad():
        stems = model(mixture)
    assert stems.shape[:3] == expected.shape[:3] and stems.shape[-1] == mixture.shape[-1]
    # Upstream's Mel-Band RoFormer without match_input_audio_length returns hop * (samples // hop) samples;
    # ours always the input's length, the first ones the same.
    same = stems[..., : expected.shape[-1]]
    error = (same - expected).norm() / expected.norm()
    assert error <= 1e-5, f"{name}: relative L2 error {error:.2e}"


def test_a_changed_weight_changes_the_output():
    """The golden comparison can fail: one weight off by a little is far outside the tolerance."""
    model, mixture, expected = _golden("mel_stereo_4stem_options")
    with torch.no_grad():
        model.mask_estimators[2].to_freqs[3][0][0].weight[0, 0] += 0.05
        stems = model(mixture)
    assert (stems - expected).norm() / expected.norm() > 1e-4


@pytest.mark.parametrize("name", [n for n in GOLDEN if n.startswith("mel_")])
def test_mel_bands_match_upstream(name):
    model, _, _ = _golden(name)
    io = load_file(FIXTURES / f"{name}_io.safetensors")
    assert torch.equal(model.freq_indices, io["freq_indices"].long())
    per_bin = io["num_bands_per_freq"].float()
    assert torch.equal(model.bands_per_row, per_bin.repeat_interleave(model.config.audio_channels))


def test_full_size_mel_bands_match_upstream():
    """The published 60-band layout at 44.1 kHz / 2048, with librosa's filter bank as upstream reads it."""
    upstream = load_file(FIXTURES / "layouts" / "mel_bands_sr44100_nfft2048_bands60_stereo.safetensors")
    members = torch.from_numpy(mel_band_members(44100, 2048, 60))
    assert torch.equal(members, upstream["freqs_per_band"].bool())


@pytest.mark.parametrize("yaml", PUBLISHED, ids=lambda p: p.stem)
def test_published_configs_build_the_published_layout(yaml):
    """Every key and shape of the full-size network, as upstream builds it from the same YAML."""
    msst = read_msst_config(yaml)
    config = families.make_config(msst.architecture, overrides=msst.config, stems=msst.stems)
    with torch.device("meta"):
        model = families.build_model(msst.architecture, config, msst.stems)
    assert _shapes(model) == _layout(yaml.stem)


def test_yaml_window_hop_and_stems(tmp_path):
    kj = read_msst_config(FIXTURES / "configs" / "config_vocals_mel_band_roformer_kj.yaml")
    assert kj.architecture == "mel-band-roformer"
    assert kj.stems == ("vocals", "other")  # single target: the other is mixture minus vocals
    assert (kj.window, kj.hop) == (8.0, 4.0)  # chunk 352800 at 44.1 kHz, num_overlap 2
    assert kj.config["multi_stft_resolutions_window_sizes"] == (4096, 2048, 1024, 512, 256)  # !!python/tuple
    bs = read_msst_config(FIXTURES / "configs" / "config_musdb18_bs_roformer.yaml")
    assert bs.architecture == "bs-roformer" and sum(bs.config["freqs_per_bands"]) == 1025


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = (FIXTURES / "configs" / "config_vocals_mel_band_roformer_kj.yaml").read_text()
    assert old in text
    path = tmp_path / "edited.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_an_unknown_network_option_is_named(tmp_path):
    msst = read_msst_config(
        _edited(tmp_path, "  num_bands: 60\n", "  num_bands: 60\n  sage_attention: true\n")
    )
    with pytest.raises(families.FamilyError, match="no field 'sage_attention'"):
        families.make_config(msst.architecture, overrides=msst.config, stems=msst.stems)
    msst = read_msst_config(_edited(tmp_path, "  num_bands: 60\n", "  num_bands: 60\n  use_pope: true\n"))
    with pytest.raises(families.FamilyError, match="use_pope"):
        families.make_config(msst.architecture, overrides=msst.config, stems=msst.stems)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  chunk_size: 352800\n", "  chunk_size: -4\n", "audio.chunk_size must be a positive"),
        ("  num_overlap: 2", "  num_overlap: 0", "num_overlap must be a positive"),
        ("  target_instrument: vocals\n", "  target_instrument: piano\n", "'piano' is not in"),
        (
            "  stft_n_fft: 2048\n",
            "  stft_n_fft: !!python/object/apply:os.system ['true']\n",
            "not a valid YAML",
        ),
        ("model:\n", "modle:\n", "no model: section"),
        (
            "  sample_rate: 44100  # needed",
            "  sample_rate: 48000  # needed",
            "differs from audio.sample_rate",
        ),
    ],
)
def test_bad_yaml_is_one_line_naming_the_file(tmp_path, old, new, message):
    path = _edited(tmp_path, old, new)
    with pytest.raises(ModelConfigError, match=message) as caught:
        read_msst_config(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_missing_or_unknown_yaml(tmp_path):
    with pytest.raises(ModelConfigError, match="no such file"):
        read_msst_config(tmp_path / "nope.yaml")
    other = tmp_path / "htdemucs.yaml"  # a network stemsplit does not have
    other.write_text(
        "audio:\n  chunk_size: 343980\nmodel:\n  channels: 48\ntraining:\n  instruments: [vocals]\n"
    )
    with pytest.raises(ModelConfigError, match="not one stemsplit can build"):
        read_msst_config(other)


def test_single_target_rest_is_mixture_minus_target():
    config = families.make_config(
        "bs-roformer",
        overrides=json.loads((FIXTURES / "bs_stereo_1stem.json").read_text()),
        stems=("vocals", "other"),
    )
    model = families.build_model("bs-roformer", config, ("vocals", "other")).eval()
    assert model.card.rest_stem == "other"
    mixture = torch.randn(1, 2, 3000) * 0.3
    with torch.no_grad():
        stems = model(mixture)
    assert stems.shape == (1, 2, 2, 3000)
    assert torch.allclose(stems[:, 1], mixture - stems[:, 0], atol=1e-6)
    assert not torch.allclose(stems[:, 0], torch.zeros_like(stems[:, 0]))


def test_channels():
    """A stereo network takes mono as dual mono; a mono network separates each channel alone."""
    stereo, _, _ = _golden("bs_stereo_1stem")
    left = torch.randn(1, 1, 3000) * 0.3
    with torch.no_grad():
        dual = stereo(left.expand(1, 2, 3000))
        mono = stereo(left)
    assert mono.shape == (1, 1, 1, 3000)
    assert torch.allclose(mono[:, :, 0], dual.mean(dim=2), atol=1e-6)
    single, _, _ = _golden("mel_mono_2stem")
    pair = torch.randn(1, 2, 3000) * 0.3
    with torch.no_grad():
        both = single(pair)
        right = single(pair[:, 1:])
    assert both.shape == (1, 2, 2, 3000)
    assert torch.allclose(both[:, :, 1:], right, atol=1e-6)


# The registry's RoFormers and the published YAML (in fixtures/roformer/configs) each was taken from.
REGISTERED = {
    "bs-roformer-viperx-1297": "model_bs_roformer_ep_317_sdr_12.9755",
    "mel-band-roformer-viperx-1143": "model_mel_band_roformer_ep_3005_sdr_11.4360",
    "mel-band-roformer-kj": "config_vocals_mel_band_roformer_kj",
    "bs-roformer-musdb18hq": "config_musdb18_bs_roformer_384_8_2_485100_sage",
}


def test_every_registered_roformer_is_checked():
    from stemsplit.weights import load_registry

    roformers = {n for n, e in load_registry().models.items() if e.architecture.endswith("roformer")}
    assert roformers == set(REGISTERED)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_registry_entry_is_its_published_yaml_and_layout(name):
    """The entry's config, stems, window and hop are its YAML's, and build upstream's exact layout."""
    from stemsplit.weights import load_registry
    from stemsplit.weights.load import entry_config

    entry = load_registry().get(name)
    yaml = FIXTURES / "configs" / f"{REGISTERED[name]}.yaml"
    msst = read_msst_config(yaml)
    published = {k: v for k, v in msst.config.items() if k not in ("sample_rate", "sage_attention")}
    assert {k: v for k, v in entry.config.items() if k != "sr"} == {
        k: v for k, v in published.items() if k != "sr"
    }
    assert (entry.stems, entry.sample_rate, entry.window, entry.hop) == (
        msst.stems,
        msst.sample_rate,
        msst.window,
        msst.hop,
    )
    with torch.device("meta"):
        model = families.build_model(entry.architecture, entry_config(entry), entry.stems)
    assert _shapes(model) == _layout(REGISTERED[name])
    metrics = entry.metrics or {}
    assert metrics.get("test_set") in ("MUSDB18-HQ test", "MVSEP multisong") and metrics.get("metric")


def test_a_saved_single_target_roformer_loads_with_its_rest_stem(tmp_path):
    """save_checkpoint's metadata (config as JSON: tuples become lists) rebuilds the same network."""
    from stemsplit.weights import load_model
    from stemsplit.weights.checkpoint import save_checkpoint

    model, mixture, _ = _golden("bs_stereo_1stem")
    model.card = replace(model.card, stems=("vocals", "other"), rest_stem="other")
    save_checkpoint(model, tmp_path / "vocals.safetensors")
    loaded = load_model(tmp_path / "vocals.safetensors").model
    assert loaded.card.stems == ("vocals", "other") and loaded.card.rest_stem == "other"
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(mixture), model(mixture))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", GOLDEN)
def test_cuda_matches_the_upstream_network(name, monkeypatch):
    """The same fixtures on a GPU (scaled_dot_product_attention's CUDA kernels), fp32 without TF32."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, mixture, expected = _golden(name)
    with torch.no_grad():
        stems = model.cuda()(mixture.cuda()).cpu()
    assert ((stems - expected).norm() / expected.norm()).item() < 1e-5
