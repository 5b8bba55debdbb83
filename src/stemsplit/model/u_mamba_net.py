"""U-Mamba-Net (Dang et al., "U-Mamba-Net: A highly efficient Mamba-based U-net style
network for noisy and reverberant speech separation", APSIPA 2024): two-talker
separation in the time domain at 8 kHz.

Pipeline (paper Fig. 1, Algorithm 1, Table II), for a mixture [B, 1, samples]::

    W = ReLU(Conv1d(1 -> F, win, stride hop)(mixture))       [B, F, T]   encoder
    M = W, then R U-Mamba blocks:                                          (Table II: B = R = 16)
        D0 = PReLU(gLN(Conv1x1(F -> C)(M)))                   [B, C, T]   bottleneck conv
        Dl = gLN(DWConv(k 5, stride 2)(D(l-1))),  l = 1..L    [B, C, T / 2^l]
        U(l-1) = DWConvTranspose(k 4, stride 2)(Ul) + D(l-1), from UL = DL down to U0
        M' = Conv1x1(C -> F)(PReLU(U0))                        [B, F, T]
        M  = Mamba(LayerNorm(M')) + M'                                     Mamba with a residual
    masks = ReLU(Conv1x1(F -> S F)(PReLU(M)))                 [B, S, F, T]
    speakers = ConvTranspose1d(F -> 1, win, stride hop)(masks * W)   [B, S, 1, samples]

F = 128 features, win 41 / hop 20 samples (5.1 / 2.5 ms), L = 4, S = 2 (Table II).

Choices the paper leaves open, made so that every Table V variant (F 64/128/192,
R 12/16/20, L 4/8) lands within 5% of its parameter count and 10% of its GMACs
(``tests/unit/model/test_u_mamba_net.py`` checks all six; the paper model: 4.43 M
parameters, 2.49 GMACs for 3 s, against the paper's 4.4 M and 2.5)::

    preset   F    R   L   parameters (paper)   GMACs, 3 s (paper)
    f64      64   16  4   1.30 M (1.3)         0.65 (0.7)
    r12      128  12  4   3.33 M (3.3)         1.88 (1.9)
    paper    128  16  4   4.43 M (4.4)         2.49 (2.5)
    r20      128  20  4   5.52 M (5.5)         3.10 (3.1)
    l8       128  16  8   4.77 M (4.6)         2.50 (2.5)
    f192     192  16  4   9.37 M (9.7)         5.54 (5.3)

The choices (docs/models.md, "Choices the papers leave open", has the reasons): inner width
C = ``unet_expand`` * F = 3.75 F, opened by the bottleneck 1x1 conv and closed by a 1x1 conv back
to F; depthwise Conv1d down-sampling (kernel 5, stride 2) and ConvTranspose1d up-sampling (kernel
4, stride 2, padding 1), no biases in the U-net's convs; LN is the global layer norm
``GroupNorm(1, C)``; Mamba is Mamba-1 (:class:`.layers.mamba1.Mamba`: expand 2, d_conv 4, dt_rank
ceil(F / 16), ``d_state`` 32) inside mamba_ssm's Block (LayerNorm(F) before the mixer, the
residual around both); the mask is PReLU, a 1x1 conv with bias to S * F, ReLU; encoder and decoder
convs have no bias. :func:`count_macs` counts MACs as the paper does (``mamba=False``: the
convolutions alone) or with Mamba.

Lengths. Any input length works: the signal is zero-padded at the end to a
whole number of encoder frames (at least one), each down-sampling gives
ceil(T / 2), each up-sampling is cropped to its skip connection, and the output
is cropped back to the input length. Channels are folded into the batch (each
channel separated as a mono mixture; the paper's model is mono).

State dict (C = inner width, b < R, l < L)::

    encoder.weight                          [F, 1, win]
    blocks.<b>.bottleneck.weight            [C, F, 1]
    blocks.<b>.norm.{weight,bias}           [C]
    blocks.<b>.act.weight                   [1]            PReLU
    blocks.<b>.down.<l>.weight              [C, 1, 5]
    blocks.<b>.down_norms.<l>.{weight,bias} [C]
    blocks.<b>.up.<l>.weight                [C, 1, 4]       up.<l> maps depth l+1 to l
    blocks.<b>.out_act.weight               [1]
    blocks.<b>.project.weight               [F, C, 1]
    blocks.<b>.mamba_norm.{weight,bias}     [F]
    blocks.<b>.mamba.*                      mamba_ssm's Mamba (see .layers.mamba1)
    mask_act.weight                         [1]
    mask.weight / mask.bias                 [S F, F, 1] / [S F]
    decoder.weight                          [F, 1, win]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..card import ModelCard
from .layers.mamba1 import Mamba

__all__ = ["ARCHITECTURE", "PRESETS", "UMambaBlock", "UMambaNet", "UMambaNetConfig", "count_macs"]

ARCHITECTURE = "u-mamba-net"  # its name in the architecture registry and in checkpoints


@dataclass(frozen=True)
class UMambaNetConfig:
    """Architecture of a U-Mamba-Net (paper symbols in brackets)."""

    sr: int = 8000
    win: int = 41  # encoder/decoder window, samples (Table II)
    hop: int = 20  # encoder/decoder hop, samples (Table II)
    feature_dim: int = 128  # encoder channels [F]
    num_blocks: int = 16  # U-Mamba blocks [R; B in Table II]
    depth: int = 4  # down-/up-sampling steps per U-net [L]
    num_speakers: int = 2  # masks and outputs [S]
    unet_expand: float = 3.75  # U-net inner width / F (not in the paper: see the module docstring)
    d_state: int = 32  # Mamba state size [N]
    expand: int = 2  # Mamba inner width / F
    d_conv: int = 4  # Mamba causal conv width


PRESETS: dict[str, UMambaNetConfig] = {
    "paper": UMambaNetConfig(),  # Tables II and III
    # Table V's ablations.
    "f64": UMambaNetConfig(feature_dim=64),
    "f192": UMambaNetConfig(feature_dim=192),
    "r12": UMambaNetConfig(num_blocks=12),
    "r20": UMambaNetConfig(num_blocks=20),
    "l8": UMambaNetConfig(depth=8),
}

# The STFT exact mode shares a residual in (ModelCard.stft): this network has no
# spectrogram of its own, so a speech analysis window at 8 kHz: 32 ms, hop 8 ms.
SHARE_STFT = (256, 64)


def speaker_names(count: int) -> tuple[str, ...]:
    return tuple(f"speaker{i + 1}" for i in range(count))


def unet_channels(config: UMambaNetConfig) -> int:
    """The U-net's inner width C (``unet_expand`` * F, rounded)."""
    return max(1, round(config.unet_expand * config.feature_dim))


