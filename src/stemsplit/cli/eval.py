"""``stemsplit eval``: score a model on MUSDB18-HQ (or any folder so laid out) with cSDR and uSDR,
or a speaker-separation model on a Libri2Mix-layout folder with SI-SNRi, SDRi (and STOI).

Mounted by ``stemsplit.cli`` with ``app.command("eval")(eval_command)``; the work is in
:mod:`stemsplit.evaluate.scoring`, this module only parses and prints.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from ..files import creation_problem, special_file
from .common import EXIT_USAGE, err_console, fail, flag_problem, out_console

if TYPE_CHECKING:
    from ..engine.request import EngineSettings

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def _db(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def eval_command(
    musdb: Path = typer.Option(
        None, help="MUSDB18-HQ root (test/<track>/<stem>.wav), or any folder so laid out."
    ),
    libri2mix: Path = typer.Option(
        None, help="Speaker models: a Libri2Mix-layout root (test/{mix_both,s1,s2}/<ID>.wav)."
    ),
    mixture: str = typer.Option("mix_both", help="--libri2mix: the input, mix_both (noisy) or mix_clean."),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Registry name, checkpoint path or URL [default: the default model]; or an ensemble, as "
        "separate takes it (a,b  a:2,b:1  vocals=a,drums=b,...).",
    ),
    subset: str = typer.Option("test", help="Subset folder under --musdb or --libri2mix."),
    hop: float = typer.Option(
        None, help="Hop between windows (s) [default: the model's; TS-BSMamba2's is the paper's 0.5]."
    ),
    window: float = typer.Option(
        None, help="Window length (s) [default: the model's; TS-BSMamba2's is the paper's 3]."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_size: int | None = typer.Option(None, min=1, help="Windows per forward pass [default: auto]."),
    tracks: int | None = typer.Option(None, min=1, help="Score only the first N tracks (quick checks)."),
    json_out: Path | None = typer.Option(
        None,
        "--json",
        help="Where the JSON report goes [default: ./eval-<model>-<subset>.json, or -2, -3, ... "
        "when that exists].",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json report."),
    no_csdr: bool = typer.Option(
        False, "--no-csdr", help="Skip BSSEval, which is slow: uSDR only (speech: no SDRi)."
    ),
) -> None:
    """Separate a test set and report cSDR and uSDR per stem (speech: SI-SNRi, SDRi, STOI), as in the papers.

    \b
    stemsplit eval --musdb ~/data/musdb18hq
    stemsplit eval --musdb ~/data/musdb18hq -m runs/ts/best.safetensors --hop 0.5
    stemsplit eval --libri2mix ~/data/Libri2Mix/wav8k/min -m runs/u-mamba-net/best.safetensors
    """
    if (musdb is None) == (libri2mix is None):
        raise fail("give one test set: --musdb (music models) or --libri2mix (speaker models)", EXIT_USAGE)
    flag = "--libri2mix" if libri2mix else "--musdb"
    subset = _subset_name(subset, flag)
    _check_report_is_no_input(json_out, flag, musdb or libri2mix, model)
    engine = _check_usage(libri2mix, mixture, window, hop, batch_size, device, json_out, overwrite)
    from ..datasets.libri2mix import SpeechSynthError, check_speech_layout
    from ..datasets.musdb_layout import DatasetError, track_folders, track_stems
    from ..errors import UsageError
    from .model_args import checked_models, known_model

    task = "speakers" if libri2mix else "music"
    chosen, ensemble = checked_models(model, task)  # an ensemble: --model a,b (music only)
    model_stems: list[str] | None = []  # every member's, when the registry or the files say them
    for member in [chosen] if ensemble is None else ensemble.models:
        if ensemble is not None:
            _check_report_is_no_input(json_out, flag, musdb or libri2mix, member)
        try:  # a model of the other task, when the registry or the file's metadata says so
            problem, stems = known_model(member, False, task)
        except UsageError as exc:  # no model named, and the registry has none for this task
            raise fail(str(exc), EXIT_USAGE) from None
        if problem:
            raise fail(f"--model: {problem}; {flag} scores {task} models", EXIT_USAGE)
        model_stems = None if model_stems is None or stems is None else model_stems + list(stems)
    try:  # a wrong folder, by name, before torch and the model load
        if musdb is not None:
            test_stems = track_stems(track_folders(musdb, subset, limit=tracks))
        else:
            check_speech_layout(libri2mix, subset, mixture)
    except (DatasetError, SpeechSynthError) as exc:
        raise fail(f"{flag}: {exc}", EXIT_USAGE) from None
    if musdb is not None and model_stems is not None:
        label = "the ensemble" if ensemble is not None else os.fspath(chosen or "the default model")
        _check_stems_in_common(musdb / subset, test_stems, label, model_stems)

    from ..datasets.musdb import find_tracks
    from ..engine.separator import Separator
    from ..engine.settings import SeparationError
    from ..evaluate.metrics import MUSEVAL_INSTALL
    from ..evaluate.scoring import evaluate_tracks, write_report
    from ..weights import WeightsError

    if not no_csdr and importlib.util.find_spec("museval") is None:  # before hours of separating
        what = "SDRi" if libri2mix else "cSDR"
        raise fail(f"{what} needs museval: {MUSEVAL_INSTALL}; or add --no-csdr to leave it out")
    from ..engine.runtime import pick_device

    try:  # a device not here (or a Mamba backend that cannot run on it) is a usage error
        pick_device(device)
    except SeparationError as exc:
        raise fail(flag_problem(exc), EXIT_USAGE) from None
    settings: dict[str, Any] = dict(settings=engine, task=task)
    separator: Any  # a Separator, or an Ensemble of them
    try:
        if ensemble is None:
            separator = Separator(chosen, **settings)
        else:
            from ..engine.ensemble import Ensemble

            separator = Ensemble(
                list(ensemble.models), weights=ensemble.weights, choose=ensemble.choice, **settings
            )
            err_console.print(f"--model: an ensemble of {len(separator.members)} models: {separator.note}")
    except SeparationError as exc:
        message = f"--model: {exc.problem}; {flag} scores {task} models" if exc.option == "task" else str(exc)
        raise fail(message) from None
    except WeightsError as exc:
        raise fail(str(exc)) from None
    if libri2mix is not None:
        _eval_speech(separator, libri2mix, subset, mixture, tracks, json_out, no_csdr)
        return
    _check_stems_in_common(musdb / subset, test_stems, separator.name, separator.stems)
    try:
        found = find_tracks(musdb, subset, test_stems, limit=tracks)  # --tracks 1: one track read
        json_out = json_out or _default_report(separator.name, subset)
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
    every = report.settings.get("hop")
    every = f"{every:g} s hop" if isinstance(every, int | float) else "each model's hop"
    table = Table(title=f"{separator.name} on {subset} ({len(report.tracks)} tracks, {every})")
    table.add_column("stem")
    table.add_column("cSDR (dB)", justify="right")
    table.add_column("uSDR (dB)", justify="right")
    for stem in (*report.stems, "avg"):
        table.add_row(stem, _db(csdr.get(stem)), _db(usdr.get(stem)))
    out_console.print(table)
    for note in report.notes:  # a 6-stem model on a 4-stem test set, a test set with stems the model lacks
        out_console.print(note)
    err_console.print(f"report: {json_out}")


def _check_usage(
    libri2mix, mixture: str, window: float, hop: float, batch_size, device: str, json_out, overwrite: bool
) -> EngineSettings:
    """The flags, checked before torch is imported and anything is separated: exit 2, naming the flag.
    Returns the engine's settings, as the separators take them."""
    from ..datasets.libri2mix import MIXTURE_KINDS
    from ..engine.request import EngineSettings
    from ..engine.settings import SeparationError

    if libri2mix is not None and mixture not in MIXTURE_KINDS:
        raise fail(f"--mixture: must be one of {', '.join(MIXTURE_KINDS)}, not {mixture!r}", EXIT_USAGE)
    try:
        engine = EngineSettings(device=device, window=window, hop=hop, batch_size=batch_size)
    except SeparationError as exc:
        raise fail(flag_problem(exc), EXIT_USAGE) from None
    if json_out is not None and json_out.is_dir():  # found only after every track was separated, before
        raise fail(f"--json: {json_out} is a folder; name the report's file", EXIT_USAGE)
    if json_out is not None and (kind := special_file(json_out)):  # not even with --overwrite
        raise fail(f"--json: {json_out} is {kind}; the report is written as a regular file", EXIT_USAGE)
    if json_out is not None and os.path.lexists(json_out) and not overwrite:  # a report the user has
        raise fail(f"--json: {json_out} exists; add --overwrite to replace it", EXIT_USAGE)
    # The folders the report goes into are made at the end, after every track: checked now.
    if problem := creation_problem(json_out.parent if json_out else Path.cwd(), named=json_out):
        where = "" if json_out else "; name a report file elsewhere with --json"
        raise fail(f"--json: {problem}{where}", EXIT_USAGE)
    return engine


