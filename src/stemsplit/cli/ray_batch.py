"""``stemsplit batch music/ -o stems/ --ray``: the batch's songs separated by workers on a Ray cluster.

The driver (this process) plans the run exactly as a plain ``batch`` does (the songs, every output path,
every input probed, the model's stems and fingerprint: its copy of the model is loaded on its CPU only to
plan) and then hands the songs to *workers*: Ray actors that each load the model once, on their own device,
and separate one song per call with the plain batch's own :func:`~stemsplit.cli.song.separate_one`:
the done-manifest check, the song's claim, the all-or-nothing :class:`~stemsplit.output.StemWriter`
and the manifest written when its stems are committed. So a song is done, skipped or failed for the same
reasons as in a plain run, into the same ``-o`` (a shared file system on a cluster, or a local folder in
single-node mode), and a rerun with or without ``--ray`` skips exactly the songs that are done.

Why actor calls and not Ray Data: a batch is a list of a few thousand file paths, not a dataset of
tensors; what matters is that each song is written once, whole, by one worker, and retried only when its
worker died. Actor calls scheduled by a loop here give exactly that with Ray Core alone (no pyarrow or
pandas), and the loop sees each failure and decides: a worker that died (killed, out of memory, its node
lost) costs the song an attempt and the song goes to another worker at once, taking over the dead
attempt's claim (:meth:`~stemsplit.batch.claims.Claim.acquire`'s ``dead``); a song that fails for its own
reason (a damaged file) comes back as ``failed`` and is reported, never retried; a song whose workers
died :data:`MAX_ATTEMPTS` times is reported failed too. Ray's own task retries would retry on the same
(restarted) actor and cannot tell the two kinds of failure apart. A killed worker leaves no stems (they
are renamed into place only once all are written) and its temporaries are swept by the next writer into
that folder.

Ctrl-C (or SIGTERM): the songs in flight are cancelled; each worker sees it at its next batch of
windows, drops its song's temporaries and releases its claim; workers that do not answer within
:data:`CANCEL_SECONDS` are killed. A local cluster this run started is stopped.

Cross-song batching (``--songs-per-batch K``): a worker separates K songs at once, in threads, and their
windows go through the network together (:class:`~stemsplit.separate.WindowPool`): short songs fill a
GPU's batch that one short song cannot.

Ray moves the songs' plans and results between its own processes with pickle; what is read from disk is
as in any run (checkpoints with safetensors or ``weights_only``). Ray is imported only here, and only
when ``--ray`` is given.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..batch import CLAIM_POLL_SECONDS
from ..errors import UsageError, first_line
from .common import one_line
from .flags import SeparationFlags
from .model_args import load_separator
from .reporter import Reporter, print_summary
from .song import Song, record_settings, separate_one

__all__ = ["MAX_ATTEMPTS", "RayOptions", "SongWorker", "WorkerJob", "ray_problem", "separate_on_ray"]

MAX_ATTEMPTS = 3  # workers that may die under one song before it is reported failed
CANCEL_SECONDS = 30.0  # after Ctrl-C, how long workers get to drop their songs' temporaries
INSTALL = "pip install 'stemsplit-cli[ray]'"
_SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def ray_problem() -> str | None:
    """Why ``--ray`` cannot run here (Ray is not installed), or None; Ray itself is not imported."""
    if importlib.util.find_spec("ray") is None:
        return f"Ray is not installed; {INSTALL}"
    return None


@dataclass(frozen=True)
class RayOptions:
    """``--ray`` and its flags; None: decided once the cluster is known (:meth:`resolved`)."""

    address: str | None  # None: start a local cluster for this run
    workers: int | None
    cpus_per_worker: float | None
    gpus_per_worker: float | None
    songs_per_batch: int | None

    @classmethod
    def checked(
        cls,
        address: str | None,
        workers: int | None,
        cpus: float | None,
        gpus: float | None,
        songs: int | None,
        device: str,
    ) -> RayOptions:
        """The flags checked (a UsageError naming the flag); nothing is started."""
        if address is not None and not address.strip():
            raise UsageError("--ray-address: empty; give auto, host:port or ray://host:port")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers: {workers}; must be at least 1")
        if cpus is not None and not (0 < cpus < math.inf):
            raise UsageError(f"--cpus-per-worker: {cpus:g}; must be more than 0")
        if gpus is not None and not (0 <= gpus < math.inf):
            raise UsageError(f"--gpus-per-worker: {gpus:g}; must be 0 or more")
        if gpus and device == "cpu":
            raise UsageError(f"--gpus-per-worker: {gpus:g} with --device cpu; leave one of them out")
        if songs is not None and songs < 1:
            raise UsageError(f"--songs-per-batch: {songs}; must be at least 1")
        return cls(address and address.strip(), workers, cpus, gpus, songs)

    def resolved(self, cluster: dict[str, float], device: str, songs: int) -> tuple[int, float, float]:
        """(workers, CPUs and GPUs per worker) on a cluster with ``cluster`` resources, for ``songs`` songs.

        GPUs: one per worker where the cluster has any (unless ``--device cpu``); workers: as many as
        the cluster holds, never more than there are songs to give them. A worker larger than the
        whole cluster would wait for ever: a UsageError naming the flag.
        """
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if cluster.get("GPU", 0) > 0 and device != "cpu" else 0.0
        cpus = self.cpus_per_worker or 1.0
        for flag, wanted, kind in (("--gpus-per-worker", gpus, "GPU"), ("--cpus-per-worker", cpus, "CPU")):
            have = cluster.get(kind, 0)
            if wanted > have:
                raise UsageError(
                    f"{flag}: {wanted:g} a worker, and the Ray cluster has {have:g} {kind}s in all"
                )
        workers = self.workers
        if workers is None:
            fits = cluster.get("GPU", 0) / gpus if gpus else cluster.get("CPU", 1) / cpus
            workers = max(1, int(fits + 1e-9))
        per_worker = self.songs_per_batch or 1
        return max(1, min(workers, math.ceil(songs / per_worker))), cpus, gpus


@dataclass(frozen=True)
class WorkerJob:
    """What every worker needs to separate the run's songs as the driver planned them."""

    flags: SeparationFlags  # the command's options, its --model checked
    settings: Any  # the request's EngineSettings (each worker's device: the --device asked for)
    choice: Any  # the request's StemChoice
    ensemble: Any  # EnsembleSpec or None
    msst: Any  # MSSTConfig or None
    options: Any  # OutputOptions
    stems: list[str]  # the stems planned (the worker's model must give the same)
    fingerprint: str  # of the driver's model: a worker that loads other weights refuses to run


