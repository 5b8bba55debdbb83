"""The spectrogram every family uses, in one place: periodic Hann window, centred, reflect-padded.

Both run in float32 (or wider) outside autocast: under bf16 autocast an STFT
would lose the precision the masks are multiplied with.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["istft", "stft"]


def stft(audio: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """[b, samples] -> [b, n_fft // 2 + 1, frames] complex."""
    with torch.autocast(audio.device.type, enabled=False):
        audio = audio.to(torch.promote_types(audio.dtype, torch.float32))
        return torch.stft(
            audio,
            n_fft,
            hop,
            window=window.to(audio.device, audio.dtype),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )


def istft(spec: Tensor, n_fft: int, hop: int, window: Tensor, samples: int) -> Tensor:
    """[b, n_fft // 2 + 1, frames] complex -> [b, samples]."""
    with torch.autocast(spec.device.type, enabled=False):
        return torch.istft(
            spec, n_fft, hop, window=window.to(spec.device, spec.real.dtype), center=True, length=samples
        )
