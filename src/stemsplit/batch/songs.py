"""Finding a batch's songs and naming them: the folders walked, ``--shard I/N`` shares, the keys of a
song's done record and of its claim.

``stemsplit batch music/ -o stems/`` mirrors the input tree:
``stems/<folder under music>/<track>/<stem>.<ext>``. What a run knows lives in
``stems/.stemsplit/`` (:data:`STATE_FOLDER`): the songs' done records (:mod:`.records`) and the
claims of the songs being separated (:mod:`.claims`).

``key`` is a hash of the song's output paths (relative to ``-o``): one set of
outputs, one manifest. ``slot`` is a hash of the song's place in the template
with ``{stem}`` and ``{ext}`` left open (:func:`song_slot`): runs writing other
stems or another format into the same folder share the song's claim.

Static shards (``--shard I/N``, for job arrays): each song belongs to one of N
shares by a hash of its path relative to the folder walked (:func:`shard_of`),
so a share never depends on which other songs are in the tree, nor on the
settings, the host or how the folder was spelled. Shards only divide the work;
claims and manifests still decide it, so overlapping shards (after a resize
from 8 to 10, say) never separate a song twice.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..audio.info import AUDIO_EXTENSIONS
from ..errors import StemsplitError
from ..output.plan import DEFAULT_FILENAME, SongOutputs, SongSource, path_parts

__all__ = [
    "STATE_FOLDER",
    "BatchError",
    "FoundSongs",
    "Shard",
    "SourceChangedError",
    "find_songs",
    "parse_shard",
    "relative_outputs",
    "shard_of",
    "slot_of",
    "song_key",
    "song_path_key",
    "song_slot",
    "source_changed",
]

STATE_FOLDER = ".stemsplit"


class BatchError(StemsplitError):
    """A folder cannot be walked, or the run's state folder cannot be used."""


class SourceChangedError(BatchError):
    """A song changed or went while it was being separated: its stems are not known to be of its bytes."""


def source_changed(path: Path, gone: bool, resumable: bool = True) -> SourceChangedError:
    """The one wording of a song that changed or went between its probe and its commit (docs/separating.md
    promises it): ``gone`` when it is no longer there (removed or renamed); ``resumable`` for batch, whose
    next run separates it again."""
    what = "it is gone: removed or renamed" if gone else "it was written to or replaced"
    then = "its stems are not marked done, so the next run separates it again"
    if not resumable:
        then = "none of its stems were written"
    return SourceChangedError(f"{path}: changed or went while it was read ({what}); {then}")


# --- finding songs ------------------------------------------------------------------------------


@dataclass
class FoundSongs:
    songs: list[SongSource] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped and why (loops, unreadable folders)
    # A name reaching a song of the run a second time (a hard link, a symbolic link): (it, that song).
    same_files: list[tuple[Path, SongSource]] = field(default_factory=list)


def find_songs(folders: Sequence[Path], out_dir: Path) -> FoundSongs:
    """Audio files under ``folders`` (recursive, sorted), each with its folder relative to its root.

    Skipped: hidden files and folders, the output folder (when it lies inside
    an input folder; an output folder holding an input folder is walked as
    usual), a folder reached a second time (a symbolic-link loop) and a file
    reached a second time (a hard or symbolic link to a song of the run: listed in
    ``same_files``, so the run can say so). An input folder inside another (``music``
    and ``music/A``) is walked as part of the outer one, whatever the order they are
    given in: the layout never depends on the order of the arguments.
    """
    found = FoundSongs()
    out_real = os.path.realpath(out_dir)
    seen_folders: set[tuple[int, int]] = set()
    seen_files: dict[tuple[int, int], SongSource] = {}

    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)

    def walk(folder: Path, relative: str, root: str) -> None:
        real = os.path.realpath(folder)
        if inside(real, out_real) and not inside(root, out_real):
            return  # our own output: separating it again would grow the tree on every run
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            found.notes.append(f"{folder}: skipped ({exc.strerror or exc})")
            return
        if (st.st_dev, st.st_ino) in seen_folders:
            found.notes.append(f"{folder}: skipped (a symbolic link back to a folder already walked)")
            return
        seen_folders.add((st.st_dev, st.st_ino))
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir():
                    walk(path, f"{relative}/{entry.name}" if relative else entry.name, root)
                elif entry.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
                    fst = entry.stat()
                    first = seen_files.setdefault((fst.st_dev, fst.st_ino), SongSource(path, relative))
                    if first.path == path:
                        found.songs.append(first)
                    else:
                        found.same_files.append((path, first))
            except OSError as exc:  # a dangling link, a file removed while walking
                found.notes.append(f"{path}: skipped ({exc.strerror or exc})")

    roots = []
    for folder in folders:
        if not folder.is_dir():
            raise BatchError(f"{folder}: not a folder")
        roots.append((folder, os.path.realpath(folder)))
    for index, (folder, real) in enumerate(roots):
        outer = next((other for other, r in roots if r != real and inside(real, r)), None)
        if outer is not None:
            found.notes.append(f"{folder}: inside {outer}, walked as part of it")
        elif all(r != real for _, r in roots[:index]):  # the same folder named twice (however spelled): once
            walk(folder, "", real)
    return found


