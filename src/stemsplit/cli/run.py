"""A separation run (``separate``, ``batch``, ``speakers``), in this order; nothing is decoded, separated
or written before step 4:

1. the flags become the request's parts (:mod:`stemsplit.engine.request`: output options, engine settings, the
   stems asked for), each checked when made; then the run's own (--shard, --report, --ray) (usage errors:
   exit 2, one line, nothing created);
2. inputs: the files named, or the songs under the folders (``batch``);
3. the pre-flight, :func:`stemsplit.engine.request.prepare`: every output path of every song, checked (inside
   ``-o``, no two songs on one file), then every input probed (a bad file fails alone, exit 1);
4. the model, then the songs, one by one (:func:`~stemsplit.cli.song.separate_one`), each committed all
   together (``batch --ray``: the songs go to Ray workers, each with its own copy of the model,
   :mod:`stemsplit.cli.ray_batch`; this module imports that one only then).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .common import EXIT_FAILED, usage_error
from .flags import SeparationFlags
from .model_args import (
    CHECKPOINT_SUFFIXES,
    check_msst_network,
    ensemble_argument,
    ensemble_stems,
    known_model,
    load_separator,
    msst_config,
    window_before_loading,
    wrong_task,
)
from .reporter import Reporter, cpu_seconds_per_window, print_summary
from .song import Song, record_settings, separate_one


def engine_settings(flags: SeparationFlags) -> Any:
    """The engine's settings from the flags (checked: SeparationError)."""
    from ..engine.request import EngineSettings

    return EngineSettings(
        device=flags.device,
        window=flags.window,
        hop=flags.hop,
        batch_size=flags.batch_size,
        precision=flags.precision,
        stage=flags.stage,
        exact=flags.exact,
        shifts=flags.shifts,
        light=flags.light,
        compile=flags.compile,
    )


def stem_choice(flags: SeparationFlags) -> Any:
    """The stems asked for by --stems, --two-stems and --residual (checked: SeparationError)."""
    from ..engine.request import StemChoice

    if flags.stems is not None and flags.two_stems is not None:
        raise UsageError("--stems and --two-stems cannot be used together")
    return StemChoice(flags.stems, flags.two_stems, flags.residual)


def _inputs(paths: Sequence[Path], batch: bool, out: Path, reporter: Reporter) -> list[Any]:
    from ..batch import BatchError, find_songs
    from ..output.plan import SongSource

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
    from ..batch import BatchError, parse_shard

    if not batch:
        command = "stemsplit batch FOLDER" if task == "music" else "stemsplit speakers --batch FOLDER"
        raise UsageError(
            f"--shard: shares the songs of folders, whose claims keep overlapping shares from doing a "
            f"song twice; use {command}"
        )
    try:
        return parse_shard(text)
    except BatchError as exc:
        raise usage_error(exc) from None


def _shard_note(reporter: Reporter, shard: Any, taken: int, found: int) -> None:
    """Say (and emit) which share this process runs: "shard 3/8: 12 of 97 songs"."""
    from ..engine.runtime import torchrun_ranks

    ranks = torchrun_ranks()
    note = f"shard {shard}: {taken} of {found} songs"
    if ranks.world > 1:
        note += f" for rank {ranks.rank} of {ranks.world}"
    reporter.shard_note = note
    reporter.line(note)
    event = {"event": "shard", "shard": shard.index, "of": shard.count, "songs": taken, "found": found}
    reporter.emit(event)


def _report_argument(path: Path | None, model: str | Path | None, ensemble: Any) -> Any:
    """--report checked before anything runs (torch-free, nothing created): a
    :class:`~stemsplit.report.RunReport`, or None without it."""
    if path is None:
        return None
    from ..audio.info import AUDIO_EXTENSIONS
    from ..report import RunReport, report_problem

    if path.suffix.lower() in AUDIO_EXTENSIONS or path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise UsageError(
            f"--report: {path} is named like an audio or model file; the report is JSON lines (run.jsonl)"
        )
    for each in [model] if ensemble is None else list(ensemble.models):
        if isinstance(each, Path) and _same_file(path, each):
            raise UsageError(f"--report: {path} is the model {each}")
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
    from ..engine.runtime import torchrun_ranks

    ranks = torchrun_ranks()  # device "auto" then means this process's GPU (runtime.pick_device)
    return songs[ranks.rank :: ranks.world], device


