"""Files that appear whole or not at all: written under a temporary sibling name, then renamed.

Every file stemsplit writes for a user (stems, checkpoints, reports, the model
cache) goes through here, so a crash, Ctrl-C or full disk never leaves a
half-written file under the final name, and finished files get the usual
permissions (0666 minus the umask, as ``open()`` would give; ``tempfile.mkstemp``
would leave them readable by their owner only).

Temporary names are short and say who wrote them:
``.stemsplit-<host>-<pid>-<random><suffix>`` (about 40 characters whatever
the final name, so a legal 255-byte file name still has a legal temporary).
A process killed with SIGKILL, or a power cut, leaves its temporaries behind;
:func:`sweep_stale_temporaries` recognises them (same host and the process is
gone, or another host's file untouched for a day) and the next run that
writes into that folder removes them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "DISK_FULL",
    "creation_problem",
    "host_tag",
    "is_temporary",
    "nearest_existing",
    "process_alive",
    "sha256_of",
    "special_file",
    "sweep_stale_temporaries",
    "temporary_sibling",
    "write_atomically",
    "write_failure",
    "write_problem",
    "writer_gone",
]

PREFIX = ".stemsplit-"
# Another host's temporary is taken for abandoned after this long without a write (we cannot ask
# whether its process lives). Writers touch their files at least every few minutes.
FOREIGN_STALE_SECONDS = 24 * 3600
_NAME = re.compile(r"^\.stemsplit-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[a-z]+)$")


# How every message says that a disk is full, whichever writer found it (the stems, batch's records,
# reports, the model cache, checkpoints, synth): the system's words, in lower case as all reasons are.
DISK_FULL = "no space left on device"


def write_failure(exc: BaseException, folder: Path) -> str:
    """Why writing into ``folder`` failed, in the few words every message uses: an OSError's reason in
    lower case ("no space left on device", "permission denied", "read-only file system"); a library's
    error without one (libsndfile says only "System error." when the disk fills up) is
    :data:`DISK_FULL` when ``folder``'s disk is (nearly) full, else its own first line."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DISK_FULL
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    try:
        st = os.statvfs(nearest_existing(Path(folder)))
        if st.f_bavail * st.f_frsize < 1 << 20:  # under 1 MB left: that is why the write failed
            return DISK_FULL
    except OSError:
        pass
    text = str(exc).strip()
    text = text.splitlines()[-1] if text else type(exc).__name__
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text  # (soundfile's prefix)


def nearest_existing(path: Path, stop: Path | None = None) -> Path:
    """``path`` or its nearest ancestor that exists (not climbing above ``stop``): where a folder that
    is not there yet would be made."""
    while not os.path.lexists(path) and path != path.parent and path != stop:
        path = path.parent
    return path


def write_problem(folder: Path) -> str | None:
    """Why no file can be made in the existing ``folder``, in a few words, or None: one can.

    It asks the system itself, by making and removing an empty temporary
    (:func:`temporary_sibling`): ``os.access`` answers yes to root everywhere,
    /proc and read-only mounts included, and that was found only at the end of a
    run, when the first file went in.
    """
    try:
        probe = temporary_sibling(Path(folder) / "probe")
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # /proc, /sys: the folder is there but takes no new files
            return "it takes no new files"
        reason = exc.strerror or type(exc).__name__
        return reason[:1].lower() + reason[1:]
    with contextlib.suppress(OSError):  # it could be made: that answers; one left is a hidden temporary
        probe.unlink()
    return None


def creation_problem(folder: Path, named: Path | None = None) -> str | None:
    """Why files cannot go into ``folder`` (made first where it is missing), in one line, or None.

    The nearest existing folder on its path (:func:`nearest_existing`) must be a
    folder that takes new files (:func:`write_problem`). ``named``: what the
    message says cannot be created (default ``folder``; a report file, say).
    """
    nearest = nearest_existing(folder)
    if not nearest.is_dir():
        return f"cannot create {named or folder}: {nearest} is not a folder"
    if problem := write_problem(nearest):
        return f"cannot write into {nearest} ({problem})"
    return None


