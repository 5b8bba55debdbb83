"""Scoring a separator on a test set: MUSDB18-HQ-layout tracks (cSDR and uSDR per stem) or
Libri2Mix-layout mixtures (SI-SNRi, SDRi and STOI per talker), into a report with the settings the
numbers were obtained with, written as JSON.

The metrics are :mod:`stemsplit.evaluate.metrics`; which stems are scored against which is
:func:`stemsplit.evaluate.stems.match_stems`. Songs are separated with the
:class:`~stemsplit.separate.Separator` as given (``stemsplit eval`` gives it the model's own window and
hop unless told otherwise; TS-BSMamba2's are the paper's protocol, 3 s windows every 0.5 s).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.separator import Separator
from ..files import write_atomically
from .metrics import csdr, speech_scores, usdr
from .stems import StemMatch, match_stems, separator_other_is_the_rest

__all__ = [
    "EvalReport",
    "SpeechReport",
    "SpeechScores",
    "TrackScores",
    "evaluate_speech",
    "evaluate_tracks",
    "write_report",
]

# How the numbers were obtained, recorded in every report.
CSDR_METHOD = "BSSEval v4 (museval {}) on 1 s frames: median over frames, then over tracks"
USDR_METHOD = "MDX 2021 SDR of the whole track: mean over tracks"
SDRI_METHOD = "BSSEval bss_eval_sources (museval {}), whole mixture, 512-tap filters: estimate minus mixture"
SI_SNRI_METHOD = (
    "SI-SNR (zero-mean) of the estimate minus that of the mixture; outputs matched by best mean SI-SNR"
)
STOI_METHOD = "pystoi {} of the estimate"


@dataclass
class TrackScores:
    """One track's scores in dB, per stem (``csdr`` empty when not computed; NaN: not scorable)."""

    name: str
    csdr: dict[str, float]
    usdr: dict[str, float]


def _aggregate(values: Iterable[float], how: Callable[[np.ndarray], Any]) -> float:
    kept = np.array([v for v in values if not math.isnan(v)])
    return float(how(kept)) if len(kept) else math.nan


def _with_average(scores: dict[str, float]) -> dict[str, float]:
    """Add ``avg``: the mean over stems (the paper's "Average" column)."""
    if scores:
        scores["avg"] = _aggregate(scores.values(), np.mean)
    return scores


