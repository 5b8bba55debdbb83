"""Ensembles on the command line: the ``--model`` syntax, parsed and checked without torch.

``--model`` names one model (a registry name, a checkpoint file or an http(s) URL) or an
ensemble: several models, separated by commas, that separate each song together in one pass
and whose stems are averaged (the engine is :class:`stemsplit.engine.ensemble.Ensemble`)::

    --model a,b                             each stem is the average of a's and b's
    --model a:2,b:1                         weighted: each stem is (2 a + 1 b) / 3
    --model vocals=a,drums=b,bass=b,other=b each stem from the model named, alone
    --model a,b,vocals=a                    a and b averaged, but vocals from a alone

The rules:

- Every model named is a member of the ensemble and runs once per song, at its own window,
  hop and sample rate. Its weight (default 1) is a positive number after its last ``:``
  (``a:0.5``); the ``:`` of a URL's scheme or port is not a weight. A model is given a weight
  once: ``a:2,a:3`` (or ``a,a``) is an error.
- ``STEM=MODEL`` takes that stem from MODEL alone (MODEL must give it; a stem is chosen once;
  no weight there: it would mean nothing for one model).
- Every other stem is the weighted average of the members that give it: a stem only some
  members give is averaged over those (their weights renormalised). The ensemble's stems are
  all its members' stems, in the first member's order, then each next member's new ones.
- ``other`` is the exception to "the same name, the same thing": a 4-stem model's other holds
  the guitar and piano that htdemucs_6s gives apart, a vocals model's other (the mixture minus
  vocals) holds drums and bass too. So a member whose other is the rest of the song
  (:func:`stemsplit.card.other_is_the_rest`) gives the ensemble's other less the ensemble's
  stems that member lacks (:func:`rest_parts`): with ``htdemucs_6s,ts`` (equal weights),
  other = (6s.other + ts.other - guitar - piano) / 2, where guitar and piano are 6s' own. No
  instrument is then in two stems, and the stems sum to the average of the members' sums (the
  mixture, for members whose stems sum to it).
- A member left with no stem to give (each of its stems chosen from another member) is an
  error: it would run for nothing.
- A value that is an existing file is one model, commas and all; a model whose name has a
  comma cannot be part of an ensemble.
- The name of a registry ensemble (an ``[ensembles.NAME]`` table of ``weights.toml``, such as
  Demucs's ``htdemucs_ft``: four networks, each stem from its own) stands for its text. Its members
  must be registry models, so that everything about it is known before anything downloads.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..card import OTHER, stem_name_problem
from .settings import SeparationError

__all__ = ["EnsembleSpec", "describe_plan", "named_ensemble", "parse_models", "plan_stems", "rest_parts"]

# What may follow a model's last ':' as its weight (anything else there is part of the name).
_WEIGHT = re.compile(r"[0-9.eE+-]*")
# A URL with no path (``http://host:8000``): its ``:8000`` is a port, not a weight.
_BARE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/]*")


@dataclass(frozen=True)
class EnsembleSpec:
    """Members, their weights, and the stems taken from one member alone.

    models: each member as written (registry name, path or URL; a path is a Path once checked), in order
    of first mention.
    weights: one positive number per member.
    choice: stem -> index of the member it comes from alone (``STEM=MODEL``).
    """

    models: tuple[str | Path, ...]
    weights: tuple[float, ...]
    choice: Mapping[str, int] = field(default_factory=dict)


def parse_models(text: str) -> EnsembleSpec | None:
    """``--model``'s value -> the ensemble it describes, or None when it names one model as it is.

    A spec of one member (``a:2``, ``vocals=a``) comes back as one: that model alone, for the caller
    to run as such. A registry ensemble's name is read as its text (:func:`named_ensemble`).
    Problems raise :class:`SeparationError` for option ``model``, one line each.
    """
    named = named_ensemble(text)
    if named is not None:
        return named
    if os.path.isfile(text) or ("," not in text and "=" not in text and _weighted(text)[1] is None):
        return None
    models: list[str] = []
    weights: dict[int, float] = {}
    choice: dict[str, int] = {}

    def member(model: str) -> int:
        if model not in models:
            models.append(model)
        return models.index(model)

    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise SeparationError(f"an empty model in {text!r} (two commas, or one at an end)", "model")
        stem, model = _stem_choice(item)
        model, weight = _weighted(model)
        if not model:
            raise SeparationError(f"{item!r} names no model", "model")
        if stem is not None:
            if weight is not None:
                raise SeparationError(
                    f"{item}: a weight goes with a model's own item ({model}:{_number(weight)}), "
                    "not with the one stem taken from it",
                    "model",
                )
            if stem in choice:
                raise SeparationError(
                    f"{stem} is chosen twice ({stem}={models[choice[stem]]}, {item})", "model"
                )
            choice[stem] = member(model)
            continue
        index = member(model)
        if index in weights:
            raise SeparationError(f"{model} is named twice; give each model once (with its weight)", "model")
        weights[index] = 1.0 if weight is None else weight
    return EnsembleSpec(tuple(models), tuple(weights.get(i, 1.0) for i in range(len(models))), choice)


def named_ensemble(name: str) -> EnsembleSpec | None:
    """The ensemble a registry ``[ensembles.NAME]`` table describes; None when ``name`` is none (or a
    file). Its text is parsed as ``--model``'s, and each member must be a model of the registry."""
    from ..weights.errors import WeightsError
    from ..weights.registry import load_registry  # torch-free

    if os.path.exists(name):
        return None
    try:
        registry = load_registry()
    except WeightsError:
        return None  # a broken registry is reported by whatever reads a model from it
    entry = registry.ensembles.get(name)
    if entry is None:
        return None
    try:
        spec = parse_models(entry.models)
    except SeparationError as exc:
        raise SeparationError(f"{entry.where}: [ensembles.{name}] models: {exc.problem}", "model") from None
    members = spec.models if spec is not None else (entry.models,)
    outside = [m for m in members if m not in registry.models]
    if spec is None or len(members) < 2 or outside:
        what = f"{outside[0]!r} is not a [models.NAME] of the registry" if outside else "not two models"
        raise SeparationError(f"{entry.where}: [ensembles.{name}] models: {what}", "model")
    return spec


