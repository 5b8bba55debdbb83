"""The output plan: every path a run will write, decided and checked before any audio is decoded.

:class:`OutputOptions` (template, format, bit depth, clipping) and :func:`plan_outputs`: the
template's fields, that every path stays inside the output folder, that no two songs (or two stems of
one song) share a file, that no stem replaces an input or a special file, that format, bit depth and
sample rate go together. The errors of the output side (:class:`OutputError`) live here too.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import StemsplitError
from ..files import creation_problem, nearest_existing, special_file

# Output format -> (libsndfile container, subtype for each bit depth; None = the format's default).
OUTPUT_FORMATS: dict[str, tuple[str, dict[int | None, str]]] = {
    "wav": ("WAV", {None: "FLOAT", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}),
    "flac": ("FLAC", {None: "PCM_24", 16: "PCM_16", 24: "PCM_24"}),
    "mp3": ("MP3", {None: "MPEG_LAYER_III"}),
}
# The sample rates MPEG audio can carry (MPEG-1, -2 and 2.5 layer III).
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# FLAC's STREAMINFO has room for rates up to this (Hz); libsndfile refuses more (a 705.6 kHz DXD file).
MAX_FLAC_RATE = 655_350
TEMPLATE_FIELDS = ("folder", "track", "stem", "ext")
# {folder}: the song's folder relative to the folder `batch` walked ("" for files named directly).
DEFAULT_FILENAME = "{folder}/{track}/{stem}.{ext}"
NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)


class GivenNames(Protocol):
    """The track names given in earlier runs, as :func:`plan_outputs` asks them (batch keeps them:
    :class:`stemsplit.batch.records.GivenNames`)."""

    def given(self, song: SongSource) -> str | None: ...

    def held(self, song: SongSource, track: str) -> bool: ...


class OutputError(StemsplitError):
    """An output cannot be written as asked. ``option`` names the setting at fault, if one is."""


class OutputExistsError(OutputError):
    """A stem file is already there and overwriting was not asked for."""


def exists_error(path: Path, others: int = 0) -> OutputExistsError:
    """The refusal to replace ``path`` (and ``others`` more files), in the words of every such refusal."""
    more = f" (and {others} more of the song's outputs)" if others else ""
    return OutputExistsError(f"{path} already exists{more}; not overwriting it")


@dataclass(frozen=True)
class OutputOptions:
    """How stems are written. Checked on creation (raises :class:`OutputError`)."""

    filename: str = DEFAULT_FILENAME
    fmt: str = "wav"
    bit_depth: int | None = None  # None: float32 wav, 24-bit flac
    # Integer formats: "rescale" all stems of a song by one factor if any would clip, "clamp", "none".
    clip_mode: str = "rescale"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.fmt, str):  # FLAC, Wav: the command line takes any case too
            object.__setattr__(self, "fmt", self.fmt.lower())
        if self.fmt not in OUTPUT_FORMATS:
            raise OutputError(f"unknown format {self.fmt!r}; choose {', '.join(OUTPUT_FORMATS)}", "fmt")
        depths = [d for d in OUTPUT_FORMATS[self.fmt][1] if d is not None]
        if self.bit_depth is not None and self.bit_depth not in depths:
            allowed = f"takes {' or '.join(map(str, depths))}" if depths else "has no bit depth"
            raise OutputError(f"{self.fmt} {allowed}, not {self.bit_depth!r}", "bit_depth")
        if self.clip_mode not in ("rescale", "clamp", "none"):
            raise OutputError(f"must be rescale, clamp or none, not {self.clip_mode!r}", "clip_mode")
        if self.clip_mode == "clamp" and not self.integer:  # would be ignored: float keeps what is beyond ±1
            raise OutputError(
                "clamp is for integer formats: float wav keeps samples beyond ±1 (nothing clips); "
                "to clamp, choose a bit depth (16, 24 or 32) or flac or mp3",
                "clip_mode",
            )
        _check_template(self.filename)

    @property
    def integer(self) -> bool:
        """Samples beyond [-1, 1] clip in this format (everything but float wav)."""
        return self.fmt != "wav" or self.bit_depth is not None

    def sample_rate(self, rate: int) -> int:
        """The rate stems of a ``rate`` Hz song are written at: the song's, except where mp3 cannot.

        MP3 carries only :data:`MP3_RATES`: other rates go to the nearest one
        above (48 kHz for anything higher), resampled while encoding.
        """
        if self.fmt != "mp3" or rate in MP3_RATES:
            return rate
        return next((r for r in MP3_RATES if r >= rate), MP3_RATES[-1])

    def rate_problem(self, rate: int) -> str | None:
        """Why stems of a ``rate`` Hz song cannot be written in this format (one line), or None.

        Checked for every song before the first window (and by :class:`StemWriter`), so a song the
        writer cannot take fails at once, not after it was separated. (MP3 has no such problem: its
        rates are chosen by :meth:`sample_rate`; WAV takes any rate.)
        """
        if self.fmt == "flac" and rate > MAX_FLAC_RATE:
            return (
                f"{rate} Hz is more than flac can carry ({MAX_FLAC_RATE} Hz at most); "
                "write it with --format wav, or resample the song first"
            )
        return None


def _check_template(template: str) -> None:
    fields = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise OutputError(f"{template!r} is not a valid template ({exc}); use {fields}", "filename") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        # Only plain fields: "{track.__class__}" or "{stem[0]}" would reach into Python objects.
        if name not in TEMPLATE_FIELDS or spec or conversion:
            text = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise OutputError(f"{template!r}: {text} is not allowed; use only {fields}", "filename")
    if not template.strip() or os.path.isabs(template) or template.startswith("~"):
        raise OutputError(f"{template!r} must be a relative path under the output folder", "filename")
    spaced = next((part for part in template.split("/") if part != part.strip()), None)
    if spaced is not None:  # "{stem}.{ext} " would write "vocals.wav ", which no one can tell from vocals.wav
        raise OutputError(f"{template!r}: {spaced!r} starts or ends with a space", "filename")
    if "\\" in template or not all(ch.isprintable() or ch == " " for ch in template):
        raise OutputError(
            f"{template!r}: backslashes and control characters are not allowed in file names", "filename"
        )


def track_name(path: Path) -> str:
    """A song's {track}: its file name without the extension (the whole name where that is . or ..)."""
    stem = Path(path).stem
    return stem if stem not in ("", ".", "..") else Path(path).name


