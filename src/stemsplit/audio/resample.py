"""Resampling blocks as they stream past (soxr's streaming resampler, high quality).

The engine uses it both ways around a model whose rate is not the song's; decoding, to bring the
links of a chained Ogg (:mod:`.spliced`) to one rate.
"""

from __future__ import annotations

import numpy as np
import soxr


class BlockResampler:
    """Streaming resampler for [frames, channels] float32 blocks (soxr, high quality).

    Passes blocks through untouched when the rates are equal. Call
    :meth:`flush` after the last block for the resampler's tail.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        self.identity = in_rate == out_rate
        if not self.identity:
            self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality="HQ")

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.identity:
            return block
        return self._stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32))

    def flush(self, channels: int) -> np.ndarray:
        if self.identity:
            return np.zeros((0, channels), np.float32)
        return self._stream.resample_chunk(np.zeros((0, channels), np.float32), last=True)
