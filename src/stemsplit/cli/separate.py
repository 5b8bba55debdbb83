"""``stemsplit separate`` (the default command), ``stemsplit batch`` and ``stemsplit speakers``: parsing,
planning, printing.

``speakers`` is the same run for speaker-separation models (``card.task ==
"speakers"``): the outputs are the model's talkers (``speaker1``, ``speaker2``),
mono at the input's rate, and with ``--residual`` the mixture minus all of
them. Each command refuses the other task's models in one line.

A run goes in this order, and nothing is decoded, separated or written before
step 4:

1. settings: output options, window/hop/batch size, device, stem names (usage
   errors: exit 2, one line, nothing created);
2. inputs: the files named, or the songs under the folders (``batch``);
3. the plan: every output path of every song, checked (inside ``-o``, no two
   songs on one file), then every input probed (a bad file fails alone, exit 1);
4. the model, then the songs, one by one, each committed all together (``batch --ray``: the songs go
   to Ray workers, each with its own copy of the model, :mod:`stemsplit.cli.ray_batch`; this module imports
   that one only then).

The work is in :mod:`stemsplit.separate` (engine), :mod:`stemsplit.output`
(plan, writer) and :mod:`stemsplit.batch` (folders, manifests, claims).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import UsageError
from ..output import DEFAULT_FILENAME
from .common import (
    EXAMPLES,
    EXIT_FAILED,
    EXIT_USAGE,
    Interrupted,
    err_console,
    error_line,
    interrupted_status,
    interrupts_as_exceptions,
    one_line,
    usage_error,
)
from .model_args import (
    CHECKPOINT_SUFFIXES,
    check_msst_network,
    ensemble_argument,
    ensemble_stems,
    known_model,
    msst_config,
    window_before_loading,
    wrong_task,
)

# TS (12 layers, N = 128) per 3 s window on 2 cores, fp32 and bf16 (benchmarks/bench_model.py, AMD EPYC)
CPU_SECONDS_PER_WINDOW = {"fp32": 6.2, "bf16": 4.5}
TS_PARAMETERS = 35.5e6  # the paper's TS: the estimate above scales with a model's size


class Format(str, Enum):
    wav = "wav"
    flac = "flac"
    mp3 = "mp3"


class InferencePrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class ClipMode(str, Enum):
    none = "none"
    rescale = "rescale"
    clamp = "clamp"


# --- output: rich progress, plain lines or JSON lines --------------------------------------------


class Reporter:
    """Turns engine progress events into a progress bar (terminals), plain lines (logs) or JSON lines."""

    def __init__(self, json_lines: bool, quiet: bool) -> None:
        self.json_lines, self.quiet = json_lines, quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.overall: TaskID | None = None
        self.song: Path | None = None
        self.song_seconds = 0.0
        self.started = 0.0
        self.cpu_seconds_per_window: float | None = None  # set on the CPU: the estimate before measuring
        self.measured = False
        self.heartbeat = lambda: None  # batch: keeps the song's claim fresh
        self.run_report: Any = None  # stemsplit.report.RunReport, with --report
        self.song_facts: dict[str, Any] = {}  # what this song's events said: its audio seconds, outputs
        self.shard_note = ""  # --shard: "shard 3/8: 12 of 97 songs", for the summary

    def __enter__(self) -> Reporter:
        if not self.json_lines and not self.quiet and err_console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),  # "0/?" until the song's window count is known (not "0/None")
                TextColumn("windows"),
                TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def emit(self, event: dict[str, Any]) -> None:
        if event["event"] == "start":
            self.song_facts["audio_seconds"] = event["seconds"]
        if "outputs" in event:
            self.song_facts["outputs"] = event["outputs"]
        if self.json_lines:
            print(json.dumps(event), flush=True)

    def line(self, text: str) -> None:
        """A human message (stderr, so stdout stays clean for --json); one line, never wrapped."""
        if not self.quiet and not self.json_lines:
            err_console.print(one_line(text), soft_wrap=True)

    def error(self, message: str, **fields: Any) -> None:
        """An error line on stderr (always), and an ``error`` event with --json."""
        error_line(message)
        self.emit({"event": "error", "message": message, **fields})

    def begin_all(self, files: int) -> None:
        if self.progress and files > 1:
            self.overall = self.progress.add_task("all songs", total=files, speed="")

    def begin_song(self, path: Path) -> None:
        self.song, self.measured = path, False
        self.emit({"event": "song", "source": str(path)})
        if self.progress:
            self.task = self.progress.add_task(path.name[:40], total=None, speed="")

    def on_event(self, event: dict[str, Any]) -> None:
        self.emit(event)
        self.heartbeat()
        if event["event"] == "start":
            self.song_seconds, self.started = event["seconds"], time.perf_counter()
            if self.cpu_seconds_per_window is not None:
                guess = self.cpu_seconds_per_window * event["windows"]
                self.line(
                    f"{self.song}: {_duration(event['seconds'])} of audio, {event['windows']} windows; "
                    f"about {_duration(guess)} on this CPU (estimate)"
                )
            if self.progress and self.task is not None:
                self.progress.update(self.task, total=event["windows"])
        elif event["event"] == "compiled":
            self.line(f"{self.song}: torch.compile took {_duration(event['seconds'])} (once per run)")
            self.started += event["seconds"]  # the speed and time left are the windows', not the compiler's
        elif event["event"] == "windows":
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            done, total = event["done"], max(event["total"], event["done"], 1)
            if not self.measured and self.cpu_seconds_per_window is not None and done < total:
                self.measured = True
                per_window = elapsed / done
                left = _duration(per_window * (total - done))
                self.line(f"{self.song}: measured {per_window:.1f} s per window; about {left} left")
            if self.progress and self.task is not None:
                audio = self.song_seconds * done / total
                self.progress.update(self.task, completed=done, total=total, speed=f"{audio / elapsed:.2f}x")

    def report_song(self, song: Song, seconds: float, key: str | None, where: dict | None = None) -> None:
        """The song's line in the run report (--report), from what its events said; ``seconds`` it took;
        ``where``: the process that ran it, when not this one (--ray)."""
        if self.run_report is None:
            return
        facts, self.song_facts = self.song_facts, {}
        audio = facts.get("audio_seconds")
        if audio is None and song.info is not None:  # not separated here: its length as probed
            audio = song.info.frames / song.info.sample_rate
        problem = self.run_report.song(
            song.outputs.source.path,
            song.status,
            key=key,
            outputs=facts.get("outputs") if song.status != "failed" else None,
            message=song.details if song.status != "done" else None,
            seconds=seconds,
            audio_seconds=audio,
            where=where,
        )
        if problem:
            self.error(problem + " (the run goes on without its report)")

    def end_report(self, interrupted: bool) -> None:
        if self.run_report is not None and (problem := self.run_report.summary(interrupted)):
            self.error(problem)

    def end_song(self) -> None:
        if self.progress and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if self.progress and self.overall is not None:
            self.progress.advance(self.overall)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Song:
    """One input, as the run sees it: its planned outputs, then what became of it."""

    outputs: Any  # stemsplit.output.SongOutputs
    info: Any = None  # stemsplit.audio.AudioInfo, once probed
    status: str = "pending"  # pending, done, skipped, failed; claimed (by another process: waited for)
    details: str = ""
    identity: tuple[int, ...] | None = None  # the source as it was probed (source_identity)
    claim: Any = None  # batch: the song's stemsplit.batch.Claim, kept while another process holds it
    said: bool = False  # its failure's error line was printed already (before the model loaded)


def source_identity(path: Path) -> tuple[int, ...] | None:
    """Which file ``path`` is, and whether it was written to: (device, inode, size, mtime); None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _wanted_stems(stems: str | None, two_stems: str | None) -> list[str] | None:
    if stems is not None and two_stems is not None:
        raise UsageError("--stems and --two-stems cannot be used together")
    if stems is None:
        return None
    names = [s.strip() for s in stems.split(",") if s.strip()]
    if not names:
        raise UsageError(f"--stems: no stem names in {stems!r}")
    return names


