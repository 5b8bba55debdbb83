"""Probing: what a file holds (length, rate, channels, which decoder), found before the song is separated.

:func:`probe` refuses what is not a readable regular file or not audio, lets libsndfile read what it
reads, repairs what a header misstates (:mod:`.spliced`), gives FFmpeg (:mod:`.ffmpeg`) what
libsndfile cannot read or would cut short (an MP3 past its length tag, or with none), and checks that
the end of the file decodes, so a truncated file is named before any work is done on it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import soundfile as sf

from .ffmpeg import end_decodes, ffmpeg_layout, probe_ffmpeg, pyav
from .info import (
    LIBSNDFILE_DECODE_ERROR,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    PIECE_FRAMES,
    AudioError,
    AudioInfo,
    damaged_message,
    ffmpeg_name,
    libsndfile_open,
    truncated_message,
)
from .spliced import SplicedFile, WavFacts, probe_chained_ogg, repaired_wav, wav_facts


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
    wav = wav_facts(path, head)  # the audio a WAV really holds, where its header says otherwise
    info = probe_chained_ogg(path) if head[:4] == b"OggS" else None
    joined = None  # an MP3 that goes on past its tag: how many times more bytes than the tag counts
    tagged = 0.0  # and the seconds its tag says
    try:
        with libsndfile_open(path) as f:
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
        info = _probe_joined_mp3(path, head, tagged, joined) if joined else probe_ffmpeg(path, head, stream)
    # A header saying 1 Hz (or 4 GHz) is damaged or not audio.
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{path}: the file says its sample rate is {info.sample_rate} Hz; stemsplit takes "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
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


def _probe_libsndfile(path: Path, f: sf.SoundFile) -> AudioInfo:
    frames, rate, channels = int(f.frames), int(f.samplerate), int(f.channels)
    if frames <= 0:
        raise AudioError(f"{path}: contains no audio")
    # libsndfile silently shortens a WAV/AIFF whose data chunk runs past the end of the file; its log
    # keeps the size the header declared.
    declared = _declared_frames(f.extra_info, frames)
    if declared > frames:
        raise AudioError(truncated_message(path, frames, rate, declared / rate))
    exact = True  # (an MP3 reaches here only with a length tag: probe gives the others to FFmpeg)
    if not _libsndfile_tail_ok(f):
        read, error = _libsndfile_count(path)
        if read < frames:
            if error and end_decodes(path, frames / rate):  # broken in the middle, its end is there
                raise AudioError(damaged_message(path, read, rate, error))
            raise AudioError(truncated_message(path, read, rate, frames / rate))
    layout = ffmpeg_layout(path) if channels > 2 else None
    return AudioInfo(path, frames, rate, channels, f.format, exact, layout)


def _probe_repaired_wav(path: Path, wav: WavFacts, header_frames: int) -> AudioInfo:
    """A WAV whose header misstates its audio (see :func:`wav_facts`): read through a repaired header."""
    segment = repaired_wav(path, wav)
    try:
        with sf.SoundFile(SplicedFile(path, segment.parts)) as f:  # libsndfile must accept the repair
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
    layout = ffmpeg_layout(path) if wav.channels > 2 else None
    return AudioInfo(
        path, wav.frames, wav.sample_rate, wav.channels, "WAV", True, layout,
        notes=tuple(notes), segments=(segment,),
    )  # fmt: skip


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
    av = pyav()
    try:
        with av.open(ffmpeg_name(path)) as container:
            stream = container.streams.audio[0]
            ctx = stream.codec_context
            rate, channels, index = int(ctx.sample_rate), int(ctx.channels), stream.index
    except (av.FFmpegError, IndexError):
        return probe_ffmpeg(path, head)
    note = (
        f"its tag says {stated:.2f} s but its audio goes on (MP3 files joined end to end?): "
        f"read to the end, about {stated * ratio:.1f} s"
    )
    return AudioInfo(
        path, round(stated * ratio * rate), rate, channels, "MP3", False, None, "ffmpeg", index, (note,)
    )


def _libsndfile_tail_ok(f: sf.SoundFile) -> bool:
    """Whether the last frames the header promises can be read (cheap: one seek, one short read)."""
    start = max(0, f.frames - PIECE_FRAMES)
    try:
        f.seek(start)
        return len(f.read(f.frames - start, dtype="float32")) == f.frames - start
    except (sf.LibsndfileError, RuntimeError):
        return False


def _libsndfile_count(path: Path) -> tuple[int, str]:
    """Decode ``path`` from the start: (frames read before it ends or fails, the failure or "")."""
    read = 0
    try:
        with libsndfile_open(path) as f:
            while n := len(f.read(PIECE_FRAMES, dtype="float32")):
                read += n
    except (sf.LibsndfileError, RuntimeError):
        return read, LIBSNDFILE_DECODE_ERROR
    return read, ""