@dataclass
class EvalReport:
    """Per-track scores and the settings they were obtained with; aggregates on demand."""

    tracks: list[TrackScores]
    stems: tuple[str, ...]
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # how the stems were scored (StemMatch.notes)

    def _per_stem(self, metric: str, how: Callable[[np.ndarray], Any]) -> dict[str, float]:
        scores = {}
        for stem in self.stems:
            values = [getattr(t, metric)[stem] for t in self.tracks if stem in getattr(t, metric)]
            if values:
                scores[stem] = _aggregate(values, how)
        return _with_average(scores)

    def csdr(self) -> dict[str, float]:
        """Per stem the median over tracks of the per-track medians (SiSEC), plus ``avg``."""
        return self._per_stem("csdr", np.median)

    def usdr(self) -> dict[str, float]:
        """Per stem the mean over tracks (MDX 2021), plus ``avg``."""
        return self._per_stem("usdr", np.mean)

    def track_averages(self, metric: str) -> dict[str, float]:
        """Each track's mean over its stems for ``metric`` ("usdr" or "csdr"; NaN ignored): name -> dB."""
        return {t.name: _aggregate(getattr(t, metric).values(), np.mean) for t in self.tracks}

    @classmethod
    def from_json(cls, data: dict) -> EvalReport:
        """The report :meth:`to_json` made (null back to NaN); KeyError, TypeError, ValueError or
        AttributeError when ``data`` is not one."""

        def scores(values: dict) -> dict[str, float]:
            return {stem: math.nan if v is None else float(v) for stem, v in values.items()}

        tracks = [TrackScores(str(t["name"]), scores(t["csdr"]), scores(t["usdr"])) for t in data["tracks"]]
        return cls(tracks, tuple(data["stems"]), dict(data["settings"]), list(data.get("notes", [])))

    def to_json(self) -> dict:
        """Everything as plain JSON types; NaN (not scorable) becomes null."""
        return _finite(
            {
                "stems": list(self.stems),
                "notes": self.notes,
                "settings": self.settings,
                "csdr": self.csdr(),
                "usdr": self.usdr(),
                "tracks": [{"name": t.name, "csdr": t.csdr, "usdr": t.usdr} for t in self.tracks],
            }
        )


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_tracks(
    separator: Separator,
    tracks: Iterable[Any],
    progress: Callable[[str], None] | None = None,
    compute_csdr: bool = True,
) -> EvalReport:
    """Separate each track's mixture and score the stems the model and the track have (:func:`match_stems`).

    A track is anything with ``name``, ``sample_rate``, ``read_mixture()`` and
    ``read(stem)`` (audio [channels, frames]); when it also has ``stems`` (all
    the test set's), those are the test set's stems, else the model's. The
    tracks share one set of stems (:func:`stemsplit.datasets.musdb.find_tracks`
    checks). ``compute_csdr=False`` skips BSSEval (slow; uSDR alone is enough
    for validation during training).
    """
    progress = progress or (lambda text: None)
    rest = separator_other_is_the_rest(separator)
    scores = []
    matches: list[StemMatch] = []  # each track's
    started = time.perf_counter()
    for track in tracks:
        match = match_stems(separator.stems, getattr(track, "stems", separator.stems), rest)
        matches.append(match)
        stems = match.scored
        mixture = np.asarray(track.read_mixture(), dtype=np.float32)
        separated = separator.separate(mixture, track.sample_rate)
        estimates = {s: _summed(separated[k] for k in match.estimate[s]) for s in stems}
        references = [_summed(track.read(k) for k in match.reference[stem]) for stem in stems]
        result = TrackScores(
            track.name,
            csdr={},
            usdr={s: usdr(ref, estimates[s]) for s, ref in zip(stems, references, strict=True)},
        )
        if compute_csdr and stems:
            chunked = csdr(
                np.stack([ref.T for ref in references]),
                np.stack([estimates[s].T for s in stems]),
                track.sample_rate,
            )
            result.csdr = dict(zip(stems, chunked.tolist(), strict=True))
        scores.append(result)
        progress(_track_line(len(scores), result))
    settings = {
        "model": separator.name,
        **_window_and_hop(separator),
        "stage": separator.stage,
        "precision": separator.precision,
        "device": str(separator.device),
        "csdr": CSDR_METHOD.format(importlib.metadata.version("museval")) if compute_csdr else None,
        "usdr": USDR_METHOD,
        "seconds": round(time.perf_counter() - started, 3),
        **_stem_settings(matches),
    }
    scored = {stem for match in matches for stem in match.scored}
    stems = tuple(s for s in separator.stems if s in scored)
    return EvalReport(scores, stems, settings, _stem_notes(matches))


def _stem_settings(matches: list[StemMatch]) -> dict[str, Any]:
    """The report's ``other_scored_as`` and ``not_scored``, over every track's :class:`StemMatch`."""
    summed: dict[str, dict[str, list[str]]] = {}
    unscored: dict[str, list[str]] = {"model": [], "test_set": []}
    for match in matches:
        summed |= match.summed()
        for key, stems in (("model", match.unscored_model), ("test_set", match.unscored_test)):
            unscored[key] += [s for s in stems if s not in unscored[key]]
    return {"other_scored_as": summed, "not_scored": unscored}


def _stem_notes(matches: list[StemMatch]) -> list[str]:
    """The notes of the tracks' matches: as they are when every track has the same stems (a test set
    read by find_tracks), else each with the number of tracks it is true of."""
    counts: dict[tuple[str, ...], int] = {}
    for match in matches:
        counts[tuple(match.notes())] = counts.get(tuple(match.notes()), 0) + 1
    if len(counts) == 1:
        return list(next(iter(counts)))
    return [f"{n} of {len(matches)} tracks: {note}" for notes, n in counts.items() for note in notes]


def _summed(parts: Iterable[np.ndarray]) -> np.ndarray:
    """The sum of audio arrays [channels, frames], as float32 (one array: itself)."""
    total = None
    for part in parts:
        part = np.asarray(part, dtype=np.float32)
        total = part if total is None else total + part
    assert total is not None, "no parts to sum"
    return total


