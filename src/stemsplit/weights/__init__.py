"""Pretrained weights: the registry, verified downloads, the cache and safe loading.

Users must be able to trust what ``stemsplit`` downloads and runs, so every path
from a name to a model goes through the same few steps:

1. **Registry** (``weights.toml``, shipped in the package; ``STEMSPLIT_REGISTRY``
   replaces it): what to fetch, its hash, architecture, stems and normalisation.
2. **Download** into ``$STEMSPLIT_CACHE`` (default ``~/.cache/stemsplit``): a
   ``.part`` file resumed with HTTP Range requests, size- and sha256-checked,
   then atomically renamed, all under a per-model file lock so concurrent
   processes never see or write a half file. Hugging Face sources go through
   ``huggingface_hub`` and its own cache. ``STEMSPLIT_OFFLINE=1`` or
   ``HF_HUB_OFFLINE=1`` use the cache only.
3. **Hashes**: a registry ``sha256`` is always checked. Without one the hash of
   the first download is recorded next to it (trust on first use) once the file
   has parsed as a checkpoint (an HTML error page served as 200 is deleted, not
   pinned), and checked on every later use; ``stemsplit models verify``
   re-checks the whole cache. The safetensors conversion of a pickle is hashed
   and checked the same way. Errors about a cached file name it and say how to
   clear it.
4. **Safe loading**: safetensors directly; pickled checkpoints (``.ckpt``,
   ``.pt``, ``.pth``, Demucs's ``.th``) only with ``torch.load(weights_only=True)``, so a file
   that needs arbitrary pickle code is refused before anything runs. A
   downloaded pickle is converted once to safetensors in the cache.
5. **Architecture**: the registry entry or the checkpoint's metadata names a
   family (:mod:`stemsplit.model.families`) and its config; the weights are
   checked against that network and a mismatch lists the offending keys.

The package, one concern per module: ``registry`` (the schema, parsing;
no torch), ``cache`` (paths, locks, hashes; no torch), ``download`` (HTTP and
the Hub; no torch), ``checkpoint`` (safe reading, the metadata schema, the
network a file holds), ``load`` (the steps above in order) and ``errors``.
``progress=False`` prints nothing at all.
"""

import importlib
from typing import Any

from .cache import cache_dir, cached_path, downloaded_path, is_offline
from .errors import (
    CacheError,
    CheckpointError,
    ChecksumError,
    DownloadError,
    OfflineError,
    RegistryError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsError,
)
from .metadata import CheckpointInfo, file_info, file_stems, read_info
from .registry import (
    CHECKPOINT_SUFFIXES,
    ModelEntry,
    Registry,
    default_model_name,
    has_light_model,
    load_registry,
    registry_path,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CacheError",
    "CheckpointError",
    "CheckpointInfo",
    "ChecksumError",
    "DownloadError",
    "LoadedModel",
    "ModelEntry",
    "OfflineError",
    "Registry",
    "RegistryError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "VerifyResult",
    "WeightsError",
    "cache_dir",
    "cached_path",
    "default_model_name",
    "downloaded_path",
    "entry_config",
    "fetch",
    "file_info",
    "file_stems",
    "has_light_model",
    "is_offline",
    "load_model",
    "load_registry",
    "read_info",
    "registry_path",
    "save_checkpoint",
    "torch_load_safely",
    "verify",
]

# Loading needs torch, the registry does not: `stemsplit --stems x` is checked against the
# registry in a blink. These names import their module (and torch) on first use.
_NEED_TORCH = {
    "save_checkpoint": "checkpoint",
    "torch_load_safely": "checkpoint",
    "LoadedModel": "load",
    "VerifyResult": "load",
    "entry_config": "load",
    "fetch": "load",
    "load_model": "load",
    "verify": "load",
}


def __getattr__(name: str) -> Any:
    if name in _NEED_TORCH:
        return getattr(importlib.import_module(f".{_NEED_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
