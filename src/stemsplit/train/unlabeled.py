"""Finetune's unlabeled songs, decoded once into ``OUT/unlabeled/`` with their salient segments.

Any format :mod:`stemsplit.audio` reads, resampled to the model's rate, folded to the labeled set's
channel count, scaled down if a peak exceeds 1, stored as 16-bit FLAC so that crops can be read at
random offsets; each song's salient segments in ``OUT/unlabeled/index.json``. Written once and
reused by ``--resume``; a song unchanged since (path, size, modification time) is not decoded again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..audio.decode import read_blocks
from ..audio.downmix import downmix_to_stereo
from ..audio.info import AudioError, sf_name
from ..audio.probing import probe
from ..audio.resample import BlockResampler
from ..datasets.musdb_layout import DatasetError
from ..files import write_atomically
from .data import salient_segments
from .errors import TrainError

__all__ = ["UnlabeledSong", "decode", "prepare_unlabeled"]

POOL_VERSION = 1
INDEX_SAVE_SECONDS = 60.0  # while decoding, the index is saved this often (a restart skips what is done)


@dataclass(frozen=True)
class UnlabeledSong:
    """One unlabeled song, decoded: ``file`` at the model's rate and channel count, its salient segments."""

    source: str  # the user's file
    file: Path  # our decoded copy (16-bit FLAC)
    frames: int
    starts: np.ndarray  # start frames of the salient segments

    def read(self, start: int, frames: int) -> np.ndarray:
        """``frames`` frames from ``start``, float32 [channels, frames], zero-padded outside the song
        (``start`` may be negative: the teacher's context before a crop at the song's start)."""
        before = min(max(-start, 0), frames)
        try:
            audio, _ = sf.read(
                sf_name(self.file),
                start=start + before,
                frames=frames - before,
                dtype="float32",
                always_2d=True,
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise DatasetError(
                f"{self.file}: cannot read ({exc}); delete the folder to decode again"
            ) from None
        out = np.zeros((audio.shape[1], frames), np.float32)
        out[:, before : before + len(audio)] = audio.T
        return out


def decode(path: Path, sample_rate: int, channels: int) -> np.ndarray:
    """A whole file as float32 [channels, frames] at ``sample_rate``: any format stemsplit reads.

    More than two channels are folded to stereo as the engine does; stereo to
    mono by averaging, mono to stereo by copying. Scaled down when a peak exceeds 1.
    """
    info = probe(path)
    resample = BlockResampler(info.sample_rate, sample_rate, min(info.channels, 2))
    pieces = []
    for block in read_blocks(info, 1 << 18):
        block = downmix_to_stereo(block, info.layout) if info.channels > 2 else block
        pieces.append(resample(block))
    pieces.append(resample.flush(min(info.channels, 2)))
    audio = np.concatenate(pieces).T
    if audio.shape[0] != channels:
        audio = audio.mean(axis=0, keepdims=True) if channels == 1 else np.repeat(audio, channels, axis=0)
    peak = float(np.abs(audio).max(initial=0.0))
    return np.ascontiguousarray(audio / peak if peak > 1 else audio, dtype=np.float32)


def _write_flac(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """A decoded song [channels, frames] as the 16-bit FLAC file ``path``."""
    sf.write(sf_name(path), audio.T, sample_rate, "PCM_16", format="FLAC")


def prepare_unlabeled(
    folder: Path,
    into: Path,
    sample_rate: int,
    channels: int,
    segment_seconds: float,
    quantile: float,
    log: Callable[[str], None] = print,
) -> list[UnlabeledSong]:
    """Every audio file under ``folder`` (recursive), decoded into ``into`` once, with its salient segments.

    Files unchanged since an earlier call (same path, size and modification
    time, same settings) are not decoded again. A file that cannot be read is
    skipped with a line in the log, as is one without a salient segment; none
    usable at all is a :class:`TrainError`.
    """
    from ..batch.songs import BatchError, find_songs

    try:
        found = find_songs([Path(folder)], into.parent)
    except BatchError as exc:
        raise TrainError(f"--unlabeled: {exc}") from None
    for note in found.notes:
        log(f"--unlabeled: {note}")
    if not found.songs:  # before anything is written into the run folder
        raise TrainError(f"--unlabeled: {folder}: no audio files in it or below it")
    settings = {
        "version": POOL_VERSION,
        "sample_rate": sample_rate,
        "channels": channels,
        "segment_seconds": segment_seconds,
        "quantile": quantile,
    }
    index_path = into / "index.json"
    known: dict[str, dict[str, Any]] = {}
    ours: set[str] = set()  # the files earlier calls decoded (the folder may hold the user's own too)
    try:
        saved = json.loads(index_path.read_text())
        ours = set(saved.get("files", [])) | {f"{entry['key'][:20]}.flac" for entry in saved["songs"]}
        if saved.get("settings") == settings:
            known = {entry["key"]: entry for entry in saved["songs"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: decode again
    into.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    songs = []

    def save_index(listed: list[dict[str, Any]], files: set[str]) -> None:
        text = json.dumps({"settings": settings, "songs": listed, "files": sorted(files)})
        write_atomically(index_path, lambda temp: temp.write_text(text))

    saved_at = time.monotonic()
    for k, song in enumerate(found.songs):
        if time.monotonic() - saved_at > INDEX_SAVE_SECONDS:  # an interrupted call keeps what it decoded
            done = {e["key"] for e in entries}
            save_index(entries + [e for key, e in known.items() if key not in done], ours)
            saved_at = time.monotonic()
        try:
            stat = song.path.stat()
        except OSError as exc:  # removed since the folder was walked
            log(f"--unlabeled: skipped {song.path} ({exc.strerror or exc})")
            continue
        key = hashlib.sha256(
            f"{song.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        ).hexdigest()
        file = into / f"{key[:20]}.flac"
        entry = known.get(key)
        if entry is None or not file.is_file():
            try:
                audio = decode(song.path, sample_rate, channels)
            except AudioError as exc:
                log(f"--unlabeled: skipped {exc}")
                continue
            starts = salient_segments(audio, sample_rate, segment_seconds, quantile=quantile)
            ours.add(file.name)  # before writing: a half-written file is ours to remove too
            try:
                write_atomically(file, partial(_write_flac, audio=audio, sample_rate=sample_rate))
            except (OSError, sf.LibsndfileError, RuntimeError) as exc:  # a full or read-only disk
                raise TrainError(f"{file}: cannot write the decoded song ({exc})") from None
            entry = {
                "key": key,
                "source": str(song.path),
                "frames": audio.shape[1],
                "starts": starts.tolist(),
            }
            log(f"unlabeled {k + 1}/{len(found.songs)}: {song.path} ({len(starts)} salient segments)")
        entries.append(entry)
        if entry["starts"]:
            songs.append(UnlabeledSong(entry["source"], file, entry["frames"], np.asarray(entry["starts"])))
        else:
            log(f"--unlabeled: skipped {song.path} (no salient {segment_seconds:g} s segment)")
    wanted = {f"{e['key'][:20]}.flac" for e in entries}
    save_index(entries, wanted)
    for stale in ours - wanted:  # decoded earlier, for songs removed from the folder or changed since
        (into / stale).unlink(missing_ok=True)
    if not songs:
        raise TrainError(
            f"--unlabeled: {folder}: no usable songs (audio files with at least one salient "
            f"{segment_seconds:g} s segment)"
        )
    return songs
