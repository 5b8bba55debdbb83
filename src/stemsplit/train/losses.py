"""Training losses, for every family.

Music: BSRNN's objective (Luo & Yu, eq. 1), which TS-BSMamba2 adopts for each
of its two stages (Bai et al., eq. 3-4): per source, the mean absolute error of
the real parts and of the imaginary parts of the STFTs plus the mean absolute
error of the waveforms.

Speakers: U-Mamba-Net's objective (Dang et al., eq. 10, from Conv-TasNet):
the negative SI-SNR averaged over the talkers, for the talkers' order that
makes it smallest (permutation-invariant training: the network's outputs have
no fixed order, any one that separates the talkers is right).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from ..evaluate.si_snr import pit_si_snr
from ..model.layers.stft import stft

__all__ = ["band_split_loss", "pit_si_snr_loss", "separation_loss"]


def band_split_loss(estimate: Tensor, target: Tensor, n_fft: int = 2048, hop: int = 512) -> Tensor:
    """Eq. (1) for every source, summed over sources: MAE(Re) + MAE(Im) of the STFTs + MAE(waveform).

    estimate, target: [B, S, ch, samples]; a scalar. Each term is a mean over
    batch, channels and frequency/time (or samples) of one source; the sources'
    losses are added, so each network of a bag of per-target models gets
    exactly its own eq. (1) gradient. The STFT is the models' own: periodic
    Hann window of n_fft, centred, reflect-padded, float32 outside autocast.

    The paper compares iSTFT(S) with iSTFT(S_ref); a model's output already is
    iSTFT(S) and iSTFT(STFT(target)) = target for this window and hop, so the
    waveforms are compared directly. The STFT being linear, STFT(estimate) -
    STFT(target) is taken as one STFT of the difference (half the work).
    """
    if estimate.shape != target.shape or estimate.dim() != 4:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ in shape "
            "or are not [batch, sources, channels, samples]"
        )
    with torch.autocast(target.device.type, enabled=False):
        diff = estimate.float() - target.float()
        spec = stft(
            diff.reshape(-1, diff.shape[-1]), n_fft, hop, torch.hann_window(n_fft, device=diff.device)
        )
        spec = spec.reshape(*diff.shape[:3], *spec.shape[-2:])  # [B, S, ch, F, frames]
        per_source = (
            spec.real.abs().mean(dim=(0, 2, 3, 4))
            + spec.imag.abs().mean(dim=(0, 2, 3, 4))
            + diff.abs().mean(dim=(0, 2, 3))
        )
        return per_source.sum()


def separation_loss(
    outputs: Tensor | tuple[Tensor, ...], targets: Tensor, n_fft: int = 2048, hop: int = 512
) -> Tensor:
    """:func:`band_split_loss` of every stage's output, summed (TS-BSMamba2: stage 1 + stage 2).

    outputs: a model's output, [B, S, ch, samples] or a tuple of them; targets: [B, S, ch, samples].
    """
    stages = outputs if isinstance(outputs, tuple) else (outputs,)
    losses = (band_split_loss(stage, targets, n_fft, hop) for stage in stages)
    return cast(Tensor, sum(losses))  # sum() of tensors is a tensor


def pit_si_snr_loss(outputs: Tensor | tuple[Tensor, ...], targets: Tensor) -> Tensor:
    """Eq. (10) of U-Mamba-Net: -max over orders of the mean SI-SNR, averaged over the batch.

    outputs: [B, S, ch, samples] or a tuple of them (one per stage, each scored, summed);
    targets: [B, S, ch, samples]. Computed in float32 outside autocast.
    """
    stages = outputs if isinstance(outputs, tuple) else (outputs,)
    with torch.autocast(targets.device.type, enabled=False):
        losses = (-pit_si_snr(stage.float(), targets.float())[0].mean() for stage in stages)
        return cast(Tensor, sum(losses))  # sum() of tensors is a tensor
