"""The pre-flight: a separation's flags or arguments, checked once, as one typed request.

A run must be refused in well under a second when anything it will do cannot be done: a setting out of
range, a stem the model does not give, two songs writing one file, a file that is not audio. So the
checks that need no model live here and import no torch, and they run in one pass:

1. :class:`EngineSettings` (window, hop, batch size, precision, stage, exact, shifts, device...) and
   :class:`StemChoice` (which stems to write) check themselves when they are made;
2. :func:`prepare` plans every output path of every song (:func:`stemsplit.output.plan_outputs`) with
   the stems it will write, where the registry or an MSST config knows them without loading the model,
   and probes every input (:func:`stemsplit.audio.probe`): a file that cannot be read fails alone;
3. the result, a :class:`SeparationRequest`, goes to the engine as it is: :class:`~stemsplit.separate.
   Separator` takes its settings, and only what needs the loaded model (its own stems when the
   registry did not know them, the window its card allows, the channels a song has) is checked there.

The command line (:mod:`stemsplit.cli.separate`) parses flags into these objects and prints; the Python
API (:meth:`~stemsplit.separate.SongSeparator.separate_file`) builds the same request, so both check
exactly the same things, with the same words (the command line adds the flag's name).
"""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..audio.info import AudioError, AudioInfo
from ..audio.probing import probe
from ..errors import StemsplitError
from ..output.plan import OutputError, OutputOptions, SongOutputs, SongSource, plan_outputs
from .settings import RESIDUAL, SeparationError, check_settings, choose_stems, parse_device, shown

if TYPE_CHECKING:
    import torch

    from ..batch import GivenNames

__all__ = ["EngineSettings", "PlannedSong", "SeparationRequest", "StemChoice", "prepare", "stem_names"]


