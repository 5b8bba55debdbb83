"""The output side of a run: where every stem goes, in which format, and committing a song's stems.

Two parts, used in this order:

1. :class:`OutputOptions` and :func:`plan_outputs` decide, before any audio is
   decoded, every path a run will write, and check them: the template's fields,
   that every path stays inside the output folder, that no two songs (or two
   stems of one song) share a file, that format, bit depth and sample rate go
   together.
2. :class:`StemWriter` takes one song's stem blocks as the engine makes them,
   streams them to temporary float32 WAVs beside their destinations (written
   here: RF64 past 4 GiB, silence as holes; see :class:`_FloatTemp`), and
   :meth:`StemWriter.commit` converts them to the output format and renames
   them into place together. If anything fails before the last rename, the
   renamed ones are rolled back (files they replaced are put back), every
   temporary is removed, and so is every folder the writer created: a song's
   stems appear all together or not at all.

A power cut between the renames of a commit cannot roll anything back then;
so before its first rename a commit writes a journal into the output folder
(``.stemsplit-<host>-<pid>-<random>.journal``: every destination, the backup
its old file is moved to, and the identity of old and new file), and removes
it when the commit is over. The next writer into that output folder finds the
journal of a dead process (:func:`recover_unfinished_commits`) and finishes
its commit: rolled back (the user's old files put back, the half-committed
stems removed), or, if every stem had been renamed, rolled forward.

The engine (:mod:`stemsplit.separate`) knows nothing about paths; the CLI adds
flag names to the messages here (an :class:`OutputError` names the option it is
about in ``option``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import string
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from .audio import BlockResampler, sf_name
from .errors import StemsplitError
from .files import (
    creation_problem,
    host_tag,
    is_temporary,
    nearest_existing,
    special_file,
    sweep_stale_temporaries,
    temporary_sibling,
    write_atomically,
    write_failure,
    writer_gone,
)

if TYPE_CHECKING:
    from .batch import GivenNames

__all__ = [
    "DEFAULT_FILENAME",
    "OUTPUT_FORMATS",
    "TEMPLATE_FIELDS",
    "OutputError",
    "OutputExistsError",
    "OutputOptions",
    "SongOutputs",
    "SongSource",
    "StemWriter",
    "plan_outputs",
    "recover_unfinished_commits",
    "track_name",
]

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


class OutputError(StemsplitError):
    """An output cannot be written as asked. ``option`` names the setting at fault, if one is."""


class OutputExistsError(OutputError):
    """A stem file is already there and overwriting was not asked for."""


def exists_error(path: Path, others: int = 0) -> OutputExistsError:
    """The refusal to replace ``path`` (and ``others`` more files), in the words of every such refusal."""
    more = f" (and {others} more of the song's outputs)" if others else ""
    return OutputExistsError(f"{path} already exists{more}; not overwriting it")


# --- options and the plan -----------------------------------------------------------------------


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
        if self.fmt not in OUTPUT_FORMATS:
            raise OutputError(f"unknown format {self.fmt!r}; choose {', '.join(OUTPUT_FORMATS)}", "fmt")
        depths = [d for d in OUTPUT_FORMATS[self.fmt][1] if d is not None]
        if self.bit_depth is not None and self.bit_depth not in depths:
            allowed = f"takes {' or '.join(map(str, depths))}" if depths else "has no bit depth"
            raise OutputError(f"{self.fmt} {allowed}, not {self.bit_depth}", "bit_depth")
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
    ``names``: the names given in earlier runs (batch's :class:`~stemsplit.batch.GivenNames`): a song
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
        tracks = ([given] if given else []) + [base] + [f"{base} ({n})" for n in range(2, len(songs) + 2)]
        for track in tracks:
            if names is not None and renamable and track != given and names.held(song, track):
                tracks.append(f"{base} ({len(songs) + len(tracks)})")  # one more to try for each name held
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
        _check_regular(paths.values())
        taken.update(dict.fromkeys(paths.values(), song))
        folders.update((folder, song) for path in paths.values() for folder in _folders_below(path, out_dir))
        plans.append(SongOutputs(song, track, out_dir, paths))
    return plans


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


def _check_regular(paths: Iterable[Path]) -> None:
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


def _check_no_symlink_escape(out_dir: Path, paths: object) -> None:
    """A symbolic link inside the output folder must not carry stems out of it."""
    root = os.path.realpath(out_dir)
    for path in paths:
        parent = nearest_existing(path.parent, stop=out_dir)
        real = os.path.realpath(parent)
        if os.path.commonpath([root, real]) != root:
            raise OutputError(f"{parent} is a link to {real}, outside the output folder", "out")


# --- writing one song ---------------------------------------------------------------------------


# A float32 WAV temporary's header: RIFF/RF64 (12), JUNK/ds64 (36), fmt (26), fact (12), data (8) bytes.
_FLOAT_HEADER_BYTES = 94
# The largest RIFF size field: a WAV past it is RF64 (EBU Tech 3306), whose ds64 chunk holds 64-bit sizes.
_RIFF_LIMIT = 0xFFFFFFFF


def float_wav_header(frames: int, sample_rate: int, channels: int) -> bytes:
    """The header of a float32 WAV of ``frames`` frames (:data:`_FLOAT_HEADER_BYTES` long, whatever the size).

    Up to 4 GiB a plain RIFF WAVE whose JUNK chunk keeps the room a ds64 chunk
    needs; past it the same layout as RF64, the JUNK turned into ds64 (as EBU
    Tech 3306 intends), so a stem of any length has a header that says its length.
    """
    data = frames * channels * 4
    riff = _FLOAT_HEADER_BYTES - 8 + data
    if riff > _RIFF_LIMIT:
        head = b"RF64" + b"\xff\xff\xff\xff" + b"WAVE"
        head += b"ds64" + struct.pack("<IQQQI", 28, riff, data, frames, 0)
        data_size = 0xFFFFFFFF
    else:
        head = b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"JUNK" + struct.pack("<I", 28) + bytes(28)
        data_size = data
    fmt = struct.pack("<HHIIHHH", 3, channels, sample_rate, sample_rate * channels * 4, channels * 4, 32, 0)
    header = (
        head + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"fact" + struct.pack("<II", 4, min(frames, 0xFFFFFFFF))
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip
    assert len(header) == _FLOAT_HEADER_BYTES
    return header


class _FloatTemp:
    """A float32 WAV being streamed beside its destination (a hidden temporary name).

    Written here rather than by libsndfile, whose WAV writer cannot pass
    4 GiB (a stem over 3 h 22 min at 44.1 kHz stereo was cut or got a broken
    header): raw samples after room for the header, which :meth:`close` fills
    in (RF64 past 4 GiB, see :func:`float_wav_header`). A block of silence
    is skipped over rather than written: it reads as zeros and takes no disk
    (silent stems of long recordings are common).
    """

    def __init__(self, destination: Path, sample_rate: int, channels: int) -> None:
        self.destination = destination
        self.sample_rate, self.channels = sample_rate, channels
        self.peak = 0.0
        self.frames = 0
        self.path = temporary_sibling(destination, ".partial")
        try:
            self._file = open(self.path, "r+b")  # noqa: SIM115 - closed by close()
            self._file.seek(_FLOAT_HEADER_BYTES)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def write(self, block: np.ndarray) -> bool:
        """block: [frames, channels] float32. False (nothing written) if it holds NaN or infinity."""
        if len(block):
            peak = float(np.abs(block).max())
            if not math.isfinite(peak):
                return False
            self.peak = max(self.peak, peak)
            if peak == 0.0:
                self._file.seek(block.size * 4, os.SEEK_CUR)  # a hole: zeros, no disk
            else:
                self._file.write(np.ascontiguousarray(block, dtype="<f4"))
            self.frames += len(block)
        return True

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.truncate()  # a trailing hole, made part of the file
                self._file.seek(0)
                self._file.write(float_wav_header(self.frames, self.sample_rate, self.channels))
            finally:
                self._file.close()

    def discard(self) -> None:
        """Close without finishing (a full disk must not stop the clean-up) and remove the file."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


