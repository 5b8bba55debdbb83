"""Whole folders: finding the songs, remembering which are done, sharing the work between processes.

``stemsplit batch music/ -o stems/`` mirrors the input tree:
``stems/<folder under music>/<track>/<stem>.<ext>``. What a run knows lives in
``stems/.stemsplit/``:

- ``done/<key>.json``: a song's manifest, written when its stems are committed:
  the source (its real path, however the input folder was spelled or linked to;
  size, mtime, SHA-256 of its bytes), the name it was given (``song``: its path
  under the folder walked, its {folder} and {track}: :class:`GivenNames` keeps
  it), and the settings that change the stems (model fingerprint, window, hop,
  stage, format, ...). A song counts as done only if its manifest matches the
  source (the same file untouched, or the same bytes: a moved or copied input
  folder) and the settings; anything else is separated again, never skipped. A finished
  manifest also lists the files it committed (size, mtime, inode, SHA-256):
  while a file is that file, it is stemsplit's own and is replaced without
  ``--overwrite``; a file nobody's manifest shows (the user's, or a stem the
  user edited) is not. Runs with other stems or formats write other manifests
  for the same song; when one replaces files another lists, the other is
  marked unfinished, so it never calls the song done with another run's stems.
- ``claims/<slot>.claim``: created with ``O_EXCL`` before a song is separated,
  so several ``batch`` processes (on one machine, or on several hosts over a
  shared folder) each separate a song exactly once. A claim whose process died
  is taken over: in the same process space (:func:`process_space`: host name,
  boot, pid namespace) when its pid is gone, from anywhere else when it was seen
  untouched for :data:`CLAIM_LEASE_SECONDS` (live claims are touched every
  :data:`HEARTBEAT_SECONDS` by a thread while their song runs). A run waits for
  the songs others hold (the CLI looks again every :data:`CLAIM_POLL_SECONDS`),
  so it ends only when each is done, by its holder or by itself. A claim
  carries its run's settings: a run with other settings (another format, other
  stems, another model...) that finds the song claimed fails that song, saying
  so, rather than mixing its stems with the other run's in one folder.

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

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audio.info import AUDIO_EXTENSIONS
from ..errors import StemsplitError
from ..files import host_tag, process_alive, sha256_of, write_atomically
from ..output.plan import DEFAULT_FILENAME, SongOutputs, SongSource, exists_error, path_parts

__all__ = [
    "BatchError",
    "Claim",
    "DoneRecords",
    "GivenNames",
    "Shard",
    "SourceChangedError",
    "find_songs",
    "parse_shard",
    "shard_of",
    "song_key",
    "song_slot",
    "source_changed",
]

STATE_FOLDER = ".stemsplit"
HEARTBEAT_SECONDS = 30.0  # a held claim is touched this often (by a thread: however long a window takes)
CLAIM_STALE_SECONDS = 600.0  # a claim whose mtime is this old by our clock: its process is gone
# A claim of another host (or container) seen unchanged for this long by our own monotonic clock: its
# process is gone. Measured by watching, so it holds whatever the hosts' clocks say.
CLAIM_LEASE_SECONDS = 120.0
CLAIM_POLL_SECONDS = 3.0  # how often a run looks again at songs that others are separating
_TAKEOVER_STALE_SECONDS = 60.0  # a takeover lock lives for milliseconds; older means its holder died


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
    """``"I/N"`` (1 <= I <= N) -> :class:`Shard`; ``ValueError`` saying what is wrong otherwise."""
    parts = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)
    if parts is None:
        raise ValueError(f"{text!r} is not I/N (share I of N, counted from 1: 1/4, 2/4, 3/4, 4/4)")
    shard = Shard(int(parts[1]), int(parts[2]))
    if shard.count < 1:
        raise ValueError(f"{text}: N must be at least 1")
    if not 1 <= shard.index <= shard.count:
        raise ValueError(f"{text}: I must be 1 to {shard.count} (shares are counted from 1)")
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


def song_key(song: SongOutputs) -> str:
    """A name for one output slot: a hash of the song's output paths relative to the output folder."""
    relative = sorted(_relative(song))
    return hashlib.sha256("\0".join(relative).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def song_slot(song: SongOutputs, template: str = DEFAULT_FILENAME) -> str:
    """A name for a song's place under the output folder, whatever its stems and format.

    A hash of ``template`` filled with the song's {folder} and {track}, {stem} and {ext} left open, its
    empty path parts dropped as the output paths drop them (:func:`~stemsplit.output.plan.path_parts`):
    templates that give the same paths (``{folder}/{track}/...`` for a song with no folder,
    ``{track}/...``) share the claim.
    """
    return _slot(template, song.source.folder, song.track)


def _slot(template: str, folder: str, track: str) -> str:
    text = template.format(folder=folder, track=track, stem="\0stem", ext="\0ext")
    text = "/".join(path_parts(text))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class GivenNames:
    """The track names batch has given songs in an output folder, read from its manifests: a name once
    given stays (for :func:`~stemsplit.output.plan_outputs`).

    ``a.flac`` and ``a.wav`` get ``a`` and ``a (2)``; when ``a.mp3`` comes, it must not take ``a (2)``
    from ``a.wav`` (whose stems would move, and all of them be separated again): each song keeps the
    name its manifest records (by its path under the folder walked, :func:`song_path_key`, so a moved
    input folder keeps its names too), and a new song takes none that another song holds, there or
    gone (its stems are still there).
    """

    def __init__(self, out_dir: Path, template: str) -> None:
        self.template = template
        self.by_song: dict[str, str] = {}  # song_path_key -> its track name
        self.holders: dict[str, str] = {}  # _slot of a given name -> the song_path_key holding it
        folder = Path(out_dir) / STATE_FOLDER / "done"
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".json"))
        except OSError:
            return
        for name in names:
            given = (_load_manifest(folder / name) or {}).get("song")
            if not isinstance(given, dict) or not all(
                isinstance(given.get(k), str) for k in ("key", "folder", "track")
            ):
                continue  # not a manifest, or one from before names were recorded
            self.by_song.setdefault(given["key"], given["track"])
            with contextlib.suppress(ValueError, KeyError, IndexError):  # (a template that cannot be filled)
                self.holders.setdefault(_slot(template, given["folder"], given["track"]), given["key"])

    def given(self, song: SongSource) -> str | None:
        """The track name this song was given before, if any."""
        return self.by_song.get(song_path_key(song))

    def held(self, song: SongSource, track: str) -> bool:
        """Whether ``track`` would put ``song`` where a name given to another song puts that one."""
        holder = self.holders.get(_slot(self.template, song.folder, track))
        return holder is not None and holder != song_path_key(song)


