"""``stemsplit train`` (train a separation model with its paper's recipe) and ``stemsplit finetune``
(semi-supervised fine-tuning of a trained model, BSRNN Sec. III).

finetune takes train's options (one home: :func:`train_command`'s signature, less those that name a new
network) plus its own (:func:`_finetune_options`).
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import typer

from .common import EXIT_USAGE, Precision, err_console, fail


def _default(name: str) -> str:
    """``[default: X]`` from TrainConfig, the one home of the recipe's numbers (other families': RECIPES)."""
    from dataclasses import fields

    from ..train.config import RECIPES, TrainConfig

    value = next(f.default for f in fields(TrainConfig) if f.name == name)
    shown = "none" if value is None else value
    others = "".join(f"; {arch}: {recipe[name]}" for arch, recipe in RECIPES.items() if name in recipe)
    return f"[default: {shown}{others}]"


def train_command(
    musdb: Path = typer.Option(
        None, help="Music models: MUSDB18-HQ root (train/<track>/<stem>.wav), or any folder so laid out."
    ),
    libri2mix: Path = typer.Option(
        None,
        help="Speaker models: a Libri2Mix-layout root (train-100/ and dev/ with mix_both, s1, s2; "
        "stemsplit synth-speech writes one).",
    ),
    mixture: str = typer.Option(
        None, help="--libri2mix: the input folder, mix_both (noisy) or mix_clean. " + _default("mixture")
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder: checkpoints, logs [default: runs/ARCH]."),
    arch: str = typer.Option(
        None,
        help="Network family: ts-bsmamba2, bsrnn, bs-roformer, mel-band-roformer, htdemucs, bs-mamba2 or "
        "scnet; u-mamba-net for speakers [default: ts-bsmamba2; with --libri2mix: u-mamba-net].",
    ),
    preset: str = typer.Option(
        None,
        help="The family's named config (ts-bsmamba2: ts, l-ts; bsrnn: paper; "
        "u-mamba-net: paper, f64, f192, r12, r20, l8; bs-roformer: paper; mel-band-roformer: paper; "
        "htdemucs: htdemucs, htdemucs_6s, defaults; bs-mamba2: msst, msst-vocals; "
        "scnet: msst, large, xl, xl-ihf).",
    ),
    light: bool = typer.Option(False, "--light", help="TS-BSMamba2's L-TS preset (4 + 2 layers)."),
    model_config: Path = typer.Option(None, help="TOML overriding the family's config fields."),
    stems: str = typer.Option(
        None, help="Stem files per track, in output order [default: drums,bass,other,vocals]."
    ),
    target: str = typer.Option(
        None, help="The stems the model outputs: all, or one (BSRNN: one per model). " + _default("target")
    ),
    epochs: int = typer.Option(None, min=1, help=_default("epochs")),
    epoch_size: int = typer.Option(None, min=1, help="Samples per epoch. " + _default("epoch_size")),
    batch_size: int = typer.Option(
        None, min=1, help="Global batch (split over torchrun processes). " + _default("batch_size")
    ),
    lr: float = typer.Option(None, help="Adam learning rate. " + _default("lr")),
    lr_schedule: str = typer.Option(
        None,
        help="plateau (decay after --patience bad epochs), step (every --lr-every) or constant. "
        + _default("lr_schedule"),
    ),
    lr_decay: float = typer.Option(None, help="Learning-rate factor at each decay. " + _default("lr_decay")),
    patience: int = typer.Option(
        None, min=1, help="plateau: epochs without improvement before a decay. " + _default("patience")
    ),
    lr_every: int = typer.Option(None, min=1, help="step: epochs between decays. " + _default("lr_every")),
    early_stop: int = typer.Option(
        None, min=1, help="Stop after N epochs without a better validation score. " + _default("early_stop")
    ),
    clip_norm: float = typer.Option(None, help="Gradient-norm clipping. " + _default("clip_norm")),
    crop_seconds: float = typer.Option(
        None, "--crop-seconds", "--seconds", help="Training example length (s). " + _default("crop_seconds")
    ),
    gain_db: float = typer.Option(
        None, help="Remix: each stem's gain uniform in +-this (dB). " + _default("gain_db")
    ),
    drop_prob: float = typer.Option(
        None, help="Remix: probability that a stem is left out. " + _default("drop_prob")
    ),
    sad_seconds: float = typer.Option(
        None, help="Activity detection: salient segment length (s). " + _default("sad_seconds")
    ),
    sad_quantile: float = typer.Option(
        None, help="Activity detection: energy quantile threshold. " + _default("sad_quantile")
    ),
    workers: int = typer.Option(None, min=0, help="Data-loading processes per rank. " + _default("workers")),
    seed: int = typer.Option(None, help=_default("seed")),
    device: str = typer.Option(
        None, help="auto, cpu, cuda (torchrun: one GPU per process). " + _default("device")
    ),
    precision: Precision = typer.Option(None, help="[default: bf16 on CUDA, fp32 on CPU]"),
    checkpoint_activations: bool = typer.Option(False, help="Recompute blocks in backward: less memory."),
    save_every_minutes: float = typer.Option(
        None, help="Checkpoint this often within an epoch too. " + _default("save_every_minutes")
    ),
    save_every_steps: int = typer.Option(None, help="...or every N steps."),
    valid_window: float = typer.Option(
        None, help="Window of the chunked validation protocol (s). " + _default("valid_window")
    ),
    valid_hop: float = typer.Option(
        None, help="Hop of the chunked validation protocol (s). " + _default("valid_hop")
    ),
    valid_tracks: int = typer.Option(None, help="Validate on at most N tracks."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out exactly where it stopped."
    ),
    override: bool = typer.Option(
        False,
        "--override",
        help="With --resume: continue with changed recipe flags (--lr, --batch-size, --seconds, ...); "
        "without it a changed recipe is refused. --epochs, --workers, --device and the save "
        "intervals may always change.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Train TS-BSMamba2, BSRNN or (--libri2mix) U-Mamba-Net with its paper's recipe; resumable; torchrun.

    \b
    stemsplit train --musdb ~/data/musdb18hq -o runs/ts
    stemsplit train --musdb ~/data/musdb18hq -o runs/ts --resume
    stemsplit train --musdb ~/data/musdb18hq -o runs/ts --resume --override --lr 5e-4
    stemsplit train --musdb ~/data/musdb18hq --arch bsrnn --target vocals -o runs/bsrnn-vocals
    torchrun --nproc-per-node 8 -m stemsplit train --musdb ~/data/musdb18hq -o runs/ts
    stemsplit train --libri2mix ~/data/Libri2Mix/wav8k/min --arch u-mamba-net -o runs/u-mamba-net
    """
    given = dict(locals())  # the flags as given: None = the recipe's default (TrainConfig.for_arch)
    from ..datasets.libri2mix import SpeechSynthError, check_speech_layout
    from ..datasets.musdb_layout import DatasetError, check_training_layout
    from ..train.config import DEFAULT_ARCH, SPEECH_ARCH, TrainConfig, family_names

    if override and not resume:
        raise fail("--override only applies with --resume", EXIT_USAGE)
    if (musdb is None) == (libri2mix is None):
        raise fail("give one dataset: --musdb (music models) or --libri2mix (speaker models)", EXIT_USAGE)
    arch = arch or (SPEECH_ARCH if libri2mix is not None else DEFAULT_ARCH)
    if arch not in (known := family_names()):
        raise fail(f"--arch: unknown architecture {arch!r} (known: {', '.join(known)})", EXIT_USAGE)
    for flag in ("debug", "arch", "stems", "precision"):
        given.pop(flag)
    given["out"] = out or Path("runs") / (arch if not target or target == "all" else f"{arch}-{target}")
    given["stems"] = tuple(s.strip() for s in stems.split(",") if s.strip()) if stems else None
    given["precision"] = precision.value if precision else None
    config = TrainConfig.for_arch(arch, **given)
    # The flags first, then the dataset and the network they describe, then the run folder: a run folder
    # that needs --resume is said only of a command that would otherwise run.
    if problem := config.problem():
        raise fail(problem, EXIT_USAGE)
    try:  # by folder and file names only: before torch loads
        if musdb is not None:
            check_training_layout(musdb)
        else:
            check_speech_layout(libri2mix, "train-100", config.mixture)
    except (DatasetError, SpeechSynthError) as exc:
        raise fail(f"{'--musdb' if musdb is not None else '--libri2mix'}: {exc}", EXIT_USAGE) from None

    from ..train.distributed import device_for
    from ..train.errors import TrainError
    from ..train.loop import train as run_training
    from ..train.model_config import model_config_for

    try:  # a bad --preset or --model-config file, or a device not here, is a usage error: before any work
        model_config_for(config)
        device_for(config.device)
    except TrainError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if problem := config.folder_problem():
        raise fail(problem, EXIT_USAGE)
    try:
        run_training(config, log=lambda text: err_console.print(text))
    except KeyboardInterrupt:
        raise fail(interrupted_advice(config.out), 130) from None