def _check_stems_in_common(folder: Path, test_stems, model: str, model_stems) -> None:
    """A test set and a model with no stem in common (names only): a usage error, nothing to score."""
    if not set(test_stems) & set(model_stems):
        given = ", ".join(dict.fromkeys(model_stems))
        raise fail(
            f"--musdb: {folder} has the stems {', '.join(test_stems)} and {model} gives {given}: "
            "none to score",
            EXIT_USAGE,
        )


def _subset_name(subset: str, flag: str) -> str:
    """--subset as a plain folder name: it also names the default report, which must stay in ./ as
    one file. A single trailing '/' (tab completion adds it) is dropped."""
    name = subset[:-1] if subset.endswith("/") else subset
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise fail(f"--subset: must be a folder name under {flag}, not {subset!r}", EXIT_USAGE)
    return name


def _check_report_is_no_input(json_out: Path | None, flag: str, root: Path, model: str | Path | None) -> None:
    """Refuse a --json among the test set's files or on the checkpoint: --overwrite replaces a report,
    never an input. Real paths, so a link or '..' cannot hide it; the report need not exist yet."""
    if json_out is None:
        return
    report, data = Path(os.path.realpath(json_out)), Path(os.path.realpath(root))
    if report.is_relative_to(data):
        raise fail(f"--json: {json_out} is inside {flag} {root}; name a report file outside it", EXIT_USAGE)
    if model and os.path.exists(model) and os.path.exists(json_out) and os.path.samefile(model, json_out):
        raise fail(f"--json: {json_out} is the --model checkpoint; name another report file", EXIT_USAGE)


