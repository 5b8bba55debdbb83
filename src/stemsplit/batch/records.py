"""The done records of a batch output folder (``OUT/.stemsplit/done/<key>.json``) and the names they
have given songs.

A song's manifest is written when its stems are committed:
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
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import sha256_of, write_atomically
from ..output.plan import SongOutputs, SongSource, exists_error
from .songs import STATE_FOLDER, relative_outputs, slot_of, song_key, song_path_key, source_changed

__all__ = ["DoneRecords", "GivenNames"]


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
        self.holders: dict[str, str] = {}  # slot_of a given name -> the song_path_key holding it
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
                self.holders.setdefault(slot_of(template, given["folder"], given["track"]), given["key"])

    def given(self, song: SongSource) -> str | None:
        """The track name this song was given before, if any."""
        return self.by_song.get(song_path_key(song))

    def held(self, song: SongSource, track: str) -> bool:
        """Whether ``track`` would put ``song`` where a name given to another song puts that one."""
        holder = self.holders.get(slot_of(self.template, song.folder, track))
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
        present = {rel: p for rel, p in relative_outputs(song).items() if os.path.lexists(p)}
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
            record["files"] = {
                rel: _file_identity(p, hashed=True) for rel, p in relative_outputs(song).items()
            }
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
        mine, own = set(relative_outputs(song)), self._path(song).name
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
