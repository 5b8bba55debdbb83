"""The output side of a run: where every stem goes, in which format, and committing a song's stems.

Two parts, used in this order:

1. :class:`OutputOptions` and :func:`plan_outputs` decide, before any audio is
   decoded, every path a run will write, and check them: the template's fields,
   that every path stays inside the output folder, that no two songs (or two
   stems of one song) share a file, that format, bit depth and sample rate go
   together.
2. :class:`StemWriter` takes one song's stem blocks as the engine makes them,
   streams them to temporary float32 files beside their destinations, and
   :meth:`StemWriter.commit` converts them to the output format and renames
   them into place together. If anything fails before the last rename, the
   renamed ones are rolled back (files they replaced are put back), every
   temporary is removed, and so is every folder the writer created: a song's
   stems appear all together or not at all.

The engine (:mod:`stemsplit.separate`) knows nothing about paths; the CLI adds
flag names to the messages here (an :class:`OutputError` names the option it is
about in ``option``).
"""

from __future__ import annotations

import contextlib
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import BlockResampler, libsndfile_reason
from .files import sweep_stale_temporaries, temporary_sibling

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
TEMPLATE_FIELDS = ("folder", "track", "stem", "ext")
# {folder}: the song's folder relative to the folder `batch` walked ("" for files named directly).
DEFAULT_FILENAME = "{folder}/{track}/{stem}.{ext}"
NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)


class OutputError(Exception):
    """An output cannot be written as asked. ``option`` names the setting at fault, if one is."""

    def __init__(self, problem: str, option: str | None = None) -> None:
        super().__init__(f"{option}: {problem}" if option else problem)
        self.problem, self.option = problem, option


class OutputExistsError(OutputError):
    """A stem file is already there and overwriting was not asked for."""


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