class DoneRecords:
    """The manifests of a batch output folder (``OUT/.stemsplit/done``)."""

    def __init__(self, out_dir: Path, settings: Mapping[str, Any]) -> None:
        self.folder = Path(out_dir) / STATE_FOLDER / "done"
        self.settings = json.loads(json.dumps(dict(settings)))  # as it will read back from JSON
        self._listed: dict[str, frozenset[str]] = {}  # manifest file name -> the paths it lists

    def _path(self, song: SongOutputs) -> Path:
        return self.folder / f"{song_key(song)}.json"

    def read(self, song: SongOutputs) -> dict[str, Any] | None:
        return _load_manifest(self._path(song))

    def is_done(self, song: SongOutputs, by_bytes: bool = True) -> bool:
        """True if the song's stems are there and were made from this very source with these settings.

        The source is the recorded file, untouched (same real path, size, mtime, inode and ctime), or,
        with ``by_bytes``, a file of the same bytes: the same song touched, restored from a backup,
        or reached at another path because the input folder was moved, copied or mounted elsewhere.
        Then the record is brought up to date (its path and identity), so that the next run need
        not read the song again: call it with ``by_bytes`` only while holding the song's claim.
        """
        record = self.read(song)
        if not record or not record.get("complete") or record.get("settings") != self.settings:
            return False
        if not all(os.path.isfile(p) for p in song.paths.values()):
            return False
        try:
            st = os.stat(song.source.path)
        except OSError:
            return False
        # Size, mtime, inode and ctime all unchanged: the same file, untouched (ctime cannot be set back,
        # and a file swapped in by `mv` has another inode). Otherwise the bytes decide.
        identity = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        source = os.path.realpath(song.source.path)
        if source == record.get("source") and identity == record.get("identity"):
            return True
        if not by_bytes or st.st_size != record.get("size"):
            return False
        try:
            if sha256_of(song.source.path) != record.get("sha256"):
                return False
        except OSError:
            return False
        self._write_record(self._path(song), {**record, "source": source, "identity": identity})
        return True

    def begin(self, song: SongOutputs, overwrite: bool) -> None:
        """Before a song's stems are committed: check its paths, retire the records they replace, record it.

        A file at one of its paths that no record shows to be stemsplit's own, untouched since, is refused
        (:class:`~stemsplit.output.OutputExistsError` naming it) unless ``overwrite``. Then every other
        record that lists one of the song's paths is marked unfinished: those files are about to be
        replaced, so that record may no longer call its song done (if this song then fails, the other is
        separated again when its settings come back: work, never harm). Last, the song's own record,
        unfinished until :meth:`write` with ``complete=True``.
        """
        others = self._others(song)
        foreign = self._foreign(song, [record for _, record in others])
        if foreign and not overwrite:
            raise exists_error(foreign[0], others=len(foreign) - 1)
        for path, record in others:
            if record.get("complete"):
                record["complete"] = False
                self._write_record(path, record)
        self.write(song, complete=False)

    def _foreign(self, song: SongOutputs, others: list[dict[str, Any]]) -> list[Path]:
        """The files at this song's paths that no record vouches for.

        A finished record lists each file it committed (size, mtime, inode, SHA-256): the file at that
        path is ours while it is that file. The song's own unfinished record (a run stopped during its
        commit) vouches for all its paths: its run found nothing of anyone else's there.
        """
        present = {rel: p for rel, p in _relative(song).items() if os.path.lexists(p)}
        own = self.read(song) if present else None
        return [
            p
            for rel, p in present.items()
            if not (own is not None and _vouches(own, rel, p, own=True))
            and not any(_vouches(record, rel, p, own=False) for record in others)
        ]

    def write(self, song: SongOutputs, complete: bool) -> None:
        """Record the song: ``complete=False`` before its stems are committed (:meth:`begin`), True after.

        ``complete=True`` raises :class:`SourceChangedError` (the record stays unfinished, so the next run
        separates the song again) if the source is not the file :meth:`begin` recorded, untouched.
        """
        path = song.source.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise source_changed(path, gone=True) from None
        if complete:
            started = (self.read(song) or {}).get("identity")
            if started != [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]:
                raise source_changed(path, gone=False)
        record = {
            "source": os.path.realpath(song.source.path),
            "size": st.st_size,
            "identity": [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns],
            "sha256": sha256_of(song.source.path) if complete else None,
            "settings": self.settings,
            "outputs": {stem: str(p.relative_to(song.out_dir)) for stem, p in song.paths.items()},
            "song": {"key": song_path_key(song.source), "folder": song.source.folder, "track": song.track},
            "complete": complete,
        }
        if complete:
            record["files"] = {rel: _file_identity(p, hashed=True) for rel, p in _relative(song).items()}
        self._write_record(self._path(song), record)

    def _write_record(self, path: Path, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=1)
        write_atomically(path, lambda temp: temp.write_text(text))

    def _others(self, song: SongOutputs) -> list[tuple[Path, dict[str, Any]]]:
        """The other records that list one of this song's output paths (another run's stems or format).

        The folder holds a manifest per song and output set; which paths a manifest lists never changes
        (its name is their hash), so each is parsed once per process and a song costs one listing.
        """
        mine, own = set(_relative(song)), self._path(song).name
        try:
            names = [e.name for e in os.scandir(self.folder) if e.name.endswith(".json") and e.name != own]
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            record = None
            if name not in self._listed:
                record = _load_manifest(self.folder / name)
                self._listed[name] = frozenset(_listed_paths(record))
            if self._listed[name] & mine:
                # A manifest parsed earlier is read again: another process may have marked it since.
                record = record or _load_manifest(self.folder / name)
                if record is not None:
                    found.append((self.folder / name, record))
        return found


MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes; anything far larger is not one


def _load_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest's record, or None for anything else there (missing, a folder, a FIFO, junk)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:  # no hang on a FIFO
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _listed_paths(record: dict[str, Any] | None) -> set[str]:
    outputs = record.get("outputs") if record else None
    return {rel for rel in outputs.values() if isinstance(rel, str)} if isinstance(outputs, dict) else set()


def _relative(song: SongOutputs) -> dict[str, Path]:
    """The song's output paths by their names relative to the output folder (as manifests list them)."""
    return {str(p.relative_to(song.out_dir)): p for p in song.paths.values()}


def _file_identity(path: Path, hashed: bool) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    identity: dict[str, Any] = {"stat": [st.st_size, st.st_mtime_ns, st.st_ino]}
    if hashed:
        identity["sha256"] = sha256_of(path)
    return identity


def _vouches(record: dict[str, Any], rel: str, path: Path, own: bool) -> bool:
    """Whether ``record`` shows the file at ``path`` (``rel`` under the output folder) to be ours."""
    if rel not in _listed_paths(record):
        return False
    files = record.get("files")
    if not isinstance(files, dict):  # unfinished, or written before manifests listed their files
        return own
    committed = files.get(rel)
    if not isinstance(committed, dict):
        return False
    now = _file_identity(path, hashed=False)
    if now is None:
        return False
    if now["stat"] == committed.get("stat"):
        return True
    if now["stat"][0] != (committed.get("stat") or [None])[0]:
        return False
    try:  # the same size but touched, copied or restored: the bytes decide
        return sha256_of(path) == committed.get("sha256")
    except OSError:
        return False


# --- sharing the work ---------------------------------------------------------------------------


