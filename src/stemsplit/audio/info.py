"""What every module of the audio package shares: :class:`AudioInfo` (what a probe found out),
:class:`Segment`, :class:`AudioError`, the messages for audio that stops early, and how soundfile is
given a path and what its errors say.

It imports nothing of the engine: the error is the package's own, the sample-rate range lives here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import soundfile as sf

from ..errors import StemsplitError

# What `stemsplit batch` picks up when it walks a folder: what libsndfile reads, what FFmpeg decodes
# for us (audio containers and the soundtrack of videos).
AUDIO_EXTENSIONS = frozenset(
    {
        # libsndfile
        ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".wv", ".caf",
        ".w64", ".rf64", ".au", ".snd",
        # FFmpeg (PyAV)
        ".m4a", ".m4b", ".aac", ".alac", ".wma", ".mka", ".ac3", ".mp2",
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi",
    }
)  # fmt: skip

# Sample rates taken, from arrays and files alike (a file's header saying 1 Hz is damaged, not audio).
# The engine's settings check an array's rate against the same range (stemsplit.engine.settings).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 1_000_000
# libsndfile is read in pieces this long, so a decoding error is placed to within 93 ms at 44.1 kHz
# (FLAC's usual frame: finer is not possible there); shorter pieces make decoding markedly slower.
PIECE_FRAMES = 4096
# libsndfile's error text for a bad frame is often a stale or internal one ("psf_fseek() failed").
LIBSNDFILE_DECODE_ERROR = "libsndfile cannot decode past this point"


class AudioError(StemsplitError):
    """A file cannot be read or written; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of a file that libsndfile decodes on its own: a WAV with its header repaired, or one
    link of a chained Ogg. ``parts`` are bytes (a header made here) and (offset, length) ranges of the
    file, read in order as one file; ``sample_rate`` and ``channels`` are the segment's own (they may
    differ from the song's, and are converted)."""

    parts: tuple[bytes | tuple[int, int], ...]
    sample_rate: int
    channels: int


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What :func:`~stemsplit.audio.probing.probe` found out about an audio file.

    ``frames`` is exact when ``frames_exact`` (libsndfile's formats, MP3 with a
    length tag); otherwise it is an estimate from the container's duration, and
    :func:`~stemsplit.audio.decode.read_blocks` may yield somewhat more or fewer frames: consumers must
    use the number of frames actually read. ``layout`` names the channels as
    FFmpeg does ("FL", "FR", "FC", "LFE", "BL", ...) where the file states its
    layout, else None. ``decoder`` is "libsndfile" or "ffmpeg"; ``stream`` is
    the FFmpeg stream index of the audio decoded.
    """

    path: Path
    frames: int
    sample_rate: int
    channels: int
    format: str
    frames_exact: bool = True
    layout: tuple[str, ...] | None = None
    decoder: str = "libsndfile"
    stream: int = 0
    # Where the file's audio and its header disagree, and what was read (one line each, for the user:
    # the audio decides the length, the header is an estimate and a cross-check).
    notes: tuple[str, ...] = ()
    # libsndfile decodes these one after another instead of the file as it is on disk (empty: the file).
    segments: tuple[Segment, ...] = ()

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def truncated_message(path: Path, frames: int, rate: int, stated: float) -> str:
    """The message for audio that ends after ``frames`` although the file says it lasts ``stated`` s."""
    return f"{path}: truncated at {frames / rate:.2f} s (the file says {stated:.2f} s)"


def damaged_message(path: Path, frames: int, rate: int, reason: str) -> str:
    """The message for audio that fails to decode after ``frames`` (its end may still be there)."""
    return f"{path}: damaged at {frames / rate:.2f} s ({reason or 'decoding stops there'})"


class DecodeFailed(Exception):
    """Decoding stopped after ``frames`` frames, for ``reason``: never seen by a user, as probe and
    read_blocks turn it into an :class:`AudioError` saying where the audio stops."""

    def __init__(self, frames: int, reason: str) -> None:
        super().__init__(reason)
        self.frames = frames
        self.reason = reason


def sf_name(path: Path | str) -> bytes:
    """``path`` as soundfile should get it: bytes, so a name that is not UTF-8 opens too (soundfile
    encodes a str strictly and fails on such a name, which Python holds with surrogate escapes)."""
    return os.fsencode(path)


def libsndfile_open(path: Path) -> sf.SoundFile:
    """``path`` opened for reading by libsndfile, which finds the format in the bytes alone.

    Through a descriptor, not the name: soundfile takes the name's extension for the format where it
    is ``.raw`` (headerless samples, and then wants a rate it cannot know) instead of reading the header.
    """
    # (libsndfile closes the descriptor when it cannot open the file, too)
    return sf.SoundFile(os.open(path, os.O_RDONLY | os.O_CLOEXEC), closefd=True)


def ffmpeg_name(path: Path) -> str:
    """``path`` as FFmpeg must get it to open that file: absolute, so that a relative name such as
    ``pipe:1.mp3``, ``concat:a.mp3|b.mp3`` or ``http:x.mp3`` is a file here, not one of FFmpeg's
    protocols (standard input, other files, the network)."""
    return os.path.abspath(path)


def libsndfile_reason(exc: Exception) -> str:
    """The useful part of a soundfile exception's message (without "Error opening 'path': ")."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text
