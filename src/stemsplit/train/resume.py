"""``last.pt``, the checkpoint a run resumes from: what it holds, reading it back safely, and which
changes of the recipe a resumed run refuses.

``last.pt`` holds only tensors, numbers, strings and plain containers (the config as JSON text, the
random states as tensors), so ``--resume`` reads it with ``torch.load(weights_only=True)``: a planted
``last.pt`` that needs pickle code is refused before any of it runs. ``--resume`` also refuses a
changed recipe (see :data:`~stemsplit.train.config.RECIPE_FIELDS`) unless ``override`` is set, and
always another architecture. A write into the run folder that fails says how to go on with ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from ..files import write_failure
from ..model.ts_bsmamba2 import ARCHITECTURE as TS_BSMAMBA2
from ..weights import WeightsError, torch_load_safely
from .config import TrainConfig, flag_name
from .errors import TrainError

__all__ = [
    "CHECKPOINT_FORMAT",
    "as_flag",
    "check_resumable",
    "load_checkpoint",
    "recipe_changes",
    "rng_state",
    "saved_recipe",
    "set_rng_state",
    "writing_run_files",
]

CHECKPOINT_FORMAT = "stemsplit-train-2"  # last.pt layout; 2: weights-only loadable (JSON config, RNG tensors)

# Config fields saved in last.pt under an older name -> today's.
RENAMED = {"seconds": "crop_seconds"}


def rng_state() -> dict[str, Any]:
    """The global random states as tensors and numbers, which ``torch.load(weights_only=True)`` reads."""
    version, words, gauss = random.getstate()
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # (legacy=True, the default: the MT19937 tuple)
    kind, keys, position, has_gauss, cached = legacy
    state = {
        "python": torch.tensor(words, dtype=torch.int64),  # 625 32-bit words
        "python_version": version,
        "python_gauss": gauss,  # None or a float
        "numpy": torch.from_numpy(keys.astype(np.int64)),  # 624 32-bit words
        "numpy_kind": kind,
        "numpy_position": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """The global random states back as :func:`rng_state` saved them."""
    words = tuple(int(w) for w in state["python"].tolist())
    random.setstate((state["python_version"], words, state["python_gauss"]))
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(
        (
            state["numpy_kind"],
            keys,
            state["numpy_position"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def as_flag(name: str, value: Any) -> str:
    """How the CLI spells a config field and its value: ``--lr 0.001``."""
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    elif value is None:
        value = "(unset)"
    return f"{flag_name(name)} {value}"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``last.pt``, weights-only (no pickle code runs), checked to be one of ours; or TrainError."""
    if not path.is_file():
        raise TrainError(f"--resume: no checkpoint at {path}")
    try:
        state = torch_load_safely(path)
    except WeightsError as exc:
        raise TrainError(f"--resume: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(
            f"--resume: {path}: not a checkpoint of this version of stemsplit train "
            f"(no format {CHECKPOINT_FORMAT!r}); start a new run in another --out"
        )
    try:
        state["config"] = json.loads(state["config"])
        state["model_config"] = json.loads(state["model_config"])
        for key in ("config", "model_config"):
            if not isinstance(state[key], dict):
                raise ValueError(f"{key} is not a table")
        for key in ("epoch", "step", "global_step"):
            if type(state[key]) is not int or state[key] < 0:
                raise ValueError(f"{key} is not a count")
        batch_size, lr = state["config"].get("batch_size", 1), state["config"].get("lr", 1.0)
        if type(batch_size) is not int or batch_size < 1 or type(lr) not in (int, float):
            raise ValueError("config batch_size or lr is not a number")
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainError(f"--resume: {path}: damaged checkpoint ({exc})") from None
    return state


def saved_recipe(config: TrainConfig, saved: dict[str, Any]) -> dict[str, Any]:
    """The saved run's config under today's names; a field saved before it existed has its default
    (the TS-BSMamba2 recipe), as the run had."""
    defaults = json.loads(json.dumps(type(config)(musdb=Path()).to_json()))
    return {**defaults, **{RENAMED.get(k, k): v for k, v in saved.items()}}


def recipe_changes(config: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """``--lr 0.001 (was 0.0005)`` for every RECIPE_FIELDS value that differs from the saved run."""
    now = json.loads(json.dumps(config.to_json()))  # tuples -> lists, as the saved side
    changes = []
    for name in config.recipe_fields:
        new, old = now.get(name), saved.get(name)
        # A folder or checkpoint file: the same path, however it is spelled.
        paths = ("musdb", "libri2mix", "unlabeled")
        is_path = (
            isinstance(old, str)
            and isinstance(new, str)
            and (name in paths or (name == "model" and Path(old).is_file()))
        )
        same = Path(new).resolve() == Path(old).resolve() if is_path and old and new else new == old
        if not same:
            was = as_flag(name, old).split(" ", 1)[1]
            changes.append(f"{as_flag(name, new)} (was {was})")
    return changes


def check_resumable(
    config: TrainConfig, state: dict[str, Any], architecture: dict[str, Any], path: Path
) -> tuple[dict[str, Any], list[str]]:
    """The saved recipe (:func:`saved_recipe`) of ``state``, read from ``path``, and the run's changes to
    it (:func:`recipe_changes`); TrainError for changes without ``override``, or when the network's
    ``architecture`` (its family config, with ``architecture``: the family) is not the saved one."""
    state["model_config"].setdefault("architecture", TS_BSMAMBA2)  # runs saved before families
    saved = saved_recipe(config, state["config"])
    changes = recipe_changes(config, saved)
    if changes and not config.override:
        raise TrainError(
            f"--resume: {path} was trained with another recipe: {', '.join(changes)}; "
            "resume with the run's own values, or add --override to continue with the new ones"
        )
    if state["model_config"] != architecture:
        differ = ", ".join(
            f"{key} {architecture.get(key)} (was {value})"
            for key, value in state["model_config"].items()
            if architecture.get(key) != value
        )
        raise TrainError(
            f"--resume: {path} holds another architecture ({differ}); --arch, --preset, "
            "--light, --model-config, --target and the number of --stems must be those of the run"
        )
    return saved, changes


@contextlib.contextmanager
def writing_run_files(out: Path, last_path: Path) -> Iterator[None]:
    """A failed write into the run folder ``out`` (a full disk: torch.save and safetensors raise
    RuntimeErrors for it) as one TrainError in the words of every failed write; what was written
    before stays (each file is replaced whole or not at all), so the run can go on with --resume
    (from ``last_path``, when it is there)."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        then = (
            f"the last checkpoint is kept: make room and continue with --resume -o {out}"
            if last_path.is_file()
            else "make room and run the same command again"
        )
        raise TrainError(
            f"{out}: writing the run's files failed: {write_failure(exc, out)}; {then}"
        ) from None