def _ray_argument(flags: SeparationFlags, ensemble: Any) -> Any:
    """--ray and its flags checked before anything runs (Ray is not imported): a
    :class:`~stemsplit.cli.ray_batch.RayOptions`, or None without --ray."""
    from .ray_batch import RayOptions, ray_problem

    ray_flags = {
        "--ray-address": flags.ray_address,
        "--workers": flags.workers,
        "--cpus-per-worker": flags.cpus_per_worker,
        "--gpus-per-worker": flags.gpus_per_worker,
        "--songs-per-batch": flags.songs_per_batch,
    }
    if not flags.ray:
        given = [flag for flag, value in ray_flags.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]}: goes with --ray (the batch then runs on a Ray cluster)")
        return None
    if not flags.batch:
        raise UsageError("--ray: runs a batch of folders; use stemsplit batch FOLDER --ray")
    if (flags.songs_per_batch or 1) > 1 and (ensemble is not None or flags.exact):
        why = "an ensemble's models run" if ensemble is not None else "--exact measures"
        raise UsageError(f"--songs-per-batch: {why} one song's windows at a time; leave it at 1")
    if problem := ray_problem():
        raise UsageError(f"--ray: {problem}")
    return RayOptions.checked(
        flags.ray_address,
        flags.workers,
        flags.cpus_per_worker,
        flags.gpus_per_worker,
        flags.songs_per_batch,
        flags.device,
    )