class _WorkerReporter(Reporter):
    """A worker's reporter: prints nothing, and keeps each song's events and facts for the driver (one
    song per thread). Sees Ctrl-C (the driver's ``ray.cancel``) at each batch of windows."""

    def __init__(self) -> None:
        self._local = threading.local()
        super().__init__(json_lines=False, quiet=True)

    # song_facts and heartbeat are per song: each song runs in its own thread
    @property
    def song_facts(self) -> dict[str, Any]:
        return self._local.__dict__.setdefault("song_facts", {})

    @song_facts.setter
    def song_facts(self, value: dict[str, Any]) -> None:
        self._local.song_facts = value

    @property
    def heartbeat(self) -> Any:
        return self._local.__dict__.get("heartbeat", lambda: None)

    @heartbeat.setter
    def heartbeat(self, value: Any) -> None:
        self._local.heartbeat = value

    @property
    def events(self) -> list[dict[str, Any]]:
        return self._local.__dict__.setdefault("events", [])

    def begin(self) -> None:
        self._local.events, self._local.song_facts = [], {}

    def emit(self, event: dict[str, Any]) -> None:
        super().emit(event)
        if event["event"] != "windows":  # progress stays here; what became of the song goes back
            self.events.append(event)

    def error(self, message: str, **fields: Any) -> None:
        self.emit({"event": "error", "message": message, **fields})  # the driver prints it

    def on_event(self, event: dict[str, Any]) -> None:
        if _cancelled():
            raise SongCancelled("cancelled")
        super().on_event(event)


