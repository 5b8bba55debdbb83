"""The error of a training run that cannot start or continue; torch-free, so that the CLI's checks
(and anything else that only names it) import fast."""

from __future__ import annotations

from ..errors import StemsplitError

__all__ = ["TrainError"]


class TrainError(StemsplitError):
    """A training run cannot start or continue; the message says why."""
