"""HTDemucs, Hybrid Transformer Demucs (Demucs v4: Rouard, Massa and Défossez, "Hybrid Transformers for
Music Source Separation", arXiv 2211.08553), checkpoint-compatible with facebookresearch/demucs.

Two U-nets side by side, a spectrogram one and a waveform one, joined at the bottom by a
cross-domain transformer (``htdemucs_transformer.py``). For a mixture [B, ch, L] and S
sources, with the published htdemucs sizes in brackets (nfft 4096, depth 4, channels 48)::

    (eval, use_train_segment) zero-pad L to the training length round(segment * sr) [343980 = 7.8 s]
    z  = STFT (hop nfft/4, re-padded so that frames = ceil(L / hop)), top bin dropped
                                                    [B, ch, nfft/2, T]         [2048 bins, 336 frames]
    x  = z as channels (re, im per channel: cac)    [B, 2 ch, nfft/2, T], normalised by its mean/std
    xt = the waveform                               [B, ch, L], normalised by its mean/std
    encoder i (i < depth), both branches, 48 * 2**i channels:
        x:  bins / 4, frames kept    Conv2d [8, 1] stride [4, 1] -> GELU -> DConv -> 1x1 Conv2d + GLU
        xt: samples / 4              Conv1d 8 stride 4 -> GELU -> DConv -> 1x1 Conv1d + GLU
        after layer 0, x += 0.2 * 10 * freq_emb(bin)                   [B, 48, 512, T]
    (bottom_channels: 1x1 convs 384 -> 512 before the transformer and back after it)
    cross transformer on x [B, C, 8, T] and xt [B, C, L / 256]   [8 x 336 and 1344 tokens]
    decoder i (mirror image): + skip, GLU rewrite (3x3 / 3), DConv, transposed conv, GELU (not the last)
    x  -> [B, S, 2 ch, nfft/2, T] * std + mean -> complex spectrogram -> ISTFT -> [B, S, ch, L]
    xt -> [B, S * ch, L] * std + mean; stems = the two added                      [B, S, ch, L]

State dict (l < depth; the decoders are numbered from the bottom, ``decoder.<depth-1>`` being the
outermost; htdemucs' shapes)::

    encoder.<l>.conv.{weight,bias}           [48 * 2**l, in, 8, 1]   (tencoder: [.., in, 8])
    encoder.<l>.rewrite.{weight,bias}        [2 C, C, 1, 1]
    encoder.<l>.dconv.layers.<d>.{0,1,3,4}.* conv 3 -> GroupNorm(1) -> conv 1 -> GroupNorm(1)
    encoder.<l>.dconv.layers.<d>.6.scale     [C] (LayerScale)
    decoder.<l>.conv_tr, .rewrite [2 C, C, 3, 3], .dconv     (tdecoder: the same in 1-d)
    (norm1 / norm2 GroupNorms in layers from norm_starts on; none in the published networks)
    freq_emb.embedding.weight                [512, 48]
    channel_{up,down}sampler{,_t}.*          1x1 convs, only with bottom_channels
    crosstransformer.norm_in{,_t}.*, crosstransformer.layers{,_t}.<i>.*  (htdemucs_transformer.py)

When the frequencies run out before ``depth`` (``nfft / 2 / 4**i <= kernel_size``) the last
frequency layer convolves the remaining bins to one and the waveform branch MERGES into it
(its encoder is just a conv whose output is added; its decoder starts from the spectrogram
branch); any further layers work on time in both. The published networks never merge.

The module, parameter and layer names are upstream's (``encoder``, ``tencoder``, ``decoder``,
``tdecoder``, ``freq_emb``, ``channel_upsampler``, ``crosstransformer``; inside a layer
``conv``, ``norm1``, ``rewrite``, ``norm2``, ``dconv.layers.<d>.<0|1|3|4|6>``), so a Demucs state
dict loads strictly. Options that the published networks do not use and that need more than
this file are refused by :meth:`HTDemucsConfig.problem`: Wiener filtering (``cac`` false),
``multi_freqs`` band splitting, sparse attention, random sinusoid shifts.

One module of about 770 lines because it is one network: its config (upstream's keyword arguments
and the checks that refuse what a published checkpoint never uses), the layers whose names the
state dict spells (``HEncLayer``, ``HDecLayer``, ``DConv``, ``ScaledEmbedding``) and the forward
pass above are read together against upstream's ``htdemucs.py`` and ``hdemucs.py``; split, each
part would only make sense beside the others. The cross-domain transformer, the part that stands
alone, is :mod:`.htdemucs_transformer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..card import SIX_STEMS, ModelCard, default_stem_names
from .htdemucs_transformer import EMBEDDINGS, CrossTransformerEncoder, LayerScale
from .layers.stft import istft, stft

__all__ = [
    "ARCHITECTURE",
    "MAY_BE_ZERO",
    "PRESETS",
    "SIX_STEMS",
    "HTDemucs",
    "HTDemucsConfig",
    "config_from_kwargs",
    "shrink",
]

ARCHITECTURE = "htdemucs"


# Demucs' own inference protocol (apply_model): windows of the model's segment, overlap 0.25.
OVERLAP = 0.25


@dataclass(frozen=True)
class HTDemucsConfig:
    """Upstream ``HTDemucs.__init__``'s arguments, their names and defaults, plus ``num_sources``.

    Upstream's ``sources`` (the stem names) become ``num_sources`` here, the names going to the
    model card; ``samplerate`` is ``sr``. Where upstream takes None, 0 means the same:
    ``channels_time`` (the time branch's channels: 0 = ``channels``) and ``t_lr`` (0 = the
    optimizer's rate). ``multi_freqs`` (None) is an empty tuple. Upstream's
    ``t_cape_glob_loc_scale`` (three floats for CAPE's training augmentation) has no field:
    :func:`config_from_kwargs` accepts and drops it. ``segment`` is seconds as a float
    (a published .th stores a Fraction: 39/5); the training length is round(segment * sr).
    Options marked *training* change how the network trains, not what it computes.
    """

    num_sources: int = 4
    audio_channels: int = 2
    channels: int = 48
    channels_time: int = 0
    growth: int = 2
    nfft: int = 4096
    wiener_iters: int = 0
    end_iters: int = 0
    wiener_residual: bool = False
    cac: bool = True
    depth: int = 4
    rewrite: bool = True
    multi_freqs: tuple[int, ...] = ()
    multi_freqs_depth: int = 3
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    emb_smooth: bool = True  # training (the embedding's initial values)
    kernel_size: int = 8
    time_stride: int = 2
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    norm_starts: int = 4
    norm_groups: int = 4
    dconv_mode: int = 1  # 1: DConv in the encoders, 2: in the decoders, 3: both
    dconv_depth: int = 2
    dconv_comp: float = 8.0
    dconv_init: float = 1e-3  # training (initial LayerScale)
    bottom_channels: int = 0
    t_layers: int = 5
    t_emb: str = "sin"
    t_hidden_scale: float = 4.0
    t_heads: int = 8
    t_dropout: float = 0.0  # training
    t_max_positions: int = 10000
    t_norm_in: bool = True
    t_norm_in_group: bool = False
    t_group_norm: bool = False
    t_norm_first: bool = True
    t_norm_out: bool = True
    t_max_period: float = 10000.0
    t_weight_decay: float = 0.0  # training
    t_lr: float = 0.0  # training (None upstream)
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_weight_pos_embed: float = 1.0
    t_sin_random_shift: int = 0
    t_cape_mean_normalize: bool = True
    t_cape_augment: bool = True  # training
    t_sparse_self_attn: bool = False
    t_sparse_cross_attn: bool = False
    t_mask_type: str = "diag"  # sparse attention only
    t_mask_random_seed: int = 42  # sparse attention only
    t_sparse_attn_window: int = 500  # sparse attention only
    t_global_window: int = 100  # sparse attention only
    t_sparsity: float = 0.95  # sparse attention only
    t_auto_sparsity: bool = False  # sparse attention only
    t_cross_first: bool = False
    rescale: float = 0.1  # training (initial weights)
    sr: int = 44100
    segment: float = 10.0
    use_train_segment: bool = True

    @property
    def training_length(self) -> int:
        """Samples per window, rounded (upstream truncates int(segment * samplerate), exact for the
        Fraction a .th stores; for a float segment it can come out a sample short)."""
        return round(self.segment * self.sr)

    def plan(self) -> list[tuple[bool, bool]]:
        """Per encoder layer: (works on frequencies, is the last one that does: where the branches merge)."""
        layers, freqs = [], self.nfft // 2
        for _ in range(self.depth):
            freq = freqs > 1
            last = freq and freqs <= self.kernel_size
            layers.append((freq, last))
            if freq:
                freqs = 1 if freqs <= self.kernel_size else freqs // self.stride
        return layers

    @property
    def transformer_channels(self) -> int:
        return self.bottom_channels or self.channels * self.growth ** (self.depth - 1)

    def problem(self) -> str | None:
        """Why a network cannot be built or run from this config (one line), or None."""
        if not self.cac:
            return "cac = false (masks and Wiener filtering) is not implemented; the published models use cac"
        if self.wiener_iters != self.end_iters:
            return f"wiener_iters {self.wiener_iters} must equal end_iters {self.end_iters}"
        if self.multi_freqs:
            return "multi_freqs (MultiWrap frequency bands) is not implemented; no published model uses it"
        if self.channels_time not in (0, self.channels):
            return "channels_time other than channels is not implemented; no published model uses it"
        if self.audio_channels not in (1, 2):
            return f"audio_channels must be 1 or 2, not {self.audio_channels}"
        if self.nfft % 4:
            return f"nfft must be a multiple of 4 (the hop is nfft / 4), not {self.nfft}"
        if self.dconv_mode & 3 and int(self.channels / self.dconv_comp) < 1:
            return f"dconv_comp {self.dconv_comp} leaves the {self.channels}-channel DConv no hidden channel"
        if self.t_layers:
            if self.t_sparse_self_attn or self.t_sparse_cross_attn:
                return "sparse attention (t_sparse_*_attn, xformers kernels) is not implemented"
            if self.t_sin_random_shift:
                return (
                    "t_sin_random_shift > 0 (random positions, even at inference upstream) is not implemented"
                )
            if self.t_emb not in EMBEDDINGS:
                return f"t_emb must be one of {', '.join(EMBEDDINGS)}, not {self.t_emb!r}"
            if any(not freq for freq, _ in self.plan()):
                return (
                    f"depth {self.depth} runs out of frequencies (nfft {self.nfft}) before the transformer, "
                    "which needs them (upstream fails on it too)"
                )
            dim = self.transformer_channels
            if dim % self.t_heads or dim % 4:
                return f"transformer channels {dim} must be a multiple of 4 and of t_heads {self.t_heads}"
        if self.use_train_segment and self.training_length < 1:
            return f"segment {self.segment} s is shorter than a sample at {self.sr} Hz"
        return None


# Fields that may be 0 (the others must be positive).
MAY_BE_ZERO = frozenset(
    {
        "channels_time",
        "wiener_iters",
        "end_iters",
        "multi_freqs_depth",
        "freq_emb",
        "context",
        "context_enc",
        "norm_starts",
        "dconv_mode",
        "dconv_init",
        "bottom_channels",
        "t_layers",
        "t_dropout",
        "t_weight_decay",
        "t_lr",
        "t_weight_pos_embed",
        "t_sin_random_shift",
        "t_mask_random_seed",
        "t_sparse_attn_window",
        "t_global_window",
        "t_sparsity",
        "rescale",
    }
)

# The published networks (demucs/remote/htdemucs.yaml, htdemucs_6s.yaml): upstream's conf/config.yaml
# `htdemucs:` section with the overrides of the grid that trained them (grids/mmi.py) and the segment
# that tools/export.py stores (343980 samples); tests/fixtures/htdemucs/README.md says where each comes from.
_PUBLISHED = HTDemucsConfig(
    dconv_mode=3,
    t_dropout=0.02,
    t_sparse_attn_window=400,
    segment=7.8,
)
PRESETS: dict[str, HTDemucsConfig] = {
    "htdemucs": replace(_PUBLISHED, bottom_channels=512),  # 955717e8, 41,984,456 parameters
    "htdemucs_6s": replace(_PUBLISHED, num_sources=6),  # 5c90dfd2, 27,414,996 parameters
    "defaults": HTDemucsConfig(),  # upstream's constructor defaults (what a kwargs dict leaves out)
}

# Upstream keyword arguments that are not fields, and what becomes of them.
_RENAMED = {"samplerate": "sr"}
_DROPPED = frozenset({"t_cape_glob_loc_scale"})  # CAPE's training augmentation (floats)
_NONE_IS = {"channels_time": 0, "t_lr": 0.0, "multi_freqs": ()}


def config_from_kwargs(kwargs: Mapping[str, Any]) -> tuple[HTDemucsConfig, tuple[str, ...]]:
    """Upstream ``HTDemucs(**kwargs)`` (a Demucs .th file's ``kwargs``) as a config and its stem names.

    ``sources`` names the stems; omitted arguments take upstream's defaults; a Fraction
    ``segment`` (or its text "39/5") becomes seconds. Raises ``families.FamilyError`` (a
    ValueError) naming the first argument stemsplit cannot take.
    """
    from .families import FamilyError, make_config  # families imports this module

    options = dict(kwargs)
    sources = options.pop("sources", None)
    if not isinstance(sources, list | tuple) or not all(isinstance(s, str) for s in sources):
        raise FamilyError(f"{ARCHITECTURE} kwargs must name the sources (a list of names), not {sources!r}")
    overrides: dict[str, Any] = {}
    for key, value in options.items():
        if key in _DROPPED:
            continue
        key = _RENAMED.get(key, key)
        if value is None and key in _NONE_IS:
            value = _NONE_IS[key]
        elif key == "segment" and isinstance(value, Fraction | str):
            try:
                value = float(Fraction(value))
            except ValueError as exc:
                raise FamilyError(f"{ARCHITECTURE} segment {value!r} is not a number") from exc
        elif key == "segment" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        overrides[key] = value
    return make_config(ARCHITECTURE, "defaults", overrides, tuple(sources)), tuple(sources)


def shrink(config: HTDemucsConfig) -> HTDemucsConfig:
    """A tiny network of the same spectrogram, segment and outputs (8 channels, 2 transformer layers)."""
    return replace(
        config,
        channels=8,
        channels_time=8 if config.channels_time else 0,
        norm_groups=math.gcd(config.norm_groups, 8),
        dconv_comp=min(config.dconv_comp, 8.0),
        bottom_channels=32 if config.bottom_channels else 0,
        t_layers=min(config.t_layers, 2),
        t_heads=2,
        t_hidden_scale=1.0,
    )


# --- layers ---------------------------------------------------------------------------------------


def pad1d(x: Tensor, left: int, right: int, mode: str = "constant") -> Tensor:
    """F.pad on the last axis; a reflection longer than the signal first zero-pads it (upstream pad1d)."""
    length = x.shape[-1]
    if mode == "reflect" and length <= max(left, right):
        extra = max(left, right) - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        x = F.pad(x, (extra_left, extra_right))
        left, right = left - extra_left, right - extra_right
    return F.pad(x, (left, right), mode)


class DConv(nn.Module):
    """Residual branches of dilated convolutions: [B, C, T] -> same (upstream demucs.DConv).

    ``depth`` layers, layer d: x += LayerScale(GLU(GN(Conv1x1(GELU(GN(Conv3(x, dilation 2**d))))))), with
    C / compress hidden channels and GroupNorms of one group (no dilation when depth < 0).
    Indices 0, 1, 3, 4, 6 of each layer hold the parameters, as upstream.
    """

    def __init__(self, channels: int, compress: float, depth: int, init: float) -> None:
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for d in range(abs(depth)):
            dilation = 2**d if depth > 0 else 1
            self.layers.append(
                nn.Sequential(
                    nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
                    nn.GroupNorm(1, hidden),
                    nn.GELU(),
                    nn.Conv1d(hidden, 2 * channels, 1),
                    nn.GroupNorm(1, 2 * channels),
                    nn.GLU(1),
                    LayerScale(channels, init),
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def _dconv_over_time(dconv: DConv, y: Tensor, freq: bool) -> Tensor:
    """A DConv along time; on [B, C, Fr, T] each frequency row is a sequence of its own."""
    if not freq:
        return dconv(y)
    b, c, fr, t = y.shape
    y = dconv(y.permute(0, 2, 1, 3).reshape(b * fr, c, t))
    return y.view(b, fr, c, t).permute(0, 2, 1, 3)


class HEncLayer(nn.Module):
    """One encoder layer (upstream hdemucs.HEncLayer), on frequencies ([B, C, Fr, T], Conv2d with a
    [kernel, 1] kernel) or on time ([B, C, T], Conv1d; a 4-d input is flattened to it):

        y = conv(x) (+ inject) -> GELU(norm1) -> DConv -> GLU(norm2(rewrite))   [B, chout, Fr / stride, T]

    ``empty``: just the conv (the waveform branch's last layer before the merge). A time layer
    first zero-pads the input to a multiple of the stride.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel_size: int,
        stride: int,
        norm_groups: int,
        empty: bool,
        freq: bool,
        dconv: bool,
        norm: bool,
        context: int,
        dconv_kw: Mapping[str, Any],
        pad: bool,
        rewrite: bool,
    ) -> None:
        super().__init__()
        norm_fn = (lambda d: nn.GroupNorm(norm_groups, d)) if norm else (lambda d: nn.Identity())
        padding = kernel_size // 4 if pad else 0
        self.freq, self.stride, self.empty = freq, stride, empty
        self.kernel_size, self.pad = kernel_size, padding
        self.conv: nn.Conv1d | nn.Conv2d
        if freq:
            self.conv = nn.Conv2d(chin, chout, (kernel_size, 1), (stride, 1), (padding, 0))
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, padding)
        if empty:
            return
        conv = nn.Conv2d if freq else nn.Conv1d
        self.norm1 = norm_fn(chout)
        self.rewrite = conv(chout, 2 * chout, 1 + 2 * context, 1, context) if rewrite else None
        if rewrite:
            self.norm2 = norm_fn(2 * chout)
        self.dconv = DConv(chout, **dconv_kw) if dconv else None

    def forward(self, x: Tensor, inject: Tensor | None = None) -> Tensor:
        if not self.freq:
            if x.dim() == 4:
                x = x.flatten(1, 2)
            if x.shape[-1] % self.stride:
                x = F.pad(x, (0, self.stride - x.shape[-1] % self.stride))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:  # the waveform branch, now as long as this branch's frames
            y = y + (inject[:, :, None] if inject.dim() == 3 and y.dim() == 4 else inject)
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_over_time(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        return F.glu(self.norm2(self.rewrite(y)), dim=1)


class HDecLayer(nn.Module):
    """One decoder layer (upstream hdemucs.HDecLayer): returns (output, input of its transposed conv)::

    y = GLU(norm1(rewrite(x + skip))) -> DConv      (an empty layer: y = x, no skip)
    z = norm2(conv_tr(y)), cropped by the encoder's padding (time: to ``length``), GELU unless last
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        last: bool,
        kernel_size: int,
        stride: int,
        norm_groups: int,
        empty: bool,
        freq: bool,
        dconv: bool,
        norm: bool,
        context: int,
        dconv_kw: Mapping[str, Any],
        pad: bool,
        rewrite: bool,
    ) -> None:
        super().__init__()
        norm_fn = (lambda d: nn.GroupNorm(norm_groups, d)) if norm else (lambda d: nn.Identity())
        self.pad = kernel_size // 4 if pad else 0
        self.last, self.freq, self.chin, self.empty = last, freq, chin, empty
        self.conv_tr: nn.ConvTranspose1d | nn.ConvTranspose2d
        if freq:
            self.conv_tr = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
        self.norm2 = norm_fn(chout)
        if empty:
            return
        conv = nn.Conv2d if freq else nn.Conv1d
        self.rewrite = conv(chin, 2 * chin, 1 + 2 * context, 1, context) if rewrite else None
        if rewrite:
            self.norm1 = norm_fn(2 * chin)
        self.dconv = DConv(chin, **dconv_kw) if dconv else None

    def forward(self, x: Tensor, skip: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        if self.empty:
            y = x
        else:
            assert skip is not None  # only an empty layer (the split) is given none
            x = x + skip
            y = F.glu(self.norm1(self.rewrite(x)), dim=1) if self.rewrite is not None else x
            if self.dconv is not None:
                y = _dconv_over_time(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad : -self.pad, :]
        else:
            z = z[..., self.pad : self.pad + length]
        return (z if self.last else F.gelu(z)), y


class _Stride(TypedDict):
    """Where an encoder or decoder layer convolves (:class:`HEncLayer`'s arguments)."""

    kernel_size: int
    stride: int
    freq: bool
    pad: bool


class _Common(TypedDict):
    """The arguments an encoder and a decoder layer of the same level share."""

    norm: bool
    norm_groups: int
    dconv_kw: Mapping[str, Any]


class _Options(_Common):
    """An encoder layer's remaining arguments (a decoder layer adds ``last``)."""

    dconv: bool
    context: int
    rewrite: bool


class _DecoderOptions(_Options):
    last: bool


class ScaledEmbedding(nn.Module):
    """A learned embedding read times ``scale`` (upstream hdemucs.ScaledEmbedding): [N] -> [N, dim]."""

    def __init__(self, num: int, dim: int, scale: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num, dim)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding(x) * self.scale


# --- the network ---------------------------------------------------------------------------------


class HTDemucs(nn.Module):
    """``model(mixture)``: [B, ch, samples] -> stems [B, S, ch, samples] (see the module docstring).

    A stereo network takes a mono input as two equal channels and returns the mean of the two; a
    mono network separates each channel on its own. In eval mode with ``use_train_segment``
    (the published networks) a window may not be longer than ``config.training_length``; a
    shorter one is zero-padded to it inside the network, as upstream does.
    """

    config: HTDemucsConfig
    card: ModelCard
    window: Tensor  # a buffer

    def __init__(self, config: HTDemucsConfig | None = None, **fields_: Any) -> None:
        super().__init__()
        c = replace(config or HTDemucsConfig(), **fields_)
        problem = c.problem()
        if problem:
            raise ValueError(problem)
        self.config = c
        self.hop_length = c.nfft // 4
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()

        dconv_kw = dict(depth=c.dconv_depth, compress=c.dconv_comp, init=c.dconv_init)
        chin, chin_z = c.audio_channels, 2 * c.audio_channels  # time branch, frequency branch (re, im)
        chout = chout_z = c.channels
        freqs = c.nfft // 2
        self.freq_emb: ScaledEmbedding | None = None
        for index, (freq, last_freq) in enumerate(c.plan()):
            kernel, stride = (c.kernel_size, c.stride) if freq else (2 * c.time_stride, c.time_stride)
            if last_freq:
                kernel = freqs  # all remaining frequencies into one, unpadded
                chout_z = chout = max(chout, chout_z)
            common = _Common(norm=index >= c.norm_starts, norm_groups=c.norm_groups, dconv_kw=dconv_kw)
            enc: _Options = {
                **common,
                "dconv": bool(c.dconv_mode & 1),
                "context": c.context_enc,
                "rewrite": c.rewrite,
            }
            dec: _DecoderOptions = {
                **common,
                "dconv": bool(c.dconv_mode & 2),
                "context": c.context,
                "rewrite": c.rewrite,
                "last": index == 0,
            }
            on_freq = _Stride(kernel_size=kernel, stride=stride, freq=freq, pad=not last_freq)
            on_time = _Stride(kernel_size=c.kernel_size, stride=c.stride, freq=False, pad=True)

            self.encoder.append(HEncLayer(chin_z, chout_z, empty=False, **on_freq, **enc))
            if freq:
                self.tencoder.append(HEncLayer(chin, chout, empty=last_freq, **on_time, **enc))
            if index == 0:  # the decoders' outputs: every source's channels
                chin = c.audio_channels * c.num_sources
                chin_z = 2 * chin
            self.decoder.insert(0, HDecLayer(chout_z, chin_z, empty=False, **on_freq, **dec))
            if freq:
                self.tdecoder.insert(0, HDecLayer(chout, chin, empty=last_freq, **on_time, **dec))
            chin, chin_z = chout, chout_z
            chout, chout_z = int(c.growth * chout), int(c.growth * chout_z)
            if freq:
                freqs = 1 if freqs <= c.kernel_size else freqs // c.stride
            if index == 0 and c.freq_emb:
                self.freq_emb = ScaledEmbedding(freqs, chin_z, scale=c.emb_scale)

        dim = c.channels * c.growth ** (c.depth - 1)
        if c.bottom_channels:
            self.channel_upsampler = nn.Conv1d(dim, c.bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(c.bottom_channels, dim, 1)
            self.channel_upsampler_t = nn.Conv1d(dim, c.bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(c.bottom_channels, dim, 1)
        self.crosstransformer = (
            CrossTransformerEncoder(
                dim=c.transformer_channels,
                emb=c.t_emb,
                hidden_scale=c.t_hidden_scale,
                num_heads=c.t_heads,
                num_layers=c.t_layers,
                cross_first=c.t_cross_first,
                max_positions=c.t_max_positions,
                norm_in=c.t_norm_in,
                norm_in_group=c.t_norm_in_group,
                group_norm=c.t_group_norm,
                norm_first=c.t_norm_first,
                norm_out=c.t_norm_out,
                max_period=c.t_max_period,
                layer_scale=c.t_layer_scale,
                gelu=c.t_gelu,
                weight_pos_embed=c.t_weight_pos_embed,
                cape_mean_normalize=c.t_cape_mean_normalize,
            )
            if c.t_layers
            else None
        )
        self.register_buffer("window", torch.hann_window(c.nfft), persistent=False)
        self.card = ModelCard(
            architecture=ARCHITECTURE,
            stems=default_stem_names(c.num_sources),
            sample_rate=c.sr,
            min_samples=self.hop_length,  # one STFT frame (a window under the segment is padded to it)
            stft=(c.nfft, self.hop_length),
            normalization="meanstd",  # Demucs normalises the song by its mono mix's mean and std
            window=c.segment,
            hop=(1 - OVERLAP) * c.segment,
            channels=c.audio_channels,
            max_samples=c.training_length if c.use_train_segment else None,
        )

    # --- spectrogram ---

    def _spec(self, x: Tensor) -> Tensor:
        """[B, ch, L] -> [B, ch, nfft/2, ceil(L / hop)] complex: frame k centred on sample k * hop + hop / 2.

        Reflect-pads 3/2 hop on the left (and to a whole number of hops on the right), takes the centred,
        normalised STFT, drops the top bin, and keeps frames 2 .. 2 + ceil(L / hop).
        """
        hop, length = self.hop_length, x.shape[-1]
        frames = math.ceil(length / hop)
        pad = hop // 2 * 3
        x = pad1d(x, pad, pad + frames * hop - length, mode="reflect")
        z = stft(x.reshape(-1, x.shape[-1]), self.config.nfft, hop, self.window, normalized=True)
        z = z.view(*x.shape[:-1], *z.shape[-2:])[..., :-1, :]
        return z[..., 2 : 2 + frames]

    def _ispec(self, z: Tensor, length: int) -> Tensor:
        """[..., nfft/2, T] complex -> [..., length]: :meth:`_spec` undone (top bin and edge frames zero)."""
        hop = self.hop_length
        z = F.pad(z, (2, 2, 0, 1))
        pad = hop // 2 * 3
        padded = hop * math.ceil(length / hop) + 2 * pad
        x = istft(z.reshape(-1, *z.shape[-2:]), self.config.nfft, hop, self.window, padded, normalized=True)
        return x.view(*z.shape[:-2], padded)[..., pad : pad + length]

    # --- forward ---

    def forward(self, mixture: Tensor) -> Tensor:
        """mixture [B, ch, samples] -> stems [B, S, ch, samples]."""
        if mixture.dim() != 3:
            raise ValueError(
                f"expected mixture of shape [batch, channels, samples], got {tuple(mixture.shape)}"
            )
        batch, channels, samples = mixture.shape
        want = self.config.audio_channels
        if want == 1:  # each channel on its own
            stems = self.separate(mixture.reshape(batch * channels, 1, samples))  # [B * ch, S, 1, L]
            return stems.view(batch, channels, -1, samples).transpose(1, 2)
        if channels == 1:  # dual mono in, the mean of the two channels out
            return self.separate(mixture.expand(batch, 2, samples)).mean(dim=2, keepdim=True)
        if channels != 2:
            raise ValueError(f"a stereo HTDemucs takes 1 or 2 channels, not {channels}")
        return self.separate(mixture)

    def separate(self, mix: Tensor) -> Tensor:
        """[B, audio_channels, L] -> [B, S, audio_channels, L]: upstream ``HTDemucs.forward``."""
        c = self.config
        length = mix.shape[-1]
        if c.use_train_segment and not self.training:
            if length > c.training_length:
                raise ValueError(
                    f"input of {length} samples is longer than the network's segment of {c.training_length} "
                    f"({c.segment} s at {c.sr} Hz)"
                )
            mix = F.pad(mix, (0, c.training_length - length))
        padded = mix.shape[-1]

        z = self._spec(mix)  # [B, ch, Fq, T]
        b, ch, fq, frames = z.shape
        x = torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(b, 2 * ch, fq, frames)  # re, im per channel
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - meant) / (1e-5 + stdt)

        saved, saved_t, lengths, lengths_t = [], [], [], []  # skips and lengths, both branches
        for index, encode in enumerate(self.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if index < len(self.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = self.tencoder[index]
                xt = tenc(xt)
                if tenc.empty:
                    inject = xt  # the merge: the waveform branch joins the spectrogram branch
                else:
                    saved_t.append(xt)
            x = encode(x, inject)
            if index == 0 and self.freq_emb is not None:
                rows = torch.arange(x.shape[-2], device=x.device)
                x = x + c.freq_emb * self.freq_emb(rows).t()[None, :, :, None]
            saved.append(x)

        if self.crosstransformer is not None:
            if c.bottom_channels:
                x = self.channel_upsampler(x.flatten(2)).unflatten(2, x.shape[2:])
                xt = self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt)
            if c.bottom_channels:
                x = self.channel_downsampler(x.flatten(2)).unflatten(2, x.shape[2:])
                xt = self.channel_downsampler_t(xt)

        offset = c.depth - len(self.tdecoder)
        for index, decode in enumerate(self.decoder):
            x, pre = decode(x, saved.pop(), lengths.pop())
            if index >= offset:
                tdec = self.tdecoder[index - offset]
                if tdec.empty:  # the split: the waveform branch restarts from the spectrogram branch
                    xt, _ = tdec(pre[:, :, 0], None, lengths_t.pop())
                else:
                    xt, _ = tdec(xt, saved_t.pop(), lengths_t.pop())

        s = c.num_sources
        x = x.view(b, s, -1, fq, frames) * std[:, None] + mean[:, None]  # [B, S, 2 ch, Fq, T]
        zout = torch.view_as_complex(x.view(b, s, -1, 2, fq, frames).permute(0, 1, 2, 4, 5, 3).contiguous())
        x = self._ispec(zout, padded)  # [B, S, ch, L]
        xt = xt.view(b, s, -1, padded) * stdt[:, None] + meant[:, None]
        return (xt + x)[..., :length]
