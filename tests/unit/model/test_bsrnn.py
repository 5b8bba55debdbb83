"""BSRNN (Luo & Yu): band schemes, shapes, the grouped path, per-channel stereo, the bag, the loss."""

import math

import numpy as np
import pytest
import torch

from stemsplit.model import BSRNN, BSRNNBag, BSRNNConfig
from stemsplit.model.bsrnn import SCHEMES, TARGET_SCHEMES, band_edges_hz, band_widths, scheme_for_target
from stemsplit.train.losses import band_split_loss

PAPER_COUNTS = {"v1": 22, "v2": 19, "v3": 14, "v4": 23, "v5": 28, "v6": 26, "v7": 41, "bass": 30, "drums": 55}
OTHER_STFTS = [
    (48000, 2048),
    (32000, 2048),
    (22050, 1024),
    (22050, 1023),
    (16000, 512),
    (16000, 128),
    (8000, 64),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny LSTMs run one thread: on a busy 2-core machine two threads wait on each other at every
    time step (the overfit test took 49 s with 2 threads and 4.4 s with 1, at load 4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(bands: str = "v7", **overrides) -> BSRNN:
    torch.manual_seed(0)
    return BSRNN(BSRNNConfig(feature_dim=16, num_layers=1, bands=bands, **overrides)).eval()


def noise(*shape: int, seed: int = 0, scale: float = 0.1) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- band schemes ------------------------------------------------------------------------------


def test_every_scheme_of_the_paper_is_there():
    assert set(SCHEMES) == set(PAPER_COUNTS)
    assert TARGET_SCHEMES == {"vocals": "v7", "other": "v7", "bass": "bass", "drums": "drums"}
    assert [scheme_for_target(t) for t in ("vocals", "bass", "drums", "other", "piano")] == [
        "v7",
        "bass",
        "drums",
        "v7",
        "v7",
    ]


@pytest.mark.parametrize("scheme", list(PAPER_COUNTS))
def test_band_counts_of_the_paper(scheme):
    widths = band_widths(scheme, 44100, 2048)
    assert len(widths) == PAPER_COUNTS[scheme]
    assert sum(widths) == 1025
    assert min(widths) >= 2  # 50 Hz (the finest step) is 2.3 bins


def test_v7_edges_in_hz_and_bins():
    edges = band_edges_hz("v7", 44100)
    assert edges[:11] == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1250]
    assert edges[-4:] == [15000, 16000, 18000, 20000]  # then 20 kHz .. Nyquist is one band
    widths = band_widths("v7", 44100, 2048)
    # 100 Hz = 4.64 bins: a bin goes to the band that holds its centre frequency.
    assert widths[:10] == [5, 5, 4, 5, 5, 4, 5, 5, 4, 5]
    assert widths[-3:] == [92, 93, 96]


def test_v1_merges_the_remainder_into_its_last_band():
    # 22.05 kHz = 22 whole 1 kHz bands + 50 Hz, which joins the 22nd band.
    assert band_edges_hz("v1", 44100) == list(range(1000, 22000, 1000))
    assert len(band_widths("v1", 48000, 2048)) == 24  # "the entire spectrogram" at any rate


def bins_by_centre(scheme: str, sr: int, n_fft: int) -> list[int]:
    """The edge rule written independently: count the bins whose centre frequency lies in each band."""
    centres = np.fft.rfftfreq(n_fft, 1 / sr)
    band_of_bin = np.searchsorted(np.array(band_edges_hz(scheme, sr)), centres, side="right")
    counts = np.bincount(band_of_bin)
    return [int(c) for c in counts if c > 0]


@pytest.mark.parametrize(("sr", "n_fft"), [(44100, 2048), *OTHER_STFTS])
@pytest.mark.parametrize("scheme", list(PAPER_COUNTS))
def test_band_widths_at_any_rate(scheme, sr, n_fft):
    widths = band_widths(scheme, sr, n_fft)
    assert sum(widths) == n_fft // 2 + 1
    assert min(widths) >= 1
    assert widths == bins_by_centre(scheme, sr, n_fft)
    edges = band_edges_hz(scheme, sr)
    assert edges == sorted(set(edges)) and all(0 < e < sr / 2 for e in edges)


def test_ranges_above_nyquist_are_dropped():
    # 16 kHz: Nyquist is 8 kHz; V7 keeps 10 + 12 + 8 bands, its 8 kHz edge closes the last at Nyquist.
    assert len(band_widths("v7", 16000, 512)) == 30
    assert band_edges_hz("v7", 16000)[-1] == 7500
    assert len(band_widths("drums", 16000, 512)) == 20 + 10 + 8 + 8


def test_bands_without_bins_are_dropped():
    # 16 kHz / 128: 125 Hz a bin, so 50 Hz bands cannot all hold one.
    hz_bands = len(band_edges_hz("drums", 16000)) + 1
    widths = band_widths("drums", 16000, 128)
    assert len(widths) < hz_bands and min(widths) >= 1 and sum(widths) == 65


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown band scheme 'v8'"):
        band_widths("v8", 44100, 2048)
    with pytest.raises(ValueError, match="unknown band scheme"):
        BSRNN(BSRNNConfig(bands="vocals"))


# --- shapes and behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "channels", "samples"), [(1, 1, 1025), (1, 2, 22050), (3, 2, 5000)])
def test_output_shape(batch, channels, samples):
    model = tiny()
    assert model.min_samples == 1025
    with torch.no_grad():
        out = model(noise(batch, channels, samples))
    assert out.shape == (batch, 1, channels, samples)
    assert torch.isfinite(out).all()


def test_too_short_or_misshaped_input_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match=r"1024 samples is too short.*at least 1025"):
        model(noise(1, 2, 1024))
    with pytest.raises(ValueError, match=r"\[batch, channels, samples\]"):
        model(noise(2, 4000))