class StemWriter:
    """One song's stems: streamed to temporaries, then committed all together or not at all.

    ::

        with StemWriter(song, options, sample_rate=44100, channels=2) as writer:
            for block in blocks:  # {stem: [frames, channels] float32}
                writer.write(block)
            gain = writer.commit()

    Entering checks the destinations (existing files, unless ``overwrite``),
    creates the folders and sweeps temporaries of dead processes from them.
    Leaving without :meth:`commit` (an exception, Ctrl-C) removes every
    temporary and every folder the writer created.
    """

    def __init__(self, song: SongOutputs, options: OutputOptions, sample_rate: int, channels: int) -> None:
        if problem := options.rate_problem(sample_rate):  # before anything is separated or created
            raise OutputError(f"{song.source.path}: {problem}", "fmt")
        self.song, self.options = song, options
        self.sample_rate, self.channels = sample_rate, channels
        self._temps: dict[str, _FloatTemp] = {}
        self._made_folders: list[Path] = []
        self._committed = False

    def __enter__(self) -> StemWriter:
        try:
            recover_unfinished_commits(self.song.out_dir)  # a power cut's half commit, before we look
            self._check_destinations()
            for stem, path in self.song.paths.items():
                self._make_folder(path.parent)
                sweep_stale_temporaries(path.parent)
                self._temps[stem] = _FloatTemp(path, self.sample_rate, self.channels)
        except BaseException as exc:
            self._clean_up()
            if isinstance(exc, OSError):
                raise self._os_error(exc) from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self._clean_up()

    def write(self, stems: Mapping[str, np.ndarray]) -> None:
        """Append a block of every stem: {stem: [frames, channels] float32}."""
        try:
            for stem, temp in self._temps.items():
                if not temp.write(stems[stem]):
                    raise OutputError(
                        f"{self.song.source.path}: the {stem} stem came out NaN or infinite "
                        "(is the input too loud?); nothing was written for this song"
                    )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise self._os_error(exc) from None

    def commit(self) -> float:
        """Convert and rename every stem into place; returns the gain applied (1.0: none).

        With ``clip_mode="rescale"`` and an integer format, all stems of the song
        are divided by one factor if any would clip, so they still sum to the mix.
        """
        options = self.options
        try:
            for temp in self._temps.values():
                temp.close()  # the last buffered samples and the header: a full disk may show only now
        except OSError as exc:
            raise self._os_error(exc) from None
        peak = max((t.peak for t in self._temps.values()), default=0.0)
        gain = 1.0 / peak if options.integer and options.clip_mode == "rescale" and peak > 1.0 else 1.0
        rate = options.sample_rate(self.sample_rate)
        finals: dict[str, Path] = {}
        try:
            for stem, temp in self._temps.items():
                if not options.integer and rate == self.sample_rate:
                    finals[stem] = temp.path  # already float32 wav
                else:
                    finals[stem] = self._convert(temp.path, temp.destination, gain, rate)
                    temp.path.unlink()
            self._check_destinations()  # something may have appeared while we separated
            self._rename_all(finals)
        except BaseException as exc:
            for path in finals.values():
                path.unlink(missing_ok=True)
            if isinstance(exc, (OSError, sf.LibsndfileError, RuntimeError)):
                raise self._os_error(exc) from None
            raise
        self._committed = True
        return gain

    # -- helpers --

    def _check_destinations(self) -> None:
        _check_regular(self.song.paths.values())  # again: it may have appeared since the run was planned
        for path in self.song.paths.values():
            if os.path.isdir(path):
                raise OutputError(f"{path} is a folder; cannot write a stem there")
            if os.path.lexists(path) and not self.options.overwrite:
                raise exists_error(path)

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not os.path.lexists(folder):
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # another process made it meanwhile: not ours to remove
                continue
            self._made_folders.append(path)

    def _convert(self, source: Path, destination: Path, gain: float, rate: int) -> Path:
        """Float wav ``source`` -> a temporary in the output format (times ``gain``); returns its path."""
        container, subtypes = OUTPUT_FORMATS[self.options.fmt]
        subtype = subtypes[self.options.bit_depth]
        clamp = self.options.clip_mode == "clamp"
        target = temporary_sibling(destination, ".partial")
        try:
            with sf.SoundFile(sf_name(source)) as src:
                if container == "WAV" and _past_riff_limit(
                    src.frames * rate / src.samplerate, src.channels, subtype
                ):
                    container = "RF64"  # libsndfile's WAV writer cannot pass 4 GiB
                resample = BlockResampler(src.samplerate, rate, src.channels)
                with sf.SoundFile(
                    sf_name(target),
                    "w",
                    samplerate=rate,
                    channels=src.channels,
                    format=container,
                    subtype=subtype,
                ) as dst:
                    for block in src.blocks(65536, dtype="float32", always_2d=True):
                        block = resample(block * gain if gain != 1.0 else block)
                        dst.write(np.clip(block, -1.0, 1.0) if clamp else block)
                    dst.write(resample.flush(src.channels))
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    def _rename_all(self, finals: dict[str, Path]) -> None:
        """Rename every stem into place; on any failure put everything back as it was.

        A journal (see the module's doc) is written and synced before the first
        rename, so a power cut midway is undone by the next run; it is removed
        once every rename succeeded, or everything was put back.
        """
        out_dir = self.song.out_dir
        entries = []  # (destination, final, backup name, identity of the old file or None)
        for stem, final in finals.items():
            destination = self.song.paths[stem]
            entries.append((destination, final, _backup_name(destination), _identity(destination)))
        journal = _write_journal(out_dir, entries)
        done: list[tuple[Path, Path | None, list[int]]] = []  # (destination, its backup, new file's identity)
        try:
            for destination, final, backup, _ in entries:
                _check_inside(out_dir, destination)  # a link put in since the plan must not lead out
                new = _identity(final)
                if os.path.isdir(destination) and not os.path.islink(destination):  # appeared since the check
                    raise OutputError(
                        f"{destination} is a folder; cannot write a stem there; "
                        "nothing was written for this song"
                    )
                if os.path.lexists(destination):  # overwriting: keep the old file until all succeeded
                    os.replace(destination, backup)
                    done.append((destination, backup, new))
                else:
                    done.append((destination, None, new))
                os.replace(final, destination)
        except BaseException:
            restored = True
            for destination, backup, new in reversed(done):
                try:
                    if new is not None and _identity(destination) == new:  # ours, renamed in already
                        destination.unlink()
                    if backup is not None:
                        os.replace(backup, destination)
                except OSError:
                    restored = False  # the journal stays: the next run puts it back
            if restored:
                journal.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # committed: a backup left now is removed by the next run
            for _, backup, _ in done:
                if backup is not None:
                    backup.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)

    def _clean_up(self) -> None:
        for temp in self._temps.values():
            temp.discard()
        for folder in reversed(self._made_folders):
            with contextlib.suppress(OSError):  # only if empty: another song may have written there
                folder.rmdir()

    def _os_error(self, exc: BaseException) -> OutputError:
        """A failed write as one line, in the words of every failed write (:func:`write_failure`)."""
        folder = self.song.out_dir
        reason = write_failure(exc, folder)
        return OutputError(f"writing stems into {folder} failed: {reason}; nothing was written for this song")


