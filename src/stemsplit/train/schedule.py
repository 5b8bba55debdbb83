"""The learning-rate schedules of the recipes, after each epoch's validation score: ``plateau``
(TS-BSMamba2), ``step`` (BSRNN), ``constant`` (U-Mamba-Net); and the count early stopping reads."""

from __future__ import annotations

import math

import torch

from .config import LR_SCHEDULES, either
from .errors import TrainError

__all__ = ["LrSchedule"]


class LrSchedule:
    """The learning rate after each epoch's validation score, and whether to stop early.

    ``plateau`` (TS-BSMamba2): multiply by ``factor`` after ``patience`` epochs
    without a new best score; ``step`` (BSRNN): multiply by ``factor`` every
    ``every`` epochs; ``constant`` (U-Mamba-Net, whose paper names no schedule):
    never. Either way ``since_best`` counts the epochs since the best score, for
    early stopping.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        mode: str = "plateau",
        factor: float = 0.8,
        patience: int = 2,
        every: int = 2,
    ) -> None:
        if mode not in LR_SCHEDULES:
            raise TrainError(
                f"learning-rate schedule must be {either(LR_SCHEDULES)}, not {mode!r}", "--lr-schedule"
            )
        self.optimizer, self.mode, self.factor, self.patience, self.every = (
            optimizer,
            mode,
            factor,
            patience,
            every,
        )
        self.best = -math.inf
        self.bad_epochs = 0  # plateau: epochs without a new best since the last decay
        self.since_best = 0
        self.epochs = 0

    def step(self, score: float) -> bool:
        """Record an epoch's validation score (higher is better); True if it is a new best."""
        self.epochs += 1
        improved = score > self.best
        if improved:
            self.best, self.bad_epochs, self.since_best = score, 0, 0
        else:
            self.bad_epochs += 1
            self.since_best += 1
        if self.mode == "plateau" and self.bad_epochs >= self.patience:
            self._decay()
            self.bad_epochs = 0
        elif self.mode == "step" and self.epochs % self.every == 0:
            self._decay()
        return improved

    def _decay(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= self.factor

    def state_dict(self) -> dict[str, float]:
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "since_best": self.since_best,
            "epochs": self.epochs,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        # Runs saved before early stopping have only best and bad_epochs.
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
        self.since_best, self.epochs = int(state.get("since_best", 0)), int(state.get("epochs", 0))