def _window_and_hop(separator: Any) -> dict[str, Any]:
    """The report's window and hop in seconds: a Separator's (or any stand-in's with window, hop and
    sample_rate), or an ensemble's (one value when its members share it, else each member's)."""
    if hasattr(separator, "window_seconds"):
        return {"window": separator.window_seconds, "hop": separator.hop_seconds}
    return {"window": separator.window / separator.sample_rate, "hop": separator.hop / separator.sample_rate}


def _track_line(index: int, scores: TrackScores) -> str:
    def average(values: dict[str, float]) -> str:
        return f"{_with_average(dict(values))['avg']:.2f} dB" if values else "-"

    return f"{index}: {scores.name}: uSDR {average(scores.usdr)}, cSDR {average(scores.csdr)}"


# --- speech ---------------------------------------------------------------------------------------


@dataclass
class SpeechScores:
    """One mixture's scores: metric -> one value per talker (NaN: not scorable)."""

    name: str
    scores: dict[str, list[float]]


@dataclass
class SpeechReport:
    """Per-mixture speech scores and the settings they were obtained with."""

    mixtures: list[SpeechScores]
    metrics: tuple[str, ...]
    settings: dict = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        """The mean over talkers and mixtures (NaN ignored; NaN when nothing was scored)."""
        return _aggregate((v for m in self.mixtures for v in m.scores.get(metric, [])), np.mean)

    def left_out(self, metric: str) -> int:
        """How many mixtures have no score for ``metric`` (SDRi with a silent talker)."""
        return sum(1 for m in self.mixtures if metric in m.scores and np.isnan(m.scores[metric]).all())

    def to_json(self) -> dict:
        return _finite(
            {
                "metrics": {metric: self.mean(metric) for metric in self.metrics},
                "left_out": {metric: self.left_out(metric) for metric in self.metrics},
                "settings": self.settings,
                "mixtures": [{"name": m.name, **m.scores} for m in self.mixtures],
            }
        )


def evaluate_speech(
    separator: Separator,
    mixtures: Iterable[Any],
    progress: Callable[[str], None] | None = None,
    compute_sdr: bool = True,
    compute_stoi: bool | None = None,
) -> SpeechReport:
    """Separate each two-talker mixture and score it (:func:`speech_scores`).

    ``mixtures`` are :class:`~stemsplit.datasets.libri2mix.SpeechTrack` s (``name``,
    ``sample_rate``, ``read()`` -> mixture, s1, s2). ``compute_stoi`` None: when pystoi imports.
    """
    progress = progress or (lambda text: None)
    if compute_stoi is None:
        compute_stoi = importlib.util.find_spec("pystoi") is not None
    results = []
    started = time.perf_counter()
    for track in mixtures:
        mixture, *talkers = track.read()
        separated = separator.separate(mixture, track.sample_rate)  # {speaker: [1, samples]}
        estimates = np.stack([separated[name][0] for name in separator.stems])
        if len(estimates) != len(talkers):
            from ..datasets.musdb_layout import DatasetError

            raise DatasetError(
                f"{track.mixture}: {len(talkers)} talkers, but the model gives {len(estimates)}"
            )
        scores = speech_scores(
            mixture, np.stack(talkers), estimates, track.sample_rate, compute_sdr, compute_stoi
        )
        results.append(SpeechScores(track.name, scores))
        shown = ", ".join(f"{k} {np.mean(v):.2f}" for k, v in scores.items())
        progress(f"{len(results)}: {track.name}: {shown}")
    metrics = ("si_snri", *(("sdri",) if compute_sdr else ()), *(("stoi",) if compute_stoi else ()))
    settings = {
        "model": separator.name,
        "window": separator.window / separator.sample_rate,
        "hop": separator.hop / separator.sample_rate,
        "precision": separator.precision,
        "device": str(separator.device),
        "si_snri": SI_SNRI_METHOD,
        "sdri": SDRI_METHOD.format(importlib.metadata.version("museval")) if compute_sdr else None,
        "stoi": STOI_METHOD.format(importlib.metadata.version("pystoi")) if compute_stoi else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return SpeechReport(results, metrics, settings)


def write_report(report: EvalReport | SpeechReport, path: Path) -> None:
    """Write the report as JSON atomically: a crash never leaves a truncated file behind.

    An OSError names ``path`` (not the temporary it was being written to)."""
    path = Path(path)
    text = json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda temp: temp.write_text(text))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
