"""What a checkpoint says about itself, read without torch (so the CLI can check ``--stems`` up front).

**Metadata**: the one schema :func:`save_checkpoint` writes (``stemsplit train``
exports with it) and :func:`read_info` reads. Safetensors metadata is strings:

- ``architecture``: the family (:mod:`stemsplit.model.families`); absent in
  files older than families, which are TS-BSMamba2
- ``config``: JSON of the family's config; absent: inferred from the weights
  (TS-BSMamba2 only, whose reference layout allows it)
- ``stems``: comma-separated, in output order; absent: drums, bass, other,
  vocals for 4 outputs, else source0, source1, ...
- ``sample_rate``: Hz; absent: the config's ``sr``, else 44100
- ``normalization``: ``none`` (default) or ``meanstd``
- ``stride``: the STFT hop of a TS-BSMamba2 without ``config`` (default 512)
- ``task``: what the network separates (:data:`~stemsplit.card.TASKS`), so that a command can refuse
  another task's model before torch loads; absent in older files (the network's card then decides)

Anything else (``epoch``, ``source``, ``source_sha256``, ...) is information kept in the file.

A Demucs file (metadata ``klass``, ``args``, ``kwargs``: :mod:`stemsplit.weights.demucs`) is read
by Demucs's rules instead: its ``config`` is then upstream's constructor kwargs (``upstream = "demucs"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from ..card import NORMALIZATIONS, TASKS, stem_name_problem
from .demucs import demucs_info_fields, is_demucs_metadata
from .errors import CheckpointError

__all__ = ["LEGACY_ARCHITECTURE", "CheckpointInfo", "file_info", "file_stems", "read_info", "read_metadata"]

# What a file without ``architecture`` holds: every checkpoint before model families was one.
LEGACY_ARCHITECTURE = "ts-bsmamba2"


def _where(path: Path, label: str | None) -> str:
    """``label: path``, or just the path when the label is only its name (local files)."""
    return str(path) if label in (None, path.name, str(path)) else f"{label}: {path}"


def read_metadata(path: Path, label: str) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{_where(path, label)}: not a readable safetensors file ({exc})") from None


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says about the network in it (see the module docstring)."""

    architecture: str = LEGACY_ARCHITECTURE
    config: Mapping[str, Any] | None = None  # the family config's fields; None: infer from the weights
    stems: tuple[str, ...] | None = None
    sample_rate: int | None = None
    normalization: str = "none"
    stride: int | None = None  # legacy TS-BSMamba2 files without config
    task: str | None = None  # None: not said (older files)
    upstream: str | None = None  # "demucs": config holds Demucs's constructor kwargs, not the family's fields
    extra: Mapping[str, str] = field(default_factory=dict)


_SCHEMA = ("architecture", "config", "stems", "sample_rate", "normalization", "stride", "task")


def read_info(metadata: Mapping[str, str], label: str) -> CheckpointInfo:
    """Parse and check the metadata of a checkpoint; one-line :class:`CheckpointError` naming ``label``."""

    def whole_number(key: str) -> int | None:
        value = metadata.get(key, "").strip()
        if not value:
            return None
        if not value.isdigit() or int(value) == 0:
            raise CheckpointError(f"{label}: metadata {key}={value!r} is not a positive whole number")
        return int(value)

    if is_demucs_metadata(metadata):
        fields = demucs_info_fields(metadata, label)
        problem = next(filter(None, map(stem_name_problem, fields["stems"])), None)
        if problem:
            raise CheckpointError(f"{label}: Demucs sources: {problem}")
        extra = {k: v for k, v in metadata.items() if k not in ("args", "kwargs")}
        return CheckpointInfo(**fields, extra=extra)
    config = None
    if metadata.get("config", "").strip():
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError:
            config = None
        if not isinstance(config, dict):
            raise CheckpointError(f"{label}: metadata config is not a JSON object")
    stems = None
    if metadata.get("stems", "").strip():
        stems = tuple(s.strip() for s in metadata["stems"].split(","))
        if not all(stems) or len(set(stems)) != len(stems):
            raise CheckpointError(f"{label}: metadata stems={metadata['stems']!r} are not distinct names")
        problem = next(filter(None, map(stem_name_problem, stems)), None)  # each becomes a file name
        if problem:
            raise CheckpointError(f"{label}: metadata stems: {problem}")
    normalization = metadata.get("normalization", "").strip() or "none"
    if normalization not in NORMALIZATIONS:
        raise CheckpointError(f"{label}: metadata normalization={normalization!r} is not none or meanstd")
    task = metadata.get("task", "").strip() or None
    if task is not None and task not in TASKS:
        raise CheckpointError(f"{label}: metadata task={task!r} is not one of {', '.join(TASKS)}")
    return CheckpointInfo(
        architecture=metadata.get("architecture", "").strip() or LEGACY_ARCHITECTURE,
        config=config,
        stems=stems,
        sample_rate=whole_number("sample_rate"),
        normalization=normalization,
        stride=whole_number("stride"),
        task=task,
        extra={k: v for k, v in metadata.items() if k not in _SCHEMA},
    )


def file_info(path: str | Path) -> CheckpointInfo | None:
    """What a checkpoint file's metadata says, without torch; None when it cannot be read.

    For usage checks before anything loads (``stemsplit --stems x --model file``, a speaker model
    given to ``separate``): what the metadata leaves out (stems only known from the weights, the task
    of an older file), or a broken file, is left to the loader to judge.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    try:
        return read_info(read_metadata(path, path.name), path.name)
    except CheckpointError:
        return None


def file_stems(path: str | Path) -> tuple[str, ...] | None:
    """The stems a checkpoint file's metadata names (see :func:`file_info`); None when it names none."""
    info = file_info(path)
    return info.stems if info else None
