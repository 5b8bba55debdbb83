"""Training data: source activity detection and remixing of MUSDB18-HQ-layout multitracks (read by
:mod:`stemsplit.datasets.musdb`); and crops of two-talker speech mixtures (:class:`SpeechCrops`).

The recipe is BSRNN's (Luo & Yu, section III-A), which TS-BSMamba2 trains with:

- **Source activity detection** (:func:`salient_segments`): each stem is cut
  into 6 s segments with 50% overlap, each segment into 10 chunks; a segment is
  *salient* when more than half of its chunks carry more energy than
  ``max(15% quantile of all chunk energies, 1e-3)``. It runs once per dataset
  and is cached (:class:`SalientIndex`).
- **On-the-fly remixing** (:class:`RemixDataset`): every stem of a training
  example comes from its own random track and salient segment, gets a random
  gain in [-10, 10] dB and is dropped with probability 0.1; the mixture is their
  sum, and both are rescaled together when a peak exceeds 1.

Speech (U-Mamba-Net, Sec. III-C): each example is a random 3 s crop of a random
mixture of a Libri2Mix-layout folder (:func:`stemsplit.datasets.libri2mix.find_speech_mixtures`
lists them): the mixture (``mix_both`` or ``mix_clean``) and its two talkers ``s1``, ``s2``.

Samples are a pure function of ``(seed, epoch, index)``, so a resumed run, any
number of DataLoader workers and every DDP rank see exactly the data they would
have seen in one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch

from ..card import MUSIC_STEMS
from ..datasets.libri2mix import SpeechSynthError
from ..datasets.musdb import Track, common_format
from ..datasets.musdb_layout import DatasetError
from ..files import write_atomically
from ..weights import cache_dir

if TYPE_CHECKING:
    from typing_extensions import Unpack  # (typing's from Python 3.11; only the checker reads this)

__all__ = [
    "DetectorSettings",
    "EpochDataset",
    "RemixDataset",
    "SalientIndex",
    "SpeechCrops",
    "salient_segments",
]

_CACHE_VERSION = 1


# --- source activity detection ------------------------------------------------------------------


class DetectorSettings(TypedDict, total=False):
    """:func:`salient_segments`' settings besides the segment length (each left out: its default)."""

    chunks: int
    quantile: float
    min_energy: float
    floor: float


def salient_segments(
    audio: np.ndarray,
    sample_rate: int,
    segment_seconds: float = 6.0,
    chunks: int = 10,
    quantile: float = 0.15,
    min_energy: float = 1e-5,
    floor: float = 1e-3,
) -> np.ndarray:
    """Start frames of the salient segments of one stem [channels, frames] (BSRNN's detector).

    Segments of ``segment_seconds`` every half segment (only whole ones), each cut
    into ``chunks`` chunks whose energy is their mean square (at least
    ``min_energy``, which stands for silence). The threshold is
    ``max(quantile of all chunk energies, floor)``; a segment is kept when more
    than half of its chunks are above it.
    """
    audio = np.atleast_2d(audio)
    frames = audio.shape[-1]
    length = round(segment_seconds * sample_rate)
    hop, chunk = length // 2, length // chunks
    if frames < length or chunk == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, frames - length + 1, hop, dtype=np.int64)
    # Cumulative energy per frame (float64: exact enough over a whole song) gives every chunk in O(1).
    energy = np.square(audio, dtype=np.float64).mean(axis=0)
    cumulative = np.concatenate([[0.0], np.cumsum(energy)])
    chunk_starts = starts[:, None] + np.arange(chunks) * chunk
    powers = (cumulative[chunk_starts + chunk] - cumulative[chunk_starts]) / chunk
    powers = np.maximum(powers, min_energy)
    threshold = max(float(np.quantile(powers, quantile)), floor)
    keep = (powers > threshold).sum(axis=1) > chunks / 2
    return starts[keep]