def _past_riff_limit(frames: float, channels: int, subtype: str) -> bool:
    """Whether a WAV of ``frames`` frames of ``subtype`` would pass the RIFF's 4 GiB (with room for a
    header of any size libsndfile writes)."""
    sample_bytes = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4}[subtype]
    return frames * channels * sample_bytes > _RIFF_LIMIT - (1 << 16)


# --- the commit journal ---------------------------------------------------------------------------


def _identity(path: Path) -> list[int] | None:
    """(device, inode) of the file at ``path`` (not following a link), or None if there is none."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _backup_name(destination: Path) -> Path:
    """A free ``.backup`` temporary name beside ``destination`` (created by the rename that fills it)."""
    while True:
        path = destination.with_name(f".stemsplit-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.backup")
        if not os.path.lexists(path):
            return path


def _check_inside(out_dir: Path, destination: Path) -> None:
    """``destination``'s folder must still lead into ``out_dir`` (a link may have been put there since)."""
    root, real = os.path.realpath(out_dir), os.path.realpath(destination.parent)
    if os.path.commonpath([root, real]) != root:
        raise OutputError(
            f"{destination.parent} now leads to {real}, outside the output folder; "
            "nothing was written for this song"
        )


def _write_journal(out_dir: Path, entries: list) -> Path:
    """Write and sync the journal of a commit that is about to start; returns its path."""
    journal = temporary_sibling(out_dir / "commit", ".journal")
    record = {
        "entries": [
            {
                "destination": os.path.relpath(destination, out_dir),
                "final": os.path.relpath(final, out_dir),
                "backup": os.path.relpath(backup, out_dir),
                "old": old,
                "new": _identity(final),
            }
            for destination, final, backup, old in entries
        ]
    }

    def write(temp: Path) -> None:
        with open(temp, "w") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        write_atomically(journal, write)
        _sync_folder(out_dir)
    except BaseException:
        journal.unlink(missing_ok=True)
        raise
    return journal