def _inputs(paths: list[Path], batch: bool, out: Path, reporter: Reporter) -> list[Any]:
    from ..batch import BatchError, find_songs
    from ..output import SongSource

    if batch:
        for folder in paths:  # stems in music/<track>/ would be taken for songs by every later run
            if os.path.realpath(folder) == os.path.realpath(out):
                raise UsageError(
                    f"--out: {out} is the input folder {folder}: its stems would be taken for songs; "
                    f"write them outside it, or into a folder inside it ({Path(folder) / 'stems'})"
                )
        try:
            found = find_songs(paths, out)
        except BatchError as exc:
            raise UsageError(str(exc)) from None
        for note in found.notes:
            reporter.line(note)
        _say_same_files(reporter, found.same_files)
        return found.songs
    songs: list[Any] = []
    seen: dict[object, Any] = {}
    same_files = []
    for path in paths:
        try:
            st = os.stat(path)
            key: object = (st.st_dev, st.st_ino)
        except OSError:
            key = os.path.abspath(path)  # missing: reported when probed
        first = seen.setdefault(key, SongSource(path))
        if first.path is path:
            songs.append(first)
        elif os.path.abspath(path) != os.path.abspath(first.path):  # (a.wav and ./a.wav: said once)
            same_files.append((path, first))
    _say_same_files(reporter, same_files)
    return songs


def _say_same_files(reporter: Reporter, same_files: list[tuple[Path, Any]]) -> None:
    """One line (and a ``skipped`` event) for each name that reaches a song of the run a second time: a
    hard or symbolic link, separated once under its first name."""
    for path, first in same_files:
        reporter.line(f"{path}: same file as {first.path}; separated once, as {first.path}")
        reporter.emit(
            {"event": "skipped", "source": str(path), "reason": "same file", "same_as": str(first.path)}
        )


def _shard_argument(text: str | None, batch: bool, task: str) -> Any:
    """--shard I/N checked (torch-free): a :class:`~stemsplit.batch.Shard`, or None without it.

    Only for folders (batch): a share is safe to overlap with another because batch's claims and
    manifests make every song run once; plain files have neither, so a resized array would separate
    them twice, and nothing would resume a task that died."""
    if text is None:
        return None
    from ..batch import parse_shard

    if not batch:
        command = "stemsplit batch FOLDER" if task == "music" else "stemsplit speakers --batch FOLDER"
        raise UsageError(
            f"--shard: shares the songs of folders, whose claims keep overlapping shares from doing a "
            f"song twice; use {command}"
        )
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise UsageError(f"--shard: {exc}") from None


def _shard_note(reporter: Reporter, shard: Any, taken: int, found: int) -> None:
    """Say (and emit) which share this process runs: "shard 3/8: 12 of 97 songs"."""
    from ..runtime import torchrun_ranks

    ranks = torchrun_ranks()
    note = f"shard {shard}: {taken} of {found} songs"
    if ranks.world > 1:
        note += f" for rank {ranks.rank} of {ranks.world}"
    reporter.shard_note = note
    reporter.line(note)
    event = {"event": "shard", "shard": shard.index, "of": shard.count, "songs": taken, "found": found}
    reporter.emit(event)


def _report_argument(path: Path | None, args: dict[str, Any], ensemble: Any) -> Any:
    """--report checked before anything runs (torch-free, nothing created): a
    :class:`~stemsplit.report.RunReport`, or None without it."""
    if path is None:
        return None
    from ..audio import AUDIO_EXTENSIONS
    from ..report import RunReport, report_problem

    if path.suffix.lower() in AUDIO_EXTENSIONS or path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise UsageError(
            f"--report: {path} is named like an audio or model file; the report is JSON lines (run.jsonl)"
        )
    models = [args["model"]] if ensemble is None else list(ensemble.models)
    for model in models:
        if isinstance(model, Path) and _same_file(path, model):
            raise UsageError(f"--report: {path} is the model {model}")
    if problem := report_problem(path):
        raise UsageError(f"--report: {problem}")
    return RunReport(path)