class SongCancelled(Exception):
    """The driver cancelled the song (Ctrl-C): raised in the worker between batches of windows."""


def _cancelled() -> bool:
    import ray

    try:
        return ray.get_runtime_context().is_canceled()
    except (RuntimeError, AttributeError):  # not in a task
        return False


class SongWorker:
    """One worker: loads the model once, then separates the songs the driver gives it.

    A model that does not load, or loads with other stems or other weights than the driver's (another
    file at that path on this node), is no song's fault: every call then answers ``problem``, and the
    driver stops the run with it.
    """

    def __init__(self, job: WorkerJob, name: str) -> None:
        self.job, self.name = job, name
        self.problem: str | None = None
        self.reporter = _WorkerReporter()
        self.where = {"host": socket.gethostname(), "pid": os.getpid(), "worker": name}
        try:
            flags = job.flags
            self.separator = load_separator(
                flags.model, job.ensemble, job.msst, job.settings, flags.task, self.reporter
            )
            chosen = job.choice.resolve(self.separator.stems, self.separator.owner)
            if chosen != job.stems:
                self.problem = f"its model gives {', '.join(chosen)}, not {', '.join(job.stems)}"
            elif self.separator.fingerprint() != job.fingerprint:
                self.problem = "its model's weights differ from the driver's (another file at that path?)"
            from ..batch import DoneRecords

            settings = record_settings(self.separator, job.options, flags.downmix, flags.stream, chosen)
            self.records = DoneRecords(flags.out, settings)
            songs = flags.songs_per_batch or 1
            self.pool = self.separator.pool_windows(songs) if songs > 1 else None
        except Exception as exc:  # any reason at all: the driver reports it, once, and stops
            self.problem = one_line(str(exc)) or type(exc).__name__
        if self.problem:
            self.problem = f"--ray: worker {name} on {self.where['host']}: {self.problem}"

    def separate(self, song: Song, token: str, dead: tuple[str, ...]) -> dict[str, Any]:
        """Separate one song (or skip it, or fail it) as a plain batch does; what became of it."""
        if self.problem:
            return {"problem": self.problem}
        self.reporter.begin()
        started = time.perf_counter()
        with self.pool.song() if self.pool is not None else contextlib.nullcontext():
            separate_one(
                self.separator, song, self.job.options, self.job.flags, self.records, self.reporter,
                claim_token=token, dead_claims=dead,
            )  # fmt: skip
        return {
            "status": song.status,
            "details": song.details,
            "facts": self.reporter.song_facts,
            "events": self.reporter.events,
            "seconds": time.perf_counter() - started,
            "where": self.where,
        }


@dataclass
class _Attempt:
    song: Song
    token: str
    dead: tuple[str, ...]  # tokens of the attempts whose worker died
    started: float


def separate_on_ray(run: list[Song], job: WorkerJob, options: RayOptions, reporter: Reporter) -> None:
    """Separate ``run``'s songs on Ray workers; each song's status, details and report line as a plain
    batch gives them. A song that failed the driver's checks is reported here and never sent."""
    import ray

    from ..batch import song_path_key

    started_here = not ray.is_initialized()
    if started_here:
        _start_ray(options.address, reporter)
    try:
        to_send = sum(song.status != "failed" for song in run)
        # (a worker larger than the whole cluster would wait for ever: a usage error)
        workers = options.resolved(ray.cluster_resources(), job.flags.device, to_send)
        with reporter:
            reporter.begin_all(len(run))
            try:
                _schedule(ray, run, job, options, workers, reporter, song_path_key)
            except BaseException:
                reporter.end_report(interrupted=True)
                raise
            reporter.end_report(interrupted=False)
        print_summary(run, reporter, batch=True)
    finally:
        if started_here:
            ray.shutdown()


