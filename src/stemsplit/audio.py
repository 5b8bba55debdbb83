"""Reading and resampling audio, block by block (writing stems is :mod:`stemsplit.output`).

Everything here streams: a song is never held in memory whole.

Decoding: libsndfile first (wav, flac, ogg vorbis/opus, mp3, aiff, caf, ...),
then FFmpeg through PyAV, whose wheel carries FFmpeg's libraries, for what
libsndfile cannot read: AAC/ALAC in M4A/MP4, WMA, Opus/Vorbis in WebM/MKV and
the soundtrack of videos (MP4, MOV, MKV, WebM, AVI). Resampling is soxr's
streaming resampler (high quality).

Lengths: the audio decides, never the header. libsndfile knows a file's
exact frame count from its header; FFmpeg's containers often state only a
duration, so :class:`AudioInfo` says whether ``frames`` is exact
(``frames_exact``); when it is not, the number of frames :func:`read_blocks`
yields is the truth. Where a header misstates the audio, probe finds the
audio itself, and says so in ``AudioInfo.notes``:

- WAV: a chunk walk (:func:`_wav_facts`) finds every data chunk's bytes (size
  0 or 0xFFFFFFFF over audio, two data chunks, past 4 GiB); libsndfile then
  decodes them through an RF64 header made here (a :class:`Segment`).
- MP3: mpg123 trusts the first Xing/Info tag and stops where the rate
  changes; an MP3 with more bytes than its tag counts, or with no tag, is
  decoded by FFmpeg, which reads every frame.
- Ogg: each link of a chained Ogg is a :class:`Segment` of its own, converted
  to the song's rate and channels.
- Several audio streams: the default one, or the one asked for.

Problems are :class:`AudioError`, one line starting with the path: not a
regular file (FIFO, socket, device), permission denied, a directory, empty,
not an audio file (text, images, archives, unknown bytes), no audio stream
(a video without sound), truncated (at the position where decoding really
stops), NaN or infinite samples, samples beyond ±:data:`MAX_SAMPLE` (not audio).
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import io
import math
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np
import soundfile as sf
import soxr

from .errors import StemsplitError
from .settings import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SeparationError, check_sample_rate

__all__ = [
    "AUDIO_EXTENSIONS",
    "MAX_SAMPLE",
    "AudioError",
    "AudioInfo",
    "BlockResampler",
    "describe_downmix",
    "downmix_to_stereo",
    "libsndfile_reason",
    "probe",
    "read_blocks",
    "redirect_native_stderr",
    "sf_name",
    "unplayable_problem",
    "unplayable_sample",
]

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

# libsndfile is read in pieces this long, so a decoding error is placed to within 93 ms at 44.1 kHz
# (FLAC's usual frame: finer is not possible there); shorter pieces make decoding markedly slower.
_PIECE_FRAMES = 4096
# How much of a file's end probe() decodes to check that the end is really there (seconds).
_TAIL_SECONDS = 2.0
# FFmpeg containers whose stated duration comes from an index (not a bitrate guess): if decoding ends
# more than this many seconds before it, the file is truncated.
_RELIABLE_DURATION_SLACK = 0.5
# Float samples beyond this (120 dB above full scale) are not audio: a broken writer, or data that is not
# sound. They are refused: far enough beyond it the model's energies overflow float32 and its stems are NaN.
MAX_SAMPLE = 1e6
# libsndfile's error text for a bad frame is often a stale or internal one ("psf_fseek() failed").
_LIBSNDFILE_DECODE_ERROR = "libsndfile cannot decode past this point"


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
    """What :func:`probe` found out about an audio file.

    ``frames`` is exact when ``frames_exact`` (libsndfile's formats, MP3 with a
    length tag); otherwise it is an estimate from the container's duration, and
    :func:`read_blocks` may yield somewhat more or fewer frames: consumers must
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


# --- probing ------------------------------------------------------------------------------------


def probe(path: str | os.PathLike, stream: int | None = None) -> AudioInfo:
    """Open ``path`` far enough to know its length, rate and channels, or raise :class:`AudioError`.

    ``stream``: which audio stream of a file with several (a video's
    languages, a commentary track), counted from 1; None takes the one the
    file marks as its default (else the first) and says so in ``notes``.

    Never blocks on FIFOs or devices (they are refused from ``stat`` alone).
    Checks that the end of the file decodes, so a truncated file is reported
    here, with the position where its audio really stops, rather than after
    the whole song was separated.
    """
    path = Path(path)
    head = _readable_head(path)
    what = _non_audio_kind(head)
    if what:
        raise AudioError(f"{path}: not an audio file ({what})")
    wav = _wav_facts(path, head)  # the audio a WAV really holds, where its header says otherwise
    info = _probe_chained_ogg(path) if head[:4] == b"OggS" else None
    joined = None  # an MP3 that goes on past its tag: how many times more bytes than the tag counts
    tagged = 0.0  # and the seconds its tag says
    try:
        with _libsndfile_open(path) as f:
            if info is not None:
                pass  # a chained Ogg, read link by link
            elif f.format == "MP3" and not _mp3_has_length_tag(path):
                pass  # mpg123 stops where the rate changes (stream rips): FFmpeg reads every frame
            elif f.format == "MP3" and (joined := _mp3_past_its_tag(path)):
                tagged = f.frames / f.samplerate  # mpg123 stops there: FFmpeg reads every frame instead
            elif wav is None or (wav.frames == f.frames and len(wav.ranges) == 1):
                info = _probe_libsndfile(path, f)
            else:
                info = _probe_repaired_wav(path, wav, int(f.frames))
    except (sf.LibsndfileError, RuntimeError):  # not a format libsndfile reads: try FFmpeg
        if wav is not None:  # libsndfile refuses some misstated headers (two data chunks)
            info = _probe_repaired_wav(path, wav, 0)
    if stream is not None and stream != 1 and (info is not None or joined):
        raise AudioError(f"{path}: has one audio stream; there is no stream {stream}")
    if info is None:
        info = _probe_joined_mp3(path, head, tagged, joined) if joined else _probe_ffmpeg(path, head, stream)
    try:
        check_sample_rate(info.sample_rate)
    except SeparationError:  # a header saying 1 Hz (or 4 GHz) is damaged or not audio
        raise AudioError(
            f"{path}: the file says its sample rate is {info.sample_rate} Hz; stemsplit takes "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        ) from None
    return info