class UMambaBlock(nn.Module):
    """One U-Mamba block (Algorithm 1): [B, F, T] -> [B, F, T]."""

    def __init__(self, config: UMambaNetConfig, mamba_backend: str | None = None) -> None:
        super().__init__()
        features, channels = config.feature_dim, unet_channels(config)
        self.bottleneck = nn.Conv1d(features, channels, 1, bias=False)
        self.norm = nn.GroupNorm(1, channels)
        self.act = nn.PReLU()
        self.down = nn.ModuleList(
            nn.Conv1d(channels, channels, 5, stride=2, padding=2, groups=channels, bias=False)
            for _ in range(config.depth)
        )
        self.down_norms = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(config.depth))
        self.up = nn.ModuleList(
            nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1, groups=channels, bias=False)
            for _ in range(config.depth)
        )
        self.out_act = nn.PReLU()
        self.project = nn.Conv1d(channels, features, 1, bias=False)
        self.mamba_norm = nn.LayerNorm(features)
        self.mamba = Mamba(
            features,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            backend=mamba_backend,
        )

    def forward(self, m: Tensor) -> Tensor:
        skips = [self.act(self.norm(self.bottleneck(m)))]  # D(0), [B, C, T]
        for conv, norm in zip(self.down, self.down_norms, strict=True):
            skips.append(norm(conv(skips[-1])))  # D(l), [B, C, ceil(T_(l-1) / 2)]
        u = skips.pop()
        for level in reversed(range(len(self.up))):
            skip = skips[level]
            u = self.up[level](u)[..., : skip.shape[-1]] + skip  # U(l-1)
        m = self.project(self.out_act(u)).transpose(1, 2)  # [B, T, F]
        return (self.mamba(self.mamba_norm(m)) + m).transpose(1, 2)


