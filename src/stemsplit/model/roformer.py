"""The parts both RoFormer families share: band split, axial transformers with rotary positions, mask heads.

BS-RoFormer (Lu et al., arXiv 2309.02612) and Mel-Band RoFormer (Wang et al.,
arXiv 2310.01809) differ only in how the spectrogram is cut into bands
(``bs_roformer.py``: consecutive bands of given widths; ``mel_band_roformer.py``:
overlapping mel bands). Everything else is here, written from the networks of
Music-Source-Separation-Training (MSST, ``models/bs_roformer/``), whose module
and parameter names are kept so that its published checkpoints load strictly.

One layer of :class:`AxialLayers` on band features x [B, T frames, K bands, D]::

    (linear transformer over all T*K positions, if linear_transformer_depth > 0)
    (+ the outputs of every earlier layer, if skip_connection)
    time transformer: one sequence per band           [B*K, T, D]
    freq transformer: one sequence per frame          [B*T, K, D]

A transformer block is ``x + attention(x)``, then ``x + feedforward(x)``, each
starting with an RMSNorm. Attention is gated per head (``to_gates``) and uses
rotary positions, whose fixed ``freqs`` appear in the state dict once per
attention layer (upstream shares one rotary module among the layers of an
axis; here each layer has its own copy of the same values, so that a state
dict has no shared tensors, which safetensors cannot save).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import Field, dataclass
from typing import Any, ClassVar, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..card import ModelCard, default_stem_names
from .layers.stft import check_mixture, istft, stft

__all__ = [
    "HOP",
    "WINDOW",
    "AxialLayers",
    "BandNetworkConfig",
    "BandSplit",
    "MaskEstimator",
    "RMSNorm",
    "Roformer",
    "RoformerConfig",
    "RotaryEmbedding",
    "Transformer",
]


@dataclass(frozen=True)
class RoformerConfig:
    """The options both families take, named and defaulted as MSST's ``model:`` section.

    Options marked *training* change how the network trains, not what it
    computes: they are kept so that a config reads back as written.
    """

    sr: int = 44100  # Hz the network works at (MSST: audio.sample_rate)
    dim: int = 384
    depth: int = 12
    stereo: bool = True  # the network sees both channels at once (else one channel at a time)
    num_stems: int = 4
    time_transformer_depth: int = 2
    freq_transformer_depth: int = 2
    linear_transformer_depth: int = 0
    dim_head: int = 64
    heads: int = 8
    attn_dropout: float = 0.0  # training
    ff_dropout: float = 0.0  # training
    flash_attn: bool = True  # no effect: attention always goes through scaled_dot_product_attention
    dim_freqs_in: int = 1025  # unused upstream as well
    stft_n_fft: int = 2048
    stft_hop_length: int = 512
    stft_win_length: int = 2048
    stft_normalized: bool = False
    zero_dc: bool = True
    mask_estimator_depth: int = 2
    mlp_expansion_factor: int = 4
    use_torch_checkpoint: bool = False  # training (recompute activations)
    skip_connection: bool = False
    use_pope: bool = False  # polar positional embeddings instead of rotary: not implemented here
    multi_stft_resolution_loss_weight: float = 1.0  # training (the loss)
    multi_stft_resolutions_window_sizes: tuple[int, ...] = (4096, 2048, 1024, 512, 256)  # training
    multi_stft_hop_size: int = 147  # training
    multi_stft_normalized: bool = False  # training

    @property
    def audio_channels(self) -> int:
        return 2 if self.stereo else 1

    def problem(self) -> str | None:
        """Why a network cannot be built from this config (one line), or None."""
        if self.use_pope:
            return "use_pope = true (PoPE positions) is not implemented; only rotary positions are"
        if self.dim_head % 2:
            return f"dim_head must be even for rotary positions, not {self.dim_head}"
        if self.stft_win_length > self.stft_n_fft:
            return f"stft_win_length {self.stft_win_length} is longer than stft_n_fft {self.stft_n_fft}"
        return None


# Window and hop (seconds) when nothing says otherwise: MSST's usual chunk of 352800 samples at 44.1 kHz
# with num_overlap 2. A registry entry or an MSST config (--model-config) gives a checkpoint's own.
WINDOW, HOP = 8.0, 4.0

# Fields that may be 0 (the others must be positive).
MAY_BE_ZERO = frozenset(
    {"linear_transformer_depth", "attn_dropout", "ff_dropout", "multi_stft_resolution_loss_weight"}
)


# --- layers ------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / |x| * sqrt(dim) * gamma over the last axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class RotaryEmbedding(nn.Module):
    """Rotary positions (RoFormer) on pairs of adjacent features, theta 10000.

    ``freqs`` [dim / 2] is a fixed function of ``dim``; it is stored because
    the published checkpoints hold it.
    """

    freqs: Tensor  # a buffer

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
        self.register_buffer("freqs", freqs)

    def rotate(self, x: Tensor) -> Tensor:
        """x [..., n, dim] with position i at x[..., i, :] -> the same, each pair turned by i * freq."""
        positions = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
        # [n, dim]: f0 f0 f1 f1 ... (the pairs), times the position
        angles = (positions[:, None] * self.freqs.float()).repeat_interleave(2, dim=-1)
        pairs = x.unflatten(-1, (-1, 2))
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return (x * angles.cos() + turned * angles.sin()).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions and a sigmoid gate per head: [b, n, dim] -> same."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.rotary_embed = RotaryEmbedding(dim_head)
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # [b, h, n, d]
        q, k = self.rotary_embed.rotate(q), self.rotary_embed.rotate(k)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out * self.to_gates(x).sigmoid().transpose(1, 2)[..., None]  # [b, h, n, 1]
        return self.to_out(out.transpose(1, 2).flatten(2))


class LinearAttention(nn.Module):
    """Cross-covariance attention (El-Nouby et al., arXiv 2106.09681): features attend to features.

    [b, n, dim] -> same; per head, queries and keys are the d feature rows of
    length n, L2-normalised over n, the logits scaled by exp(temperature) * 8.
    """

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, 3 * heads * dim_head, bias=False))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        # Index 1, as upstream: its index 0 is a parameter-free rearrangement.
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        q, k, v = self.to_qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 4, 1)  # [b, h, d, n]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out = F.scaled_dot_product_attention(q * self.temperature.exp(), k, v, scale=8.0)
        return self.to_out(out.permute(0, 3, 1, 2).flatten(2))  # [b, n, h * d]


class FeedForward(nn.Module):
    """RMSNorm -> Linear(dim, 4 dim) -> GELU -> Linear(4 dim, dim); indices as upstream (3: its dropout)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            RMSNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Identity(), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """``depth`` pre-norm blocks over [b, n, dim]; an RMSNorm at the end when ``norm_output``.

    ``linear``: cross-covariance attention without positions (a linear transformer), else
    rotary self-attention.
    """

    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, linear: bool, norm_output: bool
    ) -> None:
        super().__init__()
        attention = LinearAttention if linear else Attention
        self.layers = nn.ModuleList(
            nn.ModuleList([attention(dim, heads, dim_head), FeedForward(dim)]) for _ in range(depth)
        )
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            attention, feedforward = cast(nn.ModuleList, layer)  # built as [attention, feedforward]
            x = attention(x) + x
            x = feedforward(x) + x
        return self.norm(x)


