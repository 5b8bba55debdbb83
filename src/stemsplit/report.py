"""``--report run.jsonl``: one JSON line per song as it finishes, and a summary line at the end of the run.

A song's line (``"record": "song"``)::

    {"record": "song", "time": "2025-01-31T12:00:00Z", "source": "music/a.flac", "key": "a.flac",
     "status": "done", "outputs": {"vocals": "stems/a/vocals.wav", ...}, "error": null, "reason": null,
     "seconds": 41.2, "audio_seconds": 212.0, "real_time_factor": 0.194, "model": "<sha256>",
     "host": "node17", "pid": 4242, "rank": null, "world": null, "shard": "3/8"}

With ``--ray`` the report is written by the driver, and a song's ``host`` and ``pid`` are those of the Ray
worker that separated it, ``worker`` its name (``SongWorker-2``) and ``attempts`` how many workers it took
(more than 1 when a worker died under it); the summary line names the driver.

``status`` is ``done``, ``skipped`` (``reason`` says why: done earlier, or by another process)
or ``failed`` (``error`` says why, as the error line did). ``seconds`` is the wall time the song took
here, ``audio_seconds`` its length, ``real_time_factor`` their ratio for a song separated here (under 1:
faster than real time). ``key`` is the song's path under the folder walked (batch: what ``--shard``
hashes). ``model`` is the fingerprint batch's manifests record (null when no model was loaded).

The last line (``"record": "summary"``) counts the songs by status and gives the hours of audio
separated, the run's wall time (from the start of the command, model loading included) and the
throughput (audio seconds separated per second); ``interrupted`` is true when the run was stopped.

Lines are appended: the file is opened with ``O_APPEND`` and each line goes out in one ``write(2)``,
so processes sharing one report on one machine never interleave their lines, and the file can be read
(``tail -f``, ``jq``) while runs go on. ``O_APPEND`` is not atomic over NFS between hosts: there, give
each host or array task a report of its own.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from .files import creation_problem

__all__ = ["RunReport", "report_problem"]


def report_problem(path: Path) -> str | None:
    """Why lines cannot be appended to ``path``, in a few words, or None. Creates and changes nothing."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # not there yet (or a file where a folder should be)
        if os.path.lexists(path):
            return f"{path} is a symbolic link to nothing"
        return creation_problem(path.parent, named=path)
    except OSError as exc:
        return f"{path}: {(exc.strerror or str(exc)).lower()}"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a folder; name the report's file"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    try:  # opening for appending writes nothing: the system itself says whether we may
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
    except OSError as exc:
        return f"{path} cannot be written: {(exc.strerror or str(exc)).lower()}"
    return None


class RunReport:
    """The report of one process's run: :meth:`song` for each song as it finishes, :meth:`summary` last.

    ``context``: what every line carries about the process (rank, world, shard); the host and pid are
    added. Nothing is created before the first line. A line that cannot be written is not retried:
    :attr:`problem` says why, and the run goes on (its stems matter more than its report).
    """

    def __init__(self, path: Path, context: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.context = {"host": socket.gethostname(), "pid": os.getpid(), **(context or {})}
        self.model: str | None = None  # the model's fingerprint, once it is loaded
        self.started = time.perf_counter()
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.audio_seconds = 0.0  # of the songs separated here
        self.problem: str | None = None
        self._fd: int | None = None

    def song(
        self,
        source: Path,
        status: str,
        *,
        key: str | None = None,
        outputs: dict[str, str] | None = None,
        message: str | None = None,
        seconds: float,
        audio_seconds: float | None,
        where: dict[str, Any] | None = None,
    ) -> str | None:
        """Append one song's line; returns the problem when it could not be written (the first time only).

        ``message``: the error of a failed song, the reason of a skipped one. ``where``: the process that
        ran the song when it is not this one (``--ray``: the worker's host, pid and name), over the context.
        """
        self.counts[status] += 1
        separated = status == "done" and audio_seconds is not None
        if separated:
            assert audio_seconds is not None
            self.audio_seconds += audio_seconds
        record = {
            "record": "song",
            "time": _now(),
            "source": str(source),
            "key": key,
            "status": status,
            "outputs": outputs,
            "error": message if status == "failed" else None,
            "reason": message if status == "skipped" else None,
            "seconds": round(seconds, 3),
            "audio_seconds": None if audio_seconds is None else round(audio_seconds, 3),
            "real_time_factor": round(seconds / audio_seconds, 4) if separated and audio_seconds else None,
            "model": self.model,
            **self.context,
            **(where or {}),
        }
        return self._append(record)

    def summary(self, interrupted: bool = False) -> str | None:
        """Append the summary line; returns the problem when it could not be written (the first time only)."""
        seconds = time.perf_counter() - self.started
        record = {
            "record": "summary",
            "time": _now(),
            "songs": sum(self.counts.values()),
            **self.counts,
            "audio_hours": round(self.audio_seconds / 3600, 6),
            "seconds": round(seconds, 3),
            "throughput": round(self.audio_seconds / seconds, 4) if seconds > 0 else None,
            "interrupted": interrupted,
            "model": self.model,
            **self.context,
        }
        problem = self._append(record)
        self.close()
        return problem

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _append(self, record: dict[str, Any]) -> str | None:
        if self.problem is not None:
            return None
        data = (json.dumps(record) + "\n").encode()
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                self._fd = os.open(self.path, flags, 0o666)
            written = os.write(self._fd, data)  # one write: a whole line, at the end, whoever else appends
            while written < len(data):  # only a full disk or a signal cuts a write to a file short
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            self.problem = f"--report: {exc.filename or self.path}: {(exc.strerror or str(exc)).lower()}"
            return self.problem
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
