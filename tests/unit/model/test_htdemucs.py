"""HTDemucs (Demucs v4): golden outputs of the upstream network, the published layouts, 4 and 6 stems.

The fixtures in tests/fixtures/htdemucs/ were made by running facebookresearch/demucs' own HTDemucs
(commit and command in its README.md and make_fixtures.py) on small configs with seeded random
weights; the layouts list every state-dict key of the published htdemucs and htdemucs_6s networks
as upstream builds them.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import ROOT
from safetensors.torch import load_file

from stemsplit.model import families
from stemsplit.model.htdemucs import SIX_STEMS, config_from_kwargs

FIXTURES = ROOT / "tests" / "fixtures" / "htdemucs"
GOLDEN = sorted(p.stem for p in FIXTURES.glob("ht*.json"))
PUBLISHED = ("htdemucs", "htdemucs_6s")


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny networks run hundreds of small ops: on a busy 2-core machine two threads wait on each
    other at each (one fixture's forward took 5.7 s with 2 threads and 0.17 s with 1, at load 11)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _golden(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    config, stems = config_from_kwargs(json.loads((FIXTURES / f"{name}.json").read_text()))
    model = families.build_model("htdemucs", config, stems).eval()
    model.load_state_dict(load_file(FIXTURES / f"{name}.safetensors"), strict=True)
    io = load_file(FIXTURES / f"{name}_io.safetensors")
    return model, io["input"], io["output"]


def _error(model: torch.nn.Module, mixture: torch.Tensor, expected: torch.Tensor) -> float:
    with torch.no_grad():
        stems = model(mixture)
    assert stems.shape == expected.shape
    return ((stems - expected).norm() / expected.norm()).item()


def _layout(name: str) -> dict[str, tuple[int, ...]]:
    """layouts/NAME.tsv: each state-dict key of the upstream network and its shape."""
    layout = {}
    for line in (FIXTURES / "layouts" / f"{name}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            layout[key] = tuple(int(n) for n in shape.split(",") if n)
    return layout


def test_every_fixture_is_tested():
    assert len(GOLDEN) == 5


@pytest.mark.parametrize("name", GOLDEN)
def test_output_matches_the_upstream_network(name):
    model, mixture, expected = _golden(name)
    error = _error(model, mixture, expected)
    assert error <= 1e-5, f"{name}: relative L2 error {error:.2e}"


@pytest.mark.parametrize(
    "key",
    [
        "encoder.1.dconv.layers.0.3.weight",  # spectrogram branch
        "tdecoder.1.rewrite.weight",  # waveform branch
        "crosstransformer.layers.3.cross_attn.out_proj.weight",  # spectrogram tokens attending to time
        "crosstransformer.layers_t.1.cross_attn.out_proj.weight",  # time tokens attending to the spectrogram
        "channel_downsampler.weight",
    ],
)
def test_a_changed_weight_changes_the_output(key):
    """The golden comparison can fail: one weight off by 0.1, anywhere, is 10x the tolerance or more away."""
    model, mixture, expected = _golden("ht4_published_like")
    with torch.no_grad():
        model.state_dict()[key].view(-1)[0] += 0.1
    assert _error(model, mixture, expected) > 1e-4


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_presets_build_the_published_layout(name):
    """Every key and shape of the full-size network, as upstream builds it from the published kwargs."""
    config = families.make_config("htdemucs", name)
    with torch.device("meta"):
        model = families.build_model("htdemucs", config, ())
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == _layout(name)
    assert list(shapes) == list(_layout(name))  # the same order too


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_kwargs_are_the_presets(name):
    """The kwargs the layouts were built from (as a .th stores them) read back as the preset."""
    kwargs = json.loads((FIXTURES / "layouts" / f"{name}.json").read_text())
    assert kwargs["segment"] == "39/5" and kwargs["t_lr"] is None and kwargs["channels_time"] is None
    config, stems = config_from_kwargs(kwargs)
    assert config == replace(families.make_config("htdemucs", name), num_sources=len(stems))
    assert stems == tuple(kwargs["sources"])
    assert config.training_length == 343980  # 7.8 s at 44.1 kHz, as Demucs' own int(39/5 * 44100)


def test_six_sources_name_guitar_and_piano():
    config = families.make_config("htdemucs", "htdemucs_6s")
    with torch.device("meta"):
        model = families.build_model("htdemucs", config, ())
    assert model.card.stems == SIX_STEMS == ("drums", "bass", "other", "vocals", "guitar", "piano")
    six, mixture, expected = _golden("ht6_published_like")
    assert six.card.stems[4:] == ("guitar", "piano") and expected.shape[1] == 6
    assert _error(six, mixture, expected) <= 1e-5


def test_card_is_demucs_protocol():
    config = families.make_config("htdemucs", "htdemucs")
    with torch.device("meta"):
        model = families.build_model("htdemucs", config, ())
    card = model.card
    assert (card.sample_rate, card.channels, card.normalization) == (44100, 2, "meanstd")
    assert card.window == 7.8 and card.hop == pytest.approx(0.75 * 7.8)
    assert card.stft == (4096, 1024) and card.stems == ("drums", "bass", "other", "vocals")


def test_a_window_longer_than_the_segment_is_refused():
    model, mixture, _ = _golden("ht6_published_like")  # segment 4096 samples
    with pytest.raises(ValueError, match="longer than the network's segment of 4096"):
        model(torch.zeros(1, 2, 4097))
    with torch.no_grad():
        short = model(mixture[..., :3000])
    assert short.shape == (1, 6, 2, 3000)


def test_channels():
    """A stereo network takes mono as dual mono; a mono network separates each channel alone."""
    stereo, _, _ = _golden("ht4_published_like")
    left = torch.rand(1, 1, 3000) - 0.5
    with torch.no_grad():
        dual = stereo(left.expand(1, 2, 3000))
        mono = stereo(left)
    assert mono.shape == (1, 4, 1, 3000)
    assert torch.allclose(mono[:, :, 0], dual.mean(dim=2), atol=1e-6)
    single, _, _ = _golden("ht_mono_merge_options")
    pair = torch.rand(2, 2, 2500) - 0.5
    with torch.no_grad():
        both = single(pair)
        right = single(pair[:, 1:])
    assert both.shape == (2, 2, 2, 2500)
    assert torch.allclose(both[:, :, 1:], right, atol=1e-6)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"cac": False}, "Wiener"),
        ({"multi_freqs": [2]}, "multi_freqs"),
        ({"t_sparse_self_attn": True}, "sparse attention"),
        ({"t_sin_random_shift": 2}, "random"),
        ({"channels_time": 32}, "channels_time"),
        ({"t_emb": "rope"}, "t_emb"),
        ({"depth": 6}, "runs out of frequencies"),
        ({"t_heads": 5}, "of t_heads 5"),
    ],
)
def test_what_is_not_implemented_is_refused_in_one_line(option, message):
    with pytest.raises(families.FamilyError, match=message) as caught:
        families.make_config("htdemucs", "htdemucs", option)
    assert "\n" not in str(caught.value)


def test_unknown_kwargs_are_named():
    kwargs = json.loads((FIXTURES / "layouts" / "htdemucs.json").read_text())
    with pytest.raises(families.FamilyError, match="no field 'hybrid'"):
        config_from_kwargs({**kwargs, "hybrid": True})
    with pytest.raises(families.FamilyError, match="must name the sources"):
        config_from_kwargs({k: v for k, v in kwargs.items() if k != "sources"})


def test_shrunk_presets_run():
    """families.config_problem builds the full network on meta and runs a shrunk one of the same segment."""
    for name in PUBLISHED:
        config = families.make_config("htdemucs", name)
        assert families.config_problem("htdemucs", config, ()) is None


def test_a_saved_htdemucs_loads_again(tmp_path):
    """save_checkpoint's metadata (the config as JSON) rebuilds the same network and stems."""
    from stemsplit.weights import load_model
    from stemsplit.weights.checkpoint import save_checkpoint

    model, mixture, _ = _golden("ht6_published_like")
    save_checkpoint(model, tmp_path / "six.safetensors")
    loaded = load_model(tmp_path / "six.safetensors").model.eval()
    assert loaded.card.stems == SIX_STEMS and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(mixture), model(mixture))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", GOLDEN)
def test_cuda_matches_the_upstream_network(name, monkeypatch):
    """The same fixtures on a GPU, fp32 without TF32 (its 10-bit mantissa is no golden test)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, mixture, expected = _golden(name)
    assert _error(model.cuda(), mixture.cuda(), expected.cuda()) < 1e-5