class AxialLayers(nn.ModuleList):
    """``depth`` layers of (linear,) time and freq transformers over band features [B, T, K, D] -> same.

    ``norm_output``: each transformer ends in an RMSNorm (Mel-Band RoFormer);
    BS-RoFormer instead normalises once after the last layer.
    """

    def __init__(self, config: RoformerConfig, norm_output: bool) -> None:
        c = config

        def transformer(depth: int, linear: bool = False) -> Transformer:
            return Transformer(c.dim, depth, c.heads, c.dim_head, linear, norm_output)

        layers = []
        for _ in range(c.depth):
            layer = (
                [transformer(c.linear_transformer_depth, linear=True)] if c.linear_transformer_depth else []
            )
            layer += [transformer(c.time_transformer_depth), transformer(c.freq_transformer_depth)]
            layers.append(nn.ModuleList(layer))
        super().__init__(layers)
        self.skip_connection = c.skip_connection

    def forward(self, x: Tensor) -> Tensor:
        b, t, k, d = x.shape
        outputs: list[Tensor] = []
        for layer in self:
            *linear, time, freq = cast(nn.ModuleList, layer)  # built as [(linear,) time, freq]
            if linear:
                x = linear[0](x.reshape(b, t * k, d)).reshape(b, t, k, d)
            if self.skip_connection:
                for earlier in outputs:
                    x = x + earlier
            x = time(x.transpose(1, 2).reshape(b * k, t, d)).reshape(b, k, t, d).transpose(1, 2)
            x = freq(x.reshape(b * t, k, d)).reshape(b, t, k, d)
            outputs.append(x)
        return x


