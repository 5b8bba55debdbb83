"""Sharing a batch between processes: ``OUT/.stemsplit/claims/<slot>.claim``, one per song.

A claim is created with ``O_EXCL`` before a song is separated,
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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..files import host_tag, process_alive
from ..output.plan import DEFAULT_FILENAME, SongOutputs
from .songs import STATE_FOLDER, song_slot

__all__ = ["CLAIM_LEASE_SECONDS", "CLAIM_POLL_SECONDS", "HEARTBEAT_SECONDS", "Claim", "process_space"]

HEARTBEAT_SECONDS = 30.0  # a held claim is touched this often (by a thread: however long a window takes)
CLAIM_STALE_SECONDS = 600.0  # a claim whose mtime is this old by our clock: its process is gone
# A claim of another host (or container) seen unchanged for this long by our own monotonic clock: its
# process is gone. Measured by watching, so it holds whatever the hosts' clocks say.
CLAIM_LEASE_SECONDS = 120.0
CLAIM_POLL_SECONDS = 3.0  # how often a run looks again at songs that others are separating
_TAKEOVER_STALE_SECONDS = 60.0  # a takeover lock lives for milliseconds; older means its holder died


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
        if not isinstance(theirs, dict):
            theirs = {}
            names: list[str] = []
        else:
            names = sorted(set(theirs) | set(self.settings))
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
