"""Scoring separations the way the paper reports them: cSDR and uSDR per stem.

- **uSDR** (utterance-level SDR, the MDX Challenge 2021 metric): one SNR-style
  number per track and stem over the whole song; the reported figure is the
  mean over tracks.
- **cSDR** (chunk-level SDR, SiSEC 2018): BSSEval v4 from the ``museval``
  package on 1 s frames; the median over a track's frames, then the median
  over tracks. Frames where a reference is silent are NaN and ignored, as in
  museval's own aggregation.

Songs are separated with the :class:`~stemsplit.separate.Separator` as given
(the paper's protocol, 3 s windows every 0.5 s, is its default).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_atomically
from ..separate import Separator

__all__ = ["EvalReport", "TrackScores", "csdr", "evaluate_tracks", "usdr", "write_report"]

# How the numbers were obtained, recorded in every report.
CSDR_METHOD = "BSSEval v4 (museval {}) on 1 s frames: median over frames, then over tracks"
USDR_METHOD = "MDX 2021 SDR of the whole track: mean over tracks"
MUSEVAL_INSTALL = "pip install museval (or 'stemsplit[train]')"


def usdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-7) -> float:
    """Utterance-level SDR in dB over all channels and samples (MDX 2021).

    ``eps`` keeps a perfect estimate finite and a silent stem at 0 dB.
    """
    reference = np.asarray(reference, dtype=np.float64)
    error = reference - np.asarray(estimate, dtype=np.float64)
    return float(10 * np.log10((np.sum(reference**2) + eps) / (np.sum(error**2) + eps)))


def _museval() -> types.ModuleType:
    """Import museval, also where ffmpeg is not installed.

    museval imports musdb, which imports stempeg, which raises at import time
    when ffmpeg is not on PATH; BSSEval itself needs only numpy and scipy, and
    stempeg only decodes ``.stem.mp4`` files, which we never read. So on that
    error a placeholder stempeg stands in for the import alone.
    """
    try:
        import museval
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"cSDR needs museval: {MUSEVAL_INSTALL}", name=exc.name) from None
    except RuntimeError as exc:
        if "ffmpeg" not in str(exc):
            raise
        placeholder = types.ModuleType("stempeg")
        sys.modules["stempeg"] = placeholder
        try:
            import museval
        finally:
            if sys.modules.get("stempeg") is placeholder:
                del sys.modules["stempeg"]
    return museval


def csdr(references: np.ndarray, estimates: np.ndarray, sample_rate: int) -> np.ndarray:
    """Chunk-level SDR per stem of one track: references, estimates [S, samples, channels] -> [S] dB.

    museval's BSSEval v4 on 1 s frames, then per stem the median over frames
    that are not NaN (NaN where no frame is scorable).
    """
    sdr, _isr, _sir, _sar = _museval().evaluate(references, estimates, win=sample_rate, hop=sample_rate)
    scores = np.full(len(sdr), np.nan)
    for i, frames in enumerate(sdr):
        frames = frames[~np.isnan(frames)]
        if len(frames):
            scores[i] = np.median(frames)
    return scores


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

    def to_json(self) -> dict:
        """Everything as plain JSON types; NaN (not scorable) becomes null."""
        return _finite(
            {
                "stems": list(self.stems),
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
    """Separate each track's mixture and score every model stem the track has.

    A track is anything with ``name``, ``sample_rate``, ``read_mixture()`` and
    ``read(stem)`` (audio [channels, frames]); when it also has ``stems``, only
    those are scored. ``compute_csdr=False`` skips BSSEval (slow; uSDR alone is
    enough for validation during training).
    """
    progress = progress or (lambda text: None)
    scores = []
    started = time.perf_counter()
    for track in tracks:
        stems = [s for s in separator.stems if s in getattr(track, "stems", separator.stems)]
        mixture = np.asarray(track.read_mixture(), dtype=np.float32)
        estimates = separator.separate(mixture, track.sample_rate)
        references = [np.asarray(track.read(stem), dtype=np.float32) for stem in stems]
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
        "window": separator.window / separator.sample_rate,
        "hop": separator.hop / separator.sample_rate,
        "stage": separator.stage,
        "precision": separator.precision,
        "device": str(separator.device),
        "csdr": CSDR_METHOD.format(importlib.metadata.version("museval")) if compute_csdr else None,
        "usdr": USDR_METHOD,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return EvalReport(scores, tuple(separator.stems), settings)


def _track_line(index: int, scores: TrackScores) -> str:
    def average(values: dict[str, float]) -> str:
        return f"{_with_average(dict(values))['avg']:.2f} dB" if values else "-"

    return f"{index}: {scores.name}: uSDR {average(scores.usdr)}, cSDR {average(scores.csdr)}"


def write_report(report: EvalReport, path: Path) -> None:
    """Write the report as JSON atomically: a crash never leaves a truncated file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda temp: temp.write_text(text))