@dataclass(frozen=True)
class SongSource:
    """One input of a run: the file, and its folder relative to the walked folder (``""`` if none)."""

    path: Path
    folder: str = ""


@dataclass
class SongOutputs:
    """Where one song's stems go: stem name -> final path (inside ``out_dir``)."""

    source: SongSource
    track: str
    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)

    def existing(self) -> list[Path]:
        return [p for p in self.paths.values() if os.path.lexists(p)]


def path_parts(text: str) -> list[str]:
    """The parts of a filled-in template, empty ones dropped (a leading "/", "a//b", an empty {folder})."""
    return [p for p in text.split("/") if p]


def render(template: str, out_dir: Path, folder: str, track: str, stem: str, ext: str) -> Path:
    """``out_dir / template`` with its fields filled; refuses anything that would leave ``out_dir``."""
    text = template.format(folder=folder, track=track, stem=stem, ext=ext)
    parts = [part for part in path_parts(text) if part != "."]  # "./{track}/./{stem}.{ext}": the same place
    if not parts:
        raise OutputError(f"{template!r} gives an empty path for {track!r}", "filename")
    for part in parts:
        if part in (".", "..") or "\0" in part:
            raise OutputError(
                f"{template!r} gives {text!r} for {track!r}, which leads outside the output folder",
                "filename",
            )
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise OutputError(f"{part[:40]}...: file name longer than {NAME_MAX} bytes", "filename")
    return out_dir.joinpath(*parts)


