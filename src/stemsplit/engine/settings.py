"""The engine's settings and their checks, importable without torch.

A bad flag must be refused in well under a second, and importing torch alone
takes longer than that; so what can be checked without the model lives here,
and :mod:`stemsplit.separate` (the engine) re-exports it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Sequence

from ..audio.info import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE  # files and arrays are held to one range
from ..errors import StemsplitError

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "MAX_WINDOW_SECONDS",
    "MIN_SAMPLE_RATE",
    "RESIDUAL",
    "SeparationError",
    "check_sample_rate",
    "check_settings",
    "choose_stems",
    "parse_device",
    "shown",
    "task_mismatch",
]

# Accepted ranges of the engine's settings (beyond them a run cannot work or exhausts memory).
MAX_WINDOW_SECONDS = 60.0
MAX_BATCH_SIZE = 256
MAX_SHIFTS = 20  # Demucs users go to 10; each shift is one more run of the song
MAX_CHANNELS = 8  # more "channels" than this in separate(array) is a transposed [samples, channels] array
# The extra output of speaker separation: the mixture minus every talker (noise, music, the rest).
RESIDUAL = "residual"


class SeparationError(StemsplitError):
    """A song cannot be separated as asked. ``option`` names the setting at fault, if one is."""


def check_sample_rate(sample_rate: object) -> int:
    """A sample rate as a whole number of Hz from :data:`MIN_SAMPLE_RATE` to :data:`MAX_SAMPLE_RATE`.

    Anything else (a string, a bool, a fraction, NaN) raises :class:`SeparationError`.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise SeparationError(f"sample rate must be a number of Hz, not {shown(sample_rate)}")
    try:
        rate = float(sample_rate)
    except OverflowError:  # an int beyond float's range
        rate = math.inf
    if not (math.isfinite(rate) and rate == int(rate) and MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        raise SeparationError(
            f"sample rate must be a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}, "
            f"not {shown(sample_rate)}"
        )
    return int(rate)


def shown(value: object) -> str:
    """``value`` for a message: its repr, cut short (an int of 400 digits is not read by anyone)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def parse_device(device: object) -> tuple[str, int | None]:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> (kind, index); anything else is an error.

    Only the spelling is checked here; whether the device exists is the engine's check.
    """
    text = str(device).strip().lower()
    if text == "auto":
        return "auto", None
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if match is None or (match[1] == "cpu" and match[2] not in (None, "0")):
        raise SeparationError(f"must be auto, cpu, cuda or cuda:N, not {str(device)!r}", "device")
    return match[1], None if match[2] is None else int(match[2])


def choose_stems(
    model_stems: Sequence[str],
    stems: Iterable[str] | None = None,
    two_stems: str | None = None,
    owner: str = "this model",
) -> list[str]:
    """The stems to write: ``stems`` (default: all the model's), or with ``two_stems=X`` the pair
    ``[X, no_X]`` (no_X is the mixture minus X). Unknown names raise :class:`SeparationError`
    (saying they are not stems of ``owner``: "this model", "this ensemble")."""
    if two_stems is not None:
        if two_stems not in model_stems:
            raise SeparationError(
                f"{two_stems!r} is not a stem of {owner} ({', '.join(model_stems)})", "two_stems"
            )
        return [two_stems, f"no_{two_stems}"]
    wanted = list(stems) if stems else list(model_stems)
    unknown = [s for s in wanted if s not in model_stems]
    if unknown:
        known = ", ".join(model_stems)
        raise SeparationError(f"{unknown[0]!r} is not a stem of {owner} ({known})", "stems")
    if len(set(wanted)) != len(wanted):
        raise SeparationError(f"a stem is named twice in {', '.join(wanted)}", "stems")
    return wanted


def task_mismatch(name: str, task: str, stems: Sequence[str], wanted: str) -> str | None:
    """Why model ``name`` (separating ``task`` into ``stems``) cannot do ``wanted``; None if it can."""
    if task == wanted:
        return None
    return f"{name} separates {task} ({', '.join(stems)}), not {wanted}"


def _number(value: object, option: str) -> float:
    """``value`` as a float if it is a real number (not a bool, not a string); else SeparationError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SeparationError(f"must be a number of seconds, not {shown(value)}", option)
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


def check_settings(
    window: float | None,
    hop: float | None,
    batch_size: int | None,
    precision: str | None,
    stage: int | None,
    exact: bool = False,
    shifts: int = 1,
) -> None:
    """The engine's settings, checked before a model is loaded (:class:`SeparationError` naming the option).

    None means "the model card's" (window, hop, stage) or "chosen for the device". Types too:
    ``window="3"``, ``stage=True`` or ``exact="no"`` are refused, not taken for something else.
    """
    window = None if window is None else _number(window, "window")
    hop = None if hop is None else _number(hop, "hop")
    if window is not None and not (math.isfinite(window) and 0 < window <= MAX_WINDOW_SECONDS):
        raise SeparationError(
            f"must be more than 0 and at most {MAX_WINDOW_SECONDS:g} seconds, not {window:g}", "window"
        )
    if hop is not None and not (math.isfinite(hop) and 0 < hop <= (window or MAX_WINDOW_SECONDS)):
        raise SeparationError(
            f"must be more than 0 and at most the window ({window or MAX_WINDOW_SECONDS:g} s), not {hop:g}",
            "hop",
        )
    if batch_size is not None and not (
        isinstance(batch_size, numbers.Integral)
        and not isinstance(batch_size, bool)
        and 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise SeparationError(f"must be from 1 to {MAX_BATCH_SIZE}, not {shown(batch_size)}", "batch_size")
    if not (precision is None or (isinstance(precision, str) and precision in ("auto", "fp32", "bf16"))):
        raise SeparationError(f"must be auto, fp32 or bf16, not {shown(precision)}", "precision")
    if stage is not None and (isinstance(stage, bool) or stage not in (1, 2)):
        raise SeparationError(f"must be 1 or 2, not {shown(stage)}", "stage")
    if not isinstance(exact, bool):
        raise SeparationError(f"must be True or False, not {shown(exact)}", "exact")
    whole = isinstance(shifts, numbers.Integral) and not isinstance(shifts, bool)
    if not (whole and 1 <= shifts <= MAX_SHIFTS):
        raise SeparationError(f"must be a whole number from 1 to {MAX_SHIFTS}, not {shown(shifts)}", "shifts")