class BandSplit(nn.Module):
    """Per band: RMSNorm + Linear(width -> dim). [B, T, sum(widths)] -> [B, T, K, dim]."""

    def __init__(self, dim: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.widths = list(widths)
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(w), nn.Linear(w, dim)) for w in widths)

    def forward(self, x: Tensor) -> Tensor:
        bands = x.split(self.widths, dim=-1)
        return torch.stack([net(band) for band, net in zip(bands, self.to_features, strict=True)], dim=-2)


def _mlp(dim_in: int, dim_out: int, dim_hidden: int, depth: int) -> nn.Sequential:
    """``depth`` linear layers with tanh between them."""
    dims = [dim_in, *[dim_hidden] * (depth - 1), dim_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < depth - 1 else [])
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """One stem's mask: per band an MLP (dim -> 2 width) + GLU. [B, T, K, dim] -> [B, T, sum(widths)].

    ``depth``: the MLP's linear layers (upstream's ``mask_estimator_depth`` in
    BS-RoFormer, one more in Mel-Band RoFormer, whose MLP counts hidden layers).
    """

    def __init__(self, dim: int, widths: Sequence[int], depth: int, mlp_expansion_factor: int) -> None:
        super().__init__()
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_mlp(dim, 2 * w, dim * mlp_expansion_factor, depth), nn.GLU(dim=-1)) for w in widths
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([net(band) for band, net in zip(x.unbind(-2), self.to_freqs, strict=True)], dim=-1)


# --- the network around the bands -----------------------------------------------------------------