def _check_report_is_no_input(path: Path, songs: list[Any]) -> None:
    for song in songs:
        if _same_file(path, song.path):
            raise UsageError(f"--report: {path} is the input {song.path}; lines would be appended to it")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _shard_for_torchrun(songs: list[Any], device: str) -> tuple[list[Any], str]:
    """Under torchrun, each rank takes every WORLD_SIZE-th song and its own GPU."""
    from ..runtime import torchrun_ranks

    ranks = torchrun_ranks()  # device "auto" then means this process's GPU (runtime.pick_device)
    return songs[ranks.rank :: ranks.world], device


def load_separator(
    args: dict[str, Any], ensemble: Any, msst: Any, progress: Callable, device: str, reporter: Reporter
) -> Any:
    """The run's model (a Separator, or an Ensemble for ``ensemble``) on ``device``, with the settings
    in ``args``: the run's own, and each --ray worker's."""
    from ..separate import Separator

    settings = dict(
        device=device,
        window=args["window"],
        hop=args["hop"],
        batch_size=args["batch_size"],
        precision=args["precision"],
        stage=args["stage"],
        exact=args["exact"],
        shifts=args["shifts"],
        light=args["light"],
        compile=args["compile"],
        task=args["task"],
        progress=progress,
        download_progress=not (reporter.quiet or reporter.json_lines),
    )
    if ensemble is None:
        return Separator(args["model"], model_config=msst, **settings)
    from ..ensemble import Ensemble

    return Ensemble(list(ensemble.models), weights=ensemble.weights, choose=ensemble.choice, **settings)


