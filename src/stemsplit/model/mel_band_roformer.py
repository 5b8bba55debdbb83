"""Mel-Band RoFormer (Wang et al., "Mel-Band RoFormer for Music Source Separation", arXiv 2310.01809),
checkpoint-compatible with Music-Source-Separation-Training.

As BS-RoFormer (``bs_roformer.py``), but the bands are the ``num_bands``
triangles of librosa's mel filter bank (Slaney scale and norm) over the STFT's
bins, taken as binary masks: neighbouring bands overlap, so a bin can belong to
two bands. Each band reads all its bins; where bands overlap, a bin's mask is
the mean of the masks its bands give it. Each transformer ends in its own
RMSNorm (there is no final norm), and a mask MLP has ``mask_estimator_depth``
hidden layers (one linear layer more than BS-RoFormer's of the same depth).

Band layout (upstream's non-persistent buffers, rebuilt here from librosa)::

    member[k, f] = mel[k, f] > 0, with mel[0, 0] and mel[-1, -1] forced to 1
                   (so bin 0 and the top bin belong to a band on every system)
    rows of band k: its bins in ascending order; stereo: bin f -> rows 2f, 2f + 1

State dict: as BS-RoFormer's without ``final_norm``, plus
``layers.<l>.<t>.norm.gamma`` [dim] closing each transformer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .roformer import Roformer, RoformerConfig

__all__ = ["ARCHITECTURE", "PRESETS", "MelBandRoformer", "MelBandRoformerConfig", "mel_band_members"]

ARCHITECTURE = "mel-band-roformer"


@dataclass(frozen=True)
class MelBandRoformerConfig(RoformerConfig):
    """A Mel-Band RoFormer (upstream's defaults differ from BS-RoFormer's in the dropouts and mask depth).

    ``sr`` is also the mel filter bank's rate (upstream's ``sample_rate``).
    ``match_input_audio_length``: upstream returns hop * (samples // hop)
    samples when false; here the output always has the input's length, its
    first samples the same.
    """

    num_bands: int = 60
    attn_dropout: float = 0.1  # training
    ff_dropout: float = 0.1  # training
    mask_estimator_depth: int = 1
    match_input_audio_length: bool = False


PRESETS: dict[str, MelBandRoformerConfig] = {"paper": MelBandRoformerConfig()}


def mel_band_members(sr: int, n_fft: int, num_bands: int) -> np.ndarray:
    """[num_bands, n_fft // 2 + 1] bool: which bins each band reads; ValueError if a bin has no band."""
    from librosa.filters import mel  # librosa's import is slow: only when a network is built

    bank = mel(sr=sr, n_fft=n_fft, n_mels=num_bands)
    bank[0, 0] = 1.0
    bank[-1, -1] = 1.0
    members = bank > 0
    if not members.any(axis=0).all():
        missing = int((~members.any(axis=0)).sum())
        raise ValueError(
            f"{num_bands} mel bands at sr={sr}, stft_n_fft={n_fft} leave {missing} bins in no band; "
            "use fewer bands or a longer FFT"
        )
    return members


class MelBandRoformer(Roformer):
    """``model(mixture)``: [B, ch, samples] -> stems [B, S, ch, samples] (see :class:`Roformer`)."""

    freq_indices: Tensor  # buffers
    bands_per_row: Tensor

    def __init__(self, config: MelBandRoformerConfig | None = None, **fields: Any) -> None:
        c = replace(config or MelBandRoformerConfig(), **fields)
        members = mel_band_members(c.sr, c.stft_n_fft, c.num_bands)
        ch = c.audio_channels
        bins_of_bands = np.nonzero(members)[1]  # band by band, ascending bins
        rows = (bins_of_bands[:, None] * ch + np.arange(ch)).reshape(-1)
        super().__init__(
            ARCHITECTURE,
            c,
            [2 * ch * int(n) for n in members.sum(axis=1)],
            norm_output=True,
            mask_layers=c.mask_estimator_depth + 1,
        )
        self.register_buffer("freq_indices", torch.as_tensor(rows, dtype=torch.long), persistent=False)
        bands_per_row = np.repeat(members.sum(axis=0), ch)
        self.register_buffer(
            "bands_per_row", torch.as_tensor(bands_per_row, dtype=torch.float32), persistent=False
        )

    def band_rows(self, spec: Tensor) -> Tensor:
        return spec[:, self.freq_indices]

    def merge_masks(self, masks: Tensor, bins: int) -> Tensor:
        b, s, _, frames = masks.shape
        summed = masks.new_zeros(b, s, bins, frames).index_add_(2, self.freq_indices, masks)
        return summed / self.bands_per_row[:, None]
