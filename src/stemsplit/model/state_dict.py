"""State dicts of any family: unwrap what trainers save, and say exactly where one does not fit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import overload

from torch import Tensor, nn

from ..card import card_of

__all__ = ["StateDictMismatch", "check_state_dict", "summarise", "unwrap_state_dict"]


class StateDictMismatch(ValueError):
    """A state dict does not fit the model; the message lists what differs."""


@overload
def unwrap_state_dict(obj: Mapping[str, Tensor]) -> Mapping[str, Tensor]: ...
@overload
def unwrap_state_dict(obj: Mapping[str, object]) -> Mapping[str, object]: ...


def unwrap_state_dict(obj: Mapping[str, object]) -> Mapping[str, object]:
    """Accept a plain state dict, or one as training tools save it.

    Unwraps ``state_dict`` / ``state`` wrappers (Lightning, some trainers) and
    strips the ``module.`` prefix that ``DataParallel``/DDP put on every key.
    A wrapper may hold more than tensors: what is unwrapped from one is the caller's to check.
    """
    for wrapper in ("state_dict", "state"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            return unwrap_state_dict(inner)
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Raise :class:`StateDictMismatch` listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} (model: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {summarise(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} with wrong shape: {summarise(misshaped)}")
    if problems:
        raise StateDictMismatch(
            f"state dict does not fit {card_of(model).architecture} {model.config}: " + "; ".join(problems)
        )
