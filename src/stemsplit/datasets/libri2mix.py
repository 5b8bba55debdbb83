"""Reading a Libri2Mix-layout folder: two-talker mixtures and their talkers, for training and ``eval``.

``ROOT/<split>/{mix_both,mix_clean,s1,s2}/<ID>.wav`` (mono, one rate), listed by
``ROOT/metadata/mixture_<split>_<mixture>.csv`` when there is one: Libri2Mix's own ``wav8k/min``
folder, or what ``stemsplit synth-speech`` (:mod:`stemsplit.datasets.speech_synth`) writes.
:func:`check_speech_layout` looks at names only, so the CLI refuses a wrong folder before torch
loads; :func:`find_speech_mixtures` probes every file up front.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.decode import unplayable_problem
from ..audio.info import AudioError, libsndfile_reason, sf_name
from ..audio.probing import probe
from ..errors import StemsplitError

__all__ = ["MIXTURE_KINDS", "SpeechSynthError", "SpeechTrack", "check_speech_layout", "find_speech_mixtures"]

MIXTURE_KINDS = ("mix_both", "mix_clean")  # the input folders: noisy, and without the noise


class SpeechSynthError(StemsplitError):
    """Speech mixtures cannot be made or read as asked; the one-line message says why.

    One class for both: the synthesiser (:mod:`stemsplit.datasets.speech_synth`) raises it too.
    """


@dataclass(frozen=True)
class SpeechTrack:
    """One two-talker mixture of a Libri2Mix-layout folder: mono files of one length and rate.

    Holds no open files, so it pickles into DataLoader workers.
    """

    name: str
    mixture: Path
    sources: tuple[Path, Path]
    sample_rate: int
    frames: int

    def read(self, start: int = 0, frames: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mixture, s1, s2), each float32 [frames], ``frames`` frames from ``start`` (-1: to the end)."""
        out = []
        for path in (self.mixture, *self.sources):
            try:
                audio, rate = sf.read(
                    sf_name(path), start=start, frames=frames, dtype="float32", always_2d=True
                )
            except (sf.LibsndfileError, RuntimeError, OSError) as exc:
                raise SpeechSynthError(f"{path}: cannot read ({libsndfile_reason(exc)})") from None
            if rate != self.sample_rate or audio.shape[1] != 1:
                raise SpeechSynthError(
                    f"{path}: changed since the dataset was scanned ({rate} Hz, {audio.shape[1]} channels)"
                )
            problem = unplayable_problem(path, audio, start, rate)
            if problem is not None:
                raise SpeechSynthError(problem)
            out.append(np.ascontiguousarray(audio[:, 0]))
        return out[0], out[1], out[2]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SpeechSynthError(f"{path}: cannot read ({exc})") from None
    needed = {"mixture_ID", "mixture_path", "source_1_path", "source_2_path"}
    if not rows:
        raise SpeechSynthError(f"{path}: lists no mixtures")
    if not needed <= columns:
        raise SpeechSynthError(f"{path}: missing the columns {', '.join(sorted(needed - columns))}")
    return rows


def _listed_file(root: Path, split: str, written: str) -> Path:
    """A path from a metadata CSV: the file of that folder and name under ``root/split`` when it exists
    (the dataset may have moved since the CSV was written), else the path as written (relative to
    ``root`` when it is relative)."""
    path = Path(written)
    here = root / split / path.parent.name / path.name
    return here if here.is_file() else root / path


def check_speech_layout(root: str | Path, split: str, mixture: str = "mix_both") -> None:
    """What :func:`find_speech_mixtures` needs first, by name only (no file read, no torch): the root, and
    ``root/<split>/<mixture>/`` or the split's metadata table. A :class:`SpeechSynthError` if not."""
    root = Path(root)
    if mixture not in MIXTURE_KINDS:
        raise SpeechSynthError(f"mixture must be one of {', '.join(MIXTURE_KINDS)}, not {mixture!r}")
    if not root.is_dir():
        raise SpeechSynthError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    table = root / "metadata" / f"mixture_{split}_{mixture}.csv"
    folder = root / split / mixture
    if not table.is_file() and not folder.is_dir():
        raise SpeechSynthError(
            f"{folder}: no such folder, and no {table.name} in {table.parent} "
            f"(expected the Libri2Mix layout {root}/{split}/{{{mixture},s1,s2}}/<ID>.wav)"
        )


def find_speech_mixtures(root: str | Path, split: str, mixture: str = "mix_both") -> list[SpeechTrack]:
    """The mixtures of ``root/<split>`` (``train-100``, ``train-360``, ``dev``, ``test``), sorted by ID.

    ``mixture`` is the input folder, ``mix_both`` (noisy) or ``mix_clean``; the
    targets are ``s1`` and ``s2``. The list comes from
    ``root/metadata/mixture_<split>_<mixture>.csv`` when it exists, else from
    the files of ``root/<split>/<mixture>/`` that have namesakes in ``s1/`` and
    ``s2/``. Every file is probed up front (mono, one sample rate and length per
    mixture), so a broken dataset fails here, naming the file.
    """
    root = Path(root)
    check_speech_layout(root, split, mixture)
    table = root / "metadata" / f"mixture_{split}_{mixture}.csv"
    entries: list[tuple[str, Path, Path, Path, int | None]] = []
    if table.is_file():
        for number, row in enumerate(_csv_rows(table), 2):
            length = row.get("length", "")
            if length and not length.isdigit():
                raise SpeechSynthError(f"{table}: line {number}: length {length!r} is not a whole number")
            mixture_file, s1, s2 = (
                _listed_file(root, split, row[c]) for c in ("mixture_path", "source_1_path", "source_2_path")
            )
            entries.append((row["mixture_ID"], mixture_file, s1, s2, int(length) if length else None))
    else:
        folder = root / split / mixture
        files = sorted(p for p in folder.glob("*.wav") if not p.name.startswith("."))
        if not files:
            raise SpeechSynthError(f"{folder}: no .wav files")
        entries = [
            (p.stem, p, root / split / "s1" / p.name, root / split / "s2" / p.name, None) for p in files
        ]
    return sorted((_probe_entry(*entry) for entry in entries), key=lambda t: t.name)


def _probe_entry(name: str, mixture: Path, s1: Path, s2: Path, length: int | None) -> SpeechTrack:
    infos = []
    for path in (mixture, s1, s2):
        if not path.is_file():
            raise SpeechSynthError(f"{path}: missing (mixture {name} needs it)")
        try:
            info = probe(path)
        except AudioError as exc:
            raise SpeechSynthError(str(exc)) from None
        if info.channels != 1:
            raise SpeechSynthError(f"{path}: has {info.channels} channels; speech mixtures are mono")
        infos.append(info)
    rates = {info.sample_rate for info in infos}
    frames = {info.frames for info in infos}
    if len(rates) > 1 or len(frames) > 1:
        listing = ", ".join(f"{p.name} in {p.parent.name}/ {i.frames} frames at {i.sample_rate} Hz"
                            for p, i in zip((mixture, s1, s2), infos, strict=True))  # fmt: skip
        raise SpeechSynthError(f"mixture {name}: files differ ({listing})")
    if length is not None and length != infos[0].frames:
        raise SpeechSynthError(f"{mixture}: {infos[0].frames} frames, but the metadata says {length}")
    return SpeechTrack(name, mixture, (s1, s2), infos[0].sample_rate, infos[0].frames)