class UMambaNet(nn.Module):
    """U-Mamba-Net: mixture [B, ch, samples] -> speakers [B, S, ch, samples].

    Args:
        config: the architecture (default: the paper's).
        mamba_backend: ``auto``/``portable``/``cuda`` for every Mamba layer
            (``None``: the ``STEMSPLIT_MAMBA_BACKEND`` environment variable, else auto).
        **fields: config fields to change, e.g. ``UMambaNet(feature_dim=64)``.
    """

    def __init__(
        self, config: UMambaNetConfig | None = None, *, mamba_backend: str | None = None, **fields
    ) -> None:
        super().__init__()
        self.config = c = replace(config or UMambaNetConfig(), **fields)
        if c.hop > c.win:
            raise ValueError(f"hop {c.hop} is longer than win {c.win}: samples between frames would be lost")
        self.encoder = nn.Conv1d(1, c.feature_dim, c.win, stride=c.hop, bias=False)
        self.blocks = nn.ModuleList(UMambaBlock(c, mamba_backend) for _ in range(c.num_blocks))
        self.mask_act = nn.PReLU()
        self.mask = nn.Conv1d(c.feature_dim, c.num_speakers * c.feature_dim, 1)
        self.decoder = nn.ConvTranspose1d(c.feature_dim, 1, c.win, stride=c.hop, bias=False)
        self.card = ModelCard(
            architecture=ARCHITECTURE,
            stems=speaker_names(c.num_speakers),
            sample_rate=c.sr,
            min_samples=1,
            stft=SHARE_STFT,
            channels=1,
            task="speakers",
            permutation_invariant=True,  # trained with PIT: the engine lines windows up
            cpu_bf16=False,  # slower than fp32 on the CPU, and 1.8e-2 off: the scan needs fp32
        )

    def forward(self, mixture: Tensor) -> Tensor:
        """mixture [B, ch, samples] -> speakers [B, S, ch, samples]."""
        if mixture.dim() != 3 or mixture.shape[-1] == 0:
            raise ValueError(
                f"expected mixture of shape [batch, channels, samples > 0], got {tuple(mixture.shape)}"
            )
        batch, channels, samples = mixture.shape
        c = self.config
        frames = max(1, math.ceil((samples - c.win) / c.hop) + 1)  # enough to cover every sample
        padded = (frames - 1) * c.hop + c.win
        x = F.pad(mixture.reshape(batch * channels, 1, samples), (0, padded - samples))
        w = F.relu(self.encoder(x))  # [BC, F, T]
        m = w
        for block in self.blocks:
            m = block(m)
        masks = F.relu(self.mask(self.mask_act(m))).reshape(
            batch * channels, c.num_speakers, c.feature_dim, -1
        )
        masked = (masks * w[:, None]).reshape(batch * channels * c.num_speakers, c.feature_dim, -1)
        out = self.decoder(masked)[..., :samples]  # [BCS, 1, samples]
        return out.reshape(batch, channels, c.num_speakers, samples).transpose(1, 2)


def count_macs(model: nn.Module, samples: int, *, mamba: bool = False) -> int:
    """Multiply-accumulates of one forward pass of ``model`` over a [1, 1, samples] mixture.

    Counted: every ``Conv1d`` (output elements x in-channels per group x kernel),
    ``ConvTranspose1d`` (input elements x out-channels per group x kernel) and
    ``Linear`` (output elements x in-features), biases, norms and activations not
    (ptflops' convention for these layers). With ``mamba=True`` each Mamba layer
    adds :meth:`.layers.mamba1.Mamba.macs` (its projections, conv and scan); without,
    Mamba layers count nothing, as in the paper's figures (see the module docstring).
    """
    total = 0

    def conv(module: nn.Conv1d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_channels // module.groups * module.kernel_size[0]

    def transposed(module: nn.ConvTranspose1d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += inputs[0].numel() * module.out_channels // module.groups * module.kernel_size[0]

    def linear(module: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    def selective(module: Mamba, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += module.macs(output.shape[0] * output.shape[1]) if mamba else 0

    inside_mamba = {id(sub) for m in model.modules() if isinstance(m, Mamba) for sub in m.modules()}
    hooks = []
    for module in model.modules():
        if isinstance(module, Mamba):
            hooks.append(module.register_forward_hook(selective))
        elif id(module) in inside_mamba:
            continue
        elif isinstance(module, nn.Conv1d):
            hooks.append(module.register_forward_hook(conv))
        elif isinstance(module, nn.ConvTranspose1d):
            hooks.append(module.register_forward_hook(transposed))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, samples, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return total
