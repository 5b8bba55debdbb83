"""Training losses that are not tied to one training loop."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bsrnn_loss"]


def bsrnn_loss(estimate: Tensor, target: Tensor, n_fft: int = 2048, hop: int = 512) -> Tensor:
    """BSRNN's objective (Luo & Yu, eq. 1): MAE(Re) + MAE(Im) of the STFTs + MAE of the waveforms.

    estimate, target: [B, S, ch, samples] (any shape [..., samples] works); a scalar.

    Each of the three terms is a mean over all its elements: the STFT terms over
    B x S x ch x F x frames, the waveform term over B x S x ch x samples. (So
    with several stems this is the per-stem loss averaged over stems, not
    summed.) The STFT is the models' own: periodic Hann window of n_fft,
    centred, reflect-padded, computed in float32 outside autocast.

    The paper's waveform term compares iSTFT(S) with iSTFT(S_ref); the model's
    output already is iSTFT(S) and iSTFT(STFT(target)) = target for this
    window and hop, so the waveforms are compared directly. The STFT being
    linear, STFT(estimate) - STFT(target) is taken as one STFT of the
    difference (half the work, and the loss is symmetric by construction).
    """
    if estimate.shape != target.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ in shape")
    with torch.autocast(target.device.type, enabled=False):
        diff = estimate.float() - target.float()
        window = torch.hann_window(n_fft, device=diff.device)
        spec = torch.stft(
            diff.reshape(-1, diff.shape[-1]),
            n_fft,
            hop,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return spec.real.abs().mean() + spec.imag.abs().mean() + diff.abs().mean()
