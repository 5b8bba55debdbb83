"""Files libsndfile would misread as they are on disk, read through a view made here instead.

A WAV whose header misstates its audio (a data size of 0 or 0xFFFFFFFF over audio, two data chunks,
past 4 GiB) is found by walking its chunks (:func:`wav_facts`) and decoded through an RF64 header made
here (:func:`repaired_wav`); each link of a chained Ogg is decoded alone (:func:`probe_chained_ogg`).
Each is a :class:`~stemsplit.audio.info.Segment`, which libsndfile reads through :class:`SplicedFile`
without the audio being copied anywhere.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf

from .info import AudioError, AudioInfo, Segment, libsndfile_reason, truncated_message


class SplicedFile(io.RawIOBase):
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
class WavFacts:
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


def wav_facts(path: Path, head: bytes) -> WavFacts | None:
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
                        raise AudioError(
                            truncated_message(path, available // align, rate, length // align / rate)
                        )
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
    return WavFacts(fmt, fact, ranges, rate, channels, align, notes, unknown)


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


def probe_chained_ogg(path: Path) -> AudioInfo | None:
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
            with sf.SoundFile(SplicedFile(path, [link])) as f:
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


def repaired_wav(path: Path, facts: WavFacts) -> Segment:
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