def host_tag() -> str:
    """Eight hex digits naming this machine (a hash: host names can hold anything)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_sibling(destination: Path, suffix: str = ".tmp") -> Path:
    """Create an empty, hidden file beside ``destination`` (same folder, so renaming is atomic).

    ``suffix`` is a dot and lowercase letters (``.tmp``, ``.partial``, ``.backup``).
    """
    destination = Path(destination)
    if not re.fullmatch(r"\.[a-z]+", suffix):
        raise ValueError(f"temporary suffix must be a dot and lowercase letters, not {suffix!r}")
    while True:
        name = f"{PREFIX}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        path = destination.with_name(name)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path


def is_temporary(path: Path) -> bool:
    """True for a name :func:`temporary_sibling` makes."""
    return _NAME.match(Path(path).name) is not None


def process_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this machine (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no pid can be
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def writer_gone(path: Path, now: float | None = None) -> bool:
    """True if the process that made temporary ``path`` is gone (False for names stemsplit never makes).

    This host's: its pid no longer exists. Another host's (we cannot ask whether
    its process lives): untouched for :data:`FOREIGN_STALE_SECONDS`.
    """
    match = _NAME.match(Path(path).name)
    if match is None:
        return False
    if match["host"] == host_tag():
        pid = int(match["pid"])
        return pid != os.getpid() and not process_alive(pid)
    now = time.time() if now is None else now
    try:
        return now - os.stat(path, follow_symlinks=False).st_mtime > FOREIGN_STALE_SECONDS
    except OSError:
        return False


def sweep_stale_temporaries(folder: Path, now: float | None = None) -> list[Path]:
    """Remove temporaries in ``folder`` whose writer is gone (:func:`writer_gone`); returns what was removed.

    Only names that :func:`temporary_sibling` makes are ever considered, and
    ``.backup`` and ``.journal`` files never are: a power cut mid-commit leaves
    the user's old file in a ``.backup``, and the ``.journal`` that says where it
    goes back (:func:`stemsplit.output.recover_unfinished_commits` puts it back).
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or match["suffix"] in (".backup", ".journal"):
            continue  # a commit cut short: its journal puts the user's file back, never the sweep
        if not entry.is_file(follow_symlinks=False) or not writer_gone(Path(entry.path), now):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # someone else swept it, or we may not: either way not ours to worry about
    return removed


_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file(path: Path) -> str | None:
    """What ``path`` is, when it is there but is not a file stemsplit may replace: "a character device"
    (``/dev/null``), a block device, a FIFO or a socket, or a symbolic link to one ("a symbolic link to
    /dev/null, a character device"). None when it is missing, a regular file or folder, or a symbolic
    link to one of those or to nothing: renaming a new file onto a link replaces the link, and the file
    it pointed to is left as it was.

    Writing over a device would replace the device node with a file (as root, in a container or CI),
    and a FIFO or socket is someone's open channel: never an output, whatever ``--overwrite`` says.
    """
    try:
        st = os.stat(path)  # follows a link: what the name leads to
    except (OSError, ValueError):
        return None
    kind = next((name for test, name in _KINDS if test(st.st_mode)), None)
    if kind is None:
        return None
    if os.path.islink(path):
        return f"a symbolic link to {os.path.realpath(path)}, {kind}"
    return kind


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temp)`` into a temporary sibling of ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` is untouched. A ``path`` that is a
    device, FIFO or socket (:func:`special_file`) raises :class:`FileExistsError` before anything is
    written: callers check their outputs up front, this is the last guard.
    """
    path = Path(path)
    if kind := special_file(path):
        raise FileExistsError(errno.EEXIST, f"is {kind}; stemsplit replaces regular files only", str(path))
    temp = temporary_sibling(path)
    mode = temp.stat().st_mode & 0o777
    try:
        write(temp)
        os.chmod(temp, mode)  # some writers (safetensors) re-create the file as 0600
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
