"""Band split (encoders) and band merge (mask / mapping heads).

The spectrogram's F = win/2 + 1 bins are cut into K = 57 bands of growing width
(BSRNN's 57-band scheme, paper Sec. III-B). Every band has its own small encoder
and its own head. To keep the checkpoint layout of the reference implementation
both are stored as one module per band (``BN_mask.<k>.0`` = GroupNorm, ``.1`` =
Conv1d, ...), but they are *run* band-group by band-group: consecutive bands of
equal width share shapes, so their weights are stacked and applied with one
batched matrix product. That turns 57 small launches into 7, which is where the
speed on both CPU and GPU comes from. ``forward_per_band`` keeps the literal
per-band loop, used by tests to check the grouped path.

Feature layout in and out of these modules is channels-last:
``[batch*channels, K, T, N]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor, nn

from ..ops import onednn

__all__ = ["BandMerge", "BandSplit", "band_widths", "group_norm_last2"]

EPS = torch.finfo(torch.float32).eps

# (band step in Hz, number of bands); the remainder of the spectrum is one last band.
BAND_STEPS = ((50, 20), (100, 10), (250, 8), (500, 8), (1000, 8), (2000, 2))


def band_widths(sr: int, win: int) -> list[int]:
    """Widths in bins of the K bands, low to high (sum = win // 2 + 1).

    Each width is floor(step / (sr / 2) * n_bins); for 44.1 kHz and n_fft 2048:
    2 x 20, 4 x 10, 11 x 8, 23 x 8, 46 x 8, 92 x 2 and 121.
    """
    n_bins = win // 2 + 1
    widths = [math.floor(step / (sr / 2) * n_bins) for step, count in BAND_STEPS for _ in range(count)]
    rest = n_bins - sum(widths)
    if min(widths) < 1 or rest < 1:
        raise ValueError(f"sr={sr}, win={win} leaves a band without bins; use a larger win")
    return [*widths, rest]


def width_groups(widths: list[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive equal-width bands as (first band, number of bands, width)."""
    groups, first = [], 0
    for width, run in itertools.groupby(widths):
        count = len(list(run))
        groups.append((first, count, width))
        first += count
    return groups


def group_norm_last2(x: Tensor, weight: Tensor, bias: Tensor, eps: float = EPS) -> Tensor:
    """``GroupNorm(1, N)`` for channels-last input [..., L, N]: normalise over (L, N) jointly.

    ``weight`` and ``bias`` broadcast against [..., L, N] (shape [N], or
    [G, 1, N] for G stacked bands). Statistics are taken in at least float32.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    var, mean = torch.var_mean(xf, dim=(-2, -1), correction=0, keepdim=True)
    # (x - mean) * rstd * weight + bias as one multiply-add over x: scale and shift
    # are small ([..., 1, N]), x is read once.
    scale = torch.rsqrt(var + eps) * weight
    return torch.addcmul(bias - mean * scale, xf, scale).to(x.dtype)


def _stack(modules: Iterable[nn.Module], index: int, name: str) -> Tensor:
    """Stack parameter ``name`` of sub-module ``index`` of every band: [G, ...]."""
    # Each band's module is an nn.Sequential (a ModuleList types its items as Module).
    return torch.stack([getattr(cast(nn.Sequential, m)[index], name) for m in modules])


def _conv(head: nn.Module, index: int) -> nn.Conv1d:
    """The 1x1 conv at ``index`` (1, 3 or 5) of one band's head in :class:`BandMerge`."""
    conv = cast(nn.Sequential, head)[index]
    assert isinstance(conv, nn.Conv1d)
    return conv


class BandSplit(nn.ModuleList):
    """Complex spectrogram -> per-band features.

    Per band and audio channel: the [bw, T] complex slice viewed as 2*bw real
    channels (real parts, then imaginary parts) -> GroupNorm(1, 2*bw) -> 1x1 conv
    to N features.
    """

    def __init__(self, widths: list[int], feature_dim: int) -> None:
        super().__init__(
            nn.Sequential(nn.GroupNorm(1, 2 * bw, EPS), nn.Conv1d(2 * bw, feature_dim, 1)) for bw in widths
        )
        self.widths = list(widths)
        self.groups = width_groups(self.widths)

    def forward(self, spec: Tensor) -> Tensor:
        """spec: [BC, F, T] complex -> features [BC, K, T, N]."""
        bc, _, frames = spec.shape
        ri = torch.view_as_real(spec)  # [BC, F, T, 2]
        out, bin0 = [], 0
        for first, count, bw in self.groups:
            bands = list(self)[first : first + count]
            x = ri[:, bin0 : bin0 + count * bw].reshape(bc, count, bw, frames, 2)
            x = x.permute(0, 1, 3, 4, 2).reshape(bc, count, frames, 2 * bw)  # channel = ri * bw + f
            x = group_norm_last2(x, _stack(bands, 0, "weight")[:, None], _stack(bands, 0, "bias")[:, None])
            weight = _stack(bands, 1, "weight")[..., 0]  # [G, N, 2bw]
            out.append(x @ weight.transpose(1, 2) + _stack(bands, 1, "bias")[:, None])
            bin0 += count * bw
        return torch.cat(out, dim=1)

    def forward_per_band(self, spec: Tensor) -> Tensor:
        """Literal reference: one encoder call per band (slow; for tests)."""
        ri = torch.stack([spec.real, spec.imag], dim=1)  # [BC, 2, F, T]
        out, bin0 = [], 0
        for encoder, bw in zip(self, self.widths, strict=True):
            x = ri[:, :, bin0 : bin0 + bw].reshape(ri.shape[0], 2 * bw, -1)
            out.append(encoder(x).transpose(1, 2))  # [BC, T, N]
            bin0 += bw
        return torch.stack(out, dim=1)


class BandMerge(nn.ModuleList):
    """Per-band features -> one complex spectrogram per source (masks or mappings).

    Per band: GroupNorm(1, N) -> 1x1 conv N -> N*S -> tanh -> grouped 1x1 conv
    (S groups) -> tanh -> grouped 1x1 conv to bw*4*S -> GLU. Output channels are
    ordered ((a*2 + r)*S + s)*bw + f, a in {value, gate}, r in {real, imag}; the
    result is value * sigmoid(gate).
    """

    def __init__(self, widths: list[int], feature_dim: int, num_sources: int) -> None:
        n, s = feature_dim, num_sources
        super().__init__(
            nn.Sequential(
                nn.GroupNorm(1, n, EPS),
                nn.Conv1d(n, n * s, 1),
                nn.Tanh(),
                nn.Conv1d(n * s, n * s, 1, groups=s),
                nn.Tanh(),
                nn.Conv1d(n * s, bw * 4 * s, 1, groups=s),
            )
            for bw in widths
        )
        self.widths = list(widths)
        self.groups = width_groups(self.widths)
        self.num_sources = num_sources

    def forward(self, features: Tensor) -> Tensor:
        """features: [BC, K, T, N] -> [BC, S, F, T] complex."""
        if onednn.usable(features, _conv(self[0], 1).weight):
            return self._forward_onednn(features)
        bc, _, frames, n = features.shape
        s = self.num_sources
        out = []
        for first, count, bw in self.groups:
            heads = list(self)[first : first + count]
            x = features[:, first : first + count]  # [BC, G, T, N]
            x = group_norm_last2(x, _stack(heads, 0, "weight")[:, None], _stack(heads, 0, "bias")[:, None])
            w1 = _stack(heads, 1, "weight")[..., 0]  # [G, N*S, N]
            x = torch.tanh(x @ w1.transpose(1, 2) + _stack(heads, 1, "bias")[:, None])
            # Grouped convs: split features into S groups -> [BC, G, S, T, N].
            x = x.reshape(bc, count, frames, s, n).transpose(2, 3)
            w2 = _stack(heads, 3, "weight")[..., 0].reshape(count, s, n, n)  # [G, S, out, in]
            x = torch.tanh(x @ w2.transpose(-1, -2) + _stack(heads, 3, "bias").reshape(count, s, 1, n))
            w3 = _stack(heads, 5, "weight")[..., 0].reshape(count, s, 4 * bw, n)
            x = x @ w3.transpose(-1, -2) + _stack(heads, 5, "bias").reshape(count, s, 1, 4 * bw)
            # Back to the conv's channel order, then (a, r, s, f).
            x = x.transpose(2, 3).reshape(bc, count, frames, 2, 2, s, bw)
            out.append(_glu_to_complex(x[:, :, :, 0], x[:, :, :, 1]))  # [BC, S, G*bw, T]
        return torch.cat(out, dim=2)

    def _forward_onednn(self, features: Tensor) -> Tensor:
        """CPU inference: band by band, each head's three 1x1 convs as oneDNN products with
        the tanh fused in (one band's weights are used once, so stacking them buys nothing here).
        """
        bc, _, frames, _ = features.shape
        s = self.num_sources
        norm_weight, norm_bias = _stack(self, 0, "weight")[:, None], _stack(self, 0, "bias")[:, None]
        normed = group_norm_last2(features, norm_weight, norm_bias)  # all K bands at once
        out: Tensor | None = None
        bin0 = 0
        for band, (head, bw) in enumerate(zip(self, self.widths, strict=True)):
            conv1, conv3, conv5 = _conv(head, 1), _conv(head, 3), _conv(head, 5)
            x = onednn.linear(normed[:, band], conv1.weight[..., 0], conv1.bias, activation="tanh")
            x = onednn.grouped_linear(x, conv3.weight, conv3.bias, s, activation="tanh")
            x = onednn.grouped_linear(x, conv5.weight, conv5.bias, s)  # [BC, T, 4*S*bw]
            if out is None:  # [BC, T, a, r, S, F], a in {value, gate}, r in {real, imag}
                out = x.new_empty(bc, frames, 2, 2, s, sum(self.widths))
            out[..., bin0 : bin0 + bw] = x.reshape(bc, frames, 2, 2, s, bw)
            bin0 += bw
        assert out is not None  # set by the first band (band_widths gives at least one)
        return _glu_to_complex(out[:, None, :, 0], out[:, None, :, 1])

    def forward_per_band(self, features: Tensor) -> Tensor:
        """Literal reference: one head call per band (slow; for tests)."""
        bc, _, frames, _ = features.shape
        out = []
        for k, (head, bw) in enumerate(zip(self, self.widths, strict=True)):
            x = head(features[:, k].transpose(1, 2))  # [BC, 4*S*bw, T]
            x = x.reshape(bc, 2, 2, self.num_sources, bw, frames).permute(0, 5, 1, 2, 3, 4)
            out.append(_glu_to_complex(x[:, None, :, 0], x[:, None, :, 1]))
        return torch.cat(out, dim=2)


def _glu_to_complex(value: Tensor, gate: Tensor) -> Tensor:
    """value * sigmoid(gate), both [BC, G, T, 2 (re/im), S, bw] -> complex [BC, S, G*bw, T]."""
    m = (value * torch.sigmoid(gate)).to(torch.promote_types(value.dtype, torch.float32))
    bc, g, t, _, s, bw = m.shape
    m = m.permute(0, 4, 3, 1, 5, 2).reshape(bc, s, 2, g * bw, t)  # [BC, S, re/im, F, T]
    return torch.complex(m[:, :, 0], m[:, :, 1])