def render(template: str, out_dir: Path, folder: str, track: str, stem: str, ext: str) -> Path:
    """``out_dir / template`` with its fields filled; refuses anything that would leave ``out_dir``."""
    text = template.format(folder=folder, track=track, stem=stem, ext=ext)
    parts = [p for p in text.split("/") if p]
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
) -> list[SongOutputs]:
    """Every output path of every song, checked; raises :class:`OutputError` on the first problem.

    Two songs with the same {track} (``a/x.wav`` and ``b/x.wav`` named on the
    command line) get ``x`` and ``x (2)`` when ``rename_duplicates`` and the
    template has {track}; otherwise a shared path is an error naming both songs.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    stems = list(stems)
    if len(set(stems)) != len(stems):
        raise OutputError(f"a stem is named twice: {', '.join(stems)}", "stems")
    taken: dict[Path, SongSource] = {}
    plans = []
    for song in songs:
        base = track_name(song.path)
        for attempt in range(1, len(songs) + 2):
            track = base if attempt == 1 else f"{base} ({attempt})"
            paths = {s: render(options.filename, out_dir, song.folder, track, s, options.fmt) for s in stems}
            if len(set(paths.values())) != len(paths):
                raise OutputError(
                    f"{options.filename!r} gives one file for several stems; put {{stem}} in it", "filename"
                )
            clash = next((p for p in paths.values() if p in taken), None)
            if clash is None:
                break
            if not (rename_duplicates and "{track}" in options.filename):
                raise OutputError(
                    f"{taken[clash].path} and {song.path} would both write {clash}; "
                    "put {track} (and {folder} for batch) in the template",
                    "filename",
                )
        else:  # unreachable with {track} in the template; a guard against looping forever
            raise OutputError(f"cannot find a free name for {song.path}", "filename")
        _check_no_symlink_escape(out_dir, paths.values())
        taken.update(dict.fromkeys(paths.values(), song))
        plans.append(SongOutputs(song, track, out_dir, paths))
    return plans


def _nearest_existing(path: Path, stop: Path | None = None) -> Path:
    """``path`` or its nearest ancestor that exists (not climbing above ``stop``)."""
    while not os.path.lexists(path) and path != path.parent and path != stop:
        path = path.parent
    return path


def _check_out_dir(out_dir: Path) -> None:
    """The output folder, or its nearest existing ancestor, must be a writable folder."""
    probe = _nearest_existing(out_dir)
    if probe == out_dir and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder", "out")
    if not probe.is_dir():
        raise OutputError(f"cannot create {out_dir}: {probe} is not a folder", "out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {probe} (permission denied)", "out")


def _check_no_symlink_escape(out_dir: Path, paths: object) -> None:
    """A symbolic link inside the output folder must not carry stems out of it."""
    root = os.path.realpath(out_dir)
    for path in paths:
        parent = _nearest_existing(path.parent, stop=out_dir)
        real = os.path.realpath(parent)
        if os.path.commonpath([root, real]) != root:
            raise OutputError(f"{parent} is a link to {real}, outside the output folder", "out")


# --- writing one song ---------------------------------------------------------------------------


class _FloatTemp:
    """A float32 wav being streamed beside its destination (a hidden temporary name)."""

    def __init__(self, destination: Path, sample_rate: int, channels: int) -> None:
        self.destination = destination
        self.peak = 0.0
        self.path = temporary_sibling(destination, ".partial")
        try:
            self._file = sf.SoundFile(
                self.path, "w", samplerate=sample_rate, channels=channels, format="WAV", subtype="FLOAT"
            )
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def write(self, block: np.ndarray) -> None:
        """block: [frames, channels] float32."""
        if len(block):
            self.peak = max(self.peak, float(np.abs(block).max()))
            self._file.write(block)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


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
        self.song, self.options = song, options
        self.sample_rate, self.channels = sample_rate, channels
        self._temps: dict[str, _FloatTemp] = {}
        self._made_folders: list[Path] = []
        self._committed = False

    def __enter__(self) -> StemWriter:
        try:
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
                temp.write(stems[stem])
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise self._os_error(exc) from None

    def commit(self) -> float:
        """Convert and rename every stem into place; returns the gain applied (1.0: none).

        With ``clip_mode="rescale"`` and an integer format, all stems of the song
        are divided by one factor if any would clip, so they still sum to the mix.
        """
        options = self.options
        for temp in self._temps.values():
            temp.close()
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
        for path in self.song.paths.values():
            if os.path.isdir(path):
                raise OutputError(f"{path} is a folder; cannot write a stem there")
            if os.path.lexists(path) and not self.options.overwrite:
                raise OutputExistsError(f"{path} already exists; not overwriting it")

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
        clamp = self.options.clip_mode == "clamp"
        target = temporary_sibling(destination, ".partial")
        try:
            with sf.SoundFile(str(source)) as src:
                resample = BlockResampler(src.samplerate, rate, src.channels)
                with sf.SoundFile(
                    target,
                    "w",
                    samplerate=rate,
                    channels=src.channels,
                    format=container,
                    subtype=subtypes[self.options.bit_depth],
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
        """Rename every stem into place; on any failure put everything back as it was."""
        done: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)
        try:
            for stem, final in finals.items():
                destination = self.song.paths[stem]
                backup = None
                if os.path.lexists(destination):  # overwriting: keep the old file until all succeeded
                    backup = temporary_sibling(destination, ".backup")
                    try:
                        os.replace(destination, backup)
                    except BaseException:
                        backup.unlink(missing_ok=True)
                        raise
                done.append((destination, backup))
                os.replace(final, destination)
        except BaseException:
            for destination, backup in reversed(done):
                if backup is not None:
                    os.replace(backup, destination)
                else:
                    destination.unlink(missing_ok=True)
            raise
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)

    def _clean_up(self) -> None:
        for temp in self._temps.values():
            temp.close()
            temp.path.unlink(missing_ok=True)
        for folder in reversed(self._made_folders):
            with contextlib.suppress(OSError):  # only if empty: another song may have written there
                folder.rmdir()

    def _os_error(self, exc: BaseException) -> OutputError:
        """A failed write as one line; libsndfile says "System error." for a full disk, so look."""
        folder = self.song.out_dir
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = libsndfile_reason(exc)
            if _disk_is_full(folder):
                reason = f"no space left on device ({reason})"
        return OutputError(f"writing stems into {folder} failed: {reason}; nothing was written for this song")


def _disk_is_full(folder: Path) -> bool:
    try:
        st = os.statvfs(_nearest_existing(folder))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20  # under 1 MB left: that is why a stem could not be written
