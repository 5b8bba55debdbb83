"""The network a run builds: the family's preset (or ``--light``) with ``--model-config``'s fields, every
problem with that TOML file a one-line :class:`TrainError` naming the file and the field."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..card import MUSIC_STEMS
from ..model import FamilyError, config_problem, family, make_config
from ..model.ts_bsmamba2 import ARCHITECTURE as TS_BSMAMBA2
from .config import TrainConfig
from .errors import TrainError

__all__ = ["load_model_config", "model_config_for"]


def load_model_config(
    path: Path | None,
    arch: str = TS_BSMAMBA2,
    preset: str | None = None,
    stems: tuple[str, ...] = MUSIC_STEMS,
) -> Any:
    """The family's preset with fields overridden by a TOML file of its config names (e.g. TSBSMamba2Config).

    Every problem with the file -- unreadable, not TOML, an unknown field, a value
    of the wrong type or one the network cannot be built with -- is a one-line
    :class:`TrainError` naming the file and the field.
    """
    try:
        config = make_config(arch, preset, {}, stems)
    except FamilyError as exc:
        raise TrainError(str(exc)) from None
    if path is None:
        return config
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        overrides = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainError(f"{path}: cannot read model config ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainError(f"{path}: not a valid TOML model config ({exc})") from None
    names = family(arch).field_names()
    for key, value in overrides.items():
        if key not in names:
            raise TrainError(f"{path}: unknown model config field {key!r} (known: {', '.join(names)})")
        expected = type(getattr(config, key))
        shown = json.dumps(value) if isinstance(value, str | bool | float) else type(value).__name__
        if expected is str and not isinstance(value, str):
            raise TrainError(f"{path}: {key} must be a name in quotes, not {shown}")
        if expected is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise TrainError(f"{path}: {key} must be a whole number, not {shown}")
        if expected is int and value < 1:
            raise TrainError(f"{path}: {key} must be at least 1, not {value}")
    stem_field = family(arch).stem_field
    if stem_field and overrides.get(stem_field, len(stems)) != len(stems):
        raise TrainError(
            f"{path}: {stem_field} = {overrides[stem_field]}, but --stems names {len(stems)} stems "
            f"(leave {stem_field} out: --stems sets it)"
        )
    for hop, size in (("stride", "win"), ("hop", "n_fft")):  # the STFT fields of the families (when both are)
        if (
            hop in names
            and size in names
            and overrides.get(hop, getattr(config, hop)) >= overrides.get(size, getattr(config, size))
        ):
            raise TrainError(f"{path}: {hop} must be smaller than {size} (the STFT could not be inverted)")

    def problem(fields: dict[str, Any]) -> str | None:
        try:
            return config_problem(arch, replace(config, **fields), stems)
        except FamilyError as exc:
            return str(exc)

    if problem(overrides) is not None:
        # Name the field(s) to blame: those that fail on their own, else all of them together.
        alone = [key for key in overrides if problem({key: overrides[key]})]
        blamed = ", ".join(f"{key} = {overrides[key]}" for key in alone or overrides)
        raise TrainError(f"{path}: the network cannot be built with {blamed} ({problem(overrides)})")
    return replace(config, **overrides)


def model_config_for(config: TrainConfig) -> Any:
    """The family config a new run builds: the preset (or --light), with --model-config's fields."""
    preset = config.preset or ("l-ts" if config.light and config.arch == TS_BSMAMBA2 else None)
    if config.light and config.arch != TS_BSMAMBA2:
        raise TrainError(f"--light is TS-BSMamba2's small preset; {config.arch} has presets: --preset")
    return load_model_config(config.model_config, config.arch, preset, config.model_stems)