class SalientIndex:
    """Salient segment starts of every (track, stem), computed once per dataset and cached as JSON.

    The cache file is named by a hash of the track folders, names, lengths,
    stems and detector settings, so any change to them computes a new index; a
    stale or unreadable file is recomputed and replaced.
    """

    def __init__(
        self, names: Sequence[str], segment_seconds: float, starts: Sequence[dict[str, np.ndarray]]
    ) -> None:
        self.names = list(names)
        self.segment_seconds = segment_seconds
        self._starts = [
            {stem: np.asarray(s, dtype=np.int64) for stem, s in entry.items()} for entry in starts
        ]

    @classmethod
    def build(
        cls,
        tracks: Sequence[Track],
        stems: Sequence[str],
        segment_seconds: float = 6.0,
        cache_dir: str | Path | None = None,
        **sad_kwargs: Unpack[DetectorSettings],
    ) -> SalientIndex:
        """Read the index from the cache, or run :func:`salient_segments` over every stem and cache it."""
        stems = tuple(stems)
        folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        key = _index_key(tracks, stems, segment_seconds, sad_kwargs)
        path = folder / f"sad-{key}.json"
        loaded = cls._load(path, key, tracks, stems, segment_seconds)
        if loaded is not None:
            return loaded
        starts = [
            {
                stem: salient_segments(track.read(stem), track.sample_rate, segment_seconds, **sad_kwargs)
                for stem in stems
            }
            for track in tracks
        ]
        payload = {
            "version": _CACHE_VERSION,
            "key": key,
            "segment_seconds": segment_seconds,
            "tracks": [
                {"name": t.name, **{s: v.tolist() for s, v in e.items()}}
                for t, e in zip(tracks, starts, strict=True)
            ],
        }
        text = json.dumps(payload)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda temp: temp.write_text(text))
        except OSError:
            pass  # a read-only or unusable cache only costs recomputing the index next time
        return cls([t.name for t in tracks], segment_seconds, starts)

    @classmethod
    def _load(
        cls, path: Path, key: str, tracks: Sequence[Track], stems: tuple[str, ...], segment_seconds: float
    ) -> SalientIndex | None:
        try:
            payload = json.loads(path.read_text())
            if payload["version"] != _CACHE_VERSION or payload["key"] != key:
                return None
            entries = payload["tracks"]
            if [e["name"] for e in entries] != [t.name for t in tracks]:
                return None
            starts = [{stem: np.asarray(e[stem], dtype=np.int64) for stem in stems} for e in entries]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls([t.name for t in tracks], segment_seconds, starts)

    def starts(self, track_index: int, stem: str) -> np.ndarray:
        """Start frames of the salient segments of ``stem`` in track ``track_index`` (may be empty)."""
        return self._starts[track_index][stem]

    def has(self, stems: Sequence[str]) -> bool:
        """Whether every track was indexed for all of ``stems``."""
        return all(stem in entry for entry in self._starts for stem in stems)


def _default_cache_dir() -> Path:
    return cache_dir() / "datasets"


def _index_key(
    tracks: Sequence[Track], stems: tuple[str, ...], segment_seconds: float, sad_kwargs: DetectorSettings
) -> str:
    identity = {
        "tracks": [[str(t.folder.resolve()), t.name, t.frames, t.sample_rate] for t in tracks],
        "stems": stems,
        "segment_seconds": segment_seconds,
        "sad": sorted(sad_kwargs.items()),
    }
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


# --- remixing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draw:
    """Where one stem of one sample comes from, and what is done to it."""

    track: int
    start: int
    gain_db: float
    dropped: bool


