"""Decoding a probed file in blocks (:func:`read_blocks`), every sample checked to be audio.

libsndfile decodes the file, or its segments (:mod:`.spliced`: converted to the song's rate and
channels); FFmpeg what :func:`~stemsplit.audio.probing.probe` gave it (:mod:`.ffmpeg`). A song is never
held in memory whole. A decoding error, a file that ends before its exactly known length, NaN,
infinity or a sample beyond ±:data:`MAX_SAMPLE` is an :class:`~stemsplit.audio.info.AudioError`
saying where.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from .ffmpeg import end_decodes, ffmpeg_pieces
from .info import (
    LIBSNDFILE_DECODE_ERROR,
    PIECE_FRAMES,
    AudioError,
    AudioInfo,
    DecodeFailed,
    Segment,
    damaged_message,
    libsndfile_open,
    truncated_message,
)
from .resample import BlockResampler
from .spliced import SplicedFile

# Float samples beyond this (120 dB above full scale) are not audio: a broken writer, or data that is not
# sound. They are refused: far enough beyond it the model's energies overflow float32 and its stems are NaN.
MAX_SAMPLE = 1e6


def read_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    """Decode ``info.path`` in blocks of [block_frames, channels] float32 (the last one shorter).

    Every sample is checked to be finite. Decoding errors and a file that
    ends before its exactly known length raise :class:`AudioError` saying
    where the audio stops. When ``info.frames_exact`` is False the number of
    frames yielded may differ from ``info.frames``: it is the true length.
    """
    position = 0
    pieces: list[np.ndarray] = []
    buffered = 0
    source = _libsndfile_pieces(info) if info.decoder == "libsndfile" else ffmpeg_pieces(info)
    try:
        for piece in source:
            problem = unplayable_problem(info.path, piece, position + buffered, info.sample_rate)
            if problem is not None:
                raise AudioError(problem)
            pieces.append(piece)
            buffered += len(piece)
            while buffered >= block_frames:
                block = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
                pieces, buffered = [block[block_frames:]], buffered - block_frames
                position += block_frames
                yield block[:block_frames]
    except DecodeFailed as exc:  # every piece decoded before the failure was counted
        at = position + buffered
        if info.decoder == "libsndfile" and info.frames_exact and not end_decodes(info.path, info.seconds):
            raise AudioError(truncated_message(info.path, at, info.sample_rate, info.seconds)) from None
        raise AudioError(damaged_message(info.path, at, info.sample_rate, exc.reason)) from None
    if buffered:
        position += buffered
        yield np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    if position == 0:
        raise AudioError(f"{info.path}: contains no audio")
    if info.frames_exact and position < info.frames:
        raise AudioError(truncated_message(info.path, position, info.sample_rate, info.seconds))


def unplayable_sample(block: np.ndarray) -> tuple[int, str] | None:
    """The first frame of ``block`` ([frames, channels]) holding a sample that is not audio, and why.

    NaN, infinite, or beyond ±:data:`MAX_SAMPLE`; None when every sample is fine.
    """
    magnitude = np.abs(block)
    if magnitude.size == 0 or magnitude.max() <= MAX_SAMPLE:  # NaN compares False: looked at below
        return None
    frames = magnitude.reshape(len(block), -1)
    bad = ~(frames <= MAX_SAMPLE)  # True for NaN too
    frame = int(np.argwhere(bad.any(axis=1))[0][0])
    value = float(block.reshape(len(block), -1)[frame][bad[frame]][0])
    if not math.isfinite(value):
        return frame, "is NaN or infinite"
    return frame, f"is {value:.3g}, beyond ±{MAX_SAMPLE:.0e}: not audio"


def unplayable_problem(path: Path, block: np.ndarray, first_frame: int, sample_rate: int) -> str | None:
    """``PATH: sample N (T s) is NaN or infinite`` (or beyond ±MAX_SAMPLE) for the first such sample of
    ``block`` ([frames, channels], frame ``first_frame`` of the file onwards); None when all are audio."""
    problem = unplayable_sample(block)
    if problem is None:
        return None
    frame = first_frame + problem[0]
    return f"{path}: sample {frame} ({frame / sample_rate:.2f} s) {problem[1]}"


def _libsndfile_pieces(info: AudioInfo) -> Iterator[np.ndarray]:
    """Decode with libsndfile in short pieces of [n, channels] float32; ``DecodeFailed`` on errors.

    A file with ``info.segments`` is decoded segment by segment, each
    converted to the song's rate and channels (:func:`_converted`).
    """
    read = 0
    try:
        if not info.segments:
            with libsndfile_open(info.path) as f:
                while len(piece := f.read(PIECE_FRAMES, dtype="float32", always_2d=True)):
                    read += len(piece)
                    yield piece
            return
        for segment in info.segments:
            with sf.SoundFile(SplicedFile(info.path, segment.parts)) as f:
                for piece in _converted(f, segment, info):
                    read += len(piece)
                    yield piece
    except (sf.LibsndfileError, RuntimeError):
        raise DecodeFailed(read, LIBSNDFILE_DECODE_ERROR) from None
    except OSError as exc:
        raise DecodeFailed(read, exc.strerror or str(exc)) from None


def _converted(f: sf.SoundFile, segment: Segment, info: AudioInfo) -> Iterator[np.ndarray]:
    """``f``'s pieces at the song's rate and channel count: a mono segment is copied to both sides of a
    stereo song, a stereo one averaged into a mono song, another rate resampled (soxr)."""
    resample = BlockResampler(segment.sample_rate, info.sample_rate, info.channels)

    def to_song(piece: np.ndarray) -> np.ndarray:
        if segment.channels != info.channels:
            piece = piece.mean(axis=1, keepdims=True) if info.channels == 1 else piece[:, [0] * info.channels]
        return resample(np.ascontiguousarray(piece, dtype=np.float32))

    # Longer pieces than PIECE_FRAMES: a segment is PCM (an error's place is exact anyway) or a whole
    # Ogg link, and a WAV over 4 GiB read in short pieces spends most of its time per piece.
    while len(piece := f.read(PIECE_FRAMES * 16, dtype="float32", always_2d=True)):
        if len(out := to_song(piece)):
            yield out
    if len(tail := resample.flush(info.channels)):
        yield tail