def _readable_head(path: Path) -> bytes:
    """The first bytes of ``path``, after refusing what is not a non-empty, readable regular file."""
    try:
        st = os.stat(path)  # stat, not open: opening a FIFO would block until a writer comes
    except FileNotFoundError:
        broken = os.path.islink(path)
        raise AudioError(f"{path}: no such file" + (" (a broken symbolic link)" if broken else "")) from None
    except PermissionError:
        raise AudioError(f"{path}: permission denied (cannot reach the file)") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise AudioError(f"{path}: is a directory, not an audio file")
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            raise AudioError(f"{path}: {kind}, not a regular file")
    if not stat.S_ISREG(mode):
        raise AudioError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file")
    try:
        with open(path, "rb") as f:
            return f.read(4096)
    except PermissionError:
        raise AudioError(f"{path}: permission denied") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read it ({exc.strerror or exc})") from None


# Signatures of common files that are not audio, to say what a file is instead of "unreadable".
_NOT_AUDIO_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive or office document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x7fELF", "a program"),
)


def _non_audio_kind(head: bytes) -> str | None:
    """What a file is, from its first bytes, when that is something other than audio; else None."""
    for magic, kind in _NOT_AUDIO_MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    # Text: every audio header has binary bytes (sizes, NULs) in its first kilobytes.
    sample = head
    for cut in range(4):  # a multi-byte UTF-8 character may straddle the end of what was read
        try:
            text = sample[: len(sample) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if text and all(c.isprintable() or c in "\t\n\r\f\v" for c in text.lstrip("\ufeff")):
        return "a text file"
    return None


def _container_kind(head: bytes) -> str | None:
    """The container a file claims to be, from its first bytes (for "damaged X file")."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    for magic, kind in (
        (b"fLaC", "FLAC"),
        (b"OggS", "Ogg"),
        (b"ID3", "MP3"),
        (b"caff", "CAF"),
        (b"wvpk", "WavPack"),
        (b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMA"),
    ):
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:3] == b"FLV":
        return "FLV"
    if head[:4] == b"\x00\x00\x01\xba":
        return "MPEG"
    return None


# Names of files of bare samples: nothing in them says how to read them.
_HEADERLESS_SUFFIXES = (".raw", ".pcm", ".sam")

_VIDEO_CONTAINERS = {"MP4/M4A", "Matroska/WebM", "ASF/WMA", "AVI", "FLV", "MPEG"}


def _probe_libsndfile(path: Path, f: sf.SoundFile) -> AudioInfo:
    frames, rate, channels = int(f.frames), int(f.samplerate), int(f.channels)
    if frames <= 0:
        raise AudioError(f"{path}: contains no audio")
    # libsndfile silently shortens a WAV/AIFF whose data chunk runs past the end of the file; its log
    # keeps the size the header declared.
    declared = _declared_frames(f.extra_info, frames)
    if declared > frames:
        raise AudioError(_truncated(path, frames, rate, declared / rate))
    exact = True  # (an MP3 reaches here only with a length tag: probe gives the others to FFmpeg)
    if not _libsndfile_tail_ok(f):
        read, error = _libsndfile_count(path)
        if read < frames:
            if error and _end_decodes(path, frames / rate):  # broken in the middle, its end is there
                raise AudioError(_damaged(path, read, rate, error))
            raise AudioError(_truncated(path, read, rate, frames / rate))
    layout = _ffmpeg_layout(path) if channels > 2 else None
    return AudioInfo(path, frames, rate, channels, f.format, exact, layout)


def _probe_repaired_wav(path: Path, wav: _WavFacts, header_frames: int) -> AudioInfo:
    """A WAV whose header misstates its audio (see :func:`_wav_facts`): read through a repaired header."""
    segment = _repaired_wav(path, wav)
    try:
        with sf.SoundFile(_SplicedFile(path, segment.parts)) as f:  # libsndfile must accept the repair
            accepted = f.frames == wav.frames
    except (sf.LibsndfileError, RuntimeError):
        accepted = False
    if not accepted:
        raise AudioError(f"{path}: a damaged WAV file (libsndfile cannot read its format chunk)")
    notes = list(wav.notes)
    if wav.unknown_size and header_frames < wav.frames:
        notes.append(
            f"its header gives no length (0xFFFFFFFF, as pipes and files over 4 GiB leave): read to the "
            f"end of the file, {wav.frames / wav.sample_rate:.2f} s where libsndfile alone reads "
            f"{header_frames / wav.sample_rate:.2f} s"
        )
    layout = _ffmpeg_layout(path) if wav.channels > 2 else None
    return AudioInfo(
        path, wav.frames, wav.sample_rate, wav.channels, "WAV", True, layout,
        notes=tuple(notes), segments=(segment,),
    )  # fmt: skip


def _truncated(path: Path, frames: int, rate: int, stated: float) -> str:
    """The message for audio that ends after ``frames`` although the file says it lasts ``stated`` s."""
    return f"{path}: truncated at {frames / rate:.2f} s (the file says {stated:.2f} s)"


def _damaged(path: Path, frames: int, rate: int, reason: str) -> str:
    """The message for audio that fails to decode after ``frames`` (its end may still be there)."""
    return f"{path}: damaged at {frames / rate:.2f} s ({reason or 'decoding stops there'})"


_DATA_SIZE_IN_LOG = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _declared_frames(log: str, frames: int) -> int:
    """Frames a WAV/AIFF header declares, from libsndfile's log (``frames`` where it has no complaint)."""
    match = _DATA_SIZE_IN_LOG.search(log)
    if not match:
        return frames
    declared, present = int(match[1]), int(match[2])
    # 0xFFFFFFFF (and similar) is what streaming writers (ffmpeg to a pipe) leave: length unknown.
    if declared >= 0x7FFFFFFF or present <= 0 or declared <= present:
        return frames
    return round(frames * declared / present)


def _mp3_has_length_tag(path: Path) -> bool:
    """Whether an MP3's first frame carries a Xing/Info/VBRI tag (an exact frame count)."""
    with open(path, "rb") as f:
        head = f.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:  # skip the ID3v2 tag (size: 4 x 7-bit bytes)
            start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        f.seek(start)
        first = f.read(4096)
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


# MP3 bytes past what the Xing/Info tag counts that are still only tags or junk, not another file's audio.
_MP3_TAIL_SLACK = 4096


def _mp3_past_its_tag(path: Path) -> float | None:
    """How many times more bytes an MP3 has than its Xing/Info tag counts, where it goes on past them:
    files joined with ``cat`` (chapters, stream rips), the first one's tag trusted by mpg123 for the
    whole. None where it does not, or the tag has no byte count (nothing to check against)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:
            start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        f.seek(start)
        first = f.read(4096)
        end = size
        f.seek(max(0, size - 128))
        if f.read(3) == b"TAG":  # ID3v1, the last 128 bytes
            end -= 128
        f.seek(max(0, end - 32))
        footer = f.read(32)
        if footer[:8] == b"APETAGEX":  # APEv2: its size counts the footer, not the 32-byte header
            end -= int.from_bytes(footer[12:16], "little") + 32
    at = max(first.find(b"Xing"), first.find(b"Info"))
    if at < 0 or len(first) < at + 16:
        return None
    flags = int.from_bytes(first[at + 4 : at + 8], "big")
    if not flags & 2:  # no byte count
        return None
    counted = int.from_bytes(
        first[at + 8 + (4 if flags & 1 else 0) : at + 12 + (4 if flags & 1 else 0)], "big"
    )
    if counted <= 0 or end - start <= counted + _MP3_TAIL_SLACK:  # the count starts with the tag's frame
        return None
    return (end - start) / counted


def _probe_joined_mp3(path: Path, head: bytes, stated: float, ratio: float) -> AudioInfo:
    """An MP3 longer than its tag says (see :func:`_mp3_past_its_tag`), decoded by FFmpeg to its end.

    Its length is estimated from its bytes (for the ETA; the frames decoded
    are the truth): the tail is not decoded here, as that would decode every
    joined file after the first.
    """
    av = _av()
    try:
        with av.open(_ffmpeg_name(path)) as container:
            stream = container.streams.audio[0]
            ctx = stream.codec_context
            rate, channels, index = int(ctx.sample_rate), int(ctx.channels), stream.index
    except (av.FFmpegError, IndexError):
        return _probe_ffmpeg(path, head)
    note = (
        f"its tag says {stated:.2f} s but its audio goes on (MP3 files joined end to end?): "
        f"read to the end, about {stated * ratio:.1f} s"
    )
    return AudioInfo(
        path, round(stated * ratio * rate), rate, channels, "MP3", False, None, "ffmpeg", index, (note,)
    )


def _libsndfile_tail_ok(f: sf.SoundFile) -> bool:
    """Whether the last frames the header promises can be read (cheap: one seek, one short read)."""
    start = max(0, f.frames - _PIECE_FRAMES)
    try:
        f.seek(start)
        return len(f.read(f.frames - start, dtype="float32")) == f.frames - start
    except (sf.LibsndfileError, RuntimeError):
        return False


def _libsndfile_count(path: Path) -> tuple[int, str]:
    """Decode ``path`` from the start: (frames read before it ends or fails, the failure or "")."""
    read = 0
    try:
        with _libsndfile_open(path) as f:
            while n := len(f.read(_PIECE_FRAMES, dtype="float32")):
                read += n
    except (sf.LibsndfileError, RuntimeError):
        return read, _LIBSNDFILE_DECODE_ERROR
    return read, ""


def _end_decodes(path: Path, seconds: float) -> bool:
    """Whether FFmpeg decodes the last seconds of a ``seconds`` long file.

    Tells a file damaged in the middle from a truncated one when libsndfile
    stops with an error: FFmpeg seeks by bytes where mpg123 decodes its way
    to the end.
    """
    try:
        av = _av()
        with av.open(_ffmpeg_name(path)) as container:
            end = _ffmpeg_tail_end(av, container, container.streams.audio[0], seconds)
    except Exception:  # FFmpeg cannot read it either: no evidence the end is there
        return False
    return end is not None and end >= seconds - _RELIABLE_DURATION_SLACK


# --- files whose header is wrong ------------------------------------------------------------------


class _SplicedFile(io.RawIOBase):
    """A read-only, seekable view of ``Segment.parts`` as one file (what soundfile's virtual I/O reads).

    Lets libsndfile decode a WAV through a header made here, or one Ogg link
    alone, without copying the audio anywhere.
    """

    def __init__(self, path: Path, parts: Sequence[bytes | tuple[int, int]]) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._parts = list(parts)
        self._starts = []  # where each part starts in the view
        size = 0
        for part in self._parts:
            self._starts.append(size)
            size += len(part) if isinstance(part, bytes) else part[1]
        self._size, self._position = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            index = next(i for i in range(len(self._parts) - 1, -1, -1) if self._starts[i] <= self._position)
            part, inside = self._parts[index], self._position - self._starts[index]
            if isinstance(part, bytes):
                chunk = part[inside : inside + len(view) - done]
            else:
                offset, length = part
                self._file.seek(offset + inside)
                chunk = self._file.read(min(length - inside, len(view) - done))
                if not chunk:  # the file got shorter since it was probed
                    break
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._position += len(chunk)
        return done

    def close(self) -> None:
        self._file.close()
        super().close()


# WAV data sizes from here up that run past the end of the file mean "not known" (writers that cannot
# seek back to fill them in leave 0xFFFFFFFF or 0x7FFFFFFF): the data runs to the end of the file. A
# size that fits the file is honoured (a 3 GB WAV may have chunks after its audio).
_UNKNOWN_RIFF_SIZE = 0x7FFFFFFF
# WAVE format tags whose frames are block_align bytes each (PCM, IEEE float): these WAVs are repaired.
_PLAIN_WAV_TAGS = (0x0001, 0x0003)
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


@dataclasses.dataclass
class _WavFacts:
    """What walking a WAV's chunks found: its audio's byte ranges and what the header got wrong."""

    fmt: bytes  # the fmt chunk, whole (id, size, body)
    fact: bytes  # the fact chunk, whole, or b""
    ranges: list[tuple[int, int]]  # (offset, length) of every data chunk's audio, whole frames
    sample_rate: int
    channels: int
    block_align: int
    notes: list[str]
    unknown_size: bool  # a data size said "not known" (0xFFFFFFFF): read to the end of the file

    @property
    def frames(self) -> int:
        return sum(length for _, length in self.ranges) // self.block_align


def _wav_facts(path: Path, head: bytes) -> _WavFacts | None:
    """Walk a RIFF/RF64 WAV's chunks to find all of its audio; None where libsndfile should decide alone.

    Handles what a header gets wrong: a data size of 0 with the audio there
    (a recorder that stopped before finishing its header), a size that says
    "unknown" (0xFFFFFFFF: pipes, and files over 4 GiB), a second data chunk,
    an RF64 whose ds64 size runs past the end (raises :class:`AudioError`:
    truncated). Only PCM and float WAVs (a frame is ``block_align`` bytes).
    """
    if head[:4] not in (b"RIFF", b"RF64", b"BW64") or head[8:12] != b"WAVE":
        return None
    size = path.stat().st_size
    ds64_data = None  # RF64: the data size the ds64 chunk gives
    fmt = fact = b""
    ranges: list[tuple[int, int]] = []
    notes: list[str] = []
    unknown = False  # a data size said "not known": the audio ran to the end of the file
    tag = rate = channels = align = 0
    with open(path, "rb") as f:
        position = 12
        for _ in range(100_000):  # a cap on junk; real WAVs have a handful of chunks
            if position + 8 > size:
                break
            f.seek(position)
            header = f.read(8)
            name, length = header[:4], int.from_bytes(header[4:8], "little")
            body = position + 8
            if name == b"ds64" and head[:4] != b"RIFF":
                ds64 = f.read(24)
                ds64_data = int.from_bytes(ds64[8:16], "little") if len(ds64) == 24 else None
            elif name == b"fmt " and not fmt:
                fmt = header + f.read(min(length, 64))
                tag, channels = int.from_bytes(fmt[8:10], "little"), int.from_bytes(fmt[10:12], "little")
                rate, align = int.from_bytes(fmt[12:16], "little"), int.from_bytes(fmt[20:22], "little")
                if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 34:
                    tag = int.from_bytes(fmt[32:34], "little")  # the sub-format GUID's first two bytes
                if tag not in _PLAIN_WAV_TAGS or channels <= 0 or align <= 0 or len(fmt) != 8 + length:
                    return None
            elif name == b"fact" and not fact:
                fact = header + f.read(min(length, 64))
            elif name == b"data":
                if not fmt:
                    return None  # audio before its format: not a WAV this walk understands
                available = size - body
                if ds64_data is not None and length == 0xFFFFFFFF and not ranges:
                    length = ds64_data if ds64_data not in (0, 0xFFFFFFFFFFFFFFFF) else 0xFFFFFFFF
                    if length != 0xFFFFFFFF and length > available:
                        raise AudioError(_truncated(path, available // align, rate, length // align / rate))
                if length == 0xFFFFFFFF or (length >= _UNKNOWN_RIFF_SIZE and length > available):
                    unknown = True
                    ranges.append((body, available - available % align))
                    break
                if length == 0 and available >= align and not _looks_like_chunk(f, body, size):
                    notes.append(
                        "its header says it holds no audio (a recording that stopped before finishing "
                        "its header?): read to the end of the file"
                    )
                    ranges.append((body, available - available % align))
                    break
                if length > available:  # cut short: the truncation check after libsndfile says where
                    return None
                after = body + length + (length & 1)
                if _audio_follows(f, after, size):  # a header last updated before the recording ended
                    notes.append(
                        f"its header counts {length // align / rate:.2f} s of audio, more follows (a "
                        "recording that stopped before updating its header?): read to the end of the file"
                    )
                    ranges.append((body, available - available % align))
                    break
                if length:
                    ranges.append((body, length - length % align))
            position = body + length + (length & 1)
    if not fmt or not ranges:
        return None
    if len(ranges) > 1:
        notes.append(f"{len(ranges)} data chunks (a WAV has one): read them all")
    return _WavFacts(fmt, fact, ranges, rate, channels, align, notes, unknown)


# Bytes after a WAV's data chunk, not a chunk, that are audio its header did not count: at least this
# many (a few stray bytes are junk) and not a tag appended raw (ID3v1, ID3v2, APE).
_UNCOUNTED_AUDIO_BYTES = 4096


def _audio_follows(f, position: int, size: int) -> bool:
    """Whether the bytes from ``position`` (just after a data chunk) to the end are more audio: there
    are enough of them, and they are neither a chunk nor a tag."""
    if size - position < _UNCOUNTED_AUDIO_BYTES or _looks_like_chunk(f, position, size):
        return False
    f.seek(position)
    return not f.read(8).startswith((b"TAG", b"ID3", b"APETAGEX"))


def _looks_like_chunk(f, position: int, size: int) -> bool:
    """Whether the bytes at ``position`` are a chunk header (a printable id and a size that fits)."""
    f.seek(position)
    header = f.read(8)
    if len(header) < 8 or not all(32 <= b < 127 for b in header[:4]):
        return False
    return position + 8 + int.from_bytes(header[4:8], "little") <= size


def _ogg_links(path: Path) -> list[tuple[int, int]]:
    """The (offset, length) of each link of an Ogg file: links are whole Ogg streams one after another
    (``cat a.ogg b.ogg``, internet radio), each starting with pages marked "beginning of stream"."""
    links: list[tuple[int, int]] = []
    size = path.stat().st_size
    start, position, previous_bos = 0, 0, True
    with open(path, "rb") as f:
        while position + 27 <= size:
            f.seek(position)
            header = f.read(27)
            if header[:4] != b"OggS":
                break  # junk or a cut: the links so far (libsndfile reports what is wrong with the last)
            bos = bool(header[5] & 0x02)
            if bos and not previous_bos:  # a new stream after pages of another: a new link
                links.append((start, position - start))
                start = position
            previous_bos = bos
            table = f.read(header[26])
            position += 27 + len(table) + sum(table)
    links.append((start, size - start))
    return links


def _probe_chained_ogg(path: Path) -> AudioInfo | None:
    """A chained Ogg (see :func:`_ogg_links`) as one song, every link read; None for a single link.

    libsndfile and FFmpeg read only the first link (FFmpeg refuses a second
    of another channel count). Each link is decoded alone and converted to
    the song's rate and channels, the highest rate and the most channels
    among the links (a mono link goes to both sides): nothing is dropped.
    """
    links = _ogg_links(path)
    if len(links) < 2:
        return None
    facts = []  # (segment, frames)
    for number, link in enumerate(links, 1):
        try:
            with sf.SoundFile(_SplicedFile(path, [link])) as f:
                facts.append((Segment((link,), int(f.samplerate), int(f.channels)), int(f.frames)))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(
                f"{path}: link {number} of a chained Ogg of {len(links)} cannot be decoded "
                f"({libsndfile_reason(exc)})"
            ) from None
    rate = max(segment.sample_rate for segment, _ in facts)
    counts = sorted({segment.channels for segment, _ in facts})
    if counts[-1] > 2 and len(counts) > 1:
        raise AudioError(
            f"{path}: a chained Ogg whose links have {', '.join(map(str, counts))} channels; stemsplit joins "
            "mono and stereo links only"
        )
    channels = counts[-1]
    frames = sum(round(n * rate / segment.sample_rate) for segment, n in facts)

    def kind(rate: int, channels: int) -> str:
        return f"{rate} Hz " + {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")

    described = ", then ".join(kind(segment.sample_rate, segment.channels) for segment, _ in facts)
    note = f"a chained Ogg of {len(links)} links ({described}): all read, as {kind(rate, channels)}"
    exact = all(segment.sample_rate == rate for segment, _ in facts)  # resampled lengths are near, not exact
    segments = tuple(segment for segment, _ in facts)
    return AudioInfo(path, frames, rate, channels, "OGG", exact, notes=(note,), segments=segments)


def _repaired_wav(path: Path, facts: _WavFacts) -> Segment:
    """A segment that libsndfile reads as the WAV's whole audio: an RF64 header made here (no 4 GiB
    limit, sizes exact) over the file's own fmt (and fact) chunk and every data range."""
    data = sum(length for _, length in facts.ranges)
    tail = (
        facts.fmt
        + (b"\0" if len(facts.fmt) & 1 else b"")
        + facts.fact
        + (b"\0" if len(facts.fact) & 1 else b"")
    )
    riff = 4 + 36 + len(tail) + 8 + data
    ds64 = (
        riff.to_bytes(8, "little")
        + data.to_bytes(8, "little")
        + (data // facts.block_align).to_bytes(8, "little")
    )
    header = (
        b"RF64" + b"\xff\xff\xff\xff" + b"WAVE"
        + b"ds64" + (28).to_bytes(4, "little") + ds64 + b"\0\0\0\0"
        + tail + b"data" + b"\xff\xff\xff\xff"
    )  # fmt: skip
    return Segment((header, *facts.ranges), facts.sample_rate, facts.channels)


# --- FFmpeg (PyAV) ------------------------------------------------------------------------------


_av_module: ModuleType | None = None


def _av() -> ModuleType:
    """PyAV, imported on first use, with FFmpeg's own logging off (it would print to the terminal
    from C). Only the first call sets the level: a debug mode may call ``av.logging.set_level`` later."""
    global _av_module
    if _av_module is None:
        import av
        import av.logging

        av.logging.set_level(None)
        _av_module = av
    return _av_module


def _is_mov(container) -> bool:
    return "mp4" in container.format.name or "mov" in container.format.name


def _has_reliable_duration(container) -> bool:
    """Whether the container's duration comes from an index or header written at the end of encoding."""
    return _is_mov(container) or "matroska" in container.format.name


def _ffmpeg_layout(path: Path) -> tuple[str, ...] | None:
    """The channel layout a file states (e.g. a WAV's channel mask), as FFmpeg reads it; None if unstated."""
    try:
        av = _av()
        with av.open(_ffmpeg_name(path)) as container:
            names = tuple(c.name for c in container.streams.audio[0].layout.channels)
    except Exception:  # a layout is a nicety: any failure means "not stated"
        return None
    return names if names and all(n in _CHANNEL_GAINS for n in names) else None


def _pick_stream(path: Path, streams: Sequence, wanted: int | None) -> tuple[object, str | None]:
    """The audio stream to separate among ``streams`` (a file's, in order), and a note where there are
    several: ``wanted`` (from 1), else the first the file marks as default, else the first."""
    if wanted is not None:
        if wanted > len(streams):
            count = f"{len(streams)} audio stream" + ("s" if len(streams) > 1 else "")
            raise AudioError(f"{path}: has {count}; there is no stream {wanted}")
        chosen = streams[wanted - 1]
    else:
        chosen = next((s for s in streams if s.disposition & _DEFAULT_DISPOSITION), streams[0])
    if len(streams) == 1:
        return chosen, None
    number = streams.index(chosen) + 1
    default = chosen.disposition & _DEFAULT_DISPOSITION
    how = "as asked" if wanted is not None else "the default" if default else "the first"
    others = "; ".join(f"{n} {_describe_stream(s)}" for n, s in enumerate(streams, 1) if s is not chosen)
    note = (
        f"audio stream {number} of {len(streams)} ({how}): {_describe_stream(chosen)}; the others: {others}; "
        "choose one with --stream N"
    )
    return chosen, note


_DEFAULT_DISPOSITION = 1  # AV_DISPOSITION_DEFAULT


def _unknown_format(path: Path) -> str:
    """The line for a file neither decoder knows; for a name of bare samples (``x.raw``), what is missing."""
    if path.suffix.lower() in _HEADERLESS_SUFFIXES:
        return (
            f"{path}: headerless samples (no header says their rate, channels or encoding); "
            "give the file a header first (e.g. sox or ffmpeg to WAV)"
        )
    return f"{path}: not an audio file (neither libsndfile nor FFmpeg knows its format)"


def _describe_stream(stream) -> str:
    """A stream as a person picks one: its title and language where stated, its codec and channels."""
    metadata = stream.metadata or {}
    named = [metadata[key] for key in ("title", "name", "handler_name", "language") if metadata.get(key)]
    named = [n for n in named if n not in ("SoundHandler", "und")]  # FFmpeg's defaults say nothing
    ctx = stream.codec_context
    return " ".join([*(repr(n) for n in named[:2]), f"{ctx.name} {ctx.channels} ch"])


def _probe_ffmpeg(path: Path, head: bytes, wanted: int | None = None) -> AudioInfo:
    av = _av()
    kind = _container_kind(head)
    try:
        container = av.open(_ffmpeg_name(path))
    except av.FFmpegError:
        if kind == "MP4/M4A":
            raise AudioError(f"{path}: {_mp4_problem(path)}") from None
        if kind:
            raise AudioError(
                f"{path}: a damaged {kind} file (neither libsndfile nor FFmpeg can read it)"
            ) from None
        raise AudioError(_unknown_format(path)) from None
    with container:
        if not container.streams.audio:
            # FFmpeg's format guessing is loose (random bytes may pass for LRC lyrics or H.263 video):
            # only a container recognised from its signature is a "video without sound".
            if container.streams.video and kind in _VIDEO_CONTAINERS:
                raise AudioError(f"{path}: no audio stream (a video without sound)")
            raise AudioError(_unknown_format(path))
        stream, note = _pick_stream(path, list(container.streams.audio), wanted)
        ctx = stream.codec_context
        rate, channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
        if rate <= 0 or channels <= 0:
            raise AudioError(
                f"{path}: a damaged {kind or 'audio'} file (FFmpeg cannot tell its rate or channels)"
            )
        names = tuple(c.name for c in ctx.layout.channels)
        layout = names if all(n in _CHANNEL_GAINS for n in names) and len(names) == channels else None
        fmt = f"{ctx.name.upper()} in {container.format.long_name}"
        seconds = _ffmpeg_seconds(container, stream)
        reliable = seconds is not None and _has_reliable_duration(container)
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        tail = _ffmpeg_tail_end(av, container, stream, seconds) if seconds is not None else None
        index = stream.index
    estimate = round(seconds * rate) if seconds else 0
    notes = (note,) if note else ()
    info = AudioInfo(path, estimate, rate, channels, fmt, False, layout, "ffmpeg", index, notes)
    if tail is not None and (not reliable or tail >= start + seconds - _RELIABLE_DURATION_SLACK):
        return info
    # The end did not decode (or no duration is stated): decode it all to find where the audio stops.
    read, error = _ffmpeg_count(info)
    if read == 0:
        raise AudioError(f"{path}: contains no audio" + (f" ({error})" if error else ""))
    # A decoding error before the stated end, or (where the stated length is reliable) an end well
    # before it, means the end is missing.
    slack = 0.0 if error else _RELIABLE_DURATION_SLACK
    if seconds is not None and (error or reliable) and read / rate < seconds - slack:
        raise AudioError(_truncated(path, read, rate, seconds))
    if error:
        raise AudioError(_damaged(path, read, rate, error))
    return dataclasses.replace(info, frames=read, frames_exact=True)  # counted: exact


def _ffmpeg_seconds(container, stream) -> float | None:
    """The audio's duration as the container states it (an index, a header or a bitrate guess), or None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _ffmpeg_tail_end(av: ModuleType, container, stream, seconds: float) -> float | None:
    """Seek to the last seconds and decode them: the time where the audio ends, or None on failure."""
    end = None
    try:
        container.seek(int(max(0.0, seconds - _TAIL_SECONDS) * 1_000_000), backward=True)
        for frame in container.decode(stream):
            duration = frame.samples / frame.sample_rate
            end = float(frame.time) + duration if frame.time is not None else (end or 0.0) + duration
    except av.FFmpegError:
        return None
    return end


def _mp4_problem(path: Path) -> str:
    """Why FFmpeg cannot open an MP4/M4A, from its top-level boxes (the usual: cut short, no index)."""
    size = path.stat().st_size
    boxes: list[str] = []
    with open(path, "rb") as f:
        position = 0
        while position + 8 <= size:
            f.seek(position)
            header = f.read(16)
            length, name = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:
                length = size - position
            if length < 8:
                return "a damaged MP4/M4A file (malformed box structure)"
            boxes.append(name)
            if position + length > size:
                index = "" if "moov" in boxes else ", before its index ('moov'): no position can be given"
                return f"a truncated MP4/M4A file (cut short inside its '{name}' box{index})"
            position += length
    if "moov" not in boxes:
        return "an unfinished MP4/M4A file (no index ('moov'): the recording or copy stopped early?)"
    return "a damaged MP4/M4A file (FFmpeg cannot read it)"


def _ffmpeg_pieces(info: AudioInfo) -> Iterator[np.ndarray]:
    """Decode ``info``'s stream with FFmpeg: [n, channels] float32 pieces at ``info.sample_rate``.

    Converted through FFmpeg's resampler, so a stream that changes rate or
    layout midway still comes out at the probed rate and channel count. An
    MP4's sample table states the exact length: the encoder's padding past it
    is cut off. Raises ``_DecodeFailed(frames_so_far, reason)`` on errors.
    """
    av = _av()
    produced = 0
    try:
        with av.open(_ffmpeg_name(info.path)) as container:
            stream = container.streams[info.stream]
            layout = stream.codec_context.layout
            resampler, source = None, None  # made for the frames' rate and layout, again when they change
            limit = None
            if _is_mov(container) and stream.duration and stream.time_base == Fraction(1, info.sample_rate):
                limit = int(stream.duration)
            for frame in _with_flush(_decoded_frames(av, container, stream)):
                outs = []
                kind = None if frame is None else (frame.sample_rate, frame.layout.name, frame.format.name)
                if kind != source and resampler is not None:  # PyAV's resampler would take them as before
                    outs += resampler.resample(None)
                    resampler = None
                if frame is not None and resampler is None:
                    resampler = av.AudioResampler(format="flt", layout=layout, rate=info.sample_rate)
                    source = kind
                if resampler is not None:
                    outs += resampler.resample(frame)
                for out in outs:
                    piece = out.to_ndarray().reshape(-1, info.channels)  # packed: [1, n * channels]
                    if limit is not None:
                        piece = piece[: max(0, limit - produced)]
                    if len(piece):
                        produced += len(piece)
                        yield piece
    except av.FFmpegError as exc:
        raise _DecodeFailed(produced, f"FFmpeg: {_ffmpeg_reason(exc)}") from None
    except OSError as exc:
        raise _DecodeFailed(produced, exc.strerror or str(exc)) from None


def _decoded_frames(av: ModuleType, container, stream) -> Iterator:
    """The stream's decoded frames. MP3: a packet that does not decode is skipped if frames decode
    after it, as FFmpeg's own tools do: it is where two files were joined (FFmpeg's parser cuts a
    frame across the junction), which would otherwise end the song there."""
    if "mp3" not in stream.codec_context.name:
        yield from container.decode(stream)
        return
    failed = None  # the last failure, until a frame decodes after it
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.InvalidDataError as exc:
            failed = failed or exc
            continue
        if frames:
            failed = None
        yield from frames
    if failed is not None:
        raise failed


def _with_flush(frames: Iterator) -> Iterator:
    """The decoder's frames, then None (which flushes the resampler)."""
    yield from frames
    yield None


def _ffmpeg_reason(exc: Exception) -> str:
    strerror = getattr(exc, "strerror", None)
    return (strerror or str(exc) or type(exc).__name__).rstrip(".").lower()


class _DecodeFailed(Exception):
    def __init__(self, frames: int, reason: str) -> None:
        super().__init__(reason)
        self.frames = frames
        self.reason = reason


def _ffmpeg_count(info: AudioInfo) -> tuple[int, str]:
    """Decode all of ``info`` with FFmpeg: (frames decoded before it ends or fails, the failure or "")."""
    read = 0
    try:
        for piece in _ffmpeg_pieces(info):
            read += len(piece)
    except _DecodeFailed as exc:
        return exc.frames, exc.reason
    return read, ""


# --- reading ------------------------------------------------------------------------------------


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
    source = _libsndfile_pieces(info) if info.decoder == "libsndfile" else _ffmpeg_pieces(info)
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
    except _DecodeFailed as exc:  # every piece decoded before the failure was counted
        at = position + buffered
        if info.decoder == "libsndfile" and info.frames_exact and not _end_decodes(info.path, info.seconds):
            raise AudioError(_truncated(info.path, at, info.sample_rate, info.seconds)) from None
        raise AudioError(_damaged(info.path, at, info.sample_rate, exc.reason)) from None
    if buffered:
        position += buffered
        yield np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    if position == 0:
        raise AudioError(f"{info.path}: contains no audio")
    if info.frames_exact and position < info.frames:
        raise AudioError(_truncated(info.path, position, info.sample_rate, info.seconds))


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
    """Decode with libsndfile in short pieces of [n, channels] float32; ``_DecodeFailed`` on errors.

    A file with ``info.segments`` is decoded segment by segment, each
    converted to the song's rate and channels (:func:`_converted`).
    """
    read = 0
    try:
        if not info.segments:
            with _libsndfile_open(info.path) as f:
                while len(piece := f.read(_PIECE_FRAMES, dtype="float32", always_2d=True)):
                    read += len(piece)
                    yield piece
            return
        for segment in info.segments:
            with sf.SoundFile(_SplicedFile(info.path, segment.parts)) as f:
                for piece in _converted(f, segment, info):
                    read += len(piece)
                    yield piece
    except (sf.LibsndfileError, RuntimeError):
        raise _DecodeFailed(read, _LIBSNDFILE_DECODE_ERROR) from None
    except OSError as exc:
        raise _DecodeFailed(read, exc.strerror or str(exc)) from None


def _converted(f: sf.SoundFile, segment: Segment, info: AudioInfo) -> Iterator[np.ndarray]:
    """``f``'s pieces at the song's rate and channel count: a mono segment is copied to both sides of a
    stereo song, a stereo one averaged into a mono song, another rate resampled (soxr)."""
    resample = BlockResampler(segment.sample_rate, info.sample_rate, info.channels)

    def to_song(piece: np.ndarray) -> np.ndarray:
        if segment.channels != info.channels:
            piece = piece.mean(axis=1, keepdims=True) if info.channels == 1 else piece[:, [0] * info.channels]
        return resample(np.ascontiguousarray(piece, dtype=np.float32))

    # Longer pieces than _PIECE_FRAMES: a segment is PCM (an error's place is exact anyway) or a whole
    # Ogg link, and a WAV over 4 GiB read in short pieces spends most of its time per piece.
    while len(piece := f.read(_PIECE_FRAMES * 16, dtype="float32", always_2d=True)):
        if len(out := to_song(piece)):
            yield out
    if len(tail := resample.flush(info.channels)):
        yield tail


# --- downmix ------------------------------------------------------------------------------------

_C = 1 / math.sqrt(2)  # -3 dB
# (gain into left, gain into right) per channel, FFmpeg's names. ITU-R BS.775: fronts at 0 dB, centre
# and surrounds at -3 dB, a single (back or top) centre at -3 dB into both sides, LFE dropped. Channels
# between front and centre go to their side at 0 dB (as FFmpeg's own downmix does).
_CHANNEL_GAINS: dict[str, tuple[float, float]] = {
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
    if layout is not None and len(layout) == channels and all(n in _CHANNEL_GAINS for n in layout):
        return tuple(layout)
    return DEFAULT_LAYOUTS.get(channels)


def _downmix_matrix(channels: int, layout: Sequence[str] | None) -> np.ndarray:
    """[channels, 2] gains, scaled so that no output can exceed the largest input sample."""
    names = _downmix_layout(channels, layout)
    if names is None:  # no known layout: the plain average, on both sides
        return np.full((channels, 2), 1 / channels, np.float32)
    matrix = np.array([_CHANNEL_GAINS[n] for n in names], np.float64)
    return (matrix / matrix.sum(axis=0).max()).astype(np.float32)


def downmix_to_stereo(block: np.ndarray, layout: Sequence[str] | None = None) -> np.ndarray:
    """[frames, channels > 2] -> [frames, 2] float32, folded down per ITU-R BS.775.

    The channels are those of ``layout`` (FFmpeg's names, as :attr:`AudioInfo.layout`
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
    gain = 20 * math.log10(1 / float(np.array([_CHANNEL_GAINS[n] for n in names]).sum(axis=0).max()))
    lfe = ", LFE dropped" if any(n.startswith("LFE") for n in names) else ""
    return (
        f"{channels} channels {' '.join(names)}{stated} folded to stereo "
        f"(ITU-R BS.775{lfe}, then {gain:.1f} dB so nothing clips)"
    )


# --- resampling ---------------------------------------------------------------------------------


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


def sf_name(path: Path | str) -> bytes:
    """``path`` as soundfile should get it: bytes, so a name that is not UTF-8 opens too (soundfile
    encodes a str strictly and fails on such a name, which Python holds with surrogate escapes)."""
    return os.fsencode(path)


def _libsndfile_open(path: Path) -> sf.SoundFile:
    """``path`` opened for reading by libsndfile, which finds the format in the bytes alone.

    Through a descriptor, not the name: soundfile takes the name's extension for the format where it
    is ``.raw`` (headerless samples, and then wants a rate it cannot know) instead of reading the header.
    """
    # (libsndfile closes the descriptor when it cannot open the file, too)
    return sf.SoundFile(os.open(path, os.O_RDONLY | os.O_CLOEXEC), closefd=True)


def _ffmpeg_name(path: Path) -> str:
    """``path`` as FFmpeg must get it to open that file: absolute, so that a relative name such as
    ``pipe:1.mp3``, ``concat:a.mp3|b.mp3`` or ``http:x.mp3`` is a file here, not one of FFmpeg's
    protocols (standard input, other files, the network)."""
    return os.path.abspath(path)


def libsndfile_reason(exc: Exception) -> str:
    """The useful part of a soundfile exception's message (without "Error opening 'path': ")."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


# --- native stderr ------------------------------------------------------------------------------

_native_stderr_redirected = False


def redirect_native_stderr() -> None:
    """Silence what C libraries write to file descriptor 2, keeping Python's ``sys.stderr`` on the terminal.

    libsndfile's mpg123 prints notes ("Illegal Audio-MPEG-Header", "Duh...")
    straight to fd 2, between stemsplit's own messages. This points fd 2 at
    /dev/null and rebinds ``sys.stderr`` to a duplicate of the original fd 2
    (line-buffered, same encoding and error handler), so everything Python
    prints (warnings, rich, tracebacks) still reaches the terminal; faulthandler,
    if enabled, follows it. Call it once at start-up, before logging handlers
    capture ``sys.stderr``; child processes started afterwards inherit the
    silenced fd 2. Idempotent; a no-op where ``sys.stderr`` is not fd 2 (tests
    capturing output, embedded interpreters) or fd 2 cannot be duplicated.
    """
    global _native_stderr_redirected
    if _native_stderr_redirected:
        return
    stream = sys.stderr
    try:
        if stream is None or stream.fileno() != 2:
            return
        stream.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return
    try:
        replacement = open(  # noqa: SIM115 - it becomes sys.stderr, for the life of the process
            saved, "w", buffering=1, encoding=stream.encoding, errors=stream.errors, closefd=True
        )
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(saved)
        return
    sys.stderr = replacement
    _native_stderr_redirected = True
    if faulthandler.is_enabled():
        faulthandler.enable(file=replacement)