def _ray_argument(args: dict[str, Any], batch: bool, ensemble: Any) -> Any:
    """--ray and its flags checked before anything runs (Ray is not imported): a
    :class:`~stemsplit.cli.ray_batch.RayOptions`, or None without --ray."""
    from .ray_batch import RayOptions, ray_problem

    ray_flags = {
        "--ray-address": args.get("ray_address"),
        "--workers": args.get("workers"),
        "--cpus-per-worker": args.get("cpus_per_worker"),
        "--gpus-per-worker": args.get("gpus_per_worker"),
        "--songs-per-batch": args.get("songs_per_batch"),
    }
    if not args.get("ray"):
        given = [flag for flag, value in ray_flags.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]}: goes with --ray (the batch then runs on a Ray cluster)")
        return None
    if not batch:
        raise UsageError("--ray: runs a batch of folders; use stemsplit batch FOLDER --ray")
    if (args.get("songs_per_batch") or 1) > 1 and (ensemble is not None or args["exact"]):
        why = "an ensemble's models run" if ensemble is not None else "--exact measures"
        raise UsageError(f"--songs-per-batch: {why} one song's windows at a time; leave it at 1")
    if problem := ray_problem():
        raise UsageError(f"--ray: {problem}")
    try:
        return RayOptions.checked(
            args.get("ray_address"),
            args.get("workers"),
            args.get("cpus_per_worker"),
            args.get("gpus_per_worker"),
            args.get("songs_per_batch"),
            args["device"],
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_separation(batch: bool, args: dict[str, Any], reporter: Reporter, task: str = "music") -> int:
    """Plan, check and separate; returns the exit status. Raises :class:`UsageError` for exit 2.

    ``task``: the models this command takes (``music``: separate and batch; ``speakers``).
    """
    from ..audio import AudioError, probe
    from ..output import OutputError, OutputOptions, plan_outputs
    from ..settings import RESIDUAL, SeparationError, check_settings, choose_stems, parse_device

    # 1. settings
    args["task"] = task
    if not str(args["out"]).strip():  # Path("") is ".": the stems would land in the current folder
        raise UsageError("--out: the folder name is empty; name a folder (-o . for the current one)")
    args["out"] = Path(args["out"])
    if any(os.fspath(path) == "-" and not os.path.lexists(path) for path in args["inputs"]):
        raise UsageError("-: stemsplit reads audio files, not standard input; save the stream to a file")
    hop = args["hop"]  # None: the model card's
    try:
        options = OutputOptions(
            args["filename"], args["fmt"], args["bit_depth"], args["clip_mode"], args["overwrite"]
        )
        check_settings(
            args["window"], hop, args["batch_size"], args["precision"], args["stage"], shifts=args["shifts"]
        )
        parse_device(args["device"])
    except (OutputError, SeparationError) as exc:
        raise usage_error(exc) from None
    wanted = _wanted_stems(args["stems"], args["two_stems"])
    ensemble = ensemble_argument(args, task)  # None: one model, args["model"]
    msst = msst_config(args.get("model_config"), args["model"])
    shard = _shard_argument(args.get("shard"), batch, task)
    report = _report_argument(args.get("report"), args, ensemble)
    ray = _ray_argument(args, batch, ensemble)
    if args["window"] is None and hop is not None and ensemble is None:  # the hop must fit the window
        try:
            check_settings(window_before_loading(args, msst, task), hop, None, None, None)
        except SeparationError as exc:
            raise usage_error(exc) from None

    # 2. inputs
    out = args["out"]
    songs = _inputs(args["inputs"], batch, out, reporter)
    if not songs:  # not a usage error: the folder may simply be empty today
        reporter.error("no audio files found in " + ", ".join(map(str, args["inputs"])))
        return EXIT_FAILED
    if report is not None and not batch:
        _check_report_is_no_input(report.path, songs)
    found = len(songs)
    if shard is not None:  # the job array's share first; torchrun's ranks then divide the share
        songs = shard.take(songs)
    songs, device = _shard_for_torchrun(songs, args["device"])
    if shard is not None:
        _shard_note(reporter, shard, len(songs), found)
    if report is not None:
        from ..runtime import torchrun_ranks

        ranks = torchrun_ranks()
        report.context.update(
            rank=ranks.rank if ranks.world > 1 else None,
            world=ranks.world if ranks.world > 1 else None,
            shard=None if shard is None else str(shard),
        )
        reporter.run_report = report
    if not songs:  # an empty share: nothing to do is no failure (a job array's task must not fail)
        _report([], reporter, batch, lambda song: None)
        return 0

    # 3. the plan: every output path of every song. Checked once with the stems asked for (or the stand-in
    # "{stem}", which reads as the template in a message: ".../{stem}.wav") before anything slow is imported,
    # then with the model's own stems.
    names = None
    if batch:  # a name once given stays: from the manifests of earlier runs
        from ..batch import GivenNames

        names = GivenNames(out, options.filename)

    def plan(stem_names: list[str]) -> list[Song]:
        try:
            planned = plan_outputs(songs, out, stem_names, options, names=names)
        except OutputError as exc:
            raise usage_error(exc) from None
        return [Song(outputs) for outputs in planned]

    residual = [RESIDUAL] if args["residual"] else []
    if args["two_stems"] is not None:
        checked = plan([args["two_stems"], f"no_{args['two_stems']}"])
    else:
        checked = plan(
            (wanted or (["{stem}"] if "{stem}" in options.filename else ["{stem}", "{stem} 2"])) + residual
        )

    if ensemble is None:
        problem, known = known_model(args["model"], args["light"], task)  # without loading the model
        if msst is not None:  # the YAML names the stems; what the file's metadata says does not count
            problem, known = None, msst.stems
        if problem:
            raise wrong_task(problem, task)
    else:
        known = ensemble_stems(ensemble, args["light"], task)
    stems = run = None
    if known:
        try:
            owner = "this model" if ensemble is None else "this ensemble"
            stems = choose_stems(known, wanted, args["two_stems"], owner) + residual
        except SeparationError as exc:
            raise usage_error(exc) from None
        run = plan(stems)

    # 3a. the device (this imports torch; a device or Mamba backend that is not here is a usage error)
    from ..runtime import pick_device

    try:
        pick_device(device if ray is None else "cpu")  # --ray: the workers' devices are the workers' own
    except SeparationError as exc:
        raise usage_error(exc) from None
    if msst is not None:
        check_msst_network(msst)

    # 3b. probe every input: a missing or unreadable file fails alone, and before the model loads (a typo
    # would otherwise wait for the default model's download)
    probed: dict[int, Any] = {}  # id(song source) -> AudioInfo, or the AudioError
    identities: dict[int, tuple[int, ...] | None] = {}  # and which file was probed
    for song in run or checked:
        try:
            identities[id(song.outputs.source)] = source_identity(song.outputs.source.path)
            probed[id(song.outputs.source)] = probe(song.outputs.source.path, args["stream"])
        except AudioError as exc:
            if args["debug"]:
                raise
            path = os.fspath(song.outputs.source.path)
            if path.startswith("-") and not os.path.lexists(path):  # `stemsplit -- a.mp3 -o out`
                exc = AudioError(f"{exc} (after --, every argument is a file: give the options before --)")
            probed[id(song.outputs.source)] = exc
        except Exception as exc:  # a bug in reading this one file: it fails alone, the others go on
            if args["debug"]:
                raise
            problem = f"{type(exc).__name__}: {exc}".strip()
            probed[id(song.outputs.source)] = AudioError(
                f"{song.outputs.source.path}: internal error reading it: {one_line(problem)} "
                "(run again with --debug and report it)"
            )
    # The songs' own problems are said now, each once, before the model (whose download or checks may
    # fail and end the run: the songs' problems would then never be seen).
    for song in run or checked:
        if isinstance(found := probed[id(song.outputs.source)], AudioError):
            reporter.error(str(found), source=str(song.outputs.source.path))
    if all(isinstance(found, AudioError) for found in probed.values()):  # nothing to separate
        for song in run or checked:
            song.status, song.details, song.said = "failed", str(probed[id(song.outputs.source)]), True
        _report(run or checked, reporter, batch, lambda song: None)
        return EXIT_FAILED

    # 4. the model (importing torch takes seconds: everything above must not need it)
    from ..weights import UnknownModelError

    try:
        # --ray: this copy only plans (stems, input checks, fingerprint) on the CPU; the workers separate
        separator = load_separator(
            args, ensemble, msst, reporter.on_event, "cpu" if ray is not None else device, reporter
        )
        chosen = separator.output_stems(wanted, args["two_stems"], args["residual"])
    except UnknownModelError as exc:
        for model in [args["model"]] if ensemble is None else ensemble.models:
            if model is not None and os.path.isdir(model):  # a bare name: no such model, but a folder
                raise UsageError(f"--model: {model} is a folder, not a checkpoint file") from None
        raise UsageError(f"--model: {exc}") from None
    except SeparationError as exc:
        if exc.option == "task":  # a model of the other task
            raise wrong_task(exc.problem, task) from None
        if exc.option:
            raise usage_error(exc) from None
        raise
    if run is None or chosen != stems:
        run = plan(chosen)
    if report is not None:
        report.model = separator.fingerprint()  # what batch's manifests record (computed once, cached)
    if separator.light_note:
        reporter.line("--" + separator.light_note)
    if ensemble is not None:
        reporter.line(f"--model: an ensemble of {len(separator.members)} models: {separator.note}")
        reporter.emit(
            {
                "event": "ensemble",
                "models": separator.labels,
                "stems": {
                    stem: {separator.labels[i]: weight for i, weight in sources}
                    for stem, sources in separator.plan.items()
                },
                "other_less": {separator.labels[i]: list(s) for i, s in separator.rest_parts.items()},
            }
        )

    # 4b. what the model takes (channels, rate): a file it cannot take fails alone, before anything runs
    for song in run:
        found = probed[id(song.outputs.source)]
        if isinstance(found, AudioError):  # (with --debug it was raised when probed)
            song.status, song.details, song.said = "failed", str(found), True
            continue
        song.info, song.identity = found, identities[id(song.outputs.source)]
        try:
            separator.check_input(song.info, args["downmix"])
        except SeparationError as exc:
            if args["debug"]:
                raise
            song.status, song.details = "failed", str(exc)
        if song.status != "failed" and (problem := options.rate_problem(song.info.sample_rate)):
            song.status, song.details = "failed", f"{song.outputs.source.path}: {problem}"
    if ray is not None:  # the workers decide what is done, each with its own model's settings
        from .ray_batch import WorkerJob, separate_on_ray

        job = WorkerJob(args, ensemble, msst, options, chosen, separator.fingerprint())
        del separator  # the workers load their own
        separate_on_ray(run, job, ray, reporter)
        if any(song.status == "failed" for song in run) or (report is not None and report.problem):
            return EXIT_FAILED
        return 0
    if separator.device.type == "cpu":
        reporter.cpu_seconds_per_window = _cpu_seconds_per_window(separator)

    records = None
    if batch:
        from ..batch import DoneRecords

        records = DoneRecords(out, _settings(separator, options, args, chosen))
    _report(
        run,
        reporter,
        batch,
        lambda song: _separate_one(separator, song, options, args, records, reporter, out),
    )
    if any(song.status == "failed" for song in run) or (report is not None and report.problem):
        return EXIT_FAILED
    return 0


def _report(run: list[Song], reporter: Reporter, batch: bool, separate: Callable[[Song], None]) -> None:
    """Each song: its error if it failed a check, else ``separate(song)``, then its line in the run
    report; then the summaries (the run report's is written if the run is interrupted too)."""
    from ..batch import CLAIM_POLL_SECONDS, song_path_key

    with reporter:
        reporter.begin_all(len(run))
        try:
            pending = run
            while pending:
                for song in pending:
                    started = time.perf_counter()
                    reporter.song_facts = {}
                    if song.status == "failed":
                        if not song.said:
                            reporter.error(song.details, source=str(song.outputs.source.path))
                    else:
                        separate(song)
                    if song.status != "claimed":
                        key = song_path_key(song.outputs.source) if batch else None
                        reporter.report_song(song, time.perf_counter() - started, key)
                # Songs other processes are separating: a run ends when they are done (by their holder, or
                # by this run once a holder is found dead), so that exit 0 always means every song is done.
                pending = [song for song in run if song.status == "claimed"]
                if pending:
                    time.sleep(CLAIM_POLL_SECONDS)
        except BaseException:
            reporter.end_report(interrupted=True)
            raise
        reporter.end_report(interrupted=False)
    _summary(run, reporter, batch)


def _separate_one(
    separator,
    song: Song,
    options,
    args,
    records,
    reporter: Reporter,
    out: Path,
    claim_token: str | None = None,
    dead_claims: tuple[str, ...] = (),
) -> None:
    """Separate one song of the run (batch: unless done, and under its claim), and record what became of
    it in ``song``. ``claim_token``: the claim's token (a --ray worker's attempt, named by the driver);
    ``dead_claims``: tokens of earlier attempts at this song whose worker died (taken over at once)."""
    from ..audio import AudioError, describe_downmix
    from ..batch import STATE_FOLDER, Claim, SourceChangedError
    from ..output import OutputError, OutputExistsError
    from ..separate import SeparationError

    source = song.outputs.source.path
    claim = None
    song_options = options
    try:  # the song as it is now: it may have been replaced or edited since it was probed
        _probe_again_if_changed(separator, song, args["downmix"], batch=records is not None)
    except (AudioError, SeparationError, SourceChangedError) as exc:
        if args["debug"]:
            raise
        song.status, song.details = "failed", str(exc)
        reporter.error(song.details, source=str(source))
        return
    if records is not None:
        if records.is_done(song.outputs, by_bytes=False):  # (the bytes are read once the song is claimed)
            song.status, song.details = "skipped", "done earlier with the same source and settings"
            reporter.emit({"event": "skipped", "source": str(source), "outputs": _paths(song)})
            return
        first_look = song.claim is None
        claim = song.claim = song.claim or Claim(
            out, song.outputs, options.filename, records.settings, token=claim_token
        )
        try:
            acquired = claim.acquire(dead_claims)
        except OSError as exc:  # OUT/.stemsplit unusable: this song fails, with its reason
            song.status, song.details = "failed", _os_problem(exc, out / STATE_FOLDER)
            reporter.error(song.details, source=str(source))
            return
        if not acquired and claim.conflict:  # another run, other settings: its stems and ours would mix
            song.status = "failed"
            song.details = (
                f"{source}: being separated by {claim.holder} with other settings "
                f"({', '.join(claim.conflict)}) into the same place; run again when it is done"
            )
            reporter.error(song.details, source=str(source))
            return
        if not acquired:  # waited for (see _report): done by its holder, or taken over once it is dead
            song.status, song.details = "claimed", f"being separated by {claim.holder}"
            if first_look:
                reporter.line(f"{source}: being separated by {claim.holder}; waiting for it")
                reporter.emit({"event": "waiting", "source": str(source), "holder": claim.holder})
            return
        if records.is_done(song.outputs):  # done by another process just before we claimed it, or moved
            claim.release()
            song.status, song.details = (
                "skipped",
                "done earlier with the same source (its bytes) and settings",
            )
            reporter.emit(
                {"event": "skipped", "source": str(source), "reason": "done", "outputs": _paths(song)}
            )
            return
        reporter.heartbeat = claim.heartbeat
    reporter.begin_song(source)
    try:
        if records is not None:
            # Stale stems of ours (an older source, other settings or stems) are replaced; a file of
            # anyone else's only with --overwrite, and it is the one named.
            records.begin(song.outputs, options.overwrite)
            song_options = dataclasses.replace(options, overwrite=True)
        result = separator.separate_song(song.outputs, song.info, song_options, args["downmix"])
        if records is not None:
            records.write(song.outputs, complete=True)
    except (AudioError, SeparationError, OutputError, OSError, SourceChangedError) as exc:
        if args["debug"]:
            raise
        message = _song_problem(exc, song, out, batch=records is not None)
        if isinstance(exc, OutputExistsError):
            message += " (add --overwrite to replace it)"
        song.status, song.details = "failed", message
        reporter.error(message, source=str(source))
    else:
        song.status = "done"
        noun = "stems" if args.get("task", "music") == "music" else "files"
        song.details = f"{len(result.outputs)} {noun} in {_common_parent(result.outputs.values())}"
        for note in song.info.notes:  # the header said otherwise: say what was read
            song.details += f"; {note}"
        if result.rescaled_by != 1.0:
            gain_db = 20 * math.log10(result.rescaled_by)
            song.details += f"; scaled by {result.rescaled_by:.3f} ({gain_db:.1f} dB) so nothing clips"
        if result.residual_db is not None:
            song.details += f"; residual {result.residual_db:.1f} dB shared among stems"
        if song.info.channels > 2:
            song.details += "; " + describe_downmix(song.info.channels, song.info.layout)
            if separator.output_channels(song.info.channels) == 1:
                song.details += ", then averaged to mono for the network"
        rate = options.sample_rate(song.info.sample_rate)
        if rate != song.info.sample_rate:
            song.details += f"; written at {rate} Hz ({options.fmt} cannot carry {song.info.sample_rate} Hz)"
        reporter.emit(
            {
                "event": "result",
                "source": str(source),
                "outputs": {k: str(v) for k, v in result.outputs.items()},  # (the run report's too)
                "rescaled_by": result.rescaled_by,
                "residual_db": result.residual_db,
                "notes": list(song.info.notes),  # where the file's header and its audio disagreed
            }
        )
    finally:
        reporter.heartbeat = lambda: None
        if claim is not None:
            claim.release()
        reporter.end_song()


def _paths(song: Song) -> dict[str, str]:
    """The song's output paths by stem, as events and the run report give them."""
    return {stem: str(path) for stem, path in song.outputs.paths.items()}


def _probe_again_if_changed(separator, song: Song, downmix: bool, batch: bool) -> None:
    """Before a song's turn: if its file is not the one probed when the run began (edited, replaced),
    probe and check it again, so that its length, rate and channels are today's. Raises
    :class:`~stemsplit.batch.SourceChangedError` if it is gone, AudioError or SeparationError if the new
    file cannot be separated."""
    from ..audio import probe
    from ..batch import source_changed

    now = source_identity(song.outputs.source.path)
    if now == song.identity:
        return
    if now is None:
        raise source_changed(song.outputs.source.path, gone=True, resumable=batch)
    song.info, song.identity = probe(song.outputs.source.path), now
    separator.check_input(song.info, downmix)


def _song_problem(exc: Exception, song: Song, out: Path, batch: bool) -> str:
    """What made a song fail, naming what actually failed: the song itself when it changed or went
    while it was read (whatever error that caused: a decoding error, a missing file), batch's records
    in OUT/.stemsplit, else the file the error names."""
    from ..batch import STATE_FOLDER, SourceChangedError, source_changed

    source = song.outputs.source.path
    if not isinstance(exc, SourceChangedError) and source_identity(source) != song.identity:
        gone = source_identity(source) is None
        return f"{source_changed(source, gone=gone, resumable=batch)}; reading it gave: {exc}"
    if isinstance(exc, OSError):
        return _os_problem(exc, out / STATE_FOLDER)
    return str(exc)


def _os_problem(exc: OSError, records: Path) -> str:
    """An OSError as one line: the file it names and the reason (in the words of every failed write), and
    "(batch's records)" when that file is in ``records`` (OUT/.stemsplit: full disk, permissions, junk)."""
    from ..files import write_failure

    name = exc.filename or records
    line = f"{name}: {write_failure(exc, Path(name).parent)}"
    if os.path.abspath(name) == os.path.abspath(records) or os.path.abspath(name).startswith(
        os.path.abspath(records) + os.sep
    ):
        line += " (batch's records)"
    return line


def _settings(separator, options, args: dict[str, Any], stems: list[str]) -> dict[str, Any]:
    """What changes a song's stems: a batch re-separates a song when any of it differs.

    An ensemble's fingerprint covers its members, their weights and which stem comes from which;
    its window, hop, stage and precision are each member's, in a list."""
    members = getattr(separator, "members", None)

    def each(name: str) -> Any:
        return getattr(separator, name) if members is None else [getattr(m, name) for m in members]

    return {
        "model": separator.fingerprint(),
        "window": each("window"),
        "hop": each("hop"),
        "stage": each("stage"),
        "exact": separator.exact,
        "shifts": each("shifts"),
        "precision": each("precision"),
        "downmix": args["downmix"],
        **({"stream": args["stream"]} if args["stream"] is not None else {}),  # absent: records stay valid
        "stems": stems,
        "format": options.fmt,
        "bit_depth": options.bit_depth,
        "clip_mode": options.clip_mode,
        "filename": options.filename,
    }


def _cpu_seconds_per_window(separator) -> float:
    """A first guess for the ETA until the first windows are timed; any family, by parameter count
    (an ensemble's: its members' average)."""
    import torch

    members = getattr(separator, "members", [separator])
    guesses = []
    for member in members:
        scale = sum(p.numel() for p in member.model.parameters()) / TS_PARAMETERS
        seconds = member.window / member.sample_rate / 3
        per_window = CPU_SECONDS_PER_WINDOW[member.precision]
        guesses.append(per_window * scale * seconds * 2 / max(1, torch.get_num_threads()))
    return sum(guesses) / len(guesses)


def _common_parent(paths) -> str:
    return os.path.commonpath([str(p.parent) for p in paths])


def _summary(run: list[Song], reporter: Reporter, batch: bool) -> None:
    if reporter.quiet or reporter.json_lines:
        return
    if (len(run) > 1 or batch) and err_console.is_terminal:
        table = Table(title="stemsplit")
        for column in ("file", "status", "details"):
            table.add_column(column)
        for song in run:
            details = song.details if song.status != "failed" else "(the error above)"
            table.add_row(str(song.outputs.source.path), song.status, details)
        err_console.print(table)
    else:
        for song in run:  # logs: one line per song, never wrapped; a failure's reason was its error line
            if song.status != "failed":
                reporter.line(f"{song.outputs.source.path}: {song.status}: {song.details}")
            elif len(run) > 1:
                reporter.line(f"{song.outputs.source.path}: failed (the error above)")
    if reporter.shard_note:
        reporter.line(reporter.shard_note)


# --- the Typer commands ---------------------------------------------------------------------------


def _run_command(batch: bool, args: dict[str, Any], precision: Any, task: str) -> None:
    """Run a separation command's ``args`` (its options by name) and exit with its status."""
    args["fmt"], args["clip_mode"] = args["fmt"].value, args["clip_mode"].value
    args["precision"] = precision.value if precision else None
    reporter = Reporter(args["json_lines"], args["quiet"])
    with interrupts_as_exceptions():
        try:
            code = run_separation(batch, args, reporter, task)
        except UsageError as exc:
            reporter.error(str(exc), exit_code=EXIT_USAGE)
            raise typer.Exit(EXIT_USAGE) from None
        except Interrupted as exc:
            code = interrupted_status(exc)
            reporter.error(f"interrupted ({exc}); nothing is left half-written", exit_code=code)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            reporter.error("interrupted; nothing is left half-written", exit_code=130)
            raise typer.Exit(130) from None
        except Exception as exc:
            from ..separate import SeparationError
            from ..weights import WeightsError

            if args["debug"] or not isinstance(exc, (WeightsError, SeparationError)):
                raise
            reporter.error(str(exc), exit_code=EXIT_FAILED)
            raise typer.Exit(EXIT_FAILED) from None
    raise typer.Exit(code)


# Options `separate`, `batch` and `speakers` share, defined once.
DEVICE_OPTION = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", help="Windows per forward pass.")
COMPILE_OPTION = typer.Option(
    False, "--compile", help="torch.compile the network (fused kernels; compiles at the first batch)."
)
CLIP_MODE_OPTION = typer.Option(
    ClipMode.rescale, "--clip-mode", help="For integer formats.", case_sensitive=False
)
OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Replace existing outputs.")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress or messages (errors only).")
DEBUG_OPTION = typer.Option(False, "--debug", help="Show tracebacks.")
PRECISION_OPTION = typer.Option(
    None,
    case_sensitive=False,
    help="bf16 or fp32 [default: auto: bf16 on CUDA, and on CPUs with native bf16 for models "
    "measured faster in it; else fp32]",
)
FORMAT_OPTION = typer.Option(Format.wav, "--format", help="Output format.", case_sensitive=False)
BIT_DEPTH_OPTION = typer.Option(None, "--bit-depth", help="16, 24 or 32 [default: float wav, 24-bit flac].")
JSON_OPTION = typer.Option(False, "--json", help="Progress and results as JSON lines on stdout.")
FILENAME_OPTION = typer.Option(
    DEFAULT_FILENAME, help="Output path under --out; fields {folder} {track} {stem} {ext}."
)
REPORT_OPTION = typer.Option(
    None,
    "--report",
    metavar="FILE",
    help="Append a JSON line per song as it finishes (source, outputs, status, error, time, model, host) "
    "and a summary line to this file; an existing file is appended to.",
    show_default=False,
)