@functools.cache
def process_space() -> str:
    """Eight hex digits naming where this process's pid means something: the host name, the boot and the
    pid namespace. A container restarted under the same host name (even as pid 1 again) is another
    space, so a claim of its previous life is never taken for a live process of this one."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:8]


class Claim:
    """One song's claim file: at most one process holds it at a time.

    ``acquire()`` creates it with ``O_EXCL`` (atomic on local and NFS file
    systems), or takes over a stale one; while held, a thread touches it every
    :data:`HEARTBEAT_SECONDS`; ``release()`` stops that and removes it.

    Stale: in this process space (:func:`process_space`), when its pid is gone; from anywhere else
    (another host, a restarted container), when this object has watched it stay unchanged for
    :data:`CLAIM_LEASE_SECONDS` (ask again with the same object: a run that finds a song claimed
    comes back to it), or at once when its mtime is :data:`CLAIM_STALE_SECONDS` old.
    """

    def __init__(
        self,
        out_dir: Path,
        song: SongOutputs,
        template: str = DEFAULT_FILENAME,
        settings: Mapping[str, Any] | None = None,
        token: str | None = None,
    ) -> None:
        self.path = Path(out_dir) / STATE_FOLDER / "claims" / f"{song_slot(song, template)}.claim"
        self.token = token or secrets.token_hex(8)
        self.settings = json.loads(json.dumps(dict(settings or {})))  # as it will read back from JSON
        self._beat = 0.0
        self._beating: threading.Event | None = None  # set to stop the heartbeat thread
        self._seen: tuple[Any, float] | None = None  # the holder's claim as last seen, and since when
        self.holder = ""  # who holds it, when acquire() fails
        self.conflict: list[str] = []  # and the settings its holder runs with that differ from ours

    def acquire(self, dead: Collection[str] = ()) -> bool:
        """Create the claim, or take over a stale one; False if a live process holds it.

        ``dead``: tokens of claims known to be stale whatever their host and age says (a scheduler that
        saw the worker holding them die, :mod:`stemsplit.cli.ray_batch`, retries the song at once elsewhere).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create() or self._take_over_if_stale(frozenset(dead)):
            self._start_heartbeat()
            return True
        data = self._read()
        self.holder = self._describe(data)
        theirs = (data or {}).get("settings")
        names = sorted(set(theirs) | set(self.settings)) if isinstance(theirs, dict) else []
        self.conflict = [k for k in names if theirs.get(k) != self.settings.get(k)]
        return False

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._beat >= HEARTBEAT_SECONDS:
            self._beat = now
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def _start_heartbeat(self) -> None:
        stop = self._beating = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                self.heartbeat()

        threading.Thread(target=beat, name=f"claim {self.path.name}", daemon=True).start()

    def release(self) -> None:
        if self._beating is not None:
            self._beating.set()
            self._beating = None
        if (self._read() or {}).get("token") == self.token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    # -- helpers --

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        info = {
            "host": host_tag(),
            "space": process_space(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "settings": self.settings,
        }
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        self._beat = time.monotonic()
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            if not self.path.is_file():
                return None
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def _is_stale(self, dead: frozenset[str] = frozenset()) -> bool:
        data = self._read()
        try:  # opened, not only stat()ed: NFS revalidates a file's attributes on open (close-to-open)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # (no hang on a FIFO put there)
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError:
            return False  # gone: not stale, just free (the next _create decides)
        age = time.time() - st.st_mtime
        if data is None:  # unreadable or half-written by a process that died creating it
            return age > HEARTBEAT_SECONDS
        if data.get("token") in dead:
            return True
        if age > CLAIM_STALE_SECONDS:  # live claims are touched every HEARTBEAT_SECONDS (a reused pid too)
            return True
        space = data.get("space")  # (claims written before spaces name the host alone)
        if space == process_space() if space is not None else data.get("host") == host_tag():
            pid = data.get("pid")
            return not (isinstance(pid, int) and 0 < pid < 1 << 22 and process_alive(pid))
        stamp = (st.st_mtime_ns, st.st_size, data.get("token"))  # another host's, or a container's before
        now = time.monotonic()
        if self._seen is None or self._seen[0] != stamp:
            self._seen = (stamp, now)
            return False
        return now - self._seen[1] > CLAIM_LEASE_SECONDS

    def _take_over_if_stale(self, dead: frozenset[str]) -> bool:
        """Replace a stale claim by ours; a takeover lock makes sure only one process does it."""
        lock = self.path.with_name(self.path.name + ".takeover")
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - lock.stat().st_mtime > _TAKEOVER_STALE_SECONDS:
                    lock.unlink()
            return False
        try:
            if not self._is_stale(dead):  # decided while holding the lock: nobody else can change it now
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return self._create()
        finally:
            lock.unlink(missing_ok=True)

    @staticmethod
    def _describe(data: dict[str, Any] | None) -> str:
        if not data:
            return "another process"
        return f"process {data.get('pid')} on {data.get('hostname', 'another host')}"