def run_separation(flags: SeparationFlags, reporter: Reporter) -> int:
    """Check everything the run will do (the pre-flight: :func:`stemsplit.engine.request.prepare`), then
    load the model and separate; returns the exit status. Raises :class:`UsageError` for exit 2.

    ``flags.task``: the models this command takes (``music``: separate and batch; ``speakers``).
    """
    from ..engine.request import InternalReadError, prepare
    from ..engine.settings import SeparationError, check_settings
    from ..output.plan import OutputError, OutputOptions

    # 1. the flags, each part of the request checking itself; then the run's own flags (an empty --out
    # was refused when the flags were made)
    batch, task, out = flags.batch, flags.task, flags.out
    if any(os.fspath(path) == "-" and not os.path.lexists(path) for path in flags.inputs):
        raise UsageError("-: stemsplit reads audio files, not standard input; save the stream to a file")
    try:
        output = OutputOptions(flags.filename, flags.fmt, flags.bit_depth, flags.clip_mode, flags.overwrite)
        settings = engine_settings(flags)
        choice = stem_choice(flags)
    except (OutputError, SeparationError) as exc:
        raise usage_error(exc) from None
    model, ensemble = ensemble_argument(flags.model, flags.model_config, task)  # ensemble None: one model
    flags = dataclasses.replace(flags, model=model)  # what the loader gets (the run's, each --ray worker's)
    msst = msst_config(flags.model_config, model)
    shard = _shard_argument(flags.shard, batch, task)
    report = _report_argument(flags.report, model, ensemble)
    ray = _ray_argument(flags, ensemble)
    if settings.window is None and settings.hop is not None and ensemble is None:  # the hop must fit
        try:
            window = window_before_loading(model, flags.light, msst, task)
            check_settings(window, settings.hop, None, None, None)
        except SeparationError as exc:
            raise usage_error(exc) from None

    # 2. inputs
    songs = _inputs(flags.inputs, batch, out, reporter)
    if not songs:  # not a usage error: the folder may simply be empty today
        reporter.error("no audio files found in " + ", ".join(map(str, flags.inputs)))
        return EXIT_FAILED
    if report is not None and not batch:
        _check_report_is_no_input(report.path, songs)
    found = len(songs)
    if shard is not None:  # the job array's share first; torchrun's ranks then divide the share
        songs = shard.take(songs)
    songs, device = _shard_for_torchrun(songs, flags.device)
    if shard is not None:
        _shard_note(reporter, shard, len(songs), found)
    if report is not None:
        from ..engine.runtime import torchrun_ranks

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

    # 3. the pre-flight: the stems the model gives where known without loading it, every output path
    # of every song planned with them, every input probed (a missing or unreadable file fails alone,
    # before the model loads: a typo would otherwise wait for the default model's download)
    if ensemble is None:
        problem, known = known_model(model, flags.light, task)  # without loading the model
        if msst is not None:  # the YAML names the stems; what the file's metadata says does not count
            problem, known = None, msst.stems
        if problem:
            raise wrong_task(problem, task)
    else:
        known = ensemble_stems(ensemble, flags.light, task)
    names = None
    if batch:  # a name once given stays: from the manifests of earlier runs
        from ..batch import GivenNames

        names = GivenNames(out, output.filename)
    try:
        request = prepare(
            songs,
            out,
            output=output,
            choice=choice,
            settings=settings,
            model_stems=known or None,
            owner="this model" if ensemble is None else "this ensemble",
            downmix=flags.downmix,
            stream=flags.stream,
            names=names,
        )
    except (OutputError, SeparationError) as exc:
        raise usage_error(exc) from None
    if flags.debug:
        for planned in request.songs:
            if isinstance(planned.problem, InternalReadError):
                raise planned.problem.__cause__ or planned.problem  # the bug itself
            if planned.problem is not None:
                raise planned.problem
    run = _songs(request)
    # The songs' own problems are said now, each once, before the model (whose download or checks may
    # fail and end the run: the songs' problems would then never be seen).
    for song in run:
        if song.status == "failed":
            reporter.error(song.details, source=str(song.outputs.source.path))
            song.said = True

    # 3a. the device (this imports torch; a device or Mamba backend that is not here is a usage error)
    from ..engine.runtime import pick_device

    try:
        pick_device(device if ray is None else "cpu")  # --ray: the workers' devices are the workers' own
    except SeparationError as exc:
        raise usage_error(exc) from None
    if msst is not None:
        check_msst_network(msst)
    if not request.runnable():  # nothing to separate
        _report(run, reporter, batch, lambda song: None)
        return EXIT_FAILED

    # 4. the model (importing torch takes seconds: everything above must not need it)
    from ..weights import UnknownModelError

    try:
        # --ray: this copy only plans (stems, input checks, fingerprint) on the CPU; the workers separate
        separator = load_separator(
            model,
            ensemble,
            msst,
            dataclasses.replace(settings, device="cpu" if ray is not None else device),
            task,
            reporter,
        )
        chosen = choice.resolve(separator.stems, separator.owner)
        request = request.with_stems(chosen)  # the model's stems, where the registry did not know them
    except UnknownModelError as exc:
        for each in [model] if ensemble is None else ensemble.models:
            if each is not None and os.path.isdir(each):  # a bare name: no such model, but a folder
                raise UsageError(f"--model: {each} is a folder, not a checkpoint file") from None
        raise UsageError(f"--model: {exc}") from None
    except (SeparationError, OutputError) as exc:
        if exc.option == "task":  # a model of the other task
            raise wrong_task(exc.problem, task) from None
        if exc.option:
            raise usage_error(exc) from None
        raise
    for song, planned in zip(run, request.songs, strict=True):  # planned again with the model's stems
        song.outputs = planned.outputs
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
        if song.status == "failed":
            continue
        try:
            separator.check_input(song.info, flags.downmix)
        except SeparationError as exc:
            if flags.debug:
                raise
            song.status, song.details = "failed", str(exc)
    if ray is not None:  # the workers decide what is done, each with its own model's settings
        from .ray_batch import WorkerJob, separate_on_ray

        job = WorkerJob(flags, settings, choice, ensemble, msst, output, chosen, separator.fingerprint())
        del separator  # the workers load their own
        separate_on_ray(run, job, ray, reporter)
        if any(song.status == "failed" for song in run) or (report is not None and report.problem):
            return EXIT_FAILED
        return 0
    if separator.device.type == "cpu":
        reporter.cpu_seconds_per_window = cpu_seconds_per_window(separator)

    records = None
    if batch:
        from ..batch import DoneRecords

        records = DoneRecords(out, record_settings(separator, output, flags.downmix, flags.stream, chosen))
    _report(
        run,
        reporter,
        batch,
        lambda song: separate_one(separator, song, output, flags, records, reporter),
    )
    if any(song.status == "failed" for song in run) or (report is not None and report.problem):
        return EXIT_FAILED
    return 0


def _songs(request: Any) -> list[Song]:
    """The request's songs as the run tracks them: those that probed badly have failed already."""
    run = []
    for planned in request.songs:
        song = Song(planned.outputs, planned.info, identity=planned.identity)
        if planned.problem is not None:
            song.status, song.details = "failed", _song_line(planned.problem, song.outputs.source.path)
        run.append(song)
    return run


def _song_line(problem: Exception, path: Path) -> str:
    """A song's problem found by the pre-flight, as the command line says it."""
    from ..engine.request import InternalReadError

    line = str(problem)
    if isinstance(problem, InternalReadError):
        line += " (run again with --debug and report it)"
    if os.fspath(path).startswith("-") and not os.path.lexists(path):  # `stemsplit -- -x.mp3 -o out`
        line += " (after --, every argument is a file: give the options before --)"
    return line


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
    print_summary(run, reporter, batch)
