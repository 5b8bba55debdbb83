"""U-Mamba-Net: the paper's sizes and costs, shapes for any length, the family, training, checkpoints."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from stemsplit.model import build_model, config_problem, family, make_config
from stemsplit.model.families import FamilyError
from stemsplit.model.u_mamba_net import PRESETS, UMambaNet, count_macs, unet_channels
from stemsplit.weights.checkpoint import network_from_file, read_checkpoint, save_checkpoint

SR = 8000
THREE_SECONDS = 3 * SR

# Table V (and Tables II/III for "paper"): (parameters in M, GMACs for a 3 s input).
TABLE_V = {
    "f64": (1.3, 0.7),
    "r12": (3.3, 1.9),
    "paper": (4.4, 2.5),
    "r20": (5.5, 3.1),
    "l8": (4.6, 2.5),
    "f192": (9.7, 5.3),
}


def tiny(**fields) -> UMambaNet:
    torch.manual_seed(0)
    config = family("u-mamba-net").shrink(PRESETS["paper"])
    return UMambaNet(replace(config, **fields))


@pytest.mark.parametrize("preset", list(TABLE_V))
def test_parameters_and_macs_match_table_v(preset):
    paper_params, paper_gmacs = TABLE_V[preset]
    model = UMambaNet(PRESETS[preset]).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = count_macs(model, THREE_SECONDS) / 1e9
    assert abs(params / paper_params - 1) <= 0.05, f"{preset}: {params:.3f} M parameters"
    assert abs(gmacs / paper_gmacs - 1) <= 0.10, f"{preset}: {gmacs:.3f} GMACs"


def test_mac_counter_against_the_layer_shapes():
    """The paper model's count written out by hand: 128 features, C = 480, and 1199 frames
    (41-sample windows every 20 samples cover 24000 samples with 1198 hops)."""
    model = UMambaNet(PRESETS["paper"]).eval()
    frames, f, c = 1199, 128, unet_channels(model.config)
    assert c == 480
    levels = sum(math.ceil(frames / 2**level) for level in range(1, 5))  # 600 + 300 + 150 + 75
    per_block = 2 * f * c * frames + c * 5 * levels + c * 4 * levels  # 1x1 in/out, down k5, up k4
    expected = 41 * f * frames + 16 * per_block + 2 * f * f * frames + 2 * 41 * f * frames
    assert count_macs(model, THREE_SECONDS) == expected
    # Mamba adds its projections, conv and scan at every frame of every block: more than
    # doubles the total (which is why the paper's 2.5 GMACs cannot include it).
    with_mamba = count_macs(model, THREE_SECONDS, mamba=True)
    assert with_mamba == expected + 16 * model.blocks[0].mamba.macs(frames)
    assert with_mamba > 2 * expected


@pytest.mark.parametrize("samples", [1, 2, 40, 41, 42, 333, 1601])
def test_any_length_gives_that_length(samples):
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, samples))
    assert out.shape == (2, 2, 1, samples)
    assert torch.isfinite(out).all()


def test_depth_beyond_the_frames_still_works():
    """L = 8 halves 3 frames eight times (ceil: 2, 1, 1, ...); the up path crops back."""
    model = tiny(depth=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 81)).shape == (1, 2, 1, 81)


def test_channels_are_separated_independently():
    model = tiny().eval()
    stereo = torch.randn(1, 2, 900)
    with torch.no_grad():
        both = model(stereo)
        right = model(stereo[:, 1:])
    torch.testing.assert_close(both[:, :, 1:], right, rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="expected mixture"):
        tiny()(torch.zeros(1, 100))
    with pytest.raises(ValueError, match="hop 50 is longer than win 41"):
        UMambaNet(hop=50)


def test_card():
    card = UMambaNet(PRESETS["paper"]).card
    assert card.architecture == "u-mamba-net"
    assert card.stems == ("speaker1", "speaker2")
    assert (card.sample_rate, card.channels, card.stages) == (8000, 1, 1)
    assert card.stft == (256, 64)
    # A speaker model: `stemsplit speakers` takes it, windows are lined up, fp32 on the CPU.
    assert (card.task, card.permutation_invariant, card.cpu_bf16) == ("speakers", True, False)


def test_train_config_names_this_family_for_speech():
    """train/config.py spells the speech family's name out (it must not import torch): the same name."""
    from stemsplit.model.u_mamba_net import ARCHITECTURE
    from stemsplit.train.config import RECIPES, SPEECH_ARCH

    assert SPEECH_ARCH == ARCHITECTURE and RECIPES[SPEECH_ARCH]["lr"] == 1.5e-4