def _stem_choice(item: str) -> tuple[str | None, str]:
    """``STEM=MODEL`` -> (STEM, MODEL); anything else (``runs/lr=1e-3/best.ckpt``, a URL's query) ->
    (None, item): the part before ``=`` must be a stem's name (no '/', no ':')."""
    if os.path.isfile(item):
        return None, item
    stem, equals, model = item.partition("=")
    stem = stem.strip()
    if not equals or ":" in stem or stem_name_problem(stem) is not None:
        return None, item
    return stem, model.strip()


def _weighted(model: str) -> tuple[str, float | None]:
    """``MODEL:WEIGHT`` -> (MODEL, WEIGHT); ``MODEL`` (a URL or a file with its ':' too) -> (MODEL, None)."""
    head, colon, tail = model.rpartition(":")
    if (
        not colon
        or not _WEIGHT.fullmatch(tail)
        or not head
        or _BARE_URL.fullmatch(head)
        or os.path.isfile(model)
    ):
        return model, None
    if not tail:
        raise SeparationError(f"{model!r} has no weight after its ':'", "model")
    try:
        weight = float(tail)
    except ValueError:
        weight = math.nan
    if not (math.isfinite(weight) and weight > 0):
        raise SeparationError(f"{model}: the weight must be a positive number, not {tail!r}", "model")
    return head.strip(), weight


def _number(value: float) -> str:
    return f"{value:g}"


