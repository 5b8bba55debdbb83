"""Demucs model files: the ``.th`` package Demucs saves, and the safetensors Demucs 4.1 publishes.

Both hold one network: its class, its constructor arguments and its weights (float16 in the
published files). tests/fixtures/htdemucs/package/ holds one of each, made by upstream's code.

- **``.th``** (``demucs.states.serialize_model`` + ``torch.save``): a pickle of ``{"klass": the
  class, "args": [], "kwargs": {...}, "state": {name: tensor}, "training_args": {...}, "metrics":
  (...)}``; ``kwargs["segment"]`` is a ``fractions.Fraction``. Demucs unpickles it with code
  (``weights_only=False``). Here it goes through torch's weights-only unpickler, which is given two
  extra names and nothing else: ``fractions.Fraction`` (a number) and the dotted names of Demucs's
  model classes, each bound to an inert marker of ours (:data:`_MARKERS`), so the file can say which
  class it is without any demucs code being imported or run. Anything else it names is refused.
- **safetensors** (Hugging Face ``adefossez/HTDemucs*``, read by ``demucs.hf``): the state as tensors;
  metadata ``klass`` (dotted name), ``args`` and ``kwargs`` as JSON, a Fraction written
  ``{"_type": "fraction", "numerator": N, "denominator": D}``. A ``structure`` key means a quantised
  (DiffQ) state, which stemsplit does not run.

A ``.th`` is turned into exactly that metadata (:func:`package_to_file`), so both go one way from
there: :func:`demucs_info` reads it without torch, as :mod:`stemsplit.weights.metadata` reads
stemsplit's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, TypeGuard

from .errors import CheckpointError

__all__ = ["DEMUCS_NETWORKS", "demucs_info_fields", "is_demucs_metadata", "load_markers", "package_to_file"]

# Demucs model classes stemsplit builds, by the dotted name a file gives: the family that runs it.
DEMUCS_NETWORKS = {"demucs.htdemucs.HTDemucs": "htdemucs"}
# Demucs's other model classes (v1-v3): named in a refusal, never built.
_OTHER_CLASSES = ("demucs.hdemucs.HDemucs", "demucs.demucs.Demucs", "demucs.tasnet.ConvTasNet")


QUANTIZED = "a quantized (DiffQ) Demucs model; stemsplit runs unquantized ones only"


class _Marker:
    """Stands for a Demucs class inside an unpickled package: only its dotted ``name``."""

    name = ""


def _marker(name: str) -> type[_Marker]:
    return type(name.rsplit(".", 1)[1], (_Marker,), {"name": name})


_MARKERS = {name: _marker(name) for name in (*DEMUCS_NETWORKS, *_OTHER_CLASSES)}


def load_markers() -> list[Any]:
    """What the weights-only unpickler may take from a ``.th`` besides tensors and containers."""
    return [Fraction, *((marker, name) for name, marker in _MARKERS.items())]


def _is_package(obj: object) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(obj, Mapping) and {"klass", "kwargs", "state"} <= set(obj)


def package_to_file(obj: object, label: str) -> tuple[Mapping[str, Any], dict[str, str]] | None:
    """A ``.th`` package as (state dict, Demucs 4.1 metadata); None when ``obj`` is no package."""
    if not _is_package(obj):
        return None
    klass = obj["klass"]
    if not (isinstance(klass, type) and issubclass(klass, _Marker)):
        raise CheckpointError(f"{label}: a Demucs package whose klass is {klass!r}, not a model class")
    state = obj["state"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{label}: a Demucs package whose state is not a dict of tensors")
    if state.get("__quantized"):
        raise CheckpointError(f"{label}: {QUANTIZED}")
    metadata = {
        "klass": klass.name,
        "args": json.dumps(_encoded(list(obj.get("args") or []))),
        "kwargs": json.dumps(_encoded(obj["kwargs"])),
    }
    return state, metadata


def _encoded(value: Any) -> Any:
    """Demucs 4.1's JSON for constructor arguments (``demucs.hf._decode_json`` reverses it)."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, Mapping):
        return {str(k): _encoded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encoded(v) for v in value]
    return value


def _decoded(value: Any) -> Any:
    """The JSON above back to plain values; a Fraction becomes its text ``"N/D"`` (exact, JSON-safe)."""
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            return f"{value['numerator']}/{value['denominator']}"
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def is_demucs_metadata(metadata: Mapping[str, str]) -> bool:
    return "klass" in metadata and "kwargs" in metadata


def demucs_info_fields(metadata: Mapping[str, str], label: str) -> dict[str, Any]:
    """``CheckpointInfo`` fields for a Demucs file: family, upstream kwargs (as ``config``), stems, rate.

    One-line :class:`CheckpointError` for another Demucs model class, positional arguments, a
    quantised state, or kwargs that do not name the sources.
    """
    klass = metadata["klass"]
    if klass not in DEMUCS_NETWORKS:
        short = klass.rsplit(".", 1)[-1]
        raise CheckpointError(
            f"{label}: a Demucs {short} model ({klass}); stemsplit runs Demucs v4's HTDemucs "
            "(htdemucs, htdemucs_ft, htdemucs_6s) only"
        )
    if "structure" in metadata:
        raise CheckpointError(f"{label}: {QUANTIZED}")
    try:
        args = json.loads(metadata.get("args") or "[]")
        kwargs = _decoded(json.loads(metadata["kwargs"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{label}: Demucs metadata args/kwargs are not valid JSON ({exc})") from None
    if args:
        raise CheckpointError(f"{label}: a Demucs model built with positional arguments ({args!r})")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{label}: Demucs metadata kwargs is not a JSON object")
    sources = kwargs.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise CheckpointError(f"{label}: Demucs kwargs do not name the sources: {sources!r}")
    rate = kwargs.get("samplerate", 44100)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise CheckpointError(f"{label}: Demucs kwargs samplerate {rate!r} is not a positive whole number")
    return {
        "architecture": DEMUCS_NETWORKS[klass],
        "config": kwargs,  # upstream's names and values: model.htdemucs.config_from_kwargs reads them
        "stems": tuple(sources),
        "sample_rate": rate,
        "normalization": "meanstd",  # demucs.api/separate normalise the song by its mono mix's mean and std
        "task": "music",
        "upstream": "demucs",
    }
