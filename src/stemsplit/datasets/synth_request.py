"""What ``stemsplit synth`` and ``synth-speech`` accept: the request checks the two generators share,
made before anything is written (no torch, no numpy)."""

from __future__ import annotations

import math
from pathlib import Path

from ..files import creation_problem

__all__ = ["MAX_SYNTH_PER_SPLIT", "MAX_SYNTH_SECONDS", "MAX_SYNTH_WORKERS", "synth_request_problem"]

# What `synth` and `synth-speech` accept: beyond these a request cannot finish (the job list alone fills
# memory, or the processes do: a pool starts all its workers at once). Libri2Mix's largest split has
# 50,800 mixtures.
MAX_SYNTH_PER_SPLIT = 1_000_000
MAX_SYNTH_WORKERS = 64
# The longest song or mixture they make (MUSDB18's longest songs are about 10 minutes). A synth song
# takes about 9 MB of memory per second while it is made: 5.4 GB at this length, per worker.
MAX_SYNTH_SECONDS = 600.0


def synth_request_problem(
    out: Path,
    counts: dict[str, int],
    noun: str,
    seconds: float,
    sample_rate: int,
    seed: int,
    workers: int,
    resuming: bool = False,
) -> str | None:
    """What is wrong with a ``synth``/``synth-speech`` request (``counts``: items per split, ``noun``
    their name), in one line, or None: the checks the two generators share, before anything is written.
    ``resuming``: ``out`` holds this very request's unfinished dataset, which may be finished."""
    for label, count in counts.items():
        if count < 0:
            return f"the number of {label} {noun} must be 0 or more, not {count}"
        if count > MAX_SYNTH_PER_SPLIT:
            return f"the number of {label} {noun} must be at most {MAX_SYNTH_PER_SPLIT}, not {count}"
    if sum(counts.values()) == 0:
        return f"nothing to write: ask for at least one {noun.removesuffix('s')}"
    if not (seconds > 0 and math.isfinite(seconds)):
        return f"seconds must be positive, not {seconds}"
    if round(seconds * sample_rate) < 1:
        return f"seconds must be at least one sample ({1 / sample_rate:g} s), not {seconds}"
    if seconds > MAX_SYNTH_SECONDS:
        return (
            f"seconds must be at most {MAX_SYNTH_SECONDS:g} (one {noun.removesuffix('s')}), not {seconds:g}"
        )
    if seed < 0:
        return f"seed must be a non-negative integer, not {seed}"
    if not 1 <= workers <= MAX_SYNTH_WORKERS:
        return f"workers must be from 1 to {MAX_SYNTH_WORKERS}, not {workers}"
    if not resuming and out.exists() and (not out.is_dir() or any(out.iterdir())):
        return f"{out}: exists and is not an empty folder; choose a new one (nothing is overwritten)"
    return creation_problem(out)
