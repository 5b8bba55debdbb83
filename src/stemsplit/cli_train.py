"""``stemsplit train``: train a separation model with the paper's recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from .cli_common import EXIT_USAGE, Precision, err_console, fail


def train_command(
    musdb: Path = typer.Option(
        ..., help="MUSDB18-HQ root (train/<track>/<stem>.wav), or any folder so laid out."
    ),
    out: Path = typer.Option(Path("runs/ts-bsmamba2"), "--out", "-o", help="Run folder: checkpoints, logs."),
    light: bool = typer.Option(False, "--light", help="Train L-TS-BSMamba2 (4 + 2 layers)."),
    model_config: Path = typer.Option(None, help="TOML overriding TSBSMamba2Config fields."),
    stems: str = typer.Option("drums,bass,other,vocals", help="Stem files per track, in output order."),
    epochs: int = typer.Option(100, min=1),
    epoch_size: int = typer.Option(100_000, min=1, help="Samples per epoch."),
    batch_size: int = typer.Option(16, min=1, help="Global batch (split over torchrun processes)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    lr_decay: float = typer.Option(0.8, help="Factor after --patience epochs without improvement."),
    patience: int = typer.Option(2, min=1),
    clip_norm: float = typer.Option(5.0, help="Gradient-norm clipping."),
    seconds: float = typer.Option(3.0, help="Training crop length."),
    workers: int = typer.Option(4, min=0, help="Data-loading processes per rank."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu, cuda (torchrun: one GPU per process)."),
    precision: Precision = typer.Option(None, help="[default: bf16 on CUDA, fp32 on CPU]"),
    checkpoint_activations: bool = typer.Option(False, help="Recompute blocks in backward: less memory."),
    save_every_minutes: float = typer.Option(30.0, help="Checkpoint this often within an epoch too."),
    save_every_steps: int = typer.Option(None, help="...or every N steps."),
    valid_hop: float = typer.Option(0.5, help="Hop of the chunked validation protocol (s)."),
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
    """Train TS-BSMamba2 with the paper's recipe; resumable; scales with torchrun.

    \b
    stemsplit train --musdb ~/data/musdb18hq -o runs/ts
    stemsplit train --musdb ~/data/musdb18hq -o runs/ts --resume
    stemsplit train --musdb ~/data/musdb18hq -o runs/ts --resume --override --lr 5e-4
    torchrun --nproc-per-node 8 -m stemsplit train --musdb ~/data/musdb18hq -o runs/ts
    """
    from .train.data import DatasetError
    from .train.loop import TrainConfig, TrainError
    from .train.loop import train as run_training

    if override and not resume:
        raise fail("--override only applies with --resume", EXIT_USAGE)

    config = TrainConfig(
        musdb=musdb,
        out=out,
        light=light,
        model_config=model_config,
        stems=tuple(s.strip() for s in stems.split(",") if s.strip()),
        epochs=epochs,
        epoch_size=epoch_size,
        batch_size=batch_size,
        lr=lr,
        lr_decay=lr_decay,
        patience=patience,
        clip_norm=clip_norm,
        seconds=seconds,
        workers=workers,
        seed=seed,
        device=device,
        precision=precision.value if precision else None,
        checkpoint_activations=checkpoint_activations,
        save_every_minutes=save_every_minutes,
        save_every_steps=save_every_steps,
        valid_hop=valid_hop,
        valid_tracks=valid_tracks,
        resume=resume,
        override=override,
    )
    try:
        run_training(config, log=lambda text: err_console.print(text))
    except (TrainError, DatasetError) as exc:
        if debug:
            raise
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; continue with --resume -o {out}", 130) from None
