"""``exact``: stems corrected to sum exactly to the mixture, the residual shared out among them."""

from __future__ import annotations

import torch

from ..model.layers.stft import istft, stft


def share_residual(
    mixture: torch.Tensor, stems: torch.Tensor, n_fft: int = 2048, hop: int = 512
) -> torch.Tensor:
    """Make stems sum exactly to the mixture, sharing the residual by magnitude in each STFT bin.

    mixture [n, C, L], stems [n, S, C, L] -> corrected stems. In every
    time-frequency bin the residual (mixture minus the sum of stems) is split
    among the stems in proportion to their magnitudes there, so a stem that is
    silent in a bin stays silent. Since the STFT is linear and inverts exactly,
    the corrected stems sum to the mixture in the waveform too.
    """
    n, s, c, length = stems.shape
    window = torch.hann_window(n_fft, device=stems.device, dtype=stems.dtype)
    stem_spec = stft(stems.reshape(-1, length), n_fft, hop, window)
    stem_spec = stem_spec.reshape(n, s, c, *stem_spec.shape[-2:])
    mix_spec = stft(mixture.reshape(-1, length), n_fft, hop, window).reshape(n, c, *stem_spec.shape[-2:])
    residual = mix_spec - stem_spec.sum(dim=1)
    magnitude = stem_spec.abs()
    share = magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(stems.dtype).tiny)
    # Bins where every stem is silent: share equally (the mixture is all residual there).
    share = torch.where(magnitude.sum(dim=1, keepdim=True) > 0, share, torch.full_like(share, 1 / s))
    corrected = stem_spec + share * residual[:, None]
    audio = istft(corrected.reshape(-1, *corrected.shape[-2:]), n_fft, hop, window, length)
    return audio.reshape(n, s, c, length)
