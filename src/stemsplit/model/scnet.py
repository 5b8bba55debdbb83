"""SCNet: sparse compression network (Tong et al., "SCNet: Sparse Compression Network for Music Source
Separation", arXiv 2401.13276), checkpoint-compatible with Music-Source-Separation-Training (MSST's
``scnet`` model type, ``models/scnet/scnet.py`` and ``separation.py``).

A U-net over the complex spectrogram whose down- and up-sampling is sparse: each level cuts the
frequency axis into three bands (low, mid, high: ``band_SR`` of the bins each) and compresses each by
its own stride. For a mixture [B, ch, samples] (ch = ``audio_channels``; C_l = ``dims[l]``)::

    zero-pad the end so that the frames are even                 [B, ch, L]   (L / hop odd)
    X = STFT(x): rectangular window, centred, normalized           [B, 2 ch = C_0, F, T]  (re, im per channel)
    encoder level l (SD block), on [B, C_l, F_l, T]:
        per band b: pad, Conv2d((k_b, 1), stride (s_b, 1))         [B, C_l+1, f_b, T]   (f_b ~ width / s_b)
                    conv module (depth d_b) along T per bin, GELU
        skip_l = concat of the bands                               [B, C_l+1, F_l+1, T]
        x = Conv2d(3x3)(skip_l)
    separation net: num_dplayer dual-path LSTM layers on           [B, C_top, F_top, T]
        layer i: x + Linear(BiLSTM over F) and then x + Linear(BiLSTM over T), each after a GroupNorm(1);
        then an rfft over T (even i: [B, 2C, F, T/2 + 1], re and im stacked) or its inverse (odd i)
    decoder level l, deepest first:
        fusion: x + skip_l, Conv2d(3x3) of [x, x], GLU             [B, C_l+1, F_l+1, T]
        SU layer: per band, ConvTranspose2d((k_b, 1), stride (s_b, 1)), centre-cropped to the band's
        width before the encoder's SD layer                        [B, C_l, F_l, T]  (C_0 -> S * 2 ch)
    stems = ISTFT of the last output read as S * ch (re, im) pairs, the padding cut off
                                                                   [B, S, ch, samples]

The conv module (upstream's ``ConvolutionModule``) on [N, C, T], ``depth`` times x + layer(x)::

    GroupNorm(1, C) -> Conv1d(C, 2h, k) -> GLU -> depthwise Conv1d(h, h, k) -> GroupNorm(1, h) -> SiLU
    -> Conv1d(h, C, 1)                                             h = C // compress, k = conv_kernel

State dict (l < len(dims) - 1 levels, b < 3 bands, i < num_dplayer; decoder j = levels - 1 - l)::

    encoder.<l>.SDlayer.convs.<b>.{weight,bias}                    [C_l+1, C_l, k_b, 1] / [C_l+1]
    encoder.<l>.conv_modules.<b>.layers.<n>.{0,4}.{weight,bias}    GroupNorms [C_l+1] / [h]
        .layers.<n>.1.{weight,bias}                                [2h, C_l+1, k] / [2h]
        .layers.<n>.3.{weight,bias}                                [h, 1, k] / [h]  (depthwise)
        .layers.<n>.6.{weight,bias}                                [C_l+1, h, 1] / [C_l+1]
    encoder.<l>.globalconv.{weight,bias}                           [C_l+1, C_l+1, 3, 3] / [C_l+1]
    separation_net.dp_modules.<i>.norm_layers.<0 freq|1 time>.{weight,bias}        [D]
        .lstm_layers.<0|1>.{weight_ih_l0,weight_hh_l0,bias_ih_l0,bias_hh_l0}(_reverse)
                                                                   [4H, D], [4H, H], [4H]  (H = D expand)
        .linear_layers.<0|1>.{weight,bias}                         [D, 2H] / [D]
                                                                   (D = C_top, doubled for odd i)
    decoder.<j>.0.conv.{weight,bias}                               [2 C_l+1, 2 C_l+1, 3, 3] / [2 C_l+1]
    decoder.<j>.1.convtrs.<b>.{weight,bias}                        [C_l+1, C_l or S C_0, k_b, 1] / [...]

Upstream's ``sources`` (the stem names) is ``num_sources`` here, the names going to the model card.
Upstream's other SCNet model types (``scnet_masked``, ``scnet_tran``, ``scnet_unofficial``) are other
networks and are not built here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..card import ModelCard, default_stem_names
from .layers.stft import check_mixture, istft, stft

__all__ = ["ARCHITECTURE", "PRESETS", "SCNet", "SCNetConfig", "band_edges", "shrink"]

ARCHITECTURE = "scnet"

# MSST's inference settings of every published SCNet: chunk_size 485100 (11 s), num_overlap 4.
WINDOW, HOP = 11.0, 2.75


@dataclass(frozen=True)
class SCNetConfig:
    """Upstream ``SCNet.__init__``'s options, named and defaulted as there, ``sources`` as a count.

    band_SR: the share of the bins in the low, mid and high band (the high one takes the rest, as
    upstream computes it). band_stride, band_kernel: each band's down-sampling. conv_depths: the
    conv modules' depths per band. compress: channel compression of the conv modules. expand: the
    LSTMs' hidden size per feature. normalized: the STFT's 1 / sqrt(nfft) scaling.
    """

    sr: int = 44100  # Hz the network works at (MSST: audio.sample_rate; upstream has no such option)
    num_sources: int = 4
    audio_channels: int = 2
    dims: tuple[int, ...] = (4, 32, 64, 128)
    nfft: int = 4096
    hop_size: int = 1024
    win_size: int = 4096
    normalized: bool = True
    band_SR: tuple[float, ...] = (0.175, 0.392, 0.433)
    band_stride: tuple[int, ...] = (1, 4, 16)
    band_kernel: tuple[int, ...] = (3, 4, 16)
    conv_depths: tuple[int, ...] = (3, 2, 1)
    compress: int = 4
    conv_kernel: int = 3
    num_dplayer: int = 6
    expand: int = 1

    def problem(self) -> str | None:
        """Why a network cannot be built from this config (one line), or None."""
        if self.audio_channels not in (1, 2):
            return f"audio_channels must be 1 or 2, not {self.audio_channels}"
        if len(self.dims) < 2:
            return "dims needs at least two entries (the spectrogram's channels and one level)"
        if self.dims[0] != 2 * self.audio_channels:
            return (
                f"dims[0] must be 2 x audio_channels = {2 * self.audio_channels} (re and im of each "
                f"channel), not {self.dims[0]}"
            )
        for name in ("band_SR", "band_stride", "band_kernel", "conv_depths"):
            if len(getattr(self, name)) != 3:
                return f"{name} must have three entries (low, mid and high band), not {getattr(self, name)}"
        if not 0 < self.band_SR[0] + self.band_SR[1] < 1:
            return f"band_SR's low and mid bands must leave bins for the high one: {self.band_SR}"
        if self.conv_kernel % 2 == 0:
            return f"conv_kernel must be odd, not {self.conv_kernel}"
        if min(self.dims[1:]) < self.compress:
            return f"compress {self.compress} leaves no channel in a conv module of dims {self.dims}"
        if self.num_dplayer % 2:
            return (
                f"num_dplayer must be even, not {self.num_dplayer}: each odd layer brings the features "
                "back from the Fourier transform over time that the even one before it takes"
            )
        if self.win_size > self.nfft:
            return f"win_size {self.win_size} is longer than nfft {self.nfft}"
        if self.hop_size > self.win_size:
            return f"hop_size {self.hop_size} is longer than win_size {self.win_size}: the ISTFT has gaps"
        return None


PRESETS: dict[str, SCNetConfig] = {
    # Upstream's constructor defaults (what an MSST YAML's missing options mean), which are also the
    # model: section of MSST's config_musdb18_scnet.yaml (SCNet small, release v.1.0.6).
    "msst": SCNetConfig(),
    # The model: sections of the published 4-stem configs, as published.
    "large": SCNetConfig(dims=(4, 64, 128, 256), band_SR=(0.225, 0.372, 0.403)),  # v1.0.8
    "xl": SCNetConfig(dims=(4, 64, 128, 256), band_SR=(0.23, 0.37, 0.4), num_dplayer=8),  # v1.0.13
    "xl-ihf": SCNetConfig(  # v1.0.15: a wider high band, the same conv depth in every band
        dims=(4, 64, 128, 256),
        band_SR=(0.23, 0.37, 0.4),
        band_stride=(1, 4, 4),
        band_kernel=(3, 4, 4),
        conv_depths=(3, 3, 3),
        num_dplayer=8,
    ),
}


def band_edges(bins: int, band_SR: tuple[float, ...]) -> list[tuple[int, int]]:
    """The (start, end) bins of the low, mid and high band of ``bins`` rows, rounded up as upstream."""
    low = math.ceil(bins * band_SR[0])
    mid = math.ceil(bins * (band_SR[0] + band_SR[1]))
    return [(0, low), (low, mid), (mid, bins)]


class ConvolutionModule(nn.Module):
    """``depth`` residual layers along time: [N, C, T] -> same (see the module docstring)."""

    def __init__(self, channels: int, depth: int, compress: int, kernel: int) -> None:
        super().__init__()
        hidden = channels // compress
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.GroupNorm(1, channels),
                nn.Conv1d(channels, 2 * hidden, kernel, padding=kernel // 2),
                nn.GLU(dim=1),
                nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden),
                nn.GroupNorm(1, hidden),
                nn.SiLU(),  # upstream's Swish: x * sigmoid(x)
                nn.Conv1d(hidden, channels, 1),
            )
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class SparseDownsample(nn.Module):
    """Upstream's ``SDlayer``: [B, C_in, F, T] -> one [B, C_out, f_b, T] per band, and each band's width."""

    def __init__(self, c: SCNetConfig, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.band_SR, self.strides, self.kernels = c.band_SR, c.band_stride, c.band_kernel
        self.convs = nn.ModuleList(
            nn.Conv2d(channels_in, channels_out, (k, 1), (s, 1))
            for k, s in zip(self.kernels, self.strides, strict=True)
        )

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[int]]:
        bands, widths = [], []
        for conv, stride, kernel, (start, end) in zip(
            self.convs, self.strides, self.kernels, band_edges(x.shape[2], self.band_SR), strict=True
        ):
            width = end - start
            # Stride 1 keeps the width; a stride s pads the band to a multiple of s. Both pad evenly.
            total = kernel - 1 if stride == 1 else (stride - width % stride) % stride
            band = F.pad(x[:, :, start:end], (0, 0, total // 2, total - total // 2))
            bands.append(conv(band))
            widths.append(width)
        return bands, widths


class SparseDownBlock(nn.Module):
    """Upstream's ``SDblock``: x [B, C_in, F, T] -> (next x, skip [B, C_out, F', T], band widths after and
    before the down-sampling)."""

    def __init__(self, c: SCNetConfig, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.SDlayer = SparseDownsample(c, channels_in, channels_out)
        self.conv_modules = nn.ModuleList(
            ConvolutionModule(channels_out, depth, c.compress, c.conv_kernel) for depth in c.conv_depths
        )
        self.globalconv = nn.Conv2d(channels_out, channels_out, 3, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[int], list[int]]:
        bands, widths_before = self.SDlayer(x)
        done = []
        for conv, band in zip(self.conv_modules, bands, strict=True):
            b, ch, f, t = band.shape  # each bin's frames on their own: [B * f, C, T]
            rows = conv(band.transpose(1, 2).reshape(b * f, ch, t))
            done.append(F.gelu(rows.view(b, f, ch, t).transpose(1, 2)))
        skip = torch.cat(done, dim=2)
        return self.globalconv(skip), skip, [band.shape[2] for band in done], widths_before


class FusionLayer(nn.Module):
    """x + skip, then a gated 3x3 convolution: [B, C, F, T] -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = x + skip
        return F.glu(self.conv(torch.cat([x, x], dim=1)), dim=1)  # upstream: x.repeat(1, 2, 1, 1)