@dataclass(frozen=True)
class EngineSettings:
    """How a model runs a song's windows; checked when made (:class:`SeparationError` naming the option).

    None means the model card's (window, hop, stage) or the device's choice (batch size, precision).
    See :class:`~stemsplit.separate.Separator` for what each one does.
    """

    device: str | torch.device = "auto"
    window: float | None = None
    hop: float | None = None
    batch_size: int | None = None
    precision: str | None = None
    stage: int | None = None
    exact: bool = False
    shifts: int = 1
    light: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        check_settings(
            self.window, self.hop, self.batch_size, self.precision, self.stage, self.exact, self.shifts
        )
        loaded = sys.modules.get("torch")  # a torch.device comes only from callers that imported torch
        if not (loaded is not None and isinstance(self.device, loaded.device)):
            parse_device(self.device)
        for name in ("light", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise SeparationError(f"must be True or False, not {shown(getattr(self, name))}", name)


def stem_names(stems: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """Stem names as given: None (all the model's), ``"vocals,drums"`` (as ``--stems`` takes them) or an
    iterable of names. Empty, repeated or non-string names raise :class:`SeparationError`."""
    if stems is None:
        return None
    if isinstance(stems, str):
        names = [name.strip() for name in stems.split(",") if name.strip()]
        if not names:
            raise SeparationError(f"no stem names in {stems!r}", "stems")
    elif isinstance(stems, Iterable) and not isinstance(stems, (bytes, bytearray)):
        names = list(stems)
    else:
        raise SeparationError(
            f"must be stem names (a list, or one string with commas), not {shown(stems)}", "stems"
        )
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise SeparationError(f"must be stem names, not {shown(names)}", "stems")
    if len(set(names)) != len(names):
        raise SeparationError(f"a stem is named twice in {', '.join(names)}", "stems")
    return tuple(names)


@dataclass(frozen=True)
class StemChoice:
    """Which stems to write: ``names`` (None: all the model's), or ``two_stems=X`` for X and no_X (the
    mixture minus X); with ``residual``, the mixture minus all of them too. Checked when made."""

    names: str | Iterable[str] | None = None  # (kept as a tuple of names)
    two_stems: str | None = None
    residual: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", stem_names(self.names))
        if self.two_stems is not None:
            if not (isinstance(self.two_stems, str) and self.two_stems.strip()):
                raise SeparationError(f"must be a stem name, not {shown(self.two_stems)}", "two_stems")
            if self.names is not None:
                raise SeparationError(
                    "writes one stem and the rest; it goes without a list of stems", "two_stems"
                )
        if not isinstance(self.residual, bool):
            raise SeparationError(f"must be True or False, not {shown(self.residual)}", "residual")

    def resolve(self, model_stems: Sequence[str], owner: str = "this model") -> list[str]:
        """The stems to write for a model that gives ``model_stems`` (``owner`` names it in messages)."""
        chosen = choose_stems(model_stems, self.names, self.two_stems, owner)
        if self.residual and RESIDUAL in model_stems:
            raise SeparationError(f"{owner} has a stem named {RESIDUAL} already", "residual")
        return [*chosen, RESIDUAL] if self.residual else chosen

    def stand_in(self, template: str) -> list[str]:
        """Names to plan outputs with before the model's stems are known: the names asked for, or
        "{stem}" (which reads as the template in a message: ".../{stem}.wav"), twice where the template
        has no {stem} so that a template giving one file for several stems is refused now."""
        if self.two_stems is not None:
            names = [self.two_stems, f"no_{self.two_stems}"]
        else:
            names = list(self.names or (["{stem}"] if "{stem}" in template else ["{stem}", "{stem} 2"]))
        return names + ([RESIDUAL] if self.residual else [])


@dataclass(frozen=True)
class PlannedSong:
    """One input of a request: where its stems go, and what probing it found (its ``info``, or the
    ``problem`` that makes it fail alone) and which file that was (``identity``: device, inode, size,
    mtime, to see whether it changes before its turn)."""

    outputs: SongOutputs
    info: AudioInfo | None = None
    problem: StemsplitError | None = None
    identity: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SeparationRequest:
    """A separation, checked: what to write where, with which settings (see :func:`prepare`).

    ``stems`` is the list the outputs are planned with: the model's own choice when it was known
    before loading, else None (the stand-in names were planned, to check the template); after loading,
    :meth:`with_stems` plans the model's.
    """

    songs: tuple[PlannedSong, ...]
    out: Path
    output: OutputOptions
    choice: StemChoice
    settings: EngineSettings
    stems: tuple[str, ...] | None
    downmix: bool = False
    stream: int | None = None
    names: GivenNames | None = None

    def with_stems(self, stems: Sequence[str]) -> SeparationRequest:
        """The request planned for ``stems`` (the loaded model's choice); itself if they are its own."""
        if self.stems is not None and list(stems) == list(self.stems):
            return self
        sources = [song.outputs.source for song in self.songs]
        outputs = plan_outputs(sources, self.out, list(stems), self.output, names=self.names)
        songs = tuple(
            replace(song, outputs=planned) for song, planned in zip(self.songs, outputs, strict=True)
        )
        return replace(self, songs=songs, stems=tuple(stems))

    def runnable(self) -> list[PlannedSong]:
        """The songs that probed well (the others fail alone with their ``problem``)."""
        return [song for song in self.songs if song.problem is None]


def prepare(
    inputs: Sequence[SongSource | str | os.PathLike],
    out: str | os.PathLike,
    *,
    output: OutputOptions | None = None,
    choice: StemChoice | None = None,
    settings: EngineSettings | None = None,
    model_stems: Sequence[str] | None = None,
    owner: str = "this model",
    downmix: bool = False,
    stream: int | None = None,
    names: GivenNames | None = None,
    probe_inputs: bool = True,
) -> SeparationRequest:
    """The pre-flight of a separation, in one pass and without torch (see the module's docstring).

    ``inputs``: the songs (batch's :class:`~stemsplit.output.SongSource` with their folders, or paths);
    ``model_stems``: the stems the model gives, where they are known before loading it (the registry,
    an MSST config, a loaded model), else None; ``names``: batch's names given in earlier runs.
    Raises :class:`SeparationError` or :class:`~stemsplit.output.OutputError` naming the option at fault;
    a song that cannot be read is not an error here: it is planned with its ``problem``.
    """
    output = output or OutputOptions()
    choice = choice or StemChoice()
    settings = settings or EngineSettings()
    if (
        isinstance(out, str) and not out.strip()
    ):  # Path("") is ".": the stems would land in the current folder
        raise OutputError("the folder name is empty; name a folder ('.' for the current one)", "out")
    if not isinstance(out, (str, os.PathLike)):
        raise OutputError(f"must be a folder's path, not {shown(out)}", "out")
    sources = [song if isinstance(song, SongSource) else SongSource(_input_path(song)) for song in inputs]
    check_stream(stream)
    if not isinstance(downmix, bool):
        raise SeparationError(f"must be True or False, not {shown(downmix)}", "downmix")
    out = Path(out)
    # The template first, with the names asked for or "{stem}": its problems are then said in its own
    # terms (".../{stem}.wav"), whatever the model; then the stems the model gives, where known.
    planned = plan_outputs(sources, out, choice.stand_in(output.filename), output, names=names)
    stems = None if model_stems is None else tuple(choice.resolve(model_stems, owner))
    if stems is not None and list(stems) != choice.stand_in(output.filename):
        planned = plan_outputs(sources, out, list(stems), output, names=names)
    songs = tuple(_probed(song, stream, output) if probe_inputs else PlannedSong(song) for song in planned)
    return SeparationRequest(songs, out, output, choice, settings, stems, downmix, stream, names)


def check_stream(stream: object) -> None:
    """``stream`` is None or a stream's number from 1 (:class:`SeparationError` otherwise)."""
    if stream is not None and (
        isinstance(stream, bool) or not isinstance(stream, numbers.Integral) or stream < 1
    ):
        raise SeparationError(f"must be an audio stream's number from 1, not {shown(stream)}", "stream")


def source_identity(path: Path) -> tuple[int, ...] | None:
    """Which file ``path`` is, and whether it was written to: (device, inode, size, mtime); None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _input_path(path: object) -> Path:
    if isinstance(path, (str, os.PathLike)) and not isinstance(os.fspath(path), bytes) and os.fspath(path):
        return Path(path)
    raise SeparationError(f"must be an audio file's path (a str or a Path), not {shown(path)}", "path")


class InternalReadError(AudioError):
    """A bug met while probing one file (its ``__cause__``): that song fails alone, the others go on."""


def _probed(song: SongOutputs, stream: int | None, output: OutputOptions) -> PlannedSong:
    """The song with what its file is (probed now), or with why it cannot be read or written: its
    rate where the output format cannot carry it (a 705.6 kHz song in flac)."""
    path = song.source.path
    identity = source_identity(path)
    try:
        info = probe(path, stream)
    except AudioError as exc:
        return PlannedSong(song, problem=exc, identity=identity)
    except Exception as exc:  # a bug in reading this one file: it fails alone, the others go on
        reason = (f"{type(exc).__name__}: {exc}".strip().splitlines() or [""])[0]
        problem = InternalReadError(f"{path}: internal error reading it: {reason}")
        problem.__cause__ = exc
        return PlannedSong(song, problem=problem, identity=identity)
    if rate_problem := output.rate_problem(info.sample_rate):
        return PlannedSong(song, info=info, problem=OutputError(f"{path}: {rate_problem}"), identity=identity)
    return PlannedSong(song, info=info, identity=identity)
