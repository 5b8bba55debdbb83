"""The ``stemsplit`` command line: parsing and printing only (the work is in :mod:`stemsplit.separate`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, audio
from .cli_common import Precision, err_console, fail, out_console
from .cli_eval import eval_command
from .cli_models import models_app
from .cli_train import train_command

EXAMPLES = """
Examples:

  stemsplit song.wav -o stems/                  separate one song (stems/song/vocals.wav, ...)

  stemsplit a.mp3 b.flac --light -o stems/      fast mode, several files

  stemsplit song.wav --two-stems vocals          vocals and no_vocals only

  stemsplit batch music/ -o stems/               a whole folder, resumable

  stemsplit doctor                               what runs here (paste into bug reports)
"""

app = typer.Typer(
    name="stemsplit",
    help="Split songs into drums, bass, other and vocals with TS-BSMamba2.\n\n" + EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

CPU_SECONDS_PER_WINDOW = 15.0  # TS (12 layers, N = 128) per 3 s window on 2 cores; see benchmarks/


class Format(str, Enum):
    wav = "wav"
    flac = "flac"
    mp3 = "mp3"


class ClipMode(str, Enum):
    none = "none"
    rescale = "rescale"
    clamp = "clamp"


def _version(value: bool) -> None:
    if value:
        out_console.print(f"stemsplit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Split songs into drums, bass, other and vocals with TS-BSMamba2."""


# --- output: rich progress or JSON lines --------------------------------------------------------


class Reporter:
    """Turns engine progress events into a rich display, JSON lines, or nothing."""

    def __init__(self, json_lines: bool, quiet: bool) -> None:
        self.json_lines, self.quiet = json_lines, quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.overall: TaskID | None = None
        self.song_seconds = 0.0
        self.started = 0.0

    def __enter__(self) -> Reporter:
        if not self.json_lines and not self.quiet:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} windows"),
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
        if self.json_lines:
            print(json.dumps(event), flush=True)

    def line(self, text: str) -> None:
        """A human message (to stderr, so stdout stays clean for --json)."""
        if not self.quiet:
            err_console.print(text, highlight=False, soft_wrap=True)

    def begin_all(self, files: int) -> None:
        if self.progress and files > 1:
            self.overall = self.progress.add_task("all songs", total=files, speed="")

    def begin_song(self, path: Path) -> None:
        self.emit({"event": "song", "source": str(path)})
        if self.progress:
            self.task = self.progress.add_task(path.name[:40], total=None, speed="")

    def on_event(self, event: dict[str, Any]) -> None:
        self.emit(event)
        if not self.progress or self.task is None:
            return
        if event["event"] == "start":
            self.song_seconds, self.started = event["seconds"], time.perf_counter()
            self.progress.update(self.task, total=event["windows"])
        elif event["event"] == "windows":
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            audio = self.song_seconds * event["done"] / max(event["total"], 1)
            self.progress.update(self.task, completed=event["done"], speed=f"{audio / elapsed:.2f}x")

    def end_song(self) -> None:
        if self.progress and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if self.progress and self.overall is not None:
            self.progress.advance(self.overall)


# --- separate / batch --------------------------------------------------------------------------


def _make_separator(
    model: str | None,
    device: str,
    light: bool,
    window: float,
    hop: float | None,
    batch_size: int | None,
    precision: Precision | None,
    stage: int,
    exact: bool,
    reporter: Reporter,
):
    from .separate import Separator
    from .weights import has_light_model

    if light and not model and not has_light_model():
        hop = hop or 1.5
        reporter.line(
            f"--light: no light model in the registry; using the default model with a {hop:g} s hop"
        )
    elif light and not model:
        reporter.line("--light: using the registry's light model (L-TS-BSMamba2)")
    separator = Separator(
        model,
        device=device,
        window=window,
        hop=hop or 0.5,
        batch_size=batch_size,
        precision=precision.value if precision else None,
        stage=stage,
        exact=exact,
        light=light,
        progress=reporter.on_event,
    )
    return separator