class SparseUpsample(nn.Module):
    """Upstream's ``SUlayer``: [B, C_in, sum of the bands' widths, T] -> [B, C_out, F, T], each band
    up-sampled and centre-cropped to its width before the encoder's down-sampling."""

    def __init__(self, c: SCNetConfig, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.convtrs = nn.ModuleList(
            nn.ConvTranspose2d(channels_in, channels_out, (k, 1), (s, 1))
            for k, s in zip(c.band_kernel, c.band_stride, strict=True)
        )

    def forward(self, x: Tensor, widths: list[int], widths_before: list[int]) -> Tensor:
        starts = [0, widths[0], widths[0] + widths[1], x.shape[2]]
        outputs = []
        for convtr, start, end, width in zip(
            self.convtrs, starts[:-1], starts[1:], widths_before, strict=True
        ):
            out = convtr(x[:, :, start:end])
            cut = abs(width - out.shape[2]) // 2
            outputs.append(out[:, :, cut : cut + width])
        return torch.cat(outputs, dim=2)


class DualPathRNN(nn.Module):
    """x + Linear(BiLSTM over frequency), then the same over time: [B, D, F, T] -> same."""

    def __init__(self, dim: int, expand: int) -> None:
        super().__init__()
        hidden = dim * expand
        self.lstm_layers = nn.ModuleList(
            nn.LSTM(dim, hidden, num_layers=1, bidirectional=True, batch_first=True) for _ in range(2)
        )
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, dim) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, dim) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        b, d, f, t = x.shape
        rows = self.norm_layers[0](x).permute(0, 3, 2, 1).reshape(b * t, f, d)  # one sequence per frame
        rows = self.linear_layers[0](self.lstm_layers[0](rows)[0])
        x = x + rows.view(b, t, f, d).permute(0, 3, 2, 1)
        rows = self.norm_layers[1](x).permute(0, 2, 3, 1).reshape(b * f, t, d)  # one sequence per bin
        rows = self.linear_layers[1](self.lstm_layers[1](rows)[0])
        return x + rows.view(b, f, t, d).permute(0, 3, 1, 2)