def _start_ray(address: str | None, reporter: Reporter) -> None:
    import logging

    import ray

    from ..engine.settings import SeparationError

    # ray.init installs a SIGTERM handler of its own: ours (Ctrl-C's cleanup for SIGTERM too) goes back
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    try:
        ray.init(
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,  # the workers' results come back as lines of ours
            logging_level=logging.ERROR,  # not its notices: our lines say what it does
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the cluster at {address}" if address else "a local cluster"
        raise SeparationError(f"--ray: could not start or join {where}: {one_line(str(exc))}") from None
    finally:
        for number, handler in handlers.items():
            if handler is not None:  # None: not installed from Python, nothing to put back
                signal.signal(number, handler)
    resources = ray.cluster_resources()
    reporter.line(
        f"--ray: {'joined ' + address if address else 'a local cluster'}: "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )


def _schedule(
    ray: Any,
    run: list[Song],
    job: WorkerJob,
    options: RayOptions,
    workers: tuple[int, float, float],
    reporter: Reporter,
    key_of: Any,
) -> None:
    """Give the songs to ``workers`` (how many, CPUs and GPUs each), a song to a free slot, until each is
    done, skipped or failed."""
    for song in run:  # failed the driver's checks (probe, channels): reported, never sent
        if song.status == "failed":
            reporter.song_facts = {}
            if not song.said:
                reporter.error(song.details, source=str(song.outputs.source.path))
            reporter.report_song(song, 0.0, key_of(song.outputs.source))
            reporter.end_song()
    queue = deque(_Attempt(s, secrets.token_hex(8), (), 0.0) for s in run if s.status != "failed")
    if not queue:
        return
    count, cpus, gpus = workers
    pool = _Workers(ray, job, cpus, gpus, options.songs_per_batch or 1)
    for _ in range(count):
        pool.start()
    reporter.line(f"--ray: {count} workers ({cpus:g} CPU, {gpus:g} GPU each), {len(queue)} songs")
    held: list[_Attempt] = []  # songs another process is separating: asked for again, as a plain batch does
    try:
        while queue or pool.in_flight or held:
            if not queue and not pool.in_flight:  # only songs others hold: look again in a while
                time.sleep(CLAIM_POLL_SECONDS)
                queue.extend(held)
                held.clear()
            pool.submit(queue)
            attempt, result = pool.next_result(queue, reporter)
            if result is None:  # its worker died: the song is queued again (or failed, after MAX_ATTEMPTS)
                continue
            song = attempt.song
            if song.status == "claimed":  # until its holder is done or found dead: exit 0 = every song done
                if song.outputs.source.path not in pool.waited:
                    pool.waited.add(song.outputs.source.path)
                    reporter.line(f"{song.outputs.source.path}: {song.details}; waiting for it")
                held.append(_Attempt(song, attempt.token, attempt.dead, 0.0))
                continue
            reporter.song_facts = result["facts"]
            where = {**result.get("where", {}), "attempts": len(attempt.dead) + 1}
            reporter.report_song(song, result["seconds"], key_of(song.outputs.source), where=where)
            reporter.end_song()
    except BaseException:
        pool.stop()
        raise
    pool.stop()


class _Workers:
    """The run's workers, their free slots and the songs in flight on them."""

    def __init__(self, ray: Any, job: WorkerJob, cpus: float, gpus: float, songs_each: int) -> None:
        self.ray, self.job, self.songs_each = ray, job, songs_each
        # No restarts: a worker that died is replaced by a new one, which Ray places where it fits.
        self.remote = ray.remote(SongWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_concurrency=songs_each
        )
        self.handles: dict[int, Any] = {}
        self.free: dict[int, int] = {}  # worker -> songs it may take now
        self.in_flight: dict[Any, tuple[int, _Attempt]] = {}  # call -> (worker, attempt)
        self.started = 0
        self.waited: set[Path] = set()  # songs found held by another process (said once)

    def start(self) -> None:
        self.started += 1
        worker = self.remote.remote(self.job, f"SongWorker-{self.started}")
        self.handles[id(worker)], self.free[id(worker)] = worker, self.songs_each

    def submit(self, queue: deque[_Attempt]) -> None:
        for worker, slots in self.free.items():
            while slots and queue:
                attempt = queue.popleft()
                attempt.started = time.perf_counter()
                call = self.handles[worker].separate.remote(attempt.song, attempt.token, attempt.dead)
                self.in_flight[call] = (worker, attempt)
                slots -= 1
            self.free[worker] = slots

    def next_result(
        self, queue: deque[_Attempt], reporter: Reporter
    ) -> tuple[_Attempt, dict[str, Any] | None]:
        """Wait for the next song to come back: (its attempt, what became of it), the song's status and
        details set and its events passed on. None: its worker died, and the song is queued again."""
        from ..engine.settings import SeparationError

        ray = self.ray
        [call], _ = ray.wait(list(self.in_flight), num_returns=1)
        worker, attempt = self.in_flight.pop(call)
        song = attempt.song
        failed = {"events": [], "facts": {}, "seconds": time.perf_counter() - attempt.started}
        try:
            result = ray.get(call)
        except ray.exceptions.RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):  # stemsplit missing on a node, say: no song will run
                raise SeparationError(
                    f"--ray: a worker could not start: {one_line(first_line(exc))}"
                ) from None
            # the worker died under the song (killed, out of memory, its node lost): another takes it
            self.free.pop(worker)
            ray.kill(self.handles.pop(worker), no_restart=True)
            dead = (*attempt.dead, attempt.token)
            if len(dead) < MAX_ATTEMPTS:
                queue.appendleft(_Attempt(song, secrets.token_hex(8), dead, 0.0))
                reporter.line(f"{song.outputs.source.path}: its worker died; trying again on another")
            if queue:
                self.start()
            if len(dead) < MAX_ATTEMPTS:
                return attempt, None
            why = one_line(first_line(exc))
            song.status = "failed"
            song.details = f"{song.outputs.source.path}: {len(dead)} workers died separating it ({why})"
            reporter.error(song.details, source=str(song.outputs.source.path))
            return attempt, failed
        except ray.exceptions.RayTaskError as exc:  # a bug of ours in the worker: the song fails, once
            self.free[worker] += 1
            song.status, song.details = "failed", f"{song.outputs.source.path}: {one_line(str(exc))}"
            reporter.error(song.details, source=str(song.outputs.source.path))
            return attempt, failed
        self.free[worker] += 1
        if result.get("problem"):  # the worker's model: no song will run there; stop the run
            raise SeparationError(result["problem"])
        song.status, song.details = result["status"], result["details"]
        for event in result["events"]:
            if event["event"] == "waiting" and song.outputs.source.path in self.waited:
                continue  # (said once, when the song was first found held)
            if event["event"] == "error":  # printed here, as a plain run prints it
                fields = {k: v for k, v in event.items() if k not in ("event", "message")}
                reporter.error(event["message"], **fields)
            else:
                reporter.emit(event)
        return attempt, result

    def stop(self) -> None:
        """The run is over, or stopped (Ctrl-C, a worker's model): the songs in flight are cancelled
        (each worker drops its song's temporaries and releases its claim at its next batch of windows),
        given :data:`CANCEL_SECONDS` for that, then every worker is killed."""
        ray = self.ray
        for call in self.in_flight:
            ray.cancel(call)
        if self.in_flight:
            ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=CANCEL_SECONDS)
        for worker in self.handles.values():
            ray.kill(worker, no_restart=True)