def plan_outputs(
    songs: Sequence[SongSource],
    out_dir: str | os.PathLike,
    stems: Sequence[str],
    options: OutputOptions,
    *,
    rename_duplicates: bool = True,
    names: GivenNames | None = None,
) -> list[SongOutputs]:
    """Every output path of every song, checked; raises :class:`OutputError` on the first problem.

    Two songs with the same {track} (``a/x.wav`` and ``b/x.wav`` named on the
    command line) get ``x`` and ``x (2)`` when ``rename_duplicates`` and the
    template has {track}; otherwise a shared path is an error naming both songs.
    ``names``: the names given in earlier runs (batch's :class:`~stemsplit.batch.records.GivenNames`): a song
    keeps its own, and takes none that another song holds.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    stems = list(stems)
    if len(set(stems)) != len(stems):
        raise OutputError(f"a stem is named twice: {', '.join(stems)}", "stems")
    inputs = _identities(songs)
    taken: dict[Path, SongSource] = {}  # every song's stem files
    folders: dict[Path, SongSource] = {}  # the folders they go in, below out_dir
    plans = []
    renamable = rename_duplicates and "{track}" in options.filename
    for song in songs:
        base = track_name(song.path)
        given = names.given(song) if names is not None and renamable else None
        tracks = _TrackNames(given, base, len(songs))
        for track in tracks:
            if names is not None and renamable and track != given and names.held(song, track):
                tracks.one_more()  # one more to try for each name held
                continue
            paths = {s: render(options.filename, out_dir, song.folder, track, s, options.fmt) for s in stems}
            if len(set(paths.values())) != len(paths):
                raise OutputError(
                    f"{options.filename!r} gives one file for several stems; put {{stem}} in it", "filename"
                )
            clash = _first_clash(paths.values(), out_dir, taken, folders)
            if clash is None or not renamable:
                break
        if clash is not None:  # not renamable, or renaming {track} cannot help (a clash in {folder})
            path, other = clash
            how = "write" if path in taken and path in paths.values() else "use"  # use: file and folder
            hint = "rename one of them" if renamable else "put {track} (and {folder} for batch) in it"
            raise OutputError(
                f"{other.path} and {song.path} would both {how} {path}; {hint} or choose another template",
                "filename",
            )
        _check_no_symlink_escape(out_dir, paths.values())
        _check_not_an_input(paths, inputs)
        check_regular(paths.values())
        taken.update(dict.fromkeys(paths.values(), song))
        folders.update((folder, song) for path in paths.values() for folder in _folders_below(path, out_dir))
        plans.append(SongOutputs(song, track, out_dir, paths))
    return plans


class _TrackNames:
    """The {track} names to try for one song, in order: the name it was given before, its file's name,
    then "name (2)" ... "name (n + 1)" for n songs; :meth:`one_more` adds one at the end. Made as they
    are asked for: a list of n names for each of n songs was quadratic (3 s for 3,000 songs)."""

    def __init__(self, given: str | None, base: str, songs: int) -> None:
        self.first = ([given] if given else []) + [base]
        self.base, self.songs = base, songs
        self.length = len(self.first) + songs
        self.extra: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        index = 0
        while index < self.length:  # (one_more may lengthen it while it is iterated)
            if index < len(self.first):
                yield self.first[index]
            else:
                yield self.extra.get(index) or f"{self.base} ({index - len(self.first) + 2})"
            index += 1

    def one_more(self) -> None:
        self.extra[self.length] = f"{self.base} ({self.songs + self.length})"
        self.length += 1


def _identities(songs: Sequence[SongSource]) -> dict[tuple[int, int], SongSource]:
    """The input files that exist, by (device, inode): a path reaching one by another name is found too."""
    found = {}
    for song in songs:
        try:
            st = os.stat(song.path)
        except (OSError, ValueError):  # missing (that song fails when probed) or an impossible name
            continue
        found[(st.st_dev, st.st_ino)] = song
    return found


def _check_not_an_input(paths: Mapping[str, Path], inputs: Mapping[tuple[int, int], SongSource]) -> None:
    """No stem may be written over a song of the run (even with --overwrite: it is being read)."""
    for stem, path in paths.items():
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        song = inputs.get((st.st_dev, st.st_ino))
        if song is not None:
            raise OutputError(
                f"{path} is the input {song.path}: its {stem} stem would replace it; choose another "
                "template or output folder",
                "filename",
            )


def check_regular(paths: Iterable[Path]) -> None:
    """No stem may replace a device, FIFO or socket (or a link to one), not even with --overwrite."""
    for path in paths:
        if kind := special_file(path):
            raise OutputError(f"{path} is {kind}; stems are written as regular files only", "out")


def _folders_below(path: Path, out_dir: Path) -> list[Path]:
    """The folders ``path`` (inside ``out_dir``) is in, below ``out_dir``: out/a/b/x.wav -> out/a/b, out/a."""
    return [out_dir / folder for folder in path.relative_to(out_dir).parents[:-1]]


def _first_clash(
    paths: Iterable[Path], out_dir: Path, files: Mapping[Path, SongSource], folders: Mapping[Path, SongSource]
) -> tuple[Path, SongSource] | None:
    """The first path where ``paths`` meet another song's: the same file, a file where the other needs
    a folder (out/a/drums.wav for a.wav, and out/a/drums.wav/vocals.wav for a/drums.wav.wav), or the
    reverse; with that song. None: no clash."""
    for path in paths:
        if path in files or path in folders:
            return path, files.get(path) or folders[path]
        for folder in _folders_below(path, out_dir):
            if folder in files:
                return folder, files[folder]
    return None


def _check_out_dir(out_dir: Path) -> None:
    """The output folder, or its nearest existing ancestor, must be a writable folder."""
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder", "out")
    if problem := creation_problem(out_dir):
        raise OutputError(problem, "out")


def _check_no_symlink_escape(out_dir: Path, paths: Iterable[Path]) -> None:
    """A symbolic link inside the output folder must not carry stems out of it."""
    root = os.path.realpath(out_dir)
    for path in paths:
        parent = nearest_existing(path.parent, stop=out_dir)
        real = os.path.realpath(parent)
        if os.path.commonpath([root, real]) != root:
            raise OutputError(f"{parent} is a link to {real}, outside the output folder", "out")
