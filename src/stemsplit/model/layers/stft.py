"""The spectrogram every family uses, in one place: periodic Hann window, centred, reflect-padded.

Both run in float32 (or wider) outside autocast: under bf16 autocast an STFT
would lose the precision the masks are multiplied with.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_mixture", "istft", "stft"]


def stft(
    audio: Tensor,
    n_fft: int,
    hop: int,
    window: Tensor,
    win_length: int | None = None,
    normalized: bool = False,
) -> Tensor:
    """[b, samples] -> [b, n_fft // 2 + 1, frames] complex.

    ``window`` has ``win_length`` samples (default n_fft; a shorter one is centred in each frame);
    ``normalized`` scales by 1 / sqrt(n_fft) (and :func:`istft` undoes it).
    """
    with torch.autocast(audio.device.type, enabled=False):
        audio = audio.to(torch.promote_types(audio.dtype, torch.float32))
        return torch.stft(
            audio,
            n_fft,
            hop,
            win_length,
            window=window.to(audio.device, audio.dtype),
            center=True,
            pad_mode="reflect",
            normalized=normalized,
            return_complex=True,
        )


def istft(
    spec: Tensor,
    n_fft: int,
    hop: int,
    window: Tensor,
    samples: int,
    win_length: int | None = None,
    normalized: bool = False,
) -> Tensor:
    """[b, n_fft // 2 + 1, frames] complex -> [b, samples]: :func:`stft` undone (the same settings)."""
    with torch.autocast(spec.device.type, enabled=False):
        return torch.istft(
            spec,
            n_fft,
            hop,
            win_length,
            window=window.to(spec.device, spec.real.dtype),
            center=True,
            normalized=normalized,
            length=samples,
        )


def check_mixture(mixture: Tensor, min_samples: int, n_fft_name: str) -> tuple[int, int, int]:
    """(batch, channels, samples) of a mixture [B, ch, samples] long enough for the padded STFT.

    ``n_fft_name``: the config field of the FFT size, for the message (``win``, ``n_fft``).
    """
    if mixture.dim() != 3:
        raise ValueError(f"expected mixture of shape [batch, channels, samples], got {tuple(mixture.shape)}")
    batch, channels, samples = mixture.shape
    if samples < min_samples:
        raise ValueError(
            f"input of {samples} samples is too short: the model needs at least {min_samples} "
            f"({n_fft_name} // 2 + 1) for its reflect-padded STFT"
        )
    return batch, channels, samples
