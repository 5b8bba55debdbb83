"""What a separation run prints: a rich progress bar, plain lines (logs) or JSON lines (``--json``), and
the summary at the end. Printing is best effort: a closed pipe stops the printing, never the work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from .common import err_console, error_line, one_line

if TYPE_CHECKING:
    from .song import Song

# TS (12 layers, N = 128) per 3 s window on 2 cores, fp32 and bf16 (benchmarks/bench_model.py, AMD EPYC)
CPU_SECONDS_PER_WINDOW = {"fp32": 6.2, "bf16": 4.5}
TS_PARAMETERS = 35.5e6  # the paper's TS: the estimate above scales with a model's size


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


def print_summary(run: list[Song], reporter: Reporter, batch: bool) -> None:
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


def cpu_seconds_per_window(separator: Any) -> float:
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
