"""Reading and resampling audio, block by block (writing stems is :mod:`stemsplit.output`).

Everything here streams: a song is never held in memory whole. Decoding is
libsndfile's (wav, flac, ogg/opus, mp3, aiff, ...), resampling is soxr's
streaming resampler (high quality).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "BlockResampler",
    "downmix_to_stereo",
    "libsndfile_reason",
    "probe",
    "read_blocks",
]

# What `stemsplit batch` picks up when it walks a folder.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aif", ".aiff", ".m4a", ".wv", ".caf", ".w64"}
)


class AudioError(Exception):
    """A file cannot be read or written; the message names the file and the problem."""


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    frames: int
    sample_rate: int
    channels: int
    format: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def probe(path: str | os.PathLike) -> AudioInfo:
    """Open ``path`` far enough to know its length, rate and channels, or raise :class:`AudioError`."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({libsndfile_reason(exc)})") from None
    if info.frames <= 0:
        raise AudioError(f"{path}: contains no audio")
    return AudioInfo(path, int(info.frames), int(info.samplerate), int(info.channels), info.format)


def read_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    """Decode ``info.path`` in blocks of [frames, channels] float32, checking every sample is finite."""
    position = 0
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                if not len(block):
                    break
                if not np.isfinite(block).all():
                    bad = position + int(np.argwhere(~np.isfinite(block))[0][0])
                    raise AudioError(
                        f"{info.path}: sample {bad} ({bad / info.sample_rate:.2f} s) is NaN or infinite"
                    )
                position += len(block)
                yield block
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(
            f"{info.path}: decoding failed at {position / info.sample_rate:.2f} s ({libsndfile_reason(exc)})"
        ) from None
    if position == 0:
        raise AudioError(f"{info.path}: contains no audio")


def downmix_to_stereo(block: np.ndarray) -> np.ndarray:
    """[frames, channels > 2] -> [frames, 2].

    Six channels are taken as 5.1 (FL, FR, FC, LFE, SL, SR) and folded down
    per ITU-R BS.775 without the LFE; any other layout is averaged to mono and
    duplicated. The result is scaled so a full-scale input cannot clip.
    """
    if block.shape[1] == 6:
        fl, fr, fc, _, sl, sr = block.T
        c = 1 / math.sqrt(2)
        stereo = np.stack([fl + c * fc + c * sl, fr + c * fc + c * sr], axis=1)
        return (stereo / (1 + 2 * c)).astype(np.float32)
    mono = block.mean(axis=1, keepdims=True)
    return np.repeat(mono, 2, axis=1).astype(np.float32)


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


def libsndfile_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text