# --- static shards -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (1-based) of ``count``: ``--shard 3/8`` is ``Shard(3, 8)``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, songs: Sequence[SongSource]) -> list[SongSource]:
        """The songs of this share, in their order."""
        return [song for song in songs if shard_of(song, self.count) == self.index]


def parse_shard(text: str) -> Shard:
    """``"I/N"`` (1 <= I <= N) -> :class:`Shard`; a :class:`BatchError` (option ``shard``) otherwise."""
    parts = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
    if parts is None:
        raise BatchError(f"{text!r} is not I/N (share I of N, counted from 1: 1/4, 2/4, 3/4, 4/4)", "shard")
    shard = Shard(int(parts[1]), int(parts[2]))
    if shard.count < 1:
        raise BatchError(f"{text}: N must be at least 1", "shard")
    if not 1 <= shard.index <= shard.count:
        raise BatchError(f"{text}: I must be 1 to {shard.count} (shares are counted from 1)", "shard")
    return shard


def song_path_key(song: SongSource) -> str:
    """The song's path relative to the folder walked (``Album A/01 Intro.flac``): the same on every host,
    however the folder is spelled or mounted."""
    return f"{song.folder}/{song.path.name}" if song.folder else song.path.name


def shard_of(song: SongSource, count: int) -> int:
    """Which of ``count`` shares (1-based) the song belongs to: SHA-256 of :func:`song_path_key`, mod
    ``count``. Nothing else goes in, so adding or removing songs moves no other song between shares."""
    digest = hashlib.sha256(song_path_key(song).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


# --- what is done -------------------------------------------------------------------------------


def relative_outputs(song: SongOutputs) -> dict[str, Path]:
    """The song's output paths by their names relative to the output folder (as manifests list them)."""
    return {str(p.relative_to(song.out_dir)): p for p in song.paths.values()}


def song_key(song: SongOutputs) -> str:
    """A name for one output slot: a hash of the song's output paths relative to the output folder."""
    relative = sorted(relative_outputs(song))
    return hashlib.sha256("\0".join(relative).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def song_slot(song: SongOutputs, template: str = DEFAULT_FILENAME) -> str:
    """A name for a song's place under the output folder, whatever its stems and format.

    A hash of ``template`` filled with the song's {folder} and {track}, {stem} and {ext} left open, its
    empty path parts dropped as the output paths drop them (:func:`~stemsplit.output.plan.path_parts`):
    templates that give the same paths (``{folder}/{track}/...`` for a song with no folder,
    ``{track}/...``) share the claim.
    """
    return slot_of(template, song.source.folder, song.track)


def slot_of(template: str, folder: str, track: str) -> str:
    """The claim slot of the song at {folder}/{track} in ``template``: :func:`song_slot`, from its parts."""
    text = template.format(folder=folder, track=track, stem="\0stem", ext="\0ext")
    text = "/".join(path_parts(text))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]
