"""What a training run tells as it goes, on rank 0: during an epoch a tqdm bar when stderr is a
terminal, otherwise a plain line now and then (a log file, a job scheduler); after each epoch its line,
and its record in ``log.jsonl`` (one JSON object a line).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PROGRESS_LINE_SECONDS", "EpochProgress", "append_record", "epoch_line", "score_field"]


PROGRESS_LINE_SECONDS = 60.0  # without a terminal, a progress line this often


class EpochProgress:
    """One epoch's progress: a tqdm bar on rank 0 (``main``) when stderr is a terminal, a line every
    :data:`PROGRESS_LINE_SECONDS` there otherwise, nothing on the other ranks.

    ``epoch`` counts from 1 of ``epochs``; the epoch starts at ``step`` of ``steps``, at
    ``time.perf_counter()`` ``started``, with batches of ``batch_size`` samples (all ranks together).
    """

    def __init__(
        self,
        log: Callable[[str], None],
        *,
        main: bool,
        epoch: int,
        epochs: int,
        step: int,
        steps: int,
        batch_size: int,
        started: float,
    ) -> None:
        self.log, self.main, self.epoch, self.epochs = log, main, epoch, epochs
        self.steps, self.batch_size, self.started = steps, batch_size, started
        self.bar = self._progress_bar(step)
        self.last_line = time.monotonic()

    def _progress_bar(self, step: int) -> Any:
        """A tqdm bar on rank 0 when stderr is a terminal; None otherwise (progress lines instead)."""
        if not self.main:
            return None
        from tqdm import tqdm

        bar = tqdm(
            disable=None,  # None: disabled when stderr is not a terminal
            total=self.steps,
            initial=step,
            desc=f"epoch {self.epoch}/{self.epochs}",
            unit="step",
        )
        return None if bar.disable else bar

    def update(self, step: int, losses: list[float], lr: float) -> None:
        """After each training step: ``step`` of the epoch done, ``losses`` of its steps so far."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            self.bar.update(1)
        elif self.main and time.monotonic() - self.last_line > PROGRESS_LINE_SECONDS:
            # No terminal (a log file, a job scheduler): a plain line now and then instead.
            self.last_line = time.monotonic()
            rate = len(losses) * self.batch_size / (time.perf_counter() - self.started)
            self.log(
                f"epoch {self.epoch}/{self.epochs}: step {step}/{self.steps}, "
                f"loss {np.mean(losses[-50:]):.4f}, {rate:.1f} samples/s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def score_field(score_name: str) -> str:
    """The validation score's field in log.jsonl: ``uSDR`` -> ``valid_usdr``, ``SI-SNRi`` ->
    ``valid_si_snri``."""
    return "valid_" + score_name.lower().replace("-", "_")


def epoch_line(record: dict[str, Any], epochs: int, score_name: str) -> str:
    """The line after each epoch, from its log.jsonl ``record`` (no score there: no validation set)."""
    score = record[score_field(score_name)]
    best = " (best)" if record["best"] else ""
    valid = f"valid {score_name} {score:.2f} dB{best}" if score is not None else "no validation set"
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, "
        f"{valid}, lr {record['lr']:.2e}, {record['samples_per_second']:.1f} samples/s"
    )


def append_record(path: Path, record: dict[str, Any]) -> None:
    """``record`` as one more line of ``path`` (log.jsonl)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