def _sync_folder(folder: Path) -> None:
    """Make the names in ``folder`` durable (where the platform can)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_unfinished_commits(out_dir: str | os.PathLike) -> list[Path]:
    """Finish the commits that dead processes left half done in ``out_dir``; returns the files put back.

    A journal whose every destination holds its new stem is rolled forward (the
    backups of the old files removed); any other is rolled back: a destination
    holding its new stem is removed, and the user's old file goes back to it
    from its backup. Only files the journal identifies by device and inode are
    touched, never anything outside ``out_dir``; a journal that cannot be fully
    carried out stays for the next run.
    """
    out_dir = Path(out_dir)
    restored: list[Path] = []
    try:
        journals = [Path(e.path) for e in os.scandir(out_dir) if e.name.endswith(".journal")]
    except OSError:
        return restored
    for journal in journals:
        if not is_temporary(journal) or not writer_gone(journal):
            continue  # not ours, or its commit is still running
        entries = _read_journal(out_dir, journal)
        if entries is None:
            continue  # unreadable: left as it is (the sweep never removes a journal)
        complete = all(_identity(dest) == new for dest, _, _, _, new in entries)
        clean = True
        for destination, final, backup, old, new in entries:
            try:
                if complete:
                    if old is not None and _identity(backup) == old:
                        backup.unlink()
                    continue
                if _identity(destination) == new:
                    destination.unlink()  # a stem of the unfinished commit
                if _identity(final) == new:
                    final.unlink()
                if old is not None and _identity(backup) == old:
                    if os.path.lexists(destination):  # something new is there since: keep both
                        clean = False
                        continue
                    os.replace(backup, destination)
                    restored.append(destination)
            except OSError:
                clean = False
        if clean:
            journal.unlink(missing_ok=True)
    return restored


def _read_journal(out_dir: Path, journal: Path) -> list[tuple] | None:
    """A journal's entries as (destination, final, backup, old id, new id); None if it is not one of ours."""
    try:
        record = json.loads(journal.read_text())
        entries = []
        for item in record["entries"]:
            paths = [item[k] for k in ("destination", "final", "backup")]
            if not all(isinstance(p, str) and p and not os.path.isabs(p) for p in paths):
                return None
            if any(".." in Path(p).parts for p in paths):
                return None
            destination, final, backup = (out_dir / p for p in paths)
            if not (is_temporary(final) and is_temporary(backup) and backup.suffix == ".backup"):
                return None
            for path in (destination, final, backup):
                _check_inside(out_dir, path)
            ids = [item["old"], item["new"]]
            if not all(i is None or (isinstance(i, list) and len(i) == 2) for i in ids):
                return None
            entries.append((destination, final, backup, *ids))
    except (OSError, ValueError, KeyError, TypeError, RecursionError, OutputError):
        return None
    return entries
