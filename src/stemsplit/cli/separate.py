"""``stemsplit separate`` (the default command), ``stemsplit batch`` and ``stemsplit speakers``: their
options, parsed into a run (:func:`~stemsplit.cli.run.run_separation`) whose exit status they return.

``speakers`` is the same run for speaker-separation models (``card.task ==
"speakers"``): the outputs are the model's talkers (``speaker1``, ``speaker2``),
mono at the input's rate, and with ``--residual`` the mixture minus all of
them. Each command refuses the other task's models in one line.

The work is in :mod:`stemsplit.separate` (engine), :mod:`stemsplit.output`
(plan, writer) and :mod:`stemsplit.batch` (folders, manifests, claims).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from ..errors import StemsplitError
from ..output.plan import DEFAULT_FILENAME
from .common import (
    EXAMPLES,
    Interrupted,
    flag_problem,
    interrupted_status,
    interrupts_as_exceptions,
)
from .flags import SeparationFlags
from .reporter import Reporter
from .run import run_separation


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


# --- the Typer commands ---------------------------------------------------------------------------


def _run_command(options: dict[str, Any], task: str, batch: bool) -> None:
    """Run a separation command's ``options`` (Typer's values by name) and exit with its status."""
    reporter = Reporter(options["json_lines"], options["quiet"])
    with interrupts_as_exceptions():
        try:  # (the flags are made in here: an empty --out, their one check, gets --json's error event)
            code = run_separation(SeparationFlags.from_options(options, task=task, batch=batch), reporter)
        except StemsplitError as exc:  # cli.common.Commands prints its line and exits with its status
            reporter.emit({"event": "error", "message": flag_problem(exc), "exit_code": exc.exit_code})
            raise
        except Interrupted as exc:
            code = interrupted_status(exc)
            reporter.error(f"interrupted ({exc}); nothing is left half-written", exit_code=code)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            reporter.error("interrupted; nothing is left half-written", exit_code=130)
            raise typer.Exit(130) from None
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
        _run_command(dict(locals(), residual=False), "music", batch)  # (locals(): the options, and batch)

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
    options = dict(
        locals(),
        model_config=None,
        light=False,
        stage=None,
        exact=False,
        shifts=1,
        stems=None,
        two_stems=None,
        downmix=False,
        stream=None,
        ray=False,
        ray_address=None,
        workers=None,
        cpus_per_worker=None,
        gpus_per_worker=None,
        songs_per_batch=None,
    )
    _run_command(options, "speakers", options.pop("batch"))


speakers_command.__doc__ = (
    "Separate the talkers of recordings: one mono file per speaker, at the input's rate.\n\n"
    "Windows are lined up on their overlap (the model gives each window's talkers in an order of its own), "
    "so each talker stays in one file.\n\n" + SPEAKERS_EXAMPLES
)
