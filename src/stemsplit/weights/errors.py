"""Every error a user can get from loading weights; each message is one line."""

from __future__ import annotations

from ..errors import StemsplitError

__all__ = [
    "CacheError",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "RegistryError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "WeightsError",
]


class WeightsError(StemsplitError):
    """Base of every error a user can get from loading weights; the message is one line."""


class RegistryError(WeightsError):
    """The registry file is not valid TOML or has a bad or missing field (message: ``file:line: ...``)."""


class UnknownModelError(WeightsError):
    """No registry model, file or URL by that name. ``names_only``: the message for commands that take
    registry names only (``stemsplit models``), without the hint that a file or URL works too."""

    def __init__(self, message: str, names_only: str | None = None) -> None:
        super().__init__(message)
        self.names_only = names_only or message


class DownloadError(WeightsError):
    """The network transfer failed (after retries)."""


class OfflineError(WeightsError):
    """Offline mode is on and the model is not in the cache."""


class ChecksumError(WeightsError):
    """A file's sha256 (or size) differs from the registry or from the hash recorded on first use."""


class UnsafeCheckpointError(WeightsError):
    """A pickled checkpoint needs arbitrary code to load; it was refused and nothing in it ran."""


class CheckpointError(WeightsError):
    """A checkpoint is unreadable, not a model stemsplit knows, or differs from its registry architecture."""


class CacheError(WeightsError):
    """The cache folder is unusable (a file, not creatable) or cannot be written when it must be."""
