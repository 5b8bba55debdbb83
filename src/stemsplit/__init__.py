"""stemsplit: split songs into stems (drums, bass, other, vocals, ...) with band-split networks.

The public API::

    import stemsplit

    separator = stemsplit.Separator("demo")           # a registry name, a checkpoint file or a URL
    result = separator.separate_file("song.wav", "stems/")
    stems = separator.separate(audio, sample_rate)     # arrays in, {stem: array} out
    both = stemsplit.Ensemble("htdemucs_ft")           # several models' stems, averaged
    stemsplit.list_models()                            # the registry's names

``Separator``, ``Ensemble``, ``load_model``, ``list_models``, ``StemsplitError`` (the base of every
error a user can cause; its subclasses live beside the code that raises them) and ``__version__``. Importing
``stemsplit`` does not import torch: each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = [
    "Ensemble",
    "Separator",
    "StemsplitError",
    "UsageError",
    "__version__",
    "list_models",
    "load_model",
]

# name -> the module that defines it, imported when the name is first asked for
_HOMES = {
    "Separator": "stemsplit.engine.separator",
    "Ensemble": "stemsplit.engine.ensemble",
    "load_model": "stemsplit.weights",
    "StemsplitError": "stemsplit.errors",
    "UsageError": "stemsplit.errors",
}

if TYPE_CHECKING:
    from .engine.ensemble import Ensemble
    from .engine.separator import Separator
    from .errors import StemsplitError, UsageError
    from .weights import load_model


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'stemsplit' has no attribute {name!r}")


def list_models() -> list[str]:
    """The registry's model names, then its named ensembles (``stemsplit models`` shows them in full).

    Raises :class:`stemsplit.weights.RegistryError` when the registry file is unreadable.
    """
    from .weights import load_registry

    registry = load_registry()
    return [*registry.models, *registry.ensembles]
