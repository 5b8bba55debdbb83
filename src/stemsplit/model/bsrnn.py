"""BSRNN: band-split RNN (Luo & Yu, "Music Source Separation with Band-split RNN", 2022).

One model extracts ONE target (the paper trains one model per target); the
four-stem separator is a bag of four such models (:class:`BSRNNBag`).

Pipeline (paper Fig. 1 A), for a mixture [B, ch, samples]::

    X = STFT(mixture), channels folded into the batch     [B*ch, F, T] complex
    band split (Sec. II-A), per band i of width G_i:
        [re(X_i); im(X_i)]  -> GroupNorm(1, 2 G_i) -> Linear(2 G_i -> N)
        Z                                                 [B*ch, K, T, N]
    band and sequence modeling (Sec. II-B), num_layers times:
        sequence level: residual BLSTM over T, one sequence per band (shared by all bands)
        band level:     residual BLSTM over K, one sequence per frame
        Q                                                 [B*ch, K, T, N]
    mask estimation (Sec. II-C), per band i:
        GroupNorm(1, N) -> Linear(N -> 4N) -> tanh -> Linear(4N -> 2 * 2 G_i) -> GLU
        M_i = re + j im                                   [B*ch, G_i, T] complex
    S = M * X  (M: the K masks stacked over frequency)    [B*ch, F, T]
    target = ISTFT(S)                                     [B, 1, ch, samples]

Residual BLSTM (Sec. II-B): x + Linear(4N -> N)(BLSTM(GroupNorm(1, N)(x))), the
BLSTM with 2N hidden units *per direction* (the paper's "hidden unit of BLSTM
layers to be 2N = 256"; we read it as the LSTM's ``hidden_size``, so the
BLSTM's output has 4N features).

Normalisation: every "layer" and "group" norm of the paper is ``nn.GroupNorm(1, C)`` over one
sequence [C, L] (the "global layer norm" of Conv-TasNet / DPRNN), so a window's output depends on
the whole window and scaling the input scales the output (docs/models.md, "Choices the papers
leave open", says why).

Stereo. The paper's model is mono: channels are folded into the batch, and nothing mixes them (a
stereo input gives exactly what each channel alone gives).

Band schemes (paper Sec. V-A) are data: ranges of (upper edge Hz, step Hz),
"the rest as one subband"; :func:`band_widths` turns one into bin widths for
any sample rate and FFT size (see there for the edge rule).

Bands of equal width are run together, their per-band weights stacked into one batched matrix
product; ``forward_per_band`` keeps the literal one-module-per-band loop, which the tests compare
against.

State dict of :class:`BSRNN` (N = feature_dim, G_k = width of band k, l < num_layers)::

    band_split.<k>.norm.{weight,bias}            [2 G_k]         GroupNorm(1, 2 G_k)
    band_split.<k>.fc.weight / .bias             [N, 2 G_k] / [N]
    layers.<l>.sequence.norm.{weight,bias}       [N]             over T
    layers.<l>.sequence.rnn.weight_ih_l0         [8N, N]         (and _reverse: backward direction)
    layers.<l>.sequence.rnn.weight_hh_l0         [8N, 2N]
    layers.<l>.sequence.rnn.bias_{ih,hh}_l0      [8N]
    layers.<l>.sequence.fc.weight / .bias        [N, 4N] / [N]
    layers.<l>.band.*                            the same, over K
    mask.<k>.norm.{weight,bias}                  [N]
    mask.<k>.fc1.weight / .bias                  [4N, N] / [4N]
    mask.<k>.fc2.weight / .bias                  [4 G_k, 4N] / [4 G_k]

``mask.<k>.fc2``'s output features are ordered (a, r, f): a in {value, gate}
(GLU halves), r in {real, imag}, f the bin in the band; the mask is
value * sigmoid(gate). A :class:`BSRNNBag` prefixes every key with
``targets.<stem>.``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..card import ModelCard
from .layers.bands import EPS, group_norm_last2
from .layers.stft import check_mixture, istft, stft

__all__ = [
    "ARCHITECTURE",
    "BSRNN",
    "PER_TARGET",
    "PRESETS",
    "SCHEMES",
    "TARGET_SCHEMES",
    "TO_NYQUIST",
    "BSRNNBag",
    "BSRNNConfig",
    "band_edges_hz",
    "band_widths",
    "scheme_for_target",
]

# --- band schemes ------------------------------------------------------------------------------

# An upper edge that means "up to Nyquist; a remainder narrower than one step joins the last band"
# (V1's "remainders are merged to the last subband").
TO_NYQUIST = math.inf

BandScheme = tuple[tuple[float, int], ...]
"""(upper edge Hz, step Hz) ranges from 0 Hz upwards; above the last range, the rest is one band."""

SCHEMES: dict[str, BandScheme] = {
    # Paper Sec. V-A. Band counts at 44.1 kHz / n_fft 2048 in the comments.
    "v1": ((TO_NYQUIST, 1000),),  # 22
    "v2": ((16000, 1000), (20000, 2000)),  # 16 + 2 + rest = 19
    "v3": ((8000, 1000), (16000, 2000), (20000, 4000)),  # 8 + 4 + 1 + rest = 14
    "v4": ((1000, 100), (8000, 1000), (16000, 2000), (20000, 4000)),  # 10 + 7 + 4 + 1 + rest = 23
    "v5": ((1000, 100), (16000, 1000), (20000, 2000)),  # 10 + 15 + 2 + rest = 28
    "v6": ((1000, 100), (4000, 500), (8000, 1000), (16000, 2000), (20000, 4000)),  # 26
    "v7": ((1000, 100), (4000, 250), (8000, 500), (16000, 1000), (20000, 2000)),  # 41
    "bass": ((500, 50), (1000, 100), (4000, 500), (8000, 1000), (16000, 2000)),  # 30
    "drums": ((1000, 50), (2000, 100), (4000, 250), (8000, 500), (16000, 1000)),  # 55
}

# The scheme the paper uses for each MUSDB18 target; any other target gets V7.
TARGET_SCHEMES: dict[str, str] = {"vocals": "v7", "other": "v7", "bass": "bass", "drums": "drums"}


def scheme_for_target(target: str) -> str:
    """Band scheme name for a target stem (V7 for targets the paper does not cover)."""
    return TARGET_SCHEMES.get(target, "v7")


def band_edges_hz(scheme: str, sample_rate: int) -> list[int]:
    """Inner band edges in Hz, increasing, all below Nyquist (0 and Nyquist are implied).

    Ranges are cut at ``lo + step, lo + 2 step, ...`` and at their upper edge
    (a range that is no whole number of steps ends in a narrower band; the
    paper's ranges all are). Edges at or above Nyquist are dropped, so the band
    below them closes at Nyquist: at 16 kHz, V7 keeps its ranges up to 8 kHz
    (30 bands) and has no "rest" band. A ``TO_NYQUIST`` range takes whole steps
    up to Nyquist and merges the remainder into its last band.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown band scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    nyquist = Fraction(sample_rate, 2)
    edges: list[int] = []
    lo = 0
    for upper, step in SCHEMES[scheme]:
        if upper == TO_NYQUIST:
            whole = math.floor((nyquist - lo) / step)  # the last of them runs to Nyquist
            edges += [lo + j * step for j in range(1, whole)]
            break
        edges += [*range(lo + step, int(upper), step), int(upper)]
        lo = int(upper)
    return [e for e in edges if e < nyquist]


def band_widths(scheme: str, sample_rate: int, n_fft: int) -> list[int]:
    """Widths in bins of the scheme's bands, low to high; they sum to n_fft // 2 + 1.

    Edge rule: bin k (centre frequency k * sr / n_fft) belongs to the band whose
    Hz range [lo, hi) holds its centre, the last band also holding the Nyquist
    bin. So a Hz edge f starts at bin ceil(f * n_fft / sr), computed in
    integers. At 44.1 kHz / 2048 (21.5 Hz a bin) every band of every scheme
    gets at least 2 bins and the counts are the paper's (V1 22, V2 19, V3 14,
    V4 23, V5 28, V6 26, V7 41, bass 30, drums 55); floor or round instead of
    ceil would give the same counts (the widths differ by a bin here and there).

    A band whose Hz range holds no bin centre (steps finer than the bin
    spacing, e.g. 50 Hz bands at 16 kHz / 256) is dropped: its range joins the
    band above, which is where the rule puts the next bin anyway. No band is
    ever empty, and there is at least one band.
    """
    if sample_rate <= 0 or n_fft < 2:
        raise ValueError(f"need sample_rate > 0 and n_fft >= 2, got {sample_rate} and {n_fft}")
    n_bins = n_fft // 2 + 1
    starts = [0] + [-(-f * n_fft // sample_rate) for f in band_edges_hz(scheme, sample_rate)]
    bounds = sorted({min(s, n_bins) for s in starts} | {n_bins})  # duplicates: bands without bins
    return [hi - lo for lo, hi in itertools.pairwise(bounds)]


def _width_classes(widths: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Bands grouped by width, (width, band indices), in order of first appearance."""
    classes: dict[int, list[int]] = {}
    for band, width in enumerate(widths):
        classes.setdefault(width, []).append(band)
    return list(classes.items())


def _grouped_order(widths: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(band order, bin order) of the width classes: band indices and bin indices, class by class."""
    starts = [0, *itertools.accumulate(widths)]
    bands = [k for _, members in _width_classes(widths) for k in members]
    bins = [starts[k] + f for k in bands for f in range(widths[k])]
    return torch.tensor(bands), torch.tensor(bins)


def _stack(modules: Sequence[nn.Module], path: str) -> Tensor:
    """One parameter (``"fc.weight"``) of every module in ``modules``, stacked: [G, ...]."""
    return torch.stack([m.get_parameter(path) for m in modules])


def _grouped_norm(x: Tensor, modules: Sequence[nn.Module], name: str) -> Tensor:
    """Each band's GroupNorm(1, C) ``name`` on its slice of x [BC, G, L, C], over (L, C)."""
    return group_norm_last2(
        x, _stack(modules, f"{name}.weight")[:, None], _stack(modules, f"{name}.bias")[:, None]
    )


def _grouped_linear(x: Tensor, modules: Sequence[nn.Module], name: str) -> Tensor:
    """Each band's Linear ``name`` on its slice of x [BC, G, L, C_in] -> [BC, G, L, C_out]."""
    return x @ _stack(modules, f"{name}.weight").transpose(1, 2) + _stack(modules, f"{name}.bias")[:, None]


# --- modules -----------------------------------------------------------------------------------


class BandEncoder(nn.Module):
    """One band of the band split: GroupNorm(1, 2G) over (2G, T) -> Linear(2G -> N)."""

    def __init__(self, width: int, feature_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, 2 * width, EPS)
        self.fc = nn.Linear(2 * width, feature_dim)

    def forward(self, band: Tensor) -> Tensor:
        """band: [b, 2G, T] (real parts, then imaginary parts) -> [b, T, N]."""
        return self.fc(self.norm(band).transpose(1, 2))


class BandSplit(nn.ModuleList):
    """Complex spectrogram [BC, F, T] -> band features [BC, K, T, N] (one BandEncoder per band)."""

    bin_order: Tensor  # buffers
    band_inverse: Tensor

    def __init__(self, widths: Sequence[int], feature_dim: int) -> None:
        super().__init__(BandEncoder(w, feature_dim) for w in widths)
        self.widths = list(widths)
        self.classes = _width_classes(self.widths)
        band_order, bin_order = _grouped_order(self.widths)
        self.register_buffer("bin_order", bin_order, persistent=False)
        self.register_buffer("band_inverse", torch.argsort(band_order), persistent=False)

    def forward(self, spec: Tensor) -> Tensor:
        """Grouped path: the bands of one width in one batched product."""
        bc, _, frames = spec.shape
        ri = torch.view_as_real(spec).index_select(1, self.bin_order)  # [BC, F, T, 2], bins by class
        out, bin0 = [], 0
        for width, members in self.classes:
            count, bands = len(members), [self[k] for k in members]
            x = ri[:, bin0 : bin0 + count * width].reshape(bc, count, width, frames, 2)
            x = x.permute(0, 1, 3, 4, 2).reshape(bc, count, frames, 2 * width)  # feature = r * G + f
            out.append(_grouped_linear(_grouped_norm(x, bands, "norm"), bands, "fc"))
            bin0 += count * width
        return torch.cat(out, dim=1).index_select(1, self.band_inverse)

    def forward_per_band(self, spec: Tensor) -> Tensor:
        """Literal reference: one BandEncoder call per band (slow; for tests)."""
        out, bin0 = [], 0
        for encoder, width in zip(self, self.widths, strict=True):
            band = spec[:, bin0 : bin0 + width]
            out.append(encoder(torch.cat([band.real, band.imag], dim=1)))
            bin0 += width
        return torch.stack(out, dim=1)


class ResidualBLSTM(nn.Module):
    """x + Linear(4N -> N)(BLSTM(GroupNorm(1, N)(x))), BLSTM hidden 2N per direction.

    x: [b, L, N], b independent sequences of L steps; GroupNorm over (L, N) of each.
    """

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        hidden = 2 * feature_dim
        self.norm = nn.GroupNorm(1, feature_dim, EPS)
        self.rnn = nn.LSTM(feature_dim, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(group_norm_last2(x, self.norm.weight, self.norm.bias))
        return x + self.fc(h)


class BandSequenceBlock(nn.Module):
    """One band-and-sequence module (Fig. 1 C): over time in each band, then over bands in each frame."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.sequence = ResidualBLSTM(feature_dim)  # shared by the K bands
        self.band = ResidualBLSTM(feature_dim)

    def forward(self, z: Tensor) -> Tensor:
        """z: [BC, K, T, N] -> same shape."""
        bc, k, t, n = z.shape
        z = self.sequence(z.reshape(bc * k, t, n)).reshape(bc, k, t, n)
        z = self.band(z.transpose(1, 2).reshape(bc * t, k, n))
        return z.reshape(bc, t, k, n).transpose(1, 2)


class MaskHead(nn.Module):
    """One band's mask: GroupNorm(1, N) -> Linear(N -> 4N) -> tanh -> Linear(4N -> 4G) -> GLU."""

    def __init__(self, width: int, feature_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, feature_dim, EPS)
        self.fc1 = nn.Linear(feature_dim, 4 * feature_dim)
        self.fc2 = nn.Linear(4 * feature_dim, 4 * width)
        self.width = width

    def forward(self, q: Tensor) -> Tensor:
        """q: [b, T, N] -> mask [b, T, 2 (real, imag), G]."""
        x = self.norm(q.transpose(1, 2)).transpose(1, 2)
        m = F.glu(self.fc2(torch.tanh(self.fc1(x))), dim=-1)
        return m.reshape(*m.shape[:-1], 2, self.width)


class MaskEstimation(nn.ModuleList):
    """Band features [BC, K, T, N] -> complex mask [BC, F, T] (one MaskHead per band)."""

    band_order: Tensor  # buffers
    bin_inverse: Tensor

    def __init__(self, widths: Sequence[int], feature_dim: int) -> None:
        super().__init__(MaskHead(w, feature_dim) for w in widths)
        self.widths = list(widths)
        self.classes = _width_classes(self.widths)
        band_order, bin_order = _grouped_order(self.widths)
        self.register_buffer("band_order", band_order, persistent=False)
        self.register_buffer("bin_inverse", torch.argsort(bin_order), persistent=False)

    def forward(self, q: Tensor) -> Tensor:
        """Grouped path: the heads of one width in batched products."""
        bc, _, frames, _ = q.shape
        q = q.index_select(1, self.band_order)
        out, first = [], 0
        for width, members in self.classes:
            count, heads = len(members), [self[k] for k in members]
            x = q[:, first : first + count]  # [BC, G, T, N]
            x = torch.tanh(_grouped_linear(_grouped_norm(x, heads, "norm"), heads, "fc1"))
            m = F.glu(_grouped_linear(x, heads, "fc2"), dim=-1).reshape(bc, count, frames, 2, width)
            out.append(m.permute(0, 3, 1, 4, 2).reshape(bc, 2, count * width, frames))
            first += count
        return _complex(torch.cat(out, dim=2).index_select(2, self.bin_inverse))

    def forward_per_band(self, q: Tensor) -> Tensor:
        """Literal reference: one MaskHead call per band (slow; for tests)."""
        masks = [head(q[:, k]).permute(0, 2, 3, 1) for k, head in enumerate(self)]  # [BC, 2, G, T]
        return _complex(torch.cat(masks, dim=2))


def _complex(mask: Tensor) -> Tensor:
    """[BC, 2 (real, imag), F, T] real (any float dtype) -> [BC, F, T] complex, at least float32."""
    mask = mask.to(torch.promote_types(mask.dtype, torch.float32))
    return torch.complex(mask[:, 0], mask[:, 1])


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BSRNNConfig:
    """Architecture of one BSRNN (paper Sec. IV-A 4): N = 128, 12 modules, STFT 2048 / 512, V7."""

    sr: int = 44100
    n_fft: int = 2048
    hop: int = 512
    feature_dim: int = 128  # N; BLSTM hidden 2N per direction, mask MLP hidden 4N
    num_layers: int = 12  # band-and-sequence modules (2 residual BLSTMs each)
    bands: str = "v7"  # a key of SCHEMES


ARCHITECTURE = "bsrnn"  # its name in the architecture registry and in checkpoints
PER_TARGET = "per-target"  # as a bag's `bands`: each member gets its target's scheme (TARGET_SCHEMES)

PRESETS: dict[str, BSRNNConfig] = {
    # The paper's models: N = 128, 12 modules, STFT 2048 / 512, the band scheme of each target.
    "paper": BSRNNConfig(bands=PER_TARGET),
}


class BSRNN(nn.Module):
    """Band-split RNN extracting one target. ``model(mixture [B, ch, samples]) -> [B, 1, ch, samples]``.

    Any channel count works; each channel is separated alone (see the module docstring).
    """

    window: Tensor  # a buffer

    def __init__(self, config: BSRNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or BSRNNConfig()
        self.widths = band_widths(config.bands, config.sr, config.n_fft)
        n = config.feature_dim
        self.band_split = BandSplit(self.widths, n)
        self.layers = nn.ModuleList(BandSequenceBlock(n) for _ in range(config.num_layers))
        self.mask = MaskEstimation(self.widths, n)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)  # periodic

    @property
    def min_samples(self) -> int:
        """Shortest input: the centred STFT reflect-pads n_fft // 2 samples on each side."""
        return self.config.n_fft // 2 + 1

    def forward(self, mixture: Tensor) -> Tensor:
        """mixture [B, ch, samples] -> the target [B, 1, ch, samples]."""
        batch, channels, samples = check_mixture(mixture, self.min_samples, "n_fft")
        spec = self._stft(mixture.reshape(batch * channels, samples))  # [BC, F, T]
        target = self._istft(self.estimate_mask(spec) * spec, samples)  # [BC, samples]
        return target.reshape(batch, 1, channels, samples)

    def estimate_mask(self, spec: Tensor) -> Tensor:
        """The complex mask for a mixture spectrogram: [BC, F, T] -> [BC, F, T]."""
        z = self.band_split(spec)
        for layer in self.layers:
            z = layer(z)
        return self.mask(z)

    def _stft(self, audio: Tensor) -> Tensor:
        return stft(audio, self.config.n_fft, self.config.hop, self.window)

    def _istft(self, spec: Tensor, samples: int) -> Tensor:
        return istft(spec, self.config.n_fft, self.config.hop, self.window, samples)


class BSRNNBag(nn.Module):
    """Several one-target BSRNNs as one separator: ``[B, ch, samples] -> [B, S, ch, samples]``.

    ``configs`` maps stem name -> config, in stem order; the members live in the
    ``targets`` ModuleDict, so state-dict keys are ``targets.<stem>.<BSRNN key>``.
    All members must work at the same sample rate (their STFTs may differ).
    """

    def __init__(self, configs: Mapping[str, BSRNNConfig], config: BSRNNConfig | None = None) -> None:
        super().__init__()
        if not configs:
            raise ValueError("a BSRNNBag needs at least one target")
        rates = {config.sr for config in configs.values()}
        if len(rates) > 1:
            raise ValueError(f"the members of a BSRNNBag must share one sample rate, got {sorted(rates)}")
        self.targets = nn.ModuleDict({stem: BSRNN(config) for stem, config in configs.items()})
        self.stems: tuple[str, ...] = tuple(configs)
        # The config the bag was made from (what checkpoints store); by default its first member's.
        self.config = config or next(iter(configs.values()))
        first = next(iter(configs.values()))
        self.card = ModelCard(
            architecture=ARCHITECTURE,
            stems=self.stems,
            sample_rate=first.sr,
            min_samples=self.min_samples,
            stft=(first.n_fft, first.hop),
            cpu_bf16=True,  # 1.4x (TS), 1.5x (BSRNN) faster; stage-2 error 2e-3, 5e-3
        )

    @classmethod
    def for_targets(
        cls, stems: Sequence[str], config: BSRNNConfig | None = None, **overrides: Any
    ) -> BSRNNBag:
        """One model per stem from ``config`` (default: the paper's) with ``overrides``.

        A ``bands`` of :data:`PER_TARGET` gives each member its target's scheme
        (TARGET_SCHEMES); any other scheme name gives every member that scheme.
        """
        config = replace(config or PRESETS["paper"], **overrides)
        members = {
            stem: replace(config, bands=scheme_for_target(stem)) if config.bands == PER_TARGET else config
            for stem in stems
        }
        return cls(members, config)

    @property
    def min_samples(self) -> int:
        # Every member is a BSRNN (a ModuleDict types its values as Module).
        return max(cast(BSRNN, model).min_samples for model in self.targets.values())

    def forward(self, mixture: Tensor) -> Tensor:
        """mixture [B, ch, samples] -> stems [B, S, ch, samples], in ``self.stems`` order."""
        return torch.cat([model(mixture) for model in self.targets.values()], dim=1)