class SeparationNet(nn.Module):
    """``num_dplayer`` dual-path layers, alternately in time and in the Fourier domain of time:
    [B, C, F, T] (T even) -> same. Upstream's ``FeatureConversion`` steps have no weights."""

    def __init__(self, channels: int, expand: int, num_layers: int) -> None:
        super().__init__()
        self.dp_modules = nn.ModuleList(
            DualPathRNN(channels * (2 if i % 2 else 1), expand) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.dp_modules):
            x = layer(x).float()  # the transforms run in float32, as upstream's
            if i % 2 == 0:  # [B, C, F, T] -> [B, 2C, F, T/2 + 1]: re and im of an rfft over time
                x = torch.fft.rfft(x, dim=3, norm="ortho")
                x = torch.cat([x.real, x.imag], dim=1)
            else:  # back: [B, 2C, F, T/2 + 1] -> [B, C, F, T]
                re, im = x.chunk(2, dim=1)
                x = torch.fft.irfft(torch.complex(re, im), dim=3, norm="ortho")
        return x


class SCNet(nn.Module):
    """``model(mixture)``: [B, ch, samples] -> stems [B, S, ch, samples] (see the module docstring).

    A stereo network takes 1 or 2 channels (mono goes in twice and its stems come out as the mean
    of the two); a mono network separates each channel on its own.
    """

    config: SCNetConfig
    card: ModelCard
    window: Tensor  # a buffer

    def __init__(self, config: SCNetConfig | None = None, **fields: Any) -> None:
        super().__init__()
        self.config = c = replace(config or SCNetConfig(), **fields)
        problem = c.problem()
        if problem:
            raise ValueError(problem)
        levels = len(c.dims) - 1
        self.encoder = nn.ModuleList(SparseDownBlock(c, c.dims[i], c.dims[i + 1]) for i in range(levels))
        self.decoder = nn.ModuleList(  # deepest level first; the last one gives S * C_0 channels
            nn.ModuleList(
                [
                    FusionLayer(c.dims[i + 1]),
                    SparseUpsample(c, c.dims[i + 1], c.dims[i] * (c.num_sources if i == 0 else 1)),
                ]
            )
            for i in reversed(range(levels))
        )
        self.separation_net = SeparationNet(c.dims[-1], c.expand, c.num_dplayer)
        # Upstream passes no window: torch's STFT then uses a rectangular one of win_size samples.
        self.register_buffer("window", torch.ones(c.win_size), persistent=False)
        self.card = ModelCard(
            architecture=ARCHITECTURE,
            stems=default_stem_names(c.num_sources),
            sample_rate=c.sr,
            min_samples=self.min_samples,
            stft=(c.nfft, c.hop_size),
            window=WINDOW,
            hop=HOP,
        )

    @property
    def min_samples(self) -> int:
        """A safe shortest input: the centred STFT reflect-pads nfft // 2 samples on each side (the
        end padding below makes the true minimum a little shorter)."""
        return self.config.nfft // 2 + 1

    def padding(self, samples: int) -> int:
        """Zeros upstream appends: up to a multiple of the hop that is an odd number of hops, so that
        the STFT has an even number of frames (the separation net's rfft over time needs it)."""
        hop = self.config.hop_size
        pad = hop - samples % hop
        return pad + hop if (samples + pad) // hop % 2 == 0 else pad

    def forward(self, mixture: Tensor) -> Tensor:
        """mixture [B, ch, samples] -> stems [B, S, ch, samples]."""
        c = self.config
        batch, channels, samples = check_mixture(mixture, self.min_samples, "nfft")
        stereo = c.audio_channels == 2
        if stereo and channels not in (1, 2):
            raise ValueError(f"a stereo SCNet takes 1 or 2 channels, not {channels}")
        x = mixture.expand(batch, 2, samples) if stereo else mixture.reshape(batch * channels, 1, samples)
        b, ch = x.shape[:2]
        length = samples + self.padding(samples)
        x = F.pad(x, (0, length - samples))

        spec = stft(x.reshape(b * ch, length), c.nfft, c.hop_size, self.window, c.win_size, c.normalized)
        bins, frames = spec.shape[-2:]
        x = torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(b, 2 * ch, bins, frames)  # (re, im) per ch

        saved = []
        for block in self.encoder:
            x, skip, widths, widths_before = block(x)
            saved.append((skip, widths, widths_before))
        x = self.separation_net(x)
        for level, (skip, widths, widths_before) in zip(self.decoder, reversed(saved), strict=True):
            assert isinstance(level, nn.ModuleList)  # [FusionLayer, SparseUpsample] (nn.Module to mypy)
            fusion, upsample = level
            x = upsample(fusion(x, skip), widths, widths_before)

        s = c.num_sources
        x = x.reshape(b * s * ch, 2, bins, frames).permute(0, 2, 3, 1)  # [b S ch, F, T, (re, im)]
        spec = torch.view_as_complex(x.float().contiguous())
        audio = istft(spec, c.nfft, c.hop_size, self.window, length, c.win_size, c.normalized)
        audio = audio.reshape(b, s, ch, length)[..., :samples]
        if stereo:
            return audio.mean(dim=2, keepdim=True) if channels == 1 else audio
        return audio.reshape(batch, channels, s, samples).transpose(1, 2)


def shrink(config: SCNetConfig) -> SCNetConfig:
    """A tiny network of the same spectrogram, levels, bands and outputs (8 channels, 2 RNN layers)."""
    return replace(
        config,
        dims=(config.dims[0],) + (8,) * (len(config.dims) - 1),
        conv_depths=(1, 1, 1),
        compress=min(config.compress, 8),
        num_dplayer=2,
        expand=1,
    )
