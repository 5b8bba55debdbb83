"""Ensembles: several models separate a song in one pass over it, and their stems are averaged.

Python API::

    from stemsplit.engine.ensemble import Ensemble
    ens = Ensemble("a:2,b")                          # --model's syntax (stemsplit.engine.ensemble_spec)
    ens = Ensemble(["a", "b"], weights=[2, 1])       # the same
    ens = Ensemble([net_a, net_b], choose={"vocals": 0})  # networks; vocals from the first alone
    stems = ens.separate(audio, rate)                # {stem: [channels, samples]}
    ens.separate_file("song.flac", "stems/")         # as Separator.separate_file

Each member is a :class:`~stemsplit.separate.Separator` and runs its own windows at its own
window, hop and sample rate. The song is read once: every member reads the same blocks (each
block is let go once every member has read it), and each gives back its stems at the song's
rate, exactly as long as the song, in pieces of its own sizes. Those pieces are lined up frame
for frame (a small queue per member: only what one member has given ahead of another) and
averaged as they come, so memory does not grow with the song.

Stems (see :func:`~stemsplit.engine.ensemble_spec.plan_stems`): every stem any member gives, in the
first member's order, then the others' new ones; each is the weighted average of the members
that give it (weights renormalised over those), or one member's alone where ``choose`` says so.
A member whose ``other`` is the rest of the song gives the ensemble's other less the stems the
ensemble has and it lacks (:func:`~stemsplit.engine.ensemble_spec.rest_parts`: a 4-stem model's other
less the guitar and piano of an htdemucs_6s beside it), so no instrument is in two stems.

``exact``: the residual of the *averaged* stems (the mixture minus their sum) is shared among
them by magnitude in each time-frequency bin, as :func:`~stemsplit.separate.share_residual`
does for one model's windows: over 3 s windows of the averaged stems every 1.5 s at the song's
rate, overlap-added; each window's stems sum to the mixture there, so their average does too.
The members themselves run without it.

Speaker-separation models cannot be ensembled: each gives its talkers in an order of its own.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import numbers
import os
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch

from ..audio.info import AudioInfo
from ..card import OTHER, other_is_the_rest
from ..weights import CHECKPOINT_SUFFIXES
from .ensemble_spec import EnsembleSpec, describe_plan, parse_models, plan_stems, rest_parts
from .overlap_add import StreamingOverlapAdd, take_queued
from .request import EngineSettings
from .residual import share_residual
from .separator import Separator
from .settings import SeparationError, shown
from .song_separator import ProgressCallback, SongSeparator

__all__ = ["Ensemble"]

# --exact on an ensemble: windows (seconds) over which the averaged stems' residual is shared.
EXACT_WINDOW_SECONDS = 3.0


class Ensemble(SongSeparator):
    """Separate songs with several models at once and average their stems.

    Args:
        models: ``--model``'s text (``"a:2,b"``, ``"vocals=a,drums=b,bass=b,other=b"``: see
            :mod:`stemsplit.engine.ensemble_spec`), or a list of models as :class:`Separator` takes them
            (registry names, checkpoint paths or URLs, networks with a card).
        weights: with a list, one positive number per model (default: all equal).
        choose: with a list, {stem: index of the model it comes from alone}.
        device, window, hop, batch_size, precision, stage, compile, light, task,
            download_progress: given to every member (see :class:`Separator`); ``window`` and
            ``hop`` default to each model's own.
        exact: the averaged stems are corrected to sum exactly to the input (see the module).
        shifts: every member runs the song this many times, shifted (see :class:`Separator`).
        progress: called with event dicts; ``windows`` events count every member's windows.

    Everything is checked here, before any song: a bad spec, a model that cannot load, models
    of different tasks or channel counts, a chosen stem its model does not give.
    """

    owner = "this ensemble"

    def __init__(
        self,
        models: str | Sequence[str | os.PathLike | torch.nn.Module],
        *,
        weights: Sequence[float] | None = None,
        choose: Mapping[str, int] | None = None,
        device: str | torch.device = "auto",
        window: float | None = None,
        hop: float | None = None,
        batch_size: int | None = None,
        precision: str | None = None,
        stage: int | None = None,
        exact: bool = False,
        shifts: int = 1,
        light: bool = False,
        compile: bool = False,
        task: str | None = None,
        progress: ProgressCallback | None = None,
        download_progress: bool = True,
        settings: EngineSettings | None = None,
    ) -> None:
        if settings is None:  # the request's checks (stemsplit.engine.request), as the command line's
            settings = EngineSettings(
                device, window, hop, batch_size, precision, stage, exact, shifts, light, compile
            )
        exact = settings.exact
        spec = _spec(models, weights, choose)
        self.labels = _labels(spec.models)
        self.weights = spec.weights
        self.choice = dict(spec.choice)
        self.progress = progress or (lambda event: None)
        self.exact = exact
        self._done: list[int] = [0] * len(spec.models)  # each member's windows so far (this song)
        self._total = 0
        self.members: list[Separator] = []
        for index, (model, label) in enumerate(zip(spec.models, self.labels, strict=True)):
            try:
                member = Separator(
                    model,
                    settings=dataclasses.replace(settings, exact=False),  # exact: the average's, below
                    task=task,
                    progress=self._member_progress(index),
                    download_progress=download_progress,
                )
            except SeparationError as exc:
                if exc.option == "task" or len(spec.models) == 1:  # the message names the model
                    raise
                raise SeparationError(f"{label}: {exc.problem}", exc.option) from None
            self.members.append(member)
        self._check_members()
        self.plan = plan_stems([m.stems for m in self.members], self.weights, self.choice, self.labels)
        self.stems = tuple(self.plan)
        # (stem index, member index, member's stem index, weight) for every source of every stem
        self._sources = [
            (j, i, self.members[i].stems.index(stem), weight)
            for j, (stem, sources) in enumerate(self.plan.items())
            for i, weight in sources
        ]
        # member index -> the ensemble's stems taken out of its other (see rest_parts); {} for most
        self.rest_parts = rest_parts(
            [m.stems for m in self.members],
            [other_is_the_rest(m.stems, m.card.rest_stem) for m in self.members],
            self.plan,
        )
        in_other = dict(self.plan.get(OTHER, ()))  # member index -> its weight in other
        # (other's index, the member's weight in it, indexes of the stems taken out of that member's other)
        self._less = [
            (self.stems.index(OTHER), in_other[i], [self.stems.index(s) for s in taken])
            for i, taken in self.rest_parts.items()
        ]
        self.note = describe_plan(self.plan, self.labels, self.choice, self.rest_parts)
        first = self.members[0]
        self.mono, self.device = first.mono, first.device
        # For reports: the members' names (registry names, file names), with their weights if unequal.
        names = [
            os.path.splitext(m.name)[0] if m.name.endswith(CHECKPOINT_SUFFIXES) else m.name
            for m in self.members
        ]
        self.name = "+".join(
            name if len(set(self.weights)) == 1 else f"{name}:{weight:g}"
            for name, weight in zip(names, self.weights, strict=True)
        )
        notes = [m.light_note for m in self.members if m.light_note]
        self.light_note = "; ".join(notes) if notes else None
        self._energy = threading.local()  # exact: this thread's song's residual and mixture energies
        self._fingerprint: str | None = None

    def _check_members(self) -> None:
        first, label = self.members[0], self.labels[0]
        for member, other in zip(self.members[1:], self.labels[1:], strict=True):
            if member.card.task != first.card.task:
                raise SeparationError(
                    f"{other} separates {member.card.task} and {label} {first.card.task}: "
                    "an ensemble's models separate the same thing",
                    "model",
                )
            if member.mono != first.mono:
                raise SeparationError(
                    f"{other} takes {member.card.channels} channel(s) and {label} {first.card.channels}: "
                    "an ensemble's models take the same channels",
                    "model",
                )
        if len(self.members) > 1 and any(m.card.permutation_invariant for m in self.members):
            raise SeparationError(
                "speaker-separation models give their talkers in an order of their own: "
                "they cannot be averaged in an ensemble",
                "model",
            )

    def _member_progress(self, index: int) -> ProgressCallback:
        """Member ``index``'s events -> the ensemble's: one ``start`` (the ensemble's own) and
        ``windows`` counting every member's windows."""

        def event(e: dict[str, Any]) -> None:
            if e["event"] == "start":
                return
            if e["event"] == "windows":
                self._done[index] = e["done"]
                self.progress({"event": "windows", "done": sum(self._done), "total": self._total})
            else:
                self.progress(e)

        return event

    # -- what the CLI and reports read --------------------------------------------------------

    def _common(self, values: list[Any]) -> Any:
        """One value when every member has it, else the list of each member's."""
        return values[0] if all(v == values[0] for v in values) else values

    @property
    def window_seconds(self) -> Any:
        return self._common([m.window_seconds for m in self.members])

    @property
    def hop_seconds(self) -> Any:
        return self._common([m.hop_seconds for m in self.members])

    @property
    def stage(self) -> Any:
        return self._common([m.stage for m in self.members])

    @property
    def precision(self) -> Any:
        return self._common([m.precision for m in self.members])

    def windows_for(self, frames: int, rate: int) -> int:
        return sum(m.windows_for(frames, rate) for m in self.members)

    def check_input(self, info: AudioInfo, downmix: bool = False) -> None:
        for member in self.members:
            member.check_input(info, downmix)

    def _needs_stats(self) -> bool:
        return any(m._needs_stats() for m in self.members)

    def fingerprint(self) -> str:
        """SHA-256 of what makes the stems: every member's weights and windows, and the plan."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for member in self.members:
                digest.update(
                    f"{member.fingerprint()} {member.sample_rate} {member.window} {member.hop} "
                    f"{member.stage} {member.precision} {member.shifts}\n".encode()
                )
            digest.update(json.dumps(list(self.plan.items())).encode())
            if self.rest_parts:  # (only then: the fingerprints of ensembles without it stay as they were)
                digest.update(json.dumps(sorted(self.rest_parts.items())).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def residual_db(self) -> float | None:
        """exact=True: level of the averaged stems' residual, relative to the mixture (dB), of the last
        song this thread separated."""
        mix = getattr(self._energy, "mix", 0.0)
        if not (self.exact and mix > 0):
            return None
        return 10 * math.log10(max(self._energy.residual, 1e-30) / mix)

    # -- streaming -----------------------------------------------------------------------------

    def _stream(
        self,
        blocks: Iterable[np.ndarray],
        rate: int,
        channels: int,
        frames: int,
        with_mixture: bool = False,
        stats: tuple[float, float] = (0.0, 1.0),
    ) -> Iterator[np.ndarray]:
        """[n, C] blocks at ``rate`` -> [S (+ 1: the input, with ``with_mixture``), C, n] averaged stems."""
        self._energy.residual = self._energy.mix = 0.0
        self._done = [0] * len(self.members)
        self._total = self.windows_for(frames, rate)
        self.progress({"event": "start", "windows": self._total, "seconds": frames / rate})
        mixture = with_mixture or self.exact  # carried by the first member, frame for frame
        streams = [
            member._stream(
                copy,
                rate,
                channels,
                frames,
                with_mixture=mixture and i == 0,
                stats=stats if member._needs_stats() else (0.0, 1.0),
            )
            for i, (member, copy) in enumerate(
                zip(self.members, _fan_out(blocks, len(self.members)), strict=True)
            )
        ]
        try:
            parts = self._averaged(streams, mixture)
            if self.exact:
                parts = self._shared(parts, rate)
            for part in parts:
                yield part if with_mixture or not mixture else part[:-1]
        finally:
            for stream in streams:
                cast(Generator, stream).close()  # (each member's _stream is a generator)

    def _averaged(self, streams: list[Iterator[np.ndarray]], with_mixture: bool) -> Iterator[np.ndarray]:
        """The members' stem blocks, lined up frame for frame and averaged by the plan."""
        queues: list[collections.deque[np.ndarray]] = [collections.deque() for _ in streams]
        held = [0] * len(streams)  # frames in each queue
        while True:
            for i, stream in enumerate(streams):
                while held[i] == 0:  # every member gives something before anything is averaged
                    part = next(stream, None)
                    if part is None:
                        break
                    queues[i].append(part)
                    held[i] += part.shape[-1]
            n = min(held)
            if n == 0:
                if any(held):  # cannot happen: every member gives exactly the song's length
                    raise RuntimeError(f"ensemble members gave different lengths ({held} frames left)")
                return
            pieces = [take_queued(queue, n) for queue in queues]  # one piece: no copy
            parts = [p[0] if len(p) == 1 else np.concatenate(p, axis=-1) for p in pieces]
            held = [h - n for h in held]
            out = np.zeros((len(self.stems), parts[0].shape[1], n), np.float32)
            for j, i, k, weight in self._sources:
                out[j] += parts[i][k] if weight == 1.0 else np.float32(weight) * parts[i][k]
            for j, weight, taken in self._less:  # the stems taken are no member's other: final already
                out[j] -= np.float32(weight) * out[taken].sum(axis=0)
            yield np.concatenate([out, parts[0][-1:]]) if with_mixture else out

    def _shared(self, parts: Iterator[np.ndarray], rate: int) -> Iterator[np.ndarray]:
        """[S + mixture, C, n] blocks -> the same, the stems corrected to sum to the mixture (``exact``)."""
        s = len(self.stems)
        n_fft, stft_hop = self.members[0].card.stft
        window = max(round(EXACT_WINDOW_SECONDS * rate), n_fft)

        def run_batch(windows: torch.Tensor) -> torch.Tensor:  # [n, (S + 1) C, W] -> [n, S + 1, C, W]
            x = windows.reshape(len(windows), s + 1, -1, windows.shape[-1])
            mix = x[:, -1]
            return torch.cat([share_residual(mix, x[:, :-1], n_fft, stft_hop), mix[:, None]], dim=1)

        ola = StreamingOverlapAdd(run_batch, window, window // 2, batch_size=2)
        for part in parts:
            mix, total = part[-1].astype(np.float64), part[:-1].sum(axis=0, dtype=np.float64)
            self._energy.residual += float(np.square(mix - total).sum())
            self._energy.mix += float(np.square(mix).sum())
            for out in ola.push(torch.from_numpy(part.reshape(-1, part.shape[-1]))):
                yield out.numpy()
        for out in ola.finish():
            yield out.numpy()


def _fan_out(blocks: Iterable[np.ndarray], count: int) -> list[Iterator[np.ndarray]]:
    """``count`` iterators over the same blocks, each block let go as soon as every one has read it.

    (:func:`itertools.tee` keeps its items in links of 57 and frees a link only once every copy is
    past all of it: 57 blocks of 10 s, nearly ten minutes of song, held whatever the members' lag.)
    """
    source = iter(blocks)
    queues: list[collections.deque[np.ndarray]] = [collections.deque() for _ in range(count)]

    def reader(queue: collections.deque[np.ndarray]) -> Iterator[np.ndarray]:
        while True:
            if not queue:
                block = next(source, None)
                if block is None:
                    return
                for each in queues:
                    each.append(block)
            yield queue.popleft()

    return [reader(queue) for queue in queues]


def _spec(
    models: str | Sequence[Any], weights: Sequence[float] | None, choose: Mapping[str, int] | None
) -> EnsembleSpec:
    """Ensemble's arguments, checked, as one :class:`EnsembleSpec` (its models may be networks)."""
    if isinstance(models, str):
        if weights is not None or choose is not None:
            raise SeparationError(
                "give weights and stem choices in the text ('a:2,vocals=b') or as arguments, not both",
                "model",
            )
        return parse_models(models) or EnsembleSpec((models,), (1.0,))
    if isinstance(models, (os.PathLike, torch.nn.Module)) or not isinstance(models, Sequence):
        raise SeparationError(
            f"must be a list of models or --model's text ('a:2,b'), not {shown(models)}", "model"
        )
    models = tuple(models)
    if not models:
        raise SeparationError("an ensemble needs at least one model", "model")
    for i, model in enumerate(models):
        if any(model is other or (isinstance(model, str) and model == other) for other in models[:i]):
            raise SeparationError(f"{_labels(models)[i]} is given twice", "model")
    weights = (1.0,) * len(models) if weights is None else tuple(weights)
    if len(weights) != len(models) or not all(
        isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w > 0
        for w in weights
    ):
        raise SeparationError(
            f"must be {len(models)} positive numbers, one per model, not {shown(weights)}", "weights"
        )
    choose = dict(choose or {})
    for stem, index in choose.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(models):
            raise SeparationError(
                f"{stem!r}: must be the index of a model (0 to {len(models) - 1}), not {shown(index)}",
                "choose",
            )
    return EnsembleSpec(models, tuple(float(w) for w in weights), choose)


def _labels(models: Sequence[Any]) -> list[str]:
    """How messages name each member: as written (a registry name, path or URL), or ``network N``."""
    return [
        os.fspath(m) if isinstance(m, (str, os.PathLike)) else f"network {i + 1}"
        for i, m in enumerate(models)
    ]