def plan_stems(
    member_stems: Sequence[Sequence[str]],
    weights: Sequence[float],
    choice: Mapping[str, int],
    labels: Sequence[str],
) -> dict[str, tuple[tuple[int, float], ...]]:
    """Where each stem of an ensemble comes from: stem -> ((member index, weight), ...), weights summing to 1.

    ``member_stems``: each member's stems; ``labels``: the members' names, for messages. The
    stems are in the first member's order, then each next member's new ones. Raises
    :class:`SeparationError` (option ``model``) for a chosen stem its member does not give, and
    for a member that gives no stem.
    """
    for stem, index in choice.items():
        if stem not in member_stems[index]:
            raise SeparationError(
                f"{stem}={labels[index]}: {labels[index]} has no stem {stem!r} "
                f"(its stems: {', '.join(member_stems[index])})",
                "model",
            )
    order: list[str] = []
    for stems in member_stems:
        order += [s for s in stems if s not in order]
    plan: dict[str, tuple[tuple[int, float], ...]] = {}
    for stem in order:
        if stem in choice:
            plan[stem] = ((choice[stem], 1.0),)
            continue
        givers = [i for i, stems in enumerate(member_stems) if stem in stems]
        total = sum(weights[i] for i in givers)
        plan[stem] = tuple((i, weights[i] / total) for i in givers)
    for index, label in enumerate(labels):
        if not any(i == index for sources in plan.values() for i, _ in sources):
            raise SeparationError(
                f"{label} gives no stem: each of its stems ({', '.join(member_stems[index])}) is chosen "
                "from another model; leave it out",
                "model",
            )
    return plan


def rest_parts(
    member_stems: Sequence[Sequence[str]],
    rest: Sequence[bool],
    plan: Mapping[str, Sequence[tuple[int, float]]],
) -> dict[int, tuple[str, ...]]:
    """What comes out of each member's ``other`` before it goes into the ensemble's: member index ->
    the ensemble's stems that member lacks (``other`` aside), for each member the plan takes other
    from whose other is the rest of the song (``rest[i]``: :func:`stemsplit.card.other_is_the_rest`
    of its stems). Members with nothing to take out are left out: ``{}`` for most ensembles."""
    parts = {}
    for index, _weight in plan.get(OTHER, ()):
        lacks = tuple(s for s in plan if s != OTHER and s not in member_stems[index])
        if rest[index] and lacks:
            parts[index] = lacks
    return parts


def describe_plan(
    plan: Mapping[str, Sequence[tuple[int, float]]],
    labels: Sequence[str],
    choice: Mapping[str, int],
    less: Mapping[int, Sequence[str]] | None = None,
) -> str:
    """One line saying where the stems come from, stems with the same sources together, e.g.
    ``drums, bass: average of a (0.667) and b (0.333); vocals: a alone (chosen); piano: only b has it``.
    ``less``: :func:`rest_parts`, said after ``other`` (``b's less guitar, piano, which its other holds``)."""
    less = dict(less or {})
    groups: dict[tuple[Any, ...], list[str]] = {}  # (sources..., chosen, other less something) -> stems
    for stem, sources in plan.items():
        groups.setdefault((*sources, stem in choice, stem == OTHER and bool(less)), []).append(stem)
    parts = []
    for key, stems in groups.items():
        *sources, chosen, corrected = key
        if chosen:
            where = f"{labels[sources[0][0]]} alone (chosen)"
        elif len(sources) == 1:
            where = f"only {labels[sources[0][0]]} has {'it' if len(stems) == 1 else 'them'}"
        else:
            shares = [f"{labels[i]} ({w:.3g})" for i, w in sources]
            where = "average of " + ", ".join(shares[:-1]) + " and " + shares[-1]
        if corrected:
            where += (
                " ("
                + "; ".join(
                    f"{labels[i]}'s less {', '.join(taken)}, which its other holds"
                    for i, taken in less.items()
                )
                + ")"
            )
        parts.append(f"{', '.join(stems)}: {where}")
    return "; ".join(parts)