def shard_option(hidden: bool = False) -> Any:
    """--shard I/N: batch's share for job arrays (hidden where it is refused: plain separate)."""
    return typer.Option(
        None,
        "--shard",
        metavar="I/N",
        help="Separate share I of N (1/8 ... 8/8) of the songs, chosen by each song's path under the "
        "folder: for job arrays; under torchrun the ranks divide the share.",
        show_default=False,
        hidden=hidden,
    )


def separation_command(batch: bool):
    """The ``separate`` and ``batch`` commands: same options, files or folders as input."""

    def command(
        inputs: list[Path] = typer.Argument(
            ...,
            help="Folders to walk for audio files." if batch else "Audio files to separate.",
            show_default=False,
            readable=False,  # an unreadable file fails alone, with the others done
        ),
        model: str = typer.Option(
            None,
            "--model",
            "-m",
            help="Registry name, checkpoint path or URL; or an ensemble, whose stems are averaged: "
            "a,b (equal weights), a:2,b:1 (weights), vocals=a,drums=b,... (a stem from one model alone).",
        ),
        model_config: Path = typer.Option(
            None,
            "--model-config",
            help="The MSST YAML of a --model checkpoint (BS-/Mel-Band RoFormer, TS-BSMamba2): its network, "
            "stems, window and hop.",
            show_default=False,
        ),
        out: str = typer.Option("stems", "--out", "-o", help="Output folder."),  # str: "" is not "."
        device: str = DEVICE_OPTION,
        light: bool = typer.Option(
            False, "--light", help="Fast mode: the registry's light model (L-TS-BSMamba2), else a 1.5 s hop."
        ),
        window: float = typer.Option(None, help="Window length in seconds [default: the model's, 3]."),
        hop: float = typer.Option(None, help="Hop between windows in seconds [default: the model's, 0.5]."),
        batch_size: int = BATCH_SIZE_OPTION,
        precision: InferencePrecision = PRECISION_OPTION,
        stage: int = typer.Option(
            None, help="TS-BSMamba2: 1 = masked stems (sum to the mix), 2 = final output [default: final]."
        ),
        exact: bool = typer.Option(False, "--exact", help="Correct stems to sum exactly to the input."),
        shifts: int = typer.Option(
            1,
            "--shifts",
            help="Run each song N times, each up to 0.5 s later against the windows, and average "
            "(Demucs's trick; N times the work).",
        ),
        compile: bool = COMPILE_OPTION,
        fmt: Format = FORMAT_OPTION,
        bit_depth: int = BIT_DEPTH_OPTION,
        clip_mode: ClipMode = CLIP_MODE_OPTION,
        stems: str = typer.Option(None, "--stems", help="Comma-separated subset, e.g. vocals,drums."),
        two_stems: str = typer.Option(None, "--two-stems", help="Write STEM and no_STEM (mix minus STEM)."),
        filename: str = FILENAME_OPTION,
        overwrite: bool = OVERWRITE_OPTION,
        downmix: bool = typer.Option(False, "--downmix", help="Fold more than two channels down to stereo."),
        stream: int = typer.Option(
            None,
            "--stream",
            min=1,
            help="Which audio stream of files with several (a video's languages, a commentary), from 1 "
            "[default: the one the file marks as default, else the first].",
            show_default=False,
        ),
        quiet: bool = QUIET_OPTION,
        json_lines: bool = JSON_OPTION,
        report: Path = REPORT_OPTION,
        shard: str = shard_option(hidden=not batch),
        ray: bool = typer.Option(
            False,
            "--ray",
            help="Run the batch on Ray: on a new local cluster, or the one --ray-address names.",
            hidden=not batch,
        ),
        ray_address: str = typer.Option(
            None,
            "--ray-address",
            metavar="ADDRESS",
            help="With --ray: the cluster to join (auto: the one running here, or host:6379, ray://host:10001).",
            show_default=False,
            hidden=not batch,
        ),
        workers: int = typer.Option(
            None,
            "--workers",
            help="With --ray: workers, each loading the model once [default: one per GPU, else per "
            "--cpus-per-worker cores].",
            show_default=False,
            hidden=not batch,
        ),
        cpus_per_worker: float = typer.Option(
            None, "--cpus-per-worker", help="With --ray: CPU cores per worker [default: 1].", hidden=not batch
        ),
        gpus_per_worker: float = typer.Option(
            None,
            "--gpus-per-worker",
            help="With --ray: GPUs per worker (0.5: two share one) [default: 1 on a cluster with GPUs, "
            "unless --device cpu; else 0].",
            hidden=not batch,
        ),
        songs_per_batch: int = typer.Option(
            None,
            "--songs-per-batch",
            help="With --ray: songs each worker separates at once, their windows batched together "
            "(keeps a GPU busy on short songs) [default: 1].",
            hidden=not batch,
        ),
        debug: bool = DEBUG_OPTION,
    ) -> None:
        args = dict(locals(), residual=False)
        _run_command(batch, args, precision, "music")

    command.__doc__ = (
        (
            "Separate every audio file under folders (recursive); skips songs already done."
            if batch
            else "Separate audio files into stems (the default command)."
        )
        + "\n\n"
        + EXAMPLES
    )
    return command


