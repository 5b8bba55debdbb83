"""Scale-invariant SNR (SI-SNR), and the order of a speaker model's outputs that matches the talkers best.

One home for both uses: the speech scores of ``stemsplit eval``
(:func:`stemsplit.evaluate.metrics.speech_scores`) and U-Mamba-Net's training loss
(:func:`stemsplit.train.losses.pit_si_snr_loss`, its negative).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = ["SI_SNR_EPS", "pairwise_si_snr", "pit_si_snr", "si_snr"]

SI_SNR_EPS = 1e-8  # keeps silence finite; far below any audible signal's energy


def si_snr(estimate: Tensor, target: Tensor, eps: float = SI_SNR_EPS) -> Tensor:
    """Scale-invariant SNR in dB over the last axis: [..., samples] -> [...].

    Both signals are made zero-mean; the target scaled to best fit the estimate,
    ``s = <e, t> t / |t|^2``, is the signal, ``e - s`` the noise:
    ``10 log10(|s|^2 / |e - s|^2)`` (Le Roux et al., "SDR - half-baked or well done?").
    """
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    target = target - target.mean(dim=-1, keepdim=True)
    scale = (estimate * target).sum(-1, keepdim=True) / (target.square().sum(-1, keepdim=True) + eps)
    signal = scale * target
    noise = estimate - signal
    return 10 * torch.log10((signal.square().sum(-1) + eps) / (noise.square().sum(-1) + eps))


def pairwise_si_snr(estimate: Tensor, target: Tensor) -> Tensor:
    """SI-SNR of every output against every talker: [B, S, ...] twice -> [B, S (outputs), S (talkers)].

    A talker's channels and samples are taken as one signal (speech models are mono).
    """
    if estimate.shape != target.shape or estimate.dim() < 3:
        raise ValueError(
            f"estimate {tuple(estimate.shape)} and target {tuple(target.shape)} differ in shape "
            "or are not [batch, talkers, (channels,) samples]"
        )
    e, t = estimate.flatten(2), target.flatten(2)
    return si_snr(e[:, :, None], t[:, None, :])


def pit_si_snr(estimate: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The best order of the outputs: (mean SI-SNR over talkers [B], permutation [B, S]).

    ``permutation[b, i]`` is the output that matches talker ``i`` of example ``b``. All S!
    orders are scored at once from the S x S pairwise SI-SNRs (S is 2 or 3 for speech).
    """
    pairs = pairwise_si_snr(estimate, target)  # [B, outputs, talkers]
    s = pairs.shape[1]
    orders = torch.tensor(list(itertools.permutations(range(s))), device=pairs.device)  # [P, S]
    scores = pairs[:, orders, torch.arange(s, device=pairs.device)].mean(dim=-1)  # [B, P]
    best, index = scores.max(dim=1)
    return best, orders[index]
