"""FFmpeg through PyAV: probing and decoding what libsndfile cannot read.

AAC/ALAC in M4A/MP4, WMA, Opus/Vorbis in WebM/MKV, the soundtrack of videos (MP4, MOV, MKV, WebM,
AVI), and MP3s mpg123 would stop early in. PyAV's wheel carries FFmpeg's libraries; it is imported on
first use (:func:`pyav`). A container often states only a duration: what decodes is the truth, and a
file whose end does not decode is truncated or damaged, said with the position where it stops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .downmix import CHANNEL_GAINS
from .info import AudioError, AudioInfo, DecodeFailed, damaged_message, ffmpeg_name, truncated_message

if TYPE_CHECKING:  # PyAV is imported when a file needs it (it is slow to import)
    from av.audio.stream import AudioStream

# How much of a file's end probe() decodes to check that the end is really there (seconds).
_TAIL_SECONDS = 2.0
# FFmpeg containers whose stated duration comes from an index (not a bitrate guess): if decoding ends
# more than this many seconds before it, the file is truncated.
_RELIABLE_DURATION_SLACK = 0.5


_av_module: ModuleType | None = None


def pyav() -> ModuleType:
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


def ffmpeg_layout(path: Path) -> tuple[str, ...] | None:
    """The channel layout a file states (e.g. a WAV's channel mask), as FFmpeg reads it; None if unstated."""
    try:
        av = pyav()
        with av.open(ffmpeg_name(path)) as container:
            names = tuple(c.name for c in container.streams.audio[0].layout.channels)
    except Exception:  # a layout is a nicety: any failure means "not stated"
        return None
    return names if names and all(n in CHANNEL_GAINS for n in names) else None


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


def _pick_stream(
    path: Path, streams: Sequence[AudioStream], wanted: int | None
) -> tuple[AudioStream, str | None]:
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


def probe_ffmpeg(path: Path, head: bytes, wanted: int | None = None) -> AudioInfo:
    av = pyav()
    kind = _container_kind(head)
    try:
        container = av.open(ffmpeg_name(path))
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
        layout = names if all(n in CHANNEL_GAINS for n in names) and len(names) == channels else None
        fmt = f"{ctx.name.upper()} in {container.format.long_name}"
        seconds = _ffmpeg_seconds(container, stream)
        reliable = seconds is not None and _has_reliable_duration(container)
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        tail = _ffmpeg_tail_end(av, container, stream, seconds) if seconds is not None else None
        index = stream.index
    estimate = round(seconds * rate) if seconds else 0
    notes = (note,) if note else ()
    info = AudioInfo(path, estimate, rate, channels, fmt, False, layout, "ffmpeg", index, notes)
    if (
        tail is not None
        and seconds is not None
        and (not reliable or tail >= start + seconds - _RELIABLE_DURATION_SLACK)
    ):
        return info
    # The end did not decode (or no duration is stated): decode it all to find where the audio stops.
    read, error = _ffmpeg_count(info)
    if read == 0:
        raise AudioError(f"{path}: contains no audio" + (f" ({error})" if error else ""))
    # A decoding error before the stated end, or (where the stated length is reliable) an end well
    # before it, means the end is missing.
    slack = 0.0 if error else _RELIABLE_DURATION_SLACK
    if seconds is not None and (error or reliable) and read / rate < seconds - slack:
        raise AudioError(truncated_message(path, read, rate, seconds))
    if error:
        raise AudioError(damaged_message(path, read, rate, error))
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


def end_decodes(path: Path, seconds: float) -> bool:
    """Whether FFmpeg decodes the last seconds of a ``seconds`` long file.

    Tells a file damaged in the middle from a truncated one when libsndfile
    stops with an error: FFmpeg seeks by bytes where mpg123 decodes its way
    to the end.
    """
    try:
        av = pyav()
        with av.open(ffmpeg_name(path)) as container:
            end = _ffmpeg_tail_end(av, container, container.streams.audio[0], seconds)
    except Exception:  # FFmpeg cannot read it either: no evidence the end is there
        return False
    return end is not None and end >= seconds - _RELIABLE_DURATION_SLACK


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


def ffmpeg_pieces(info: AudioInfo) -> Iterator[np.ndarray]:
    """Decode ``info``'s stream with FFmpeg: [n, channels] float32 pieces at ``info.sample_rate``.

    Converted through FFmpeg's resampler, so a stream that changes rate or
    layout midway still comes out at the probed rate and channel count. An
    MP4's sample table states the exact length: the encoder's padding past it
    is cut off. Raises ``DecodeFailed(frames_so_far, reason)`` on errors.
    """
    av = pyav()
    produced = 0
    try:
        with av.open(ffmpeg_name(info.path)) as container:
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
        raise DecodeFailed(produced, f"FFmpeg: {_ffmpeg_reason(exc)}") from None
    except OSError as exc:
        raise DecodeFailed(produced, exc.strerror or str(exc)) from None


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


def _ffmpeg_count(info: AudioInfo) -> tuple[int, str]:
    """Decode all of ``info`` with FFmpeg: (frames decoded before it ends or fails, the failure or "")."""
    read = 0
    try:
        for piece in ffmpeg_pieces(info):
            read += len(piece)
    except DecodeFailed as exc:
        return exc.frames, exc.reason
    return read, ""
