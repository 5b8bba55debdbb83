"""Folding more than two channels to stereo (ITU-R BS.775), and the one line that says how.

The channel names are FFmpeg's ("FL", "FC", "LFE", ...): the layout a file states, else the
WAVE/SMPTE default for its channel count. The engine separates stereo (or mono) songs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_C = 1 / math.sqrt(2)  # -3 dB
# (gain into left, gain into right) per channel, FFmpeg's names. ITU-R BS.775: fronts at 0 dB, centre
# and surrounds at -3 dB, a single (back or top) centre at -3 dB into both sides, LFE dropped. Channels
# between front and centre go to their side at 0 dB (as FFmpeg's own downmix does).
CHANNEL_GAINS: dict[str, tuple[float, float]] = {
    "FL": (1.0, 0.0), "FR": (0.0, 1.0), "FC": (_C, _C), "LFE": (0.0, 0.0), "LFE2": (0.0, 0.0),
    "FLC": (1.0, 0.0), "FRC": (0.0, 1.0),
    "BL": (_C, 0.0), "BR": (0.0, _C), "BC": (_C, _C),
    "SL": (_C, 0.0), "SR": (0.0, _C), "WL": (_C, 0.0), "WR": (0.0, _C),
    "SDL": (_C, 0.0), "SDR": (0.0, _C),
    "TC": (_C, _C), "TFL": (_C, 0.0), "TFC": (_C, _C), "TFR": (0.0, _C),
    "TBL": (_C, 0.0), "TBC": (_C, _C), "TBR": (0.0, _C), "TSL": (_C, 0.0), "TSR": (0.0, _C),
    "BFL": (_C, 0.0), "BFC": (_C, _C), "BFR": (0.0, _C),
}  # fmt: skip


# Channel order by count where a file does not state it: WAVE/SMPTE (and FLAC, Vorbis) defaults.
DEFAULT_LAYOUTS: dict[int, tuple[str, ...]] = {
    3: ("FL", "FR", "FC"),
    4: ("FL", "FR", "BL", "BR"),  # quad
    5: ("FL", "FR", "FC", "BL", "BR"),  # 5.0
    6: ("FL", "FR", "FC", "LFE", "BL", "BR"),  # 5.1
    7: ("FL", "FR", "FC", "LFE", "BC", "SL", "SR"),  # 6.1
    8: ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR"),  # 7.1
}


def _downmix_layout(channels: int, layout: Sequence[str] | None) -> tuple[str, ...] | None:
    """The channel names a downmix uses: the stated ``layout`` if usable, else the default for the count."""
    if layout is not None and len(layout) == channels and all(n in CHANNEL_GAINS for n in layout):
        return tuple(layout)
    return DEFAULT_LAYOUTS.get(channels)


def _downmix_matrix(channels: int, layout: Sequence[str] | None) -> np.ndarray:
    """[channels, 2] gains, scaled so that no output can exceed the largest input sample."""
    names = _downmix_layout(channels, layout)
    if names is None:  # no known layout: the plain average, on both sides
        return np.full((channels, 2), 1 / channels, np.float32)
    matrix = np.array([CHANNEL_GAINS[n] for n in names], np.float64)
    return (matrix / matrix.sum(axis=0).max()).astype(np.float32)


def downmix_to_stereo(block: np.ndarray, layout: Sequence[str] | None = None) -> np.ndarray:
    """[frames, channels > 2] -> [frames, 2] float32, folded down per ITU-R BS.775.

    The channels are those of ``layout`` (FFmpeg's names, as :attr:`~stemsplit.audio.info.AudioInfo.layout`
    gives them) when the file states one, else the standard WAVE/SMPTE order
    for the count: 3 = L R C, 4 = quad (FL FR BL BR), 5 = 5.0 (FL FR FC BL BR),
    6 = 5.1 (FL FR FC LFE BL BR), 7 = 6.1 (FL FR FC LFE BC SL SR),
    8 = 7.1 (FL FR FC LFE BL BR SL SR). Fronts go to their side at 0 dB,
    centre and surrounds at -3 dB, LFE is dropped. More than 8 channels
    without a stated layout have no standard order: they are averaged to mono,
    the same on both sides (:func:`describe_downmix` says so). The result is
    scaled by one constant per layout so a full-scale input cannot clip.
    One or two channels are returned unchanged.
    """
    if block.shape[1] <= 2:
        return block
    matrix = _downmix_matrix(block.shape[1], layout)
    return (block.astype(np.float32, copy=False) @ matrix).astype(np.float32, copy=False)


def describe_downmix(channels: int, layout: Sequence[str] | None = None) -> str:
    """One line saying how :func:`downmix_to_stereo` folds ``channels`` (for a note to the user)."""
    names = _downmix_layout(channels, layout)
    if names is None:
        return f"{channels} channels in no known layout: averaged to mono on both sides"
    stated = "" if layout is not None and tuple(layout) == names else " (assumed from the channel count)"
    gain = 20 * math.log10(1 / float(np.array([CHANNEL_GAINS[n] for n in names]).sum(axis=0).max()))
    lfe = ", LFE dropped" if any(n.startswith("LFE") for n in names) else ""
    return (
        f"{channels} channels {' '.join(names)}{stated} folded to stereo "
        f"(ITU-R BS.775{lfe}, then {gain:.1f} dB so nothing clips)"
    )
