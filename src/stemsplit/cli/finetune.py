"""``stemsplit finetune``: semi-supervised fine-tuning of a trained model (BSRNN Sec. III).

The command takes ``stemsplit train``'s options (one home: :func:`train_command`'s
signature, less those that name a new network) plus its own (:func:`_own_options`).
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import typer

from .common import EXIT_USAGE, err_console, fail
from .train import interrupted_advice, train_command

# train's options that do not apply: the network is the --model's (family, config, stems it outputs).
NOT_SHARED = {"arch", "preset", "light", "model_config", "target", "out", "lr"}


def _default(name: str) -> str:
    """``[default: X]`` from FinetuneConfig, the one home of its numbers."""
    from dataclasses import fields

    from ..train.config import FinetuneConfig

    return f"[default: {next(f.default for f in fields(FinetuneConfig) if f.name == name)}]"


def _own_options(
    model: str = typer.Option(
        ..., help="The trained model: a registry name or a checkpoint (e.g. runs/ts/best.safetensors)."
    ),
    musdb: Path = typer.Option(
        ..., help="The labeled set: ROOT/train/<track>/<stem>.wav (ROOT/valid.txt: validation tracks)."
    ),
    unlabeled: Path = typer.Option(
        ..., help="Folder of unlabeled songs, searched recursively (any format stemsplit reads)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Run folder: checkpoints, teachers, decoded songs, log."
    ),
    stems: str = typer.Option(
        None,
        help="The labeled set's stem files [default: the model's stems; a one-stem model: "
        "drums,bass,other,vocals].",
    ),
    lr: float = typer.Option(None, help="Adam learning rate (BSRNN Sec. IV-B). " + _default("lr")),
    clean_db: float = typer.Option(
        None,
        help="A separated target this far below the mixture makes a clean residual, a residual this "
        "far below a clean target (dB). " + _default("clean_db"),
    ),
    unlabeled_ratio: float = typer.Option(
        None,
        help="Probability that a source of an example is from an unlabeled song. "
        + _default("unlabeled_ratio"),
    ),
    teacher_window: float = typer.Option(
        None,
        help="Seconds of song the teacher sees around each unlabeled crop to label it (at least "
        "--crop-seconds; 0: the crop itself, as in the paper). " + _default("teacher_window"),
    ),
    teacher_views: int = typer.Option(
        None,
        help="Windows of --teacher-window the teacher labels each crop through, shifted so that each "
        "holds the crop; their estimates are averaged (each one a teacher pass). "
        + _default("teacher_views"),
    ),
) -> None:
    """Only its signature is used: the options finetune adds to train's."""


def _signature() -> inspect.Signature:
    """_own_options' parameters, then train_command's shared ones (annotations resolved, as Typer needs)."""
    params = []
    for function, skip in ((_own_options, set()), (train_command, NOT_SHARED | set(_own_parameters()))):
        hints = typing.get_type_hints(function)
        for param in inspect.signature(function).parameters.values():
            if param.name not in skip:
                params.append(param.replace(annotation=hints[param.name]))
    return inspect.Signature(params)


def _own_parameters() -> list[str]:
    return list(inspect.signature(_own_options).parameters)


def finetune_command(**given: typing.Any) -> None:
    """Fine-tune a model on labeled plus unlabeled songs: pseudo-labels and self-boosting (BSRNN Sec. III).

    \b
    stemsplit finetune --model runs/ts/best.safetensors --musdb ~/musdb18hq --unlabeled ~/music -o runs/ft
    stemsplit finetune --model runs/ts/best.safetensors --musdb ~/musdb18hq --unlabeled ~/music -o runs/ft \\
        --resume
    """
    given.pop("debug")  # (cli.main reads --debug)
    resume, override = given["resume"], given["override"]
    if override and not resume:
        raise fail("--override only applies with --resume", EXIT_USAGE)
    from dataclasses import fields

    from ..batch.songs import find_songs
    from ..train.config import FinetuneConfig

    stems = given.pop("stems")
    stems = tuple(s.strip() for s in stems.split(",") if s.strip()) if stems else None
    precision = given.pop("precision")
    given["precision"] = precision.value if precision else None
    # The recipe's numbers and names first (the target comes with the model: it is checked with it).
    known = {f.name: given[f.name] for f in fields(FinetuneConfig) if given.get(f.name) is not None}
    config = FinetuneConfig(**known, stems=stems)
    problem = config.problem()  # (the run folder last: see train)
    unlabeled = given["unlabeled"]  # --musdb: check_training_layout below
    if not problem and not unlabeled.is_dir():
        problem = f"--unlabeled: {unlabeled}: {'not a folder' if unlabeled.exists() else 'no such folder'}"
    if not problem and not find_songs([unlabeled], given["out"]).songs:
        problem = f"--unlabeled: {given['unlabeled']}: no audio files in it or below it"
    if problem:
        raise fail(problem, EXIT_USAGE)
    from ..datasets.musdb_layout import DatasetError, check_training_layout

    try:
        check_training_layout(given["musdb"])
    except DatasetError as exc:
        raise fail(f"--musdb: {exc}", EXIT_USAGE) from None
    from .model_args import checked_model

    model = checked_model(given.pop("model"))

    # Everything above runs without torch: usage errors come back at once.
    from ..train.distributed import device_for
    from ..train.errors import TrainError
    from ..train.finetune import configure, finetune, load_pretrained

    try:
        device_for(config.device)
    except TrainError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if problem := config.folder_problem():
        raise fail(problem, EXIT_USAGE)

    try:
        pretrained = load_pretrained(model)
        config = configure(pretrained, str(model), stems, **given)
        finetune(config, log=lambda text: err_console.print(text), pretrained=pretrained)
    except KeyboardInterrupt:
        raise fail(interrupted_advice(given["out"]), 130) from None


finetune_command.__signature__ = _signature()  # type: ignore[attr-defined]
finetune_command.__annotations__ = {p.name: p.annotation for p in _signature().parameters.values()}
