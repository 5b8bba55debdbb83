"""BSMamba2: band-split Mamba-2 (Kim & Choi, "Mamba2 Meets Silence", arXiv 2508.14556),
checkpoint-compatible with Music-Source-Separation-Training (MSST's ``bs_mamba2`` key since
January 2026, ``models/bs_mamba2_code/bs_mamba2.py``; before that the key built TS-BSMamba2,
:mod:`.ts_bsmamba2`).

It is BS-RoFormer (:mod:`.bs_roformer`) with the transformers swapped for bidirectional Mamba-2
blocks, so everything around them comes from :class:`.roformer.Roformer`. For a mixture
[B, ch, samples] (ch = 2 for a stereo network)::

    X = STFT(mixture), channels interleaved per bin       [B, F*ch, T] complex
    bands: ``freqs_per_bands`` consecutive bins each; per band k of width G_k
        [re, im] of its G_k*ch rows -> RMSNorm -> Linear(2 G_k ch -> dim)
        Z                                                 [B, T, K, dim]
    depth x (time block: one sequence per band            [B*K, T, dim]
             freq block: one sequence per frame)          [B*T, K, dim]
    RMSNorm                                               final_norm
    per stem, per band: MLP(dim -> 4 dim -> 2 * 2 G_k ch) + GLU   complex mask M
    stems = ISTFT(M * X)  (the DC bin is kept)            [B, S, ch, samples]

A block (upstream's ``MambaBlock``, bidirectional, one layer per direction) on x [b, L, dim]::

    f   = x + Mamba2_f(RMSNorm_f(x))                      mamba_ssm's Block: add, norm, mixer
    b   = x + flip(Mamba2_b(RMSNorm_b(flip(x))))
    out = x + Linear(2 dim -> dim)([f, b])                upstream: ConvTranspose1d, kernel 1

Each Mamba-2 layer is mamba_ssm's ``Mamba2`` with expand 4 (d_state 128, d_conv 4, headdim 64),
running on :mod:`.layers.mamba2`'s backends (portable PyTorch anywhere, mamba_ssm's kernels on CUDA).
Its RMSNorm is mamba_ssm's: x * rsqrt(mean(x^2) + 1e-5) * weight (``torch.nn.RMSNorm``).

State dict (K bands, l < depth, j: 0 time, 1 freq; d = direction, ``forward`` or ``backward``)::

    band_split.to_features.<k>.0.gamma                         [2 G_k ch]
    band_split.to_features.<k>.1.{weight,bias}                 [dim, 2 G_k ch] / [dim]
    layers.<l>.<j>.<d>_blocks.0.norm.weight                    [dim]
    layers.<l>.<j>.<d>_blocks.0.mixer.in_proj.weight           [2*4dim + 2*128 + H, dim]  (H = dim/16 heads)
        .mixer.conv1d.{weight,bias}                            [4dim + 256, 1, 4] / [4dim + 256]
        .mixer.{dt_bias,A_log,D}                               [H]
        .mixer.norm.weight                                     [4 dim]
        .mixer.out_proj.weight                                 [dim, 4 dim]
    layers.<l>.<j>.linear.{weight,bias}                        [2 dim, dim, 1] / [dim]
    final_norm.gamma                                           [dim]
    mask_estimators.<s>.to_freqs.<k>.0.<2i>.{weight,bias}      MLP layer i (tanh between)

Upstream's other ``module_type`` values (``transformer``, ``mamba``, ``mamba2-roformer``) and
``mamba_gmlp`` are refused by :meth:`BSMamba2Config.problem`: no published checkpoint uses them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from .bs_roformer import DEFAULT_FREQS_PER_BANDS, BSRoformer
from .layers.mamba2 import Mamba2
from .ops import onednn
from .roformer import BandNetworkConfig
from .state_dict import StateDictMismatch, summarise, unwrap_state_dict

__all__ = [
    "ARCHITECTURE",
    "MAY_BE_ZERO",
    "PRESETS",
    "BSMamba2",
    "BSMamba2Config",
    "config_from_state_dict",
    "is_bs_mamba2_state_dict",
]

ARCHITECTURE = "bs-mamba2"

# Upstream's STFT window is torch.hann_window(2048) whatever stft_win_length says.
WINDOW_SAMPLES = 2048
MAMBA_EXPAND, MAMBA_HEADDIM, MAMBA_STATE = 4, 64, 128  # upstream: Mamba2(dim, expand=4), mamba_ssm's defaults


@dataclass(frozen=True)
class BSMamba2Config:
    """The options of upstream's ``BSMamba2Model``, named and defaulted as its constructor.

    ``dim`` and ``depth``, which upstream requires, default to the published checkpoint's; so does
    ``module_type`` (upstream's default is its transformer variant, not built here). Options marked
    *training* change how the network trains, not what it computes; *unused*: read by the variants
    that are not built here.
    """

    sr: int = 44100  # Hz the network works at (MSST: audio.sample_rate)
    dim: int = 256
    depth: int = 6
    stereo: bool = False
    num_stems: int = 1
    time_module_depth: int = 1  # unused (transformer variants)
    freq_module_depth: int = 1  # unused (transformer variants)
    freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS
    dim_head: int = 64  # unused (transformer variants)
    heads: int = 8  # unused (transformer variants)
    attn_dropout: float = 0.0  # unused
    ff_dropout: float = 0.0  # unused
    flash_attn: bool = True  # unused
    stft_n_fft: int = 2048
    stft_hop_length: int = 512
    stft_win_length: int = 2048
    stft_normalized: bool = False
    mask_estimator_depth: int = 2
    multi_stft_resolution_loss_weight: float = 1.0  # training (the loss)
    multi_stft_resolutions_window_sizes: tuple[int, ...] = (4096, 2048, 1024, 512, 256)  # training
    multi_stft_hop_size: int = 147  # training
    multi_stft_normalized: bool = False  # training
    module_type: str = "mamba2"
    mamba_gmlp: bool = False

    @property
    def audio_channels(self) -> int:
        return 2 if self.stereo else 1

    # What :class:`.roformer.Roformer` reads that upstream BSMamba2 fixes.
    zero_dc = False  # the DC bin is not zeroed
    mlp_expansion_factor = 4  # mask MLP hidden size = 4 dim

    def problem(self) -> str | None:
        """Why a network cannot be built from this config (one line), or None."""
        if self.module_type != "mamba2":
            return (
                f"module_type {self.module_type!r} is not implemented; only 'mamba2' is "
                "(MSST's published BSMamba2)"
            )
        if self.mamba_gmlp:
            return "mamba_gmlp = true (a gated MLP in each Mamba block) is not implemented"
        if self.stft_win_length != WINDOW_SAMPLES:
            return (
                f"stft_win_length must be {WINDOW_SAMPLES}, not {self.stft_win_length}: "
                f"upstream's STFT window is always {WINDOW_SAMPLES} samples"
            )
        if self.stft_n_fft < WINDOW_SAMPLES:
            return f"stft_n_fft {self.stft_n_fft} is shorter than the {WINDOW_SAMPLES}-sample window"
        bins = self.stft_n_fft // 2 + 1
        if sum(self.freqs_per_bands) != bins:
            return f"freqs_per_bands add up to {sum(self.freqs_per_bands)}, but stft_n_fft gives {bins} bins"
        if len(self.freqs_per_bands) < 2:
            return "freqs_per_bands needs at least two bands"
        if (MAMBA_EXPAND * self.dim) % MAMBA_HEADDIM:
            return (
                f"dim must be a multiple of 16 (Mamba-2 heads of {MAMBA_HEADDIM} over 4 dim), not {self.dim}"
            )
        return None


# Fields that may be 0 (the others must be positive).
MAY_BE_ZERO = frozenset({"attn_dropout", "ff_dropout", "multi_stft_resolution_loss_weight"})

PRESETS: dict[str, BSMamba2Config] = {
    # Upstream's constructor defaults (what an MSST YAML's missing options mean).
    "msst": BSMamba2Config(),
    # The model: section of MSST's config_bs_mamba2_vocals.yaml (release v1.0.19), as published.
    "msst-vocals": BSMamba2Config(
        stereo=True,
        dim_head=48,
        ff_dropout=0.1,
        attn_dropout=0.1,
        stft_hop_length=441,
    ),
}


class NormMamba2(nn.Module):
    """mamba_ssm's ``Block`` as upstream builds it, less the residual: Mamba2(RMSNorm(x)), [b, L, dim]."""

    def __init__(self, dim: int, backend: str | None = None) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.mixer = Mamba2(
            dim, d_state=MAMBA_STATE, d_conv=4, expand=MAMBA_EXPAND, headdim=MAMBA_HEADDIM, backend=backend
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mixer(self.norm(x))


class BiMamba2Block(nn.Module):
    """Upstream's ``MambaBlock`` (bidirectional, one layer each way): [b, L, dim] -> same (see above)."""

    def __init__(self, dim: int, backend: str | None = None) -> None:
        super().__init__()
        self.forward_blocks = nn.ModuleList([NormMamba2(dim, backend)])
        self.backward_blocks = nn.ModuleList([NormMamba2(dim, backend)])
        self.linear = nn.ConvTranspose1d(2 * dim, dim, 1)  # a Linear(2 dim -> dim) stored as [2 dim, dim, 1]

    def forward(self, x: Tensor) -> Tensor:
        fwd = x + self.forward_blocks[0](x)
        bwd = x + self.backward_blocks[0](x.flip(1)).flip(1)
        weight = self.linear.weight[..., 0].t().contiguous()  # [dim, 2 dim]
        return onednn.linear_add(torch.cat([fwd, bwd], dim=-1), weight, self.linear.bias, x)


class BiMamba2Layers(nn.ModuleList):
    """``depth`` layers of (time block, freq block) over band features [B, T, K, dim] -> same."""

    def __init__(self, dim: int, depth: int, backend: str | None = None) -> None:
        super().__init__(
            nn.ModuleList([BiMamba2Block(dim, backend), BiMamba2Block(dim, backend)]) for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, t, k, d = x.shape
        for layer in self:
            time, freq = cast(nn.ModuleList, layer)  # built as [time, freq]
            x = time(x.transpose(1, 2).reshape(b * k, t, d)).reshape(b, k, t, d).transpose(1, 2)
            x = freq(x.reshape(b * t, k, d)).reshape(b, t, k, d)
        return x


class BSMamba2(BSRoformer):
    """``model(mixture)``: [B, ch, samples] -> stems [B, S, ch, samples] (see :class:`.roformer.Roformer`):
    BS-RoFormer's bands, masks and final norm around bidirectional Mamba-2 layers instead of transformers.

    ``mamba_backend``: ``auto``/``portable``/``cuda`` for every Mamba-2 layer (``None``: the
    ``STEMSPLIT_MAMBA_BACKEND`` environment variable, else auto; see :mod:`.layers.mamba2`).
    """

    family = ARCHITECTURE

    def __init__(
        self, config: BSMamba2Config | None = None, *, mamba_backend: str | None = None, **fields: Any
    ) -> None:
        self._mamba_backend = mamba_backend  # read by make_layers, during BSRoformer.__init__
        super().__init__(replace(config or BSMamba2Config(), **fields))

    def make_layers(self, config: BandNetworkConfig, norm_output: bool) -> nn.Module:
        return BiMamba2Layers(config.dim, config.depth, self._mamba_backend)


# --- bare state dicts (MSST's .ckpt files hold nothing else) ------------------------------------------

MASK_LINEAR = r"^mask_estimators\.0\.to_freqs\.0\.0\.(\d+)\.weight$"
_MIXER_KEY = re.compile(r"^layers\.\d+\.[01]\.forward_blocks\.0\.mixer\.A_log$")


def is_bs_mamba2_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """The key names are BSMamba2's (a band split, and bidirectional Mamba blocks in ``layers``)."""
    state_dict = unwrap_state_dict(state_dict)
    return "band_split.to_features.0.0.gamma" in state_dict and any(_MIXER_KEY.match(k) for k in state_dict)


def _count(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], sr: int = 44100, base: BSMamba2Config = PRESETS["msst-vocals"]
) -> BSMamba2Config:
    """The architecture a BSMamba2 state dict holds: dim, depth, stems, mask depth, channels and bands.

    What the weights do not say (the STFT hop, normalisation, the training options) comes from
    ``base``, by default MSST's published vocals config. Channels and bins are read from the band
    widths (2 x channels x bins each): stereo when that gives a power-of-two FFT of 2048 or more.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not is_bs_mamba2_state_dict(state_dict):
        raise StateDictMismatch(
            "not a BSMamba2 state dict: no band_split and Mamba layers "
            f"(first keys: {summarise(list(state_dict), 5)})"
        )
    bands = _count(state_dict, r"^band_split\.to_features\.(\d+)\.")
    widths = [state_dict[f"band_split.to_features.{k}.0.gamma"].shape[0] for k in range(bands)]
    for channels in (2, 1):
        if all(w % (2 * channels) == 0 for w in widths):
            bins = sum(widths) // (2 * channels)
            n_fft = 2 * (bins - 1)
            if n_fft >= WINDOW_SAMPLES and n_fft & (n_fft - 1) == 0:
                break
    else:
        raise StateDictMismatch(f"band widths of the state dict ({sum(widths)} features in all) fit no STFT")
    return replace(
        base,
        sr=sr,
        dim=state_dict["final_norm.gamma"].shape[0],
        depth=_count(state_dict, r"^layers\.(\d+)\."),
        stereo=channels == 2,
        num_stems=_count(state_dict, r"^mask_estimators\.(\d+)\."),
        freqs_per_bands=tuple(w // (2 * channels) for w in widths),
        stft_n_fft=n_fft,
        mask_estimator_depth=_count(state_dict, MASK_LINEAR) // 2 + 1,  # Linear layers at 0, 2, 4...
        module_type="mamba2",
    )
