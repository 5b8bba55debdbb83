"""The output side: where stems go, in which format, and committing a song's stems together."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import AudioError, libsndfile_reason
from .files import temporary_sibling

__all__ = ["OUTPUT_FORMATS", "TempStemFile", "transcode"]

# Output format -> (libsndfile container, subtype for each bit depth; None = float).
OUTPUT_FORMATS: dict[str, tuple[str, dict[int | None, str]]] = {
    "wav": ("WAV", {None: "FLOAT", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}),
    "flac": ("FLAC", {None: "PCM_24", 16: "PCM_16", 24: "PCM_24"}),
    "mp3": ("MP3", {None: "MPEG_LAYER_III"}),
}


class TempStemFile:
    """A float32 wav being written next to its destination, renamed into place by :meth:`commit`.

    The temporary name starts with a dot and ends in ``.partial`` so a
    half-written file is recognisable; :meth:`discard` removes it.
    """

    def __init__(self, destination: Path, sample_rate: int, channels: int) -> None:
        self.destination = destination
        self.sample_rate = sample_rate
        self.channels = channels
        self.peak = 0.0
        self.frames = 0
        self.path = temporary_sibling(destination, ".partial")
        self._file = sf.SoundFile(
            self.path, "w", samplerate=sample_rate, channels=channels, format="WAV", subtype="FLOAT"
        )

    def write(self, block: np.ndarray) -> None:
        """block: [frames, channels]."""
        if len(block):
            self.peak = max(self.peak, float(np.abs(block).max()))
            self.frames += len(block)
            try:
                self._file.write(block)
            except (sf.LibsndfileError, RuntimeError, OSError) as exc:
                raise AudioError(f"{self.destination}: writing failed ({_write_reason(exc)})") from None

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def transcode(
    source: Path, destination: Path, fmt: str, bit_depth: int | None, gain: float, clamp: bool
) -> None:
    """Copy float wav ``source`` into ``destination`` in ``fmt``/``bit_depth``, times ``gain``.

    Written to a temporary file and renamed (the caller has checked for
    existing files). ``clamp`` limits samples to [-1, 1] for integer formats.
    """
    container, subtypes = OUTPUT_FORMATS[fmt]
    if bit_depth not in subtypes:
        depths = ", ".join(str(d) for d in subtypes if d is not None) or "none"
        raise AudioError(f"{destination}: {fmt} does not take --bit-depth {bit_depth} (choose: {depths})")
    name = temporary_sibling(destination, ".partial")
    try:
        with (
            sf.SoundFile(str(source)) as src,
            sf.SoundFile(
                name,
                "w",
                samplerate=src.samplerate,
                channels=src.channels,
                format=container,
                subtype=subtypes[bit_depth],
            ) as dst,
        ):
            for block in src.blocks(65536, dtype="float32", always_2d=True):
                block = block * gain if gain != 1.0 else block
                dst.write(np.clip(block, -1.0, 1.0) if clamp else block)
        os.replace(name, destination)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        Path(name).unlink(missing_ok=True)
        raise AudioError(f"{destination}: writing failed ({_write_reason(exc)})") from None
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _write_reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{libsndfile_reason(exc)}; is the disk full?"