def _cpu_notice(separator, seconds: float, reporter: Reporter) -> None:
    if separator.device.type != "cpu":
        return
    from .separate import window_count

    cfg = separator.model.config
    scale = (cfg.num_repeat_mask + cfg.num_repeat_map) / 12 * (cfg.feature_dim / 128) ** 1.5
    import torch

    per_window = CPU_SECONDS_PER_WINDOW * scale * 2 / max(1, torch.get_num_threads())
    windows = window_count(round(seconds * separator.sample_rate), separator.window, separator.hop)
    reporter.line(
        f"Running on the CPU: slow, about {_duration(per_window * windows)} for "
        f"{_duration(seconds)} of audio ({windows} windows); a CUDA GPU is far faster."
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"


def _run_files(
    files: list[Path], out: Path, opts: dict[str, Any], skip_done: bool, common: dict[str, Any]
) -> int:
    """Separate ``files``; returns the exit code. Prints a summary table when more than one file."""
    from .audio import AudioError, probe
    from .separate import SeparationError
    from .weights import WeightsError

    reporter: Reporter = common.pop("reporter")
    debug = common.pop("debug")
    try:
        separator = _make_separator(reporter=reporter, **common)
    except (WeightsError, SeparationError, AudioError) as exc:
        if debug:
            raise
        raise fail(str(exc), 2 if isinstance(exc, SeparationError) else 1) from None

    rows: list[tuple[str, str, str]] = []
    claimed: set[Path] = set()
    total_seconds = 0.0
    for f in files:
        with contextlib.suppress(AudioError):
            total_seconds += probe(f).seconds
    _cpu_notice(separator, total_seconds, reporter)
    with reporter:
        reporter.begin_all(len(files))
        for path in files:
            track = _unique_track(separator, path, out, opts, claimed)
            outputs = separator.output_paths(
                path,
                out,
                separator.output_stems(opts["stems"], opts["two_stems"]),
                opts["filename"],
                opts["fmt"],
                track,
            )
            if skip_done and all(p.exists() for p in outputs.values()) and not opts["overwrite"]:
                rows.append((str(path), "skipped", "stems already there"))
                reporter.emit({"event": "skipped", "source": str(path)})
                reporter.end_song()
                continue
            reporter.begin_song(path)
            try:
                result = separator.separate_file(path, out, track=track, **opts)
            except KeyboardInterrupt:
                reporter.end_song()
                reporter.emit({"event": "interrupted", "source": str(path)})
                raise fail(f"{path}: interrupted; no stems written for it", 130) from None
            except (AudioError, SeparationError) as exc:
                if debug:
                    raise
                rows.append((str(path), "failed", str(exc)))
                reporter.emit({"event": "failed", "source": str(path), "error": str(exc)})
                err_console.print(f"stemsplit: error: {exc}", highlight=False, soft_wrap=True)
            else:
                note = f"{len(result.outputs)} stems in {_common_parent(result.outputs.values())}"
                if result.rescaled_by != 1.0:
                    gain_db = 20 * math.log10(result.rescaled_by)
                    note += f"; scaled by {result.rescaled_by:.3f} ({gain_db:.1f} dB) so nothing clips"
                if result.residual_db is not None:
                    note += f"; residual {result.residual_db:.1f} dB shared among stems"
                rows.append((str(path), "done", note))
                reporter.emit(
                    {
                        "event": "result",
                        "source": str(path),
                        "outputs": {k: str(v) for k, v in result.outputs.items()},
                        "rescaled_by": result.rescaled_by,
                        "residual_db": result.residual_db,
                    }
                )
            finally:
                reporter.end_song()
    failed = sum(1 for _, status, _ in rows if status == "failed")
    if not reporter.quiet and not reporter.json_lines:
        if len(files) > 1 or skip_done:
            table = Table(title="stemsplit")
            for column in ("file", "status", "details"):
                table.add_column(column)
            for row in rows:
                table.add_row(*row)
            err_console.print(table)
        elif rows and rows[0][1] == "done":
            err_console.print(f"{rows[0][0]}: {rows[0][2]}", highlight=False)
    return 1 if failed else 0


def _common_parent(paths) -> str:
    return os.path.commonpath([str(p.parent) for p in paths])


def _unique_track(separator, path: Path, out: Path, opts: dict[str, Any], claimed: set[Path]) -> str:
    """The song's track name, suffixed " (2)", " (3)", ... if another input of this run took it."""
    base, track, n = path.stem, path.stem, 1
    while True:
        outputs = separator.output_paths(path, out, ["x"], opts["filename"], opts["fmt"], track)
        if outputs["x"] not in claimed:
            claimed.add(outputs["x"])
            return track
        n += 1
        track = f"{base} ({n})"


def _separation_command(batch: bool):
    """The ``separate`` and ``batch`` commands: same options, files or folders as input."""

    def command(
        inputs: list[Path] = typer.Argument(
            ...,
            help="Folders to walk for audio files." if batch else "Audio files to separate.",
            show_default=False,
        ),
        model: str = typer.Option(None, "--model", "-m", help="Registry name, checkpoint path or URL."),
        out: Path = typer.Option(Path("stems"), "--out", "-o", help="Output folder."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        light: bool = typer.Option(False, "--light", help="Fast mode: L-TS-BSMamba2, or a 1.5 s hop."),
        window: float = typer.Option(3.0, help="Window length in seconds."),
        hop: float = typer.Option(None, help="Hop between windows in seconds [default: 0.5]."),
        batch_size: int = typer.Option(None, "--batch-size", help="Windows per forward pass."),
        precision: Precision = typer.Option(None, help="[default: bf16 on CUDA, fp32 on CPU]"),
        stage: int = typer.Option(2, min=1, max=2, help="1: masked stems (sum to the mix); 2: final output."),
        exact: bool = typer.Option(False, "--exact", help="Correct stems to sum exactly to the input."),
        fmt: Format = typer.Option(Format.wav, "--format", help="Output format."),
        bit_depth: int = typer.Option(
            None, "--bit-depth", help="16, 24 or 32 [default: float wav, 24-bit flac]."
        ),
        clip_mode: ClipMode = typer.Option(ClipMode.rescale, "--clip-mode", help="For integer formats."),
        stems: str = typer.Option(None, "--stems", help="Comma-separated subset, e.g. vocals,drums."),
        two_stems: str = typer.Option(None, "--two-stems", help="Write STEM and no_STEM (mix minus STEM)."),
        filename: str = typer.Option("{track}/{stem}.{ext}", help="Output path template under --out."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        downmix: bool = typer.Option(False, "--downmix", help="Fold more than two channels down to stereo."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages (errors only)."),
        json_lines: bool = typer.Option(
            False, "--json", help="Progress and results as JSON lines on stdout."
        ),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    ) -> None:
        opts = dict(
            filename=filename,
            fmt=fmt.value,
            bit_depth=bit_depth,
            clip_mode=clip_mode.value,
            stems=[s.strip() for s in stems.split(",") if s.strip()] if stems else None,
            two_stems=two_stems,
            overwrite=overwrite,
            downmix=downmix,
        )
        common = dict(
            model=model,
            device=device,
            light=light,
            window=window,
            hop=hop,
            batch_size=batch_size,
            precision=precision,
            stage=stage,
            exact=exact,
            reporter=Reporter(json_lines, quiet),
            debug=debug,
        )
        files = _find_audio(inputs) if batch else inputs
        files = _shard_for_torchrun(files, common)
        if batch and not files:
            raise fail("no audio files found in " + ", ".join(map(str, inputs)))
        raise typer.Exit(_run_files(files, out, opts, skip_done=batch, common=common))

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


app.command("separate", no_args_is_help=True)(_separation_command(batch=False))
app.command("batch", no_args_is_help=True)(_separation_command(batch=True))
app.add_typer(models_app, name="models")
app.command("eval")(eval_command)
app.command("train")(train_command)


def _find_audio(folders: list[Path]) -> list[Path]:
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise fail(f"{folder}: not a folder", 2)
        files += sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in audio.AUDIO_EXTENSIONS and p.is_file()
        )
    return files


def _shard_for_torchrun(files: list[Path], common: dict[str, Any]) -> list[Path]:
    """Under torchrun, each rank takes every WORLD_SIZE-th file and its own GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return files
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if common["device"] == "auto":
        import torch

        common["device"] = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    return files[rank::world]


@app.command()
def synth(
    out: Path = typer.Argument(..., help="New (or empty) folder for the dataset.", show_default=False),
    songs: int = typer.Option(100, "--songs", help="Training songs (in OUT/train)."),
    valid: int = typer.Option(10, "--valid", help="Validation songs (in OUT/train, named in valid.txt)."),
    test: int = typer.Option(10, "--test", help="Test songs (in OUT/test)."),
    seconds: float = typer.Option(20.0, "--seconds", help="Length of every song."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same songs."),
    sample_rate: int = typer.Option(44100, "--sample-rate", help="Sample rate in Hz."),
    workers: int = typer.Option(1, "--workers", help="Processes generating songs."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write a synthetic multitrack dataset (MUSDB18-HQ layout) for demos and tests.

    \b
    stemsplit synth data/synth --songs 100 --valid 10 --test 10 --seconds 20
    stemsplit train --musdb data/synth -o runs/demo
    """
    from .train.synth import SynthError, write_dataset

    try:
        write_dataset(
            out,
            train=songs,
            valid=valid,
            test=test,
            seconds=seconds,
            seed=seed,
            sample_rate=sample_rate,
            workers=workers,
        )
    except SynthError as exc:
        if debug:
            raise
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; the finished songs are in {out}, delete it to start again", 130) from None
    out_console.print(
        f"wrote {songs} training, {valid} validation and {test} test songs "
        f"({seconds:g} s, {sample_rate} Hz, seed {seed}) to {out}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command()
def doctor() -> None:
    """What runs here: versions, devices, Mamba-2 kernels, model cache, audio codecs."""
    import soundfile
    import soxr
    import torch

    from .model.mamba2 import cuda_kernels, resolve_backend

    table = Table(show_header=False, box=None)
    table.add_row("stemsplit", __version__)
    table.add_row("python", f"{platform.python_version()} ({platform.platform()})")
    table.add_row("torch", torch.__version__)
    table.add_row("cpu threads", str(torch.get_num_threads()))
    cuda = torch.cuda.is_available()
    table.add_row("cuda", torch.cuda.get_device_name(0) if cuda else "not available")
    if cuda:
        kernels = cuda_kernels()
        if kernels is None:
            kernels_text = "mamba_ssm not importable (see warning above)"
        else:
            kernels_text = "mamba_ssm fused" if kernels.fused else "mamba_ssm unfused (no causal_conv1d)"
        table.add_row("cuda kernels", kernels_text)
    device = torch.device("cuda" if cuda else "cpu")
    table.add_row("mamba-2 backend", f"{resolve_backend(None, device)} (on {device.type})")
    table.add_row("libsndfile", soundfile.__libsndfile_version__)
    table.add_row("formats", ", ".join(sorted(soundfile.available_formats())))
    table.add_row("resampler", f"soxr {soxr.__version__}")
    from . import weights

    table.add_row("model cache", str(weights.cache_dir()))
    try:
        registry = weights.load_registry()
        for name in registry.models:
            path = weights.cached_path(name)
            state = f"cached, {path.stat().st_size / 1e6:.0f} MB" if path else "not downloaded"
            table.add_row(f"  {name}", state + (" (default)" if name == registry.default else ""))
    except weights.WeightsError as exc:
        table.add_row("  registry", f"unreadable: {exc}")
    out_console.print(table)


SUBCOMMANDS = {"separate", "batch", "doctor", "models", "train", "eval", "synth"}
GLOBAL_FLAGS = {"--help", "-h", "--version"}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``stemsplit FILE ...`` means ``stemsplit separate FILE ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in SUBCOMMANDS and args[0] not in GLOBAL_FLAGS:
        args.insert(0, "separate")
    app(args=args, prog_name="stemsplit")