def _default_report(name: str, subset: str) -> Path:
    """./eval-<model>-<subset>.json, or the first of -2, -3, ... that does not exist: no report is lost."""
    if name.endswith(MODEL_SUFFIXES):
        name = Path(name).stem
    path, n = Path.cwd() / f"eval-{name}-{subset}.json", 1
    while os.path.lexists(path):
        n += 1
        path = Path.cwd() / f"eval-{name}-{subset}-{n}.json"
    return path


def _eval_speech(separator, root: Path, subset: str, mixture: str, limit, json_out, no_sdr: bool) -> None:
    """``eval --libri2mix``: SI-SNRi, SDRi and (with pystoi) STOI of every mixture of the subset."""
    from ..datasets.libri2mix import SpeechSynthError, find_speech_mixtures
    from ..datasets.musdb_layout import DatasetError
    from ..evaluate.scoring import evaluate_speech, write_report

    try:
        found = find_speech_mixtures(root, subset, mixture)[:limit]
        json_out = json_out or _default_report(separator.name, subset)
        report = evaluate_speech(
            separator, found, progress=lambda line: err_console.print(line), compute_sdr=not no_sdr
        )
        report.settings.update(libri2mix=str(root), subset=subset, mixture=mixture)
        write_report(report, json_out)
    except (SpeechSynthError, DatasetError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.filename or root}: {exc.strerror or exc}") from None
    names = {"si_snri": "SI-SNRi (dB)", "sdri": "SDRi (dB)", "stoi": "STOI"}
    table = Table(title=f"{separator.name} on {subset} ({len(report.mixtures)} mixtures)")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for metric in report.metrics:
        table.add_row(names[metric], _db(report.mean(metric)))
    left_out = {names[m].split()[0]: n for m in report.metrics if (n := report.left_out(m))}
    if left_out:  # the mean is over fewer mixtures than the title says
        counts = ", ".join(f"{name} {n} of {len(report.mixtures)}" for name, n in left_out.items())
        table.caption = f"mixtures left out of the mean (a silent talker or output): {counts}"
    out_console.print(table)
    err_console.print(f"report: {json_out}")