class EpochDataset(torch.utils.data.Dataset):
    """``epoch_size`` examples an epoch, item ``i`` of epoch ``e`` drawn from ``rng([seed, e, i])``:
    the same examples on any number of workers and processes, and again after a resume.
    Subclasses set ``epoch_size``, ``seed`` and ``epoch`` and define :meth:`sample`."""

    epoch_size: int
    seed: int
    epoch: int = 0

    def __len__(self) -> int:
        return self.epoch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.sample(self.epoch, i)

    def sample(self, epoch: int, i: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


class RemixDataset(EpochDataset):
    """BSRNN's on-the-fly remixing: each item is (mixture [C, T], targets [S, C, T]), float32.

    Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``; :meth:`set_epoch`
    picks the epoch (DataLoader workers copy the dataset when an iteration
    starts, so call it before iterating, and don't use persistent workers).
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        stems: Sequence[str] = MUSIC_STEMS,
        seconds: float = 3.0,
        epoch_size: int = 100_000,
        seed: int = 0,
        index: SalientIndex | None = None,
        gain_db: tuple[float, float] = (-10.0, 10.0),
        drop_prob: float = 0.1,
    ) -> None:
        self.tracks, self.stems = list(tracks), tuple(stems)
        self.sample_rate, self.channels = common_format(self.tracks)
        self.frames = round(seconds * self.sample_rate)
        self.index = index if index is not None else SalientIndex.build(self.tracks, self.stems)
        if self.index.names != [t.name for t in self.tracks] or not self.index.has(self.stems):
            raise DatasetError("the salient-segment index was built for other tracks or stems")
        self.segment_frames = round(self.index.segment_seconds * self.sample_rate)
        if self.frames > self.segment_frames:
            raise DatasetError(
                f"{seconds:g} s crops do not fit in {self.index.segment_seconds:g} s salient segments"
            )
        self.epoch_size, self.seed = epoch_size, seed
        self.gain_db, self.drop_prob = gain_db, drop_prob
        self.epoch = 0

    def sample(self, epoch: int, i: int) -> tuple[torch.Tensor, ...]:
        """Item ``i`` of ``epoch``: the stems of :meth:`_draws`, summed, rescaled if a peak exceeds 1.
        (A subclass's item may hold more: :class:`stemsplit.train.finetune.FinetuneDataset`.)"""
        signals = np.zeros((len(self.stems), self.channels, self.frames), dtype=np.float32)
        for target, stem, draw in zip(signals, self.stems, self._draws(epoch, i), strict=True):
            if not draw.dropped:
                audio = self.tracks[draw.track].read(stem, draw.start, self.frames)
                target[:, : audio.shape[1]] = audio * np.float32(10 ** (draw.gain_db / 20))
        targets = torch.from_numpy(signals)
        mixture = targets.sum(0)
        peak = max(float(mixture.abs().max()), float(targets.abs().max()))
        if peak > 1:
            targets = targets / peak
            mixture = targets.sum(0)  # recomputed, so the mixture is exactly the sum of the targets
        return mixture, targets

    def _draws(self, epoch: int, i: int) -> list[_Draw]:
        """The random choices behind item ``i`` of ``epoch``, one per stem, from ``rng([seed, epoch, i])``."""
        rng = np.random.default_rng([self.seed, epoch, i])
        draws = []
        for stem in self.stems:
            track = int(rng.integers(len(self.tracks)))
            segments = self.index.starts(track, stem)
            if len(segments):
                segment = int(segments[rng.integers(len(segments))])
                start = segment + int(rng.integers(self.segment_frames - self.frames + 1))
            else:  # never salient (or shorter than a segment): anywhere will do
                start = int(rng.integers(max(self.tracks[track].frames - self.frames, 0) + 1))
            gain = float(rng.uniform(*self.gain_db))
            draws.append(_Draw(track, start, gain, bool(rng.random() < self.drop_prob)))
        return draws


class SpeechCrops(EpochDataset):
    """Random crops of two-talker mixtures: item -> (mixture [1, frames], talkers [2, 1, frames]).

    ``mixtures`` are :class:`~stemsplit.datasets.libri2mix.SpeechTrack` s (anything with
    ``name``, ``sample_rate``, ``frames`` and ``read(start, frames)`` giving mixture, s1, s2).
    Item ``i`` of an epoch is a random mixture and start from ``rng([seed, epoch, i])``; a
    mixture shorter than the crop is taken whole and zero-padded at the end.
    """

    def __init__(self, mixtures: Sequence, seconds: float, epoch_size: int, seed: int = 0) -> None:
        self.mixtures = list(mixtures)
        if not self.mixtures:
            raise DatasetError("no training mixtures")
        first = self.mixtures[0]
        for other in self.mixtures[1:]:
            if other.sample_rate != first.sample_rate:
                raise DatasetError(
                    f"{other.mixture}: {other.sample_rate} Hz, but {first.mixture} has "
                    f"{first.sample_rate} Hz; every training mixture needs the same sample rate"
                )
        self.sample_rate = first.sample_rate
        self.frames = round(seconds * self.sample_rate)
        self.epoch_size, self.seed, self.epoch = epoch_size, seed, 0

    def sample(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch, i])
        mixture = self.mixtures[int(rng.integers(len(self.mixtures)))]
        start = int(rng.integers(max(mixture.frames - self.frames, 0) + 1))
        parts = np.zeros((3, self.frames), dtype=np.float32)
        try:
            signals = mixture.read(start, self.frames)  # mixture, s1, s2
        except SpeechSynthError as exc:
            raise DatasetError(str(exc)) from None
        for row, audio in zip(parts, signals, strict=True):
            row[: len(audio)] = audio
        return torch.from_numpy(parts[:1].copy()), torch.from_numpy(parts[1:, None].copy())