class BandNetworkConfig(Protocol):
    """What :class:`Roformer` reads from its config: a :class:`RoformerConfig`, or BSMamba2's config,
    which has these fields but none of the transformers' (it is no RoformerConfig)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # a dataclass: dataclasses.replace takes it

    @property
    def sr(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def stereo(self) -> bool: ...
    @property
    def num_stems(self) -> int: ...
    @property
    def stft_n_fft(self) -> int: ...
    @property
    def stft_hop_length(self) -> int: ...
    @property
    def stft_win_length(self) -> int: ...
    @property
    def stft_normalized(self) -> bool: ...
    @property
    def zero_dc(self) -> bool: ...
    @property
    def mlp_expansion_factor(self) -> int: ...
    def problem(self) -> str | None: ...


class Roformer(nn.Module):
    """What both families do around their bands: STFT, band features, axial layers, masks, ISTFT.

    A family says how many linear layers its mask MLPs have, which
    spectrogram rows make its bands (:meth:`band_rows`, with their widths in
    ``self.widths``) and how masks of those rows become one mask per bin
    (:meth:`merge_masks`). ``stems`` may name one stem more
    than the network estimates (a single-target checkpoint's ``other``): that
    one is the mixture minus the estimated stems, as MSST makes it.
    """

    config: BandNetworkConfig
    card: ModelCard
    window: Tensor  # a buffer

    def __init__(
        self,
        architecture: str,
        config: BandNetworkConfig,
        widths: Sequence[int],
        norm_output: bool,
        mask_layers: int,
    ) -> None:
        super().__init__()
        c = config
        problem = c.problem()
        if problem:
            raise ValueError(problem)
        self.config = c
        self.widths = list(widths)  # features per band: 2 (re, im) x channels x bins
        self.band_split = BandSplit(c.dim, self.widths)
        self.layers = self.make_layers(c, norm_output)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(c.dim, self.widths, mask_layers, c.mlp_expansion_factor) for _ in range(c.num_stems)
        )
        self.register_buffer("window", torch.hann_window(c.stft_win_length), persistent=False)
        self.card = ModelCard(
            architecture=architecture,
            stems=default_stem_names(c.num_stems),
            sample_rate=c.sr,
            min_samples=self.min_samples,
            stft=(c.stft_n_fft, c.stft_hop_length),
            window=WINDOW,
            hop=HOP,
        )

    def make_layers(self, config: BandNetworkConfig, norm_output: bool) -> nn.Module:
        """The layers between the band split and the masks, [B, T, K, dim] -> same: axial transformers
        (BSMamba2, which shares everything else, puts Mamba-2 layers there)."""
        assert isinstance(config, RoformerConfig)  # the transformers' fields (BSMamba2 overrides this)
        return AxialLayers(config, norm_output)

    @property
    def min_samples(self) -> int:
        """Shortest input: the centred STFT reflect-pads n_fft // 2 samples on each side."""
        return self.config.stft_n_fft // 2 + 1

    def features(self, x: Tensor) -> Tensor:
        """Band features after the axial layers: [B, T, K, dim] -> same (BS-RoFormer adds a final norm)."""
        return self.layers(x)

    def band_rows(self, spec: Tensor) -> Tensor:
        """[B, F*ch, T, 2] (real, imag) -> the rows the bands read, in band order [B, rows, T, 2]."""
        raise NotImplementedError

    def merge_masks(self, masks: Tensor, bins: int) -> Tensor:
        """Masks of the band rows [B, S, rows, T] complex -> one mask per bin [B, S, bins, T]."""
        raise NotImplementedError

    def forward(self, mixture: Tensor) -> Tensor:
        """mixture [B, ch, samples] -> stems [B, S, ch, samples].

        A stereo network takes 2 channels; a mono input goes in twice and its
        stems come out as the mean of the two. A mono network separates each
        channel on its own.
        """
        c = self.config
        batch, channels, samples = check_mixture(mixture, self.min_samples, "stft_n_fft")
        if c.stereo and channels not in (1, 2):
            raise ValueError(f"a stereo RoFormer takes 1 or 2 channels, not {channels}")
        x = mixture.expand(batch, 2, samples) if c.stereo else mixture.reshape(batch * channels, 1, samples)
        b, ch = x.shape[:2]

        spec = stft(x.reshape(b * ch, samples), c.stft_n_fft, c.stft_hop_length, self.window, **self._stft)
        bins, frames = spec.shape[-2:]
        # [b, F * ch, T, 2]: channels interleaved within each bin, as upstream's '(f s)'
        spec = torch.view_as_real(spec).reshape(b, ch, bins, frames, 2).transpose(1, 2)
        spec = spec.reshape(b, bins * ch, frames, 2)

        rows = self.band_rows(spec)  # [b, rows, T, 2]
        x = rows.permute(0, 2, 1, 3).reshape(b, frames, -1)  # [b, T, rows * 2]
        x = self.features(self.band_split(x))  # [b, T, K, dim]
        masks = torch.stack([estimate(x) for estimate in self.mask_estimators], dim=1)  # [b, S, T, rows*2]
        masks = masks.float().unflatten(-1, (-1, 2)).transpose(2, 3)  # [b, S, rows, T, 2]
        masks = self.merge_masks(torch.complex(masks[..., 0], masks[..., 1]), spec.shape[1])

        stems = torch.view_as_complex(spec.float().contiguous())[:, None] * masks  # [b, S, F * ch, T]
        s = stems.shape[1]
        stems = stems.unflatten(2, (bins, ch)).transpose(2, 3).reshape(b * s * ch, bins, frames)
        if c.zero_dc:
            stems = torch.cat([torch.zeros_like(stems[:, :1]), stems[:, 1:]], dim=1)
        audio = istft(stems, c.stft_n_fft, c.stft_hop_length, self.window, samples, **self._stft)
        audio = audio.reshape(b, s, ch, samples)
        if c.stereo:
            audio = audio.mean(dim=2, keepdim=True) if channels == 1 else audio
        else:
            audio = audio.reshape(batch, channels, s, samples).transpose(1, 2)
        if self.card.rest_stem is not None:  # the stem the network does not estimate
            audio = torch.cat([audio, (mixture - audio.sum(dim=1))[:, None]], dim=1)
        return audio

    @property
    def _stft(self) -> dict[str, Any]:
        return {"win_length": self.config.stft_win_length, "normalized": self.config.stft_normalized}