def test_family_builds_from_presets_and_overrides():
    config = make_config("u-mamba-net", "f64", {"num_blocks": 2})
    assert (config.feature_dim, config.num_blocks, config.sr) == (64, 2, 8000)
    model = build_model("u-mamba-net", config, ("alice", "bob"))
    assert model.card.stems == ("alice", "bob")
    assert len(model.blocks) == 2
    assert make_config("u-mamba-net", stems=("a", "b", "c")).num_speakers == 3
    with pytest.raises(FamilyError, match="num_speakers = 2, but 3 stems"):
        make_config("u-mamba-net", overrides={"num_speakers": 2}, stems=("a", "b", "c"))
    with pytest.raises(FamilyError, match="no preset 'huge'"):
        make_config("u-mamba-net", "huge")
    assert config_problem("u-mamba-net", make_config("u-mamba-net"), ("speaker1", "speaker2")) is None
    assert "hop" in config_problem(
        "u-mamba-net", make_config("u-mamba-net", overrides={"hop": 64}), ("a", "b")
    )


def two_talkers(seconds: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 'voiced' talker (harmonics of a gliding 150-200 Hz pitch, syllable-rate envelope) and a
    'whispered' one (noise band-passed around 2 kHz, another rhythm).

    Returns mixture [1, 1, n] and sources [1, 2, 1, n].
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = 150 + 50 * t / seconds
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    noise = np.fft.rfft(rng.standard_normal(t.size))
    freqs = np.fft.rfftfreq(t.size, 1 / SR)
    noise[(freqs < 1500) | (freqs > 2500)] = 0
    whispered = np.fft.irfft(noise, n=t.size)
    whispered *= 0.5 / whispered.std() * (0.5 + 0.5 * np.cos(2 * np.pi * 3 * t))
    sources = torch.tensor(np.stack([voiced, whispered]) * 0.3, dtype=torch.float32)[None, :, None]
    return sources.sum(dim=1), sources


def pit_si_snr_loss(estimate: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Negative SI-SNR of the better of the two speaker orders (the paper's eq. 10, for S = 2)."""

    def si_snr(est, ref):
        est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
        target = (est * ref).sum(-1, keepdim=True) / ref.square().sum(-1, keepdim=True) * ref
        return 10 * torch.log10(target.square().sum(-1) / (est - target).square().sum(-1) + 1e-8)

    straight = si_snr(estimate, sources).mean(dim=(1, 2))
    swapped = si_snr(estimate.flip(1), sources).mean(dim=(1, 2))
    return -torch.maximum(straight, swapped).mean()


def test_shrunk_model_learns_to_separate_two_talkers():
    torch.manual_seed(0)
    model = build_model("u-mamba-net", family("u-mamba-net").shrink(PRESETS["paper"]), ("s1", "s2"))
    mixture, sources = two_talkers()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = pit_si_snr_loss(model(mixture), sources)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - 10.0, f"SI-SNR loss {first:.1f} -> {last:.1f} dB"


def test_checkpoint_round_trip(tmp_path):
    model = tiny(num_speakers=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.card = replace(model.card, stems=("alice", "bob"))
    path = tmp_path / "umamba.safetensors"
    save_checkpoint(model, path, epoch=3)
    state, metadata = read_checkpoint(path, "umamba.safetensors")
    loaded = network_from_file(state, metadata, "umamba.safetensors")
    assert loaded.config == model.config
    assert loaded.card.stems == ("alice", "bob")
    mixture = torch.randn(1, 1, 500)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mixture), model(mixture), rtol=0, atol=0)
