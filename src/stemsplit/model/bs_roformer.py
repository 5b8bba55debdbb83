"""BS-RoFormer: band-split RoFormer (Lu et al., "Music Source Separation with Band-Split RoPE
Transformer", arXiv 2309.02612), checkpoint-compatible with Music-Source-Separation-Training.

For a mixture [B, ch, samples] (ch = 2 for a stereo network)::

    X = STFT(mixture), channels interleaved per bin     [B, F*ch, T] complex
    bands: consecutive bins, ``freqs_per_bands`` each; per band k of width G_k
        [re, im] of its G_k*ch rows -> RMSNorm -> Linear(2 G_k ch -> dim)
        Z                                               [B, T, K, dim]
    depth x (time transformer, freq transformer)        (roformer.AxialLayers)
    RMSNorm                                             final_norm
    per stem, per band: MLP(dim -> 2 * 2 G_k ch) + GLU  complex mask M  [B, S, F*ch, T]
    stems = ISTFT(M * X), DC bin zeroed (zero_dc)       [B, S, ch, samples]

State dict (K bands, l < depth, j < the transformer's depth; a linear
transformer, when ``linear_transformer_depth`` > 0, is ``layers.<l>.0`` and the
time and freq transformers move to 1 and 2)::

    band_split.to_features.<k>.0.gamma                       [2 G_k ch]
    band_split.to_features.<k>.1.{weight,bias}              [dim, 2 G_k ch] / [dim]
    layers.<l>.<0 time|1 freq>.layers.<j>.0.norm.gamma       [dim]
        .0.to_qkv.weight                                     [3 heads dim_head, dim]
        .0.to_gates.{weight,bias}                            [heads, dim] / [heads]
        .0.to_out.0.weight                                   [dim, heads dim_head]
        .0.rotary_embed.freqs                                [dim_head / 2]  (fixed)
        .1.net.0.gamma, .1.net.1.*, .1.net.4.*               feedforward dim -> 4 dim -> dim
    final_norm.gamma                                         [dim]
    mask_estimators.<s>.to_freqs.<k>.0.<2i>.{weight,bias}    MLP layer i (tanh between)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from torch import Tensor

from .roformer import BandNetworkConfig, RMSNorm, Roformer, RoformerConfig

__all__ = ["ARCHITECTURE", "PRESETS", "BSRoformer", "BSRoformerConfig", "BandSplitConfig"]

ARCHITECTURE = "bs-roformer"

# Upstream's default bands for n_fft 2048 (1025 bins): 2 bins up to 1 kHz, then wider.
DEFAULT_FREQS_PER_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)


@dataclass(frozen=True)
class BSRoformerConfig(RoformerConfig):
    """A BS-RoFormer; ``freqs_per_bands`` must add up to stft_n_fft // 2 + 1."""

    freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS

    def problem(self) -> str | None:
        bins = self.stft_n_fft // 2 + 1
        if sum(self.freqs_per_bands) != bins:
            return f"freqs_per_bands add up to {sum(self.freqs_per_bands)}, but stft_n_fft gives {bins} bins"
        if len(self.freqs_per_bands) < 2:
            return "freqs_per_bands needs at least two bands"
        return super().problem()


PRESETS: dict[str, BSRoformerConfig] = {"paper": BSRoformerConfig()}  # L = 12, D = 384


class BandSplitConfig(BandNetworkConfig, Protocol):
    """What :class:`BSRoformer` reads from its config: a :class:`BSRoformerConfig`, or BSMamba2's."""

    @property
    def freqs_per_bands(self) -> tuple[int, ...]: ...
    @property
    def mask_estimator_depth(self) -> int: ...
    @property
    def audio_channels(self) -> int: ...


class BSRoformer(Roformer):
    """``model(mixture)``: [B, ch, samples] -> stems [B, S, ch, samples] (see :class:`Roformer`)."""

    family = ARCHITECTURE  # the card's architecture (a subclass with other layers names its own)
    config: BandSplitConfig

    def __init__(self, config: BandSplitConfig | None = None, **fields: Any) -> None:
        c = replace(config or BSRoformerConfig(), **fields)
        widths = [2 * f * c.audio_channels for f in c.freqs_per_bands]
        super().__init__(self.family, c, widths, norm_output=False, mask_layers=c.mask_estimator_depth)
        self.final_norm = RMSNorm(c.dim)

    def features(self, x: Tensor) -> Tensor:
        return self.final_norm(self.layers(x))

    def band_rows(self, spec: Tensor) -> Tensor:
        return spec  # the bands are consecutive rows

    def merge_masks(self, masks: Tensor, bins: int) -> Tensor:
        return masks