def interrupted_advice(out: Path) -> str:
    """What to do after Ctrl-C: resume from last.pt, or (stopped before the first one) start again."""
    if (out / "last.pt").is_file():
        return f"interrupted; continue with --resume -o {out}"
    return f"interrupted before the first checkpoint; run the same command again (-o {out})"


# --- finetune: train's options (less NOT_SHARED) and its own ---------------------------------------

# train's options that do not apply: the network is the --model's (family, config, stems it outputs).
NOT_SHARED = {"arch", "preset", "light", "model_config", "target", "out", "lr"}


def _finetune_default(name: str) -> str:
    """``[default: X]`` from FinetuneConfig, the one home of its numbers."""
    from dataclasses import fields

    from ..train.config import FinetuneConfig

    return f"[default: {next(f.default for f in fields(FinetuneConfig) if f.name == name)}]"


def _finetune_options(
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
    lr: float = typer.Option(None, help="Adam learning rate (BSRNN Sec. IV-B). " + _finetune_default("lr")),
    clean_db: float = typer.Option(
        None,
        help="A separated target this far below the mixture makes a clean residual, a residual this "
        "far below a clean target (dB). " + _finetune_default("clean_db"),
    ),
    unlabeled_ratio: float = typer.Option(
        None,
        help="Probability that a source of an example is from an unlabeled song. "
        + _finetune_default("unlabeled_ratio"),
    ),
    teacher_window: float = typer.Option(
        None,
        help="Seconds of song the teacher sees around each unlabeled crop to label it (at least "
        "--crop-seconds; 0: the crop itself, as in the paper). " + _finetune_default("teacher_window"),
    ),
    teacher_views: int = typer.Option(
        None,
        help="Windows of --teacher-window the teacher labels each crop through, shifted so that each "
        "holds the crop; their estimates are averaged (each one a teacher pass). "
        + _finetune_default("teacher_views"),
    ),
) -> None:
    """Only its signature is used: the options finetune adds to train's."""


def _finetune_signature() -> inspect.Signature:
    """_finetune_options' parameters, then train_command's shared ones (annotations resolved, as Typer
    needs them)."""
    params = []
    shared = (train_command, NOT_SHARED | set(_finetune_parameters()))
    for function, skip in ((_finetune_options, set()), shared):
        hints = typing.get_type_hints(function)
        for param in inspect.signature(function).parameters.values():
            if param.name not in skip:
                params.append(param.replace(annotation=hints[param.name]))
    return inspect.Signature(params)


def _finetune_parameters() -> list[str]:
    return list(inspect.signature(_finetune_options).parameters)


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


finetune_command.__signature__ = _finetune_signature()  # type: ignore[attr-defined]
finetune_command.__annotations__ = {p.name: p.annotation for p in _finetune_signature().parameters.values()}
