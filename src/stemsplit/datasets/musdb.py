"""Reading a MUSDB18-HQ-layout dataset: its tracks (:class:`Track`), probed up front, and the
validation split.

``ROOT/<subset>/<track>/{mixture,<stem>}.wav``; where the folders are (by name alone, no audio read) is
:mod:`stemsplit.datasets.musdb_layout`, which the CLI uses before torch loads. Training
(:mod:`stemsplit.train.data`), fine-tuning and ``stemsplit eval`` read tracks through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.decode import unplayable_problem
from ..audio.info import AudioError, libsndfile_reason, sf_name
from ..audio.probing import probe
from ..card import MUSIC_STEMS
from .musdb_layout import DatasetError, checked_validation_names, musdb_validation_names, track_folders

__all__ = ["Track", "common_format", "dataset_split", "find_tracks", "split_train_valid"]


@dataclass(frozen=True)
class Track:
    """One multitrack song: a folder of ``<stem>.wav`` files of equal length, rate and channel count.

    Holds no open files (each read opens its file), so it pickles into DataLoader workers.
    """

    name: str
    folder: Path
    stems: tuple[str, ...]
    sample_rate: int
    frames: int
    channels: int

    def stem_path(self, stem: str) -> Path:
        return self.folder / f"{stem}.wav"

    def read(self, stem: str, start: int = 0, frames: int = -1) -> np.ndarray:
        """``frames`` frames of ``stem`` from ``start`` (-1: to the end) as float32 [channels, frames].

        A file that was probed fine but no longer reads (changed, removed, a disk
        gone) is a :class:`DatasetError` naming it, even inside a DataLoader worker.
        """
        path = self.stem_path(stem)
        try:
            audio, rate = sf.read(sf_name(path), start=start, frames=frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise DatasetError(f"{path}: cannot read ({libsndfile_reason(exc)})") from None
        if rate != self.sample_rate or audio.shape[1] != self.channels:
            raise DatasetError(
                f"{path}: changed since the dataset was scanned ({rate} Hz, {audio.shape[1]} channels; "
                f"was {self.sample_rate} Hz, {self.channels} channels)"
            )
        problem = unplayable_problem(path, audio, start, rate)  # a NaN would poison a run or a score
        if problem is not None:
            raise DatasetError(problem)
        return np.ascontiguousarray(audio.T)

    def read_mixture(self) -> np.ndarray:
        """The whole mixture, float32 [channels, frames]: ``mixture.wav``, else the sum of the stems."""
        if self.stem_path("mixture").is_file():
            return self.read("mixture")
        mixture = self.read(self.stems[0])
        for stem in self.stems[1:]:
            mixture += self.read(stem)
        return mixture


def find_tracks(
    root: str | Path, subset: str, stems: Sequence[str] = MUSIC_STEMS, limit: int | None = None
) -> list[Track]:
    """The tracks of ``ROOT/<subset>/<track>/{mixture,<stem>}.wav``, sorted by name (the first ``limit``).

    Every stem file of them is probed up front, so a broken dataset fails here with the
    offending path rather than hours into training.
    """
    return [_read_track(path, tuple(stems)) for path in track_folders(root, subset, limit)]


def _read_track(folder: Path, stems: tuple[str, ...]) -> Track:
    infos = {}
    for stem in (*stems, "mixture"):
        path = folder / f"{stem}.wav"
        if stem == "mixture" and not path.exists():
            continue
        if not path.is_file():
            raise DatasetError(f"{path}: missing (every track needs {', '.join(s + '.wav' for s in stems)})")
        try:
            infos[stem] = probe(path)
        except AudioError as exc:
            raise DatasetError(str(exc)) from None
    for label, attribute, unit in (
        ("lengths", "frames", " frames"),
        ("sample rates", "sample_rate", " Hz"),
        ("channel counts", "channels", " channels"),
    ):
        values = {stem: getattr(info, attribute) for stem, info in infos.items()}
        if len(set(values.values())) > 1:
            listing = ", ".join(f"{stem}.wav {value}{unit}" for stem, value in values.items())
            raise DatasetError(f"{folder}: stems have different {label} ({listing})")
    first = infos[stems[0]]
    if first.channels not in (1, 2):
        raise DatasetError(
            f"{folder / f'{stems[0]}.wav'}: {first.channels} channels; training and evaluation take mono or "
            "stereo stems"
        )
    return Track(folder.name, folder, stems, first.sample_rate, first.frames, first.channels)


def split_train_valid(
    tracks: list[Track], valid_names: Sequence[str] | None = None
) -> tuple[list[Track], list[Track]]:
    """(train, valid): the tracks named in ``valid_names`` (default: MUSDB18's 14) are the validation set."""
    names = set(musdb_validation_names() if valid_names is None else valid_names)
    return [t for t in tracks if t.name not in names], [t for t in tracks if t.name in names]


def dataset_split(root: str | Path, tracks: list[Track]) -> tuple[list[Track], list[Track]]:
    """(train, valid) of ``ROOT/train``'s tracks by :func:`validation_names`. A ``valid.txt`` naming a
    track that is not there is an error: a misspelt name would train on the track meant for validation."""
    names = checked_validation_names(root, [track.name for track in tracks])
    return split_train_valid(tracks, names)


def common_format(tracks: Sequence[Track]) -> tuple[int, int]:
    """The (sample rate, channel count) every track shares, or a DatasetError naming two that differ."""
    if not tracks:
        raise DatasetError("no training tracks")
    first = tracks[0]
    for label, attribute, unit in (
        ("sample rate", "sample_rate", " Hz"),
        ("channel count", "channels", ""),
    ):
        for track in tracks[1:]:
            value, expected = getattr(track, attribute), getattr(first, attribute)
            if value != expected:
                stem = track.stem_path(track.stems[0])
                raise DatasetError(
                    f"{stem}: {label} {value}{unit}, but {first.stem_path(first.stems[0])} has "
                    f"{expected}{unit}; every training track needs the same {label}"
                )
    return first.sample_rate, first.channels
