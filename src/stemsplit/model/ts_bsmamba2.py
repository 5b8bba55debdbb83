"""TS-BSMamba2: two-stage band-split Mamba-2 network (Bai et al., arXiv 2409.06245).

Pipeline (paper Fig. 1 A), for a mixture [B, ch, samples]::

    X = STFT(mixture)                                    [B*ch, F, T] complex
    stage 1 (mask)
        Z1 = BN_mask(X)            band split            [B*ch, K, T, N]
        D1 = separator_mask(Z1)    8 x BMamba2-DualNet   [B*ch, K, T, N]
        M  = mask(D1), normalised over sources           [B*ch, S, F, T]
        Y1 = M * X                                       stage-1 stems
    stage 2 (residual mapping)
        Z2 = BN_map(X)
        D  = tanh(in_conv([Z2, D1]))   fusion (Fig. 1 E)
        D2 = separator_map(D)      4 x BMamba2-DualNet
        Y2 = Y1 + map(D2)                                stage-2 stems
    stems = ISTFT(Y1), ISTFT(Y2)                         [B, S, ch, samples]

Module and parameter names follow the reference implementation, so its
checkpoints (and those of Music-Source-Separation-Training) load with
``load_state_dict(strict=True)``. Inside the network features are kept
channels-last, [B*ch, K bands, T frames, N features], so the Mamba layers and
the linear layers read them without transposes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..card import ModelCard, default_stem_names
from .layers.bands import EPS, BandMerge, BandSplit, band_widths, group_norm_last2
from .layers.mamba2 import Mamba2
from .layers.stft import check_mixture, istft, stft
from .ops import onednn
from .state_dict import StateDictMismatch, check_state_dict, summarise, unwrap_state_dict

__all__ = ["ARCHITECTURE", "PRESETS", "TSBSMamba2", "TSBSMamba2Config", "config_from_state_dict"]


@dataclass(frozen=True)
class TSBSMamba2Config:
    """Architecture of a TS-BSMamba2, named as in the reference config."""

    sr: int = 44100
    win: int = 2048
    stride: int = 512
    feature_dim: int = 128
    num_repeat_mask: int = 8
    num_repeat_map: int = 4
    num_output: int = 4


ARCHITECTURE = "ts-bsmamba2"  # its name in the architecture registry and in checkpoints

PRESETS: dict[str, TSBSMamba2Config] = {
    "ts": TSBSMamba2Config(),
    "l-ts": TSBSMamba2Config(num_repeat_mask=4, num_repeat_map=2),
}


class BiMamba2(nn.Module):
    """Bidirectional Mamba-2 (paper Fig. 2): [fwd(x) + x, flip(bwd(flip(x))) + x] -> [b, L, 2N]."""

    def __init__(self, dim: int, backend: str | None = None) -> None:
        super().__init__()

        def mamba2() -> Mamba2:
            return Mamba2(dim, d_state=128, d_conv=4, expand=4, headdim=64, backend=backend)

        self.forward_mamba2 = mamba2()
        self.backward_mamba2 = mamba2()

    def forward(self, x: Tensor) -> Tensor:
        fwd = self.forward_mamba2(x) + x
        bwd = self.backward_mamba2(x.flip(1)).flip(1) + x
        return torch.cat([fwd, bwd], dim=-1)


class ResidualBiMamba2(nn.Module):
    """GroupNorm -> BiMamba2 -> Linear(2N -> N), added to the input. x: [b, L, N] sequences."""

    def __init__(self, dim: int, backend: str | None = None) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, dim, EPS)
        self.rnn = BiMamba2(dim, backend)
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.rnn(group_norm_last2(x, self.norm.weight, self.norm.bias))
        return onednn.linear_add(h, self.proj.weight, self.proj.bias, x)  # x + proj(h), one pass


class TAC(nn.Module):
    """Transform-average-concatenate across the audio channels (stereo communication).

    x: [B, ch, K, T, N]. GroupNorm per channel and band over (T, N); Linear N -> 3N, tanh;
    the channel mean through Linear 3N -> 3N, tanh; [per-channel, mean] -> Linear 6N -> N,
    tanh; added to the input.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = 3 * dim
        self.input_norm = nn.GroupNorm(1, dim, EPS)
        self.TAC_input = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        self.TAC_mean = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.TAC_output = nn.Sequential(nn.Linear(2 * hidden, dim), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        lin_in, lin_mean, lin_out = _linear(self.TAC_input), _linear(self.TAC_mean), _linear(self.TAC_output)
        hidden = lin_mean.in_features
        normed = group_norm_last2(x, self.input_norm.weight, self.input_norm.bias)
        h = onednn.linear(normed, lin_in.weight, lin_in.bias, activation="tanh")  # [B, ch, K, T, 3N]
        mean = onednn.linear(h.mean(dim=1, keepdim=True), lin_mean.weight, lin_mean.bias, activation="tanh")
        # TAC_output(cat[h, mean]) without the concatenation: the mean's half of the
        # product is computed once per (K, T), not once per channel, and added.
        w_h, w_mean = lin_out.weight[:, :hidden].contiguous(), lin_out.weight[:, hidden:].contiguous()
        from_mean = onednn.linear(mean, w_mean, lin_out.bias).expand(*h.shape[:-1], -1)
        out = onednn.linear_add(h, w_h, None, from_mean)
        if torch.is_grad_enabled() or out.dtype != x.dtype:
            return x + torch.tanh(out)
        return out.tanh_().add_(x)


def _linear(layers: nn.Sequential) -> nn.Linear:
    """The Linear a TAC step starts with (a Sequential types its items as Module)."""
    linear = layers[0]
    assert isinstance(linear, nn.Linear)
    return linear


class DualPathBlock(nn.Module):
    """BMamba2-DualNet layer (paper Fig. 1 C): over time, then over bands, then across channels."""

    def __init__(self, dim: int, backend: str | None = None) -> None:
        super().__init__()
        self.band_rnn = ResidualBiMamba2(dim, backend)  # sequences over T, one per band
        self.band_comm = ResidualBiMamba2(dim, backend)  # sequences over K, one per frame
        self.channel_comm = TAC(dim)

    def forward(self, x: Tensor, channels: int) -> Tensor:
        """x: [B*ch, K, T, N] -> same shape."""
        bc, k, t, n = x.shape
        x = self.band_rnn(x.reshape(bc * k, t, n)).reshape(bc, k, t, n)
        x = x.transpose(1, 2).reshape(bc * t, k, n)
        x = self.band_comm(x).reshape(bc, t, k, n).transpose(1, 2)
        return self.channel_comm(x.reshape(bc // channels, channels, k, t, n)).reshape(bc, k, t, n)


class DualPathStack(nn.ModuleList):
    """A stack of DualPathBlocks (the reference calls it ``separator``; so do the state-dict keys).

    ``checkpoint_activations``: in training, keep only each block's input and
    recompute the block in the backward pass (less memory, ~30% more compute).
    """

    def __init__(self, dim: int, layers: int, backend: str | None = None) -> None:
        super().__init__(DualPathBlock(dim, backend) for _ in range(layers))
        self.checkpoint_activations = False

    def forward(self, x: Tensor, channels: int) -> Tensor:
        for block in self:
            if self.checkpoint_activations and torch.is_grad_enabled():
                x = checkpoint(block, x, channels, use_reentrant=False)
            else:
                x = block(x, channels)
        return x


class TSBSMamba2(nn.Module):
    """Two-stage band-split Mamba-2 separator.

    Args:
        config: the architecture (:class:`TSBSMamba2Config`; default: the paper's TS).
        mamba_backend: ``auto``/``portable``/``cuda`` for every Mamba-2 layer
            (``None``: the ``STEMSPLIT_MAMBA_BACKEND`` environment variable, else auto).
        **fields: config fields to change, e.g. ``TSBSMamba2(feature_dim=16, num_output=2)``.

    ``model(mixture)`` with mixture [B, ch, samples] (ch = 2 for stereo; any
    count works, mono equals dual mono) returns ``(stage1, stage2)``, each
    [B, S, ch, samples]. ``model.card`` describes it to the engine; its stem
    names default to MUSDB's four (the loader sets a checkpoint's own).
    """

    window: Tensor  # a buffer

    def __init__(
        self, config: TSBSMamba2Config | None = None, *, mamba_backend: str | None = None, **fields: int
    ) -> None:
        super().__init__()
        self.config = c = replace(config or TSBSMamba2Config(), **fields)
        widths = band_widths(c.sr, c.win)
        self.BN_mask = BandSplit(widths, c.feature_dim)
        self.BN_map = BandSplit(widths, c.feature_dim)
        self.separator_mask = DualPathStack(c.feature_dim, c.num_repeat_mask, mamba_backend)
        self.separator_map = DualPathStack(c.feature_dim, c.num_repeat_map, mamba_backend)
        self.in_conv = nn.Conv1d(2 * c.feature_dim, c.feature_dim, 1)
        self.mask = BandMerge(widths, c.feature_dim, c.num_output)
        self.map = BandMerge(widths, c.feature_dim, c.num_output)
        self.register_buffer("window", torch.hann_window(c.win), persistent=False)
        self.card = ModelCard(
            architecture=ARCHITECTURE,
            stems=default_stem_names(c.num_output),
            sample_rate=c.sr,
            min_samples=self.min_samples,
            stft=(c.win, c.stride),
            stages=2,
            cpu_bf16=True,  # 1.4x (TS), 1.5x (BSRNN) faster; stage-2 error 2e-3, 5e-3
        )

    @classmethod
    def from_config(cls, config: TSBSMamba2Config, **kwargs) -> TSBSMamba2:
        return cls(config, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TSBSMamba2:
        """``ts`` or ``l-ts``; keyword overrides change config fields (e.g. ``num_output=2``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        backend = overrides.pop("mamba_backend", None)
        return cls(replace(PRESETS[name], **overrides), mamba_backend=backend)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], **kwargs) -> TSBSMamba2:
        """Build the architecture the state dict describes and load it (strict, with a clear error)."""
        state_dict = unwrap_state_dict(state_dict)
        config = config_from_state_dict(
            state_dict, **{k: kwargs.pop(k) for k in ("sr", "stride") if k in kwargs}
        )
        model = cls.from_config(config, **kwargs)
        check_state_dict(model, state_dict)
        model.load_state_dict(state_dict, strict=True)
        return model

    def checkpoint_activations(self, enabled: bool = True) -> None:
        """Trade compute for memory in training: recompute each DualNet block in the backward pass."""
        self.separator_mask.checkpoint_activations = enabled
        self.separator_map.checkpoint_activations = enabled

    @property
    def min_samples(self) -> int:
        """Shortest input: the centred STFT reflect-pads win // 2 samples on each side."""
        return self.config.win // 2 + 1

    def forward(self, mixture: Tensor) -> tuple[Tensor, Tensor]:
        """mixture [B, ch, samples] -> (stage1, stage2), each [B, S, ch, samples]."""
        batch, channels, samples = check_mixture(mixture, self.min_samples, "win")
        spec = self._stft(mixture.reshape(batch * channels, samples))  # [BC, F, T]

        # Stage 1: complex masks, normalised so the stems sum to the mixture.
        d1 = self.separator_mask(self.BN_mask(spec), channels)
        masks = self.mask(d1)  # [BC, S, F, T]
        s = masks.shape[1]
        total = masks.sum(dim=1, keepdim=True)
        masks = masks - torch.complex(total.real - 1, total.imag) / s
        stage1 = masks * spec[:, None]

        # Stage 2: fuse fresh band features with stage-1 features, add a residual mapping.
        fused = torch.cat([self.BN_map(spec), d1], dim=-1)  # [BC, K, T, 2N]
        fused = onednn.linear(fused, self.in_conv.weight[..., 0], self.in_conv.bias, activation="tanh")
        stage2 = stage1 + self.map(self.separator_map(fused, channels))

        return self._istft(stage1, batch, channels, samples), self._istft(stage2, batch, channels, samples)

    def _stft(self, audio: Tensor) -> Tensor:
        return stft(audio, self.config.win, self.config.stride, self.window)

    def _istft(self, spec: Tensor, batch: int, channels: int, samples: int) -> Tensor:
        """[B*ch, S, F, T] complex -> [B, S, ch, samples]."""
        s = spec.shape[1]
        flat = spec.reshape(batch * channels * s, *spec.shape[2:])
        audio = istft(flat, self.config.win, self.config.stride, self.window, samples)
        return audio.reshape(batch, channels, s, samples).transpose(1, 2)


# --- state dicts -------------------------------------------------------------------------


def _count_layers(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def config_from_state_dict(
    state_dict: Mapping[str, Tensor], sr: int = 44100, stride: int = 512
) -> TSBSMamba2Config:
    """Infer the architecture (feature_dim, layer counts, sources, STFT size) from a state dict.

    The sample rate and hop are not stored in a state dict: pass them if they
    differ from 44100 / 512. The band widths the weights imply are checked
    against the ones ``sr`` and the inferred ``win`` give.
    """
    state_dict = unwrap_state_dict(state_dict)
    needed = ["BN_mask.0.1.weight", "mask.0.5.weight"]
    absent = [k for k in needed if k not in state_dict]
    if absent:
        raise StateDictMismatch(
            f"not a TS-BSMamba2 state dict: no {', '.join(absent)} "
            f"(first keys: {summarise(list(state_dict), 5)})"
        )
    n_bands = _count_layers(state_dict, "BN_mask")
    widths = [state_dict[f"BN_mask.{k}.0.weight"].shape[0] // 2 for k in range(n_bands)]
    win = 2 * (sum(widths) - 1)
    try:
        expected_widths = band_widths(sr, win)
    except ValueError as exc:
        raise StateDictMismatch(f"band layout of the state dict fits no STFT: {exc}") from None
    if widths != expected_widths:
        raise StateDictMismatch(
            f"band widths in the state dict ({len(widths)} bands) differ from the ones sr={sr}, "
            f"win={win} give ({len(expected_widths)} bands); pass the sample rate the model was trained at"
        )
    feature_dim = state_dict["BN_mask.0.1.weight"].shape[0]
    num_output = state_dict["mask.0.5.weight"].shape[0] // (4 * widths[0])
    return TSBSMamba2Config(
        sr=sr,
        win=win,
        stride=stride,
        feature_dim=feature_dim,
        num_repeat_mask=_count_layers(state_dict, "separator_mask"),
        num_repeat_map=_count_layers(state_dict, "separator_map"),
        num_output=num_output,
    )