SPEAKERS_EXAMPLES = """Examples:

\b
  stemsplit speakers interview.m4a -o out/             out/interview/speaker1.wav, speaker2.wav
  stemsplit speakers call.wav --residual -o out/       and residual.wav: the mixture minus both
  stemsplit speakers --batch recordings/ -o out/       every file under a folder, resumable
"""


def speakers_command(
    inputs: list[Path] = typer.Argument(
        ..., help="Audio files (folders with --batch).", show_default=False, readable=False
    ),
    model: str = typer.Option(
        None, "--model", "-m", help="Speaker-separation model: registry name, checkpoint path or URL."
    ),
    out: str = typer.Option("speakers", "--out", "-o", help="Output folder."),
    residual: bool = typer.Option(False, "--residual", help="Also write the mixture minus every talker."),
    batch: bool = typer.Option(False, "--batch", help="Inputs are folders to walk, as stemsplit batch."),
    device: str = DEVICE_OPTION,
    window: float = typer.Option(None, help="Window length in seconds [default: the model's]."),
    hop: float = typer.Option(None, help="Hop between windows in seconds [default: the model's]."),
    batch_size: int = BATCH_SIZE_OPTION,
    precision: InferencePrecision = PRECISION_OPTION,
    compile: bool = COMPILE_OPTION,
    fmt: Format = FORMAT_OPTION,
    bit_depth: int = BIT_DEPTH_OPTION,
    clip_mode: ClipMode = CLIP_MODE_OPTION,
    filename: str = FILENAME_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    quiet: bool = QUIET_OPTION,
    json_lines: bool = JSON_OPTION,
    report: Path = REPORT_OPTION,
    shard: str = shard_option(),
    debug: bool = DEBUG_OPTION,
) -> None:
    args = dict(
        locals(),
        light=False,
        stage=None,
        exact=False,
        shifts=1,
        stems=None,
        two_stems=None,
        downmix=False,
        stream=None,
    )
    _run_command(args.pop("batch"), args, precision, "speakers")


speakers_command.__doc__ = (
    "Separate the talkers of recordings: one mono file per speaker, at the input's rate.\n\n"
    "Windows are lined up on their overlap (the model gives each window's talkers in an order of its own), "
    "so each talker stays in one file.\n\n" + SPEAKERS_EXAMPLES
)
