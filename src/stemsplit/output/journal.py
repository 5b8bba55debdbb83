"""The commit journal: a power cut in the middle of a commit is finished by the next run.

Before its first rename a commit writes a journal into the output folder
(``.stemsplit-<host>-<pid>-<random>.journal``: every destination, the backup its old file is moved
to, and the identity of old and new file), and removes it when the commit is over. The next writer
into that folder finds the journal of a dead process (:func:`recover_unfinished_commits`) and
finishes its commit: rolled back (the user's old files put back, the half-committed stems removed),
or, if every stem had been renamed, rolled forward.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from ..files import host_tag, is_temporary, temporary_sibling, write_atomically, writer_gone
from .plan import OutputError


def identity(path: Path) -> list[int] | None:
    """(device, inode) of the file at ``path`` (not following a link), or None if there is none."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def backup_name(destination: Path) -> Path:
    """A free ``.backup`` temporary name beside ``destination`` (created by the rename that fills it)."""
    while True:
        path = destination.with_name(f".stemsplit-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.backup")
        if not os.path.lexists(path):
            return path


def check_inside(out_dir: Path, destination: Path) -> None:
    """``destination``'s folder must still lead into ``out_dir`` (a link may have been put there since)."""
    root, real = os.path.realpath(out_dir), os.path.realpath(destination.parent)
    if os.path.commonpath([root, real]) != root:
        raise OutputError(
            f"{destination.parent} now leads to {real}, outside the output folder; "
            "nothing was written for this song"
        )


def write_journal(out_dir: Path, entries: list) -> Path:
    """Write and sync the journal of a commit that is about to start; returns its path."""
    journal = temporary_sibling(out_dir / "commit", ".journal")
    record = {
        "entries": [
            {
                "destination": os.path.relpath(destination, out_dir),
                "final": os.path.relpath(final, out_dir),
                "backup": os.path.relpath(backup, out_dir),
                "old": old,
                "new": identity(final),
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
        complete = all(identity(dest) == new for dest, _, _, _, new in entries)
        clean = True
        for destination, final, backup, old, new in entries:
            try:
                if complete:
                    if old is not None and identity(backup) == old:
                        backup.unlink()
                    continue
                if identity(destination) == new:
                    destination.unlink()  # a stem of the unfinished commit
                if identity(final) == new:
                    final.unlink()
                if old is not None and identity(backup) == old:
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
                check_inside(out_dir, path)
            ids = [item["old"], item["new"]]
            if not all(i is None or (isinstance(i, list) and len(i) == 2) for i in ids):
                return None
            entries.append((destination, final, backup, *ids))
    except (OSError, ValueError, KeyError, TypeError, RecursionError, OutputError):
        return None
    return entries
