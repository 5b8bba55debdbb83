"""``stemsplit eval``: score a model on MUSDB18-HQ (or any folder so laid out) with cSDR and uSDR.

Mounted by ``cli.py`` with ``app.command("eval")(eval_command)``; the work is in
:mod:`stemsplit.train.eval`, this module only parses and prints.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import typer
from rich.table import Table

from .cli_common import err_console, fail, out_console

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def _db(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def eval_command(
    musdb: Path = typer.Option(
        ..., help="MUSDB18-HQ root (test/<track>/<stem>.wav), or any folder so laid out."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Registry name, checkpoint path or URL [default: the default model]."
    ),
    subset: str = typer.Option("test", help="Subset folder under --musdb."),
    hop: float = typer.Option(0.5, help="Hop between windows (s); the paper's protocol is 0.5."),
    window: float = typer.Option(3.0, help="Window length (s); the paper's protocol is 3."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_size: int | None = typer.Option(None, min=1, help="Windows per forward pass [default: auto]."),
    tracks: int | None = typer.Option(None, min=1, help="Score only the first N tracks (quick checks)."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Where the JSON report goes [default: ./eval-<model>-<subset>.json]."
    ),
    no_csdr: bool = typer.Option(False, "--no-csdr", help="uSDR only (skips BSSEval, which is slow)."),
) -> None:
    """Separate a test set and report cSDR and uSDR per stem, as in the paper.

    \b
    stemsplit eval --musdb ~/data/musdb18hq
    stemsplit eval --musdb ~/data/musdb18hq -m runs/ts/best.safetensors --hop 0.5
    """
    from .separate import SeparationError, Separator
    from .train.data import DatasetError, find_tracks
    from .train.eval import MUSEVAL_INSTALL, evaluate_tracks, write_report
    from .weights import WeightsError

    if not no_csdr and importlib.util.find_spec("museval") is None:  # before hours of separating
        raise fail(f"cSDR needs museval: {MUSEVAL_INSTALL}; or add --no-csdr for uSDR only")
    try:
        separator = Separator(model, device=device, window=window, hop=hop, batch_size=batch_size)
        found = find_tracks(musdb, subset, separator.stems)[:tracks]
        name = separator.name
        if name.endswith(MODEL_SUFFIXES):
            name = Path(name).stem
        json_out = json_out or Path.cwd() / f"eval-{name}-{subset}.json"
        report = evaluate_tracks(
            separator,
            found,
            progress=lambda line: err_console.print(line),
            compute_csdr=not no_csdr,
        )
        report.settings.update(musdb=str(musdb), subset=subset)
        write_report(report, json_out)
    except (SeparationError, WeightsError, DatasetError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.filename or musdb}: {exc.strerror or exc}") from None

    csdr, usdr = report.csdr(), report.usdr()
    table = Table(title=f"{separator.name} on {subset} ({len(report.tracks)} tracks, {hop:g} s hop)")
    table.add_column("stem")
    table.add_column("cSDR (dB)", justify="right")
    table.add_column("uSDR (dB)", justify="right")
    for stem in (*report.stems, "avg"):
        table.add_row(stem, _db(csdr.get(stem)), _db(usdr.get(stem)))
    out_console.print(table)
    err_console.print(f"report: {json_out}")