@pytest.mark.parametrize(
    ("bands", "sr", "n_fft"), [("v7", 44100, 2048), ("drums", 44100, 2048), ("bass", 16000, 512)]
)
def test_grouped_path_equals_per_band_reference(bands, sr, n_fft):
    model = tiny(bands, sr=sr, n_fft=n_fft)
    for p in model.parameters():  # not the init's ones and zeros: every band's weights differ
        p.data.add_(noise(*p.shape, seed=p.numel()))
    spec = model._stft(noise(2, sr // 2, seed=1))
    with torch.no_grad():
        split = model.band_split(spec)
        torch.testing.assert_close(split, model.band_split.forward_per_band(spec), rtol=1e-5, atol=1e-5)
        features = noise(2, len(model.widths), spec.shape[-1], 16, seed=2, scale=1.0)
        torch.testing.assert_close(
            model.mask(features), model.mask.forward_per_band(features), rtol=1e-5, atol=1e-5
        )
    assert split.shape == (2, len(model.widths), spec.shape[-1], 16)


def test_stereo_is_each_channel_alone():
    model = tiny()
    stereo = noise(2, 2, 8000)
    with torch.no_grad():
        together = model(stereo)
        alone = [model(stereo[:, c : c + 1]) for c in range(2)]
    torch.testing.assert_close(together, torch.cat(alone, dim=2), rtol=1e-5, atol=1e-6)


def test_mask_depends_on_the_input():
    model = tiny()
    quiet_low = torch.sin(2 * math.pi * 220 * torch.arange(8000) / 44100)[None] + noise(1, 8000, seed=1)
    with torch.no_grad():
        masks = [model.estimate_mask(model._stft(x)) for x in (noise(1, 8000, seed=3), quiet_low)]
        out = model(quiet_low[None])[:, 0]
    assert (masks[0] - masks[1]).abs().mean() > 0.1 * masks[0].abs().mean()
    assert masks[0].abs().std() > 0.01  # not one constant gain either
    assert (out - quiet_low).abs().mean() > 0.1 * quiet_low.abs().mean()  # not the identity


def test_mask_head_output_layout():
    # fc2's outputs are (value, gate) x (real, imag) x bins: a head that puts out value = 1 + 0j and
    # a saturated gate is the all-pass mask, and the model gives back its input (STFT round trip).
    model = tiny()
    with torch.no_grad():
        for head in model.mask:
            g = head.width
            head.fc2.weight.zero_()
            head.fc2.bias.copy_(torch.cat([torch.ones(g), torch.zeros(g), torch.full((2 * g,), 30.0)]))
        x = noise(1, 2, 6000)
        torch.testing.assert_close(model(x)[:, 0], x, rtol=1e-5, atol=1e-5)


def test_state_dict_layout():
    model = tiny()  # N = 16, V7 (first band 5 bins)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["band_split.0.norm.weight"] == (10,)
    assert shapes["band_split.0.fc.weight"] == (16, 10)
    assert shapes["layers.0.sequence.rnn.weight_ih_l0"] == (128, 16)  # 4 gates x 2N hidden
    assert shapes["layers.0.band.rnn.weight_hh_l0_reverse"] == (128, 32)
    assert shapes["layers.0.sequence.fc.weight"] == (16, 64)
    assert shapes["mask.0.fc1.weight"] == (64, 16)
    assert shapes["mask.40.fc2.weight"] == (4 * 96, 64)
    assert set(shapes) == {name for name, _ in model.named_parameters()}  # no buffers are saved


def test_scaling_the_input_scales_the_output():
    # The band split's GroupNorm removes the scale; the mask multiplies the unscaled spectrogram.
    model = tiny()
    x = noise(1, 2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(model(3 * x), 3 * model(x), rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_parameter():
    model = tiny().train()
    mixture = noise(2, 2, 6000)
    band_split_loss(model(mixture), noise(2, 1, 2, 6000, seed=1)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_a_tiny_model_learns_to_extract_sines_from_noise():
    model = tiny().train()
    t = torch.arange(44100) / 44100
    sines = 0.3 * torch.sin(2 * math.pi * 330 * t) + 0.2 * torch.sin(2 * math.pi * 2500 * t)
    mixture = (sines + noise(44100, seed=5, scale=0.2))[None, None]
    target = sines[None, None, None]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = band_split_loss(model(mixture), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses  # about 0.06 at 44.1 kHz


# --- the bag ------------------------------------------------------------------------------------


def test_bag_stacks_its_members_in_stem_order():
    torch.manual_seed(0)
    bag = BSRNNBag.for_targets(["drums", "bass", "other", "vocals"], feature_dim=16, num_layers=1).eval()
    assert bag.stems == ("drums", "bass", "other", "vocals")
    assert [len(m.widths) for m in bag.targets.values()] == [55, 30, 41, 41]
    assert bag.min_samples == 1025
    mixture = noise(2, 2, 4000)
    with torch.no_grad():
        out = bag(mixture)
        members = [bag.targets[stem](mixture) for stem in bag.stems]
    assert out.shape == (2, 4, 2, 4000)
    torch.testing.assert_close(out, torch.cat(members, dim=1))
    assert not torch.allclose(out[:, 2], out[:, 3])  # same scheme, own weights
    keys = list(bag.state_dict())
    assert keys[0] == "targets.drums.band_split.0.norm.weight"
    assert "targets.vocals.layers.0.band.rnn.weight_hh_l0_reverse" in keys
    assert "targets.bass.mask.29.fc2.bias" in keys


def test_bag_options():
    bag = BSRNNBag.for_targets(["piano"], feature_dim=8, num_layers=0, n_fft=4096)
    assert bag.targets["piano"].config == BSRNNConfig(feature_dim=8, num_layers=0, n_fft=4096, bands="v7")
    assert bag.min_samples == 2049
    with pytest.raises(ValueError, match="one sample rate"):
        BSRNNBag({"a": BSRNNConfig(num_layers=0), "b": BSRNNConfig(sr=48000, num_layers=0)})


def expected_parameters(widths: list[int], n: int = 128, layers: int = 12) -> int:
    """The paper's sizes counted by hand: N = 128, BLSTM hidden 2N per direction, MLP hidden 4N."""
    f, k, h = sum(widths), len(widths), 2 * n
    band_split = 2 * 2 * f + 2 * f * n + k * n  # GroupNorm(1, 2G) + Linear(2G, N), every band
    lstm = 2 * (4 * h * (n + h) + 2 * 4 * h)  # two directions: W_ih, W_hh, b_ih, b_hh
    residual_blstm = 2 * n + lstm + (2 * h * n + n)
    mask = k * (2 * n + 4 * n * n + 4 * n) + 4 * f * (4 * n + 1)
    return band_split + 2 * layers * residual_blstm + mask


@pytest.mark.parametrize("target", ["vocals", "bass", "drums"])
def test_full_size_parameter_count(target):
    model = BSRNN(BSRNNConfig(bands=scheme_for_target(target)))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(model.widths)
    assert 24_000_000 < count < 28_000_000  # ~20.6M in the 24 BLSTM layers, the rest in the mask heads


# --- loss ---------------------------------------------------------------------------------------


def test_loss_is_zero_for_equal_inputs_and_symmetric():
    a, b = noise(2, 4, 2, 3000, seed=1), noise(2, 4, 2, 3000, seed=2)
    assert band_split_loss(a, a.clone()).item() == 0.0
    assert band_split_loss(a, b).item() > 0
    torch.testing.assert_close(band_split_loss(a, b), band_split_loss(b, a))
    with pytest.raises(ValueError, match="differ in shape"):
        band_split_loss(a, b[:, :2])


def test_loss_equals_a_hand_computation():
    n_fft, hop, samples = 8, 2, 12
    rng = np.random.default_rng(0)
    estimate, target = rng.standard_normal((2, 1, 1, 2, samples))  # [B, S, ch, samples] each
    # Centred STFT written out: reflect-pad n_fft / 2, frames every hop, periodic Hann, one-sided FFT.
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    spec_terms = []
    for x in (estimate, target):
        padded = np.pad(x[0, 0], ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
        frames = [padded[:, i : i + n_fft] * window for i in range(0, samples + 1, hop)]
        spec_terms.append(np.fft.rfft(np.stack(frames, axis=1), axis=-1))  # [ch, frames, F]
    d = spec_terms[0] - spec_terms[1]
    expected = np.abs(d.real).mean() + np.abs(d.imag).mean() + np.abs(estimate - target).mean()
    got = band_split_loss(
        torch.tensor(estimate, dtype=torch.float32), torch.tensor(target, dtype=torch.float32), n_fft, hop
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)
