"""The options of a separation run (``separate``, ``batch``, ``speakers``) as one frozen, typed
:class:`SeparationFlags`: made once from Typer's values, normalised (enum values as strings, ``--out``
as a Path), then read, never changed, by :mod:`stemsplit.cli.run`, :mod:`stemsplit.cli.song` and
``batch --ray``'s workers (:mod:`stemsplit.cli.ray_batch`, which pickle it). A later step that derives
a value (the checked ``--model``) makes a new one with :func:`dataclasses.replace`. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class SeparationFlags:
    """A separation command's options; None where a flag was not given and the model decides."""

    task: str  # the models the command takes: "music" (separate, batch) or "speakers"
    batch: bool  # inputs are folders to walk (batch, speakers --batch), with manifests and claims
    inputs: tuple[Path, ...]
    # As typed; once run_separation has checked it (model_args.ensemble_argument): the checked model
    # the loader gets (a Path for a file), or the ensemble's text as given.
    model: str | Path | None
    model_config: Path | None
    out: Path
    device: str
    light: bool
    window: float | None  # seconds
    hop: float | None  # seconds
    batch_size: int | None
    precision: str | None  # "auto", "fp32", "bf16"; None: not given (auto)
    stage: int | None
    exact: bool
    shifts: int
    compile: bool
    fmt: str  # "wav", "flac", "mp3"
    bit_depth: int | None
    clip_mode: str  # "none", "rescale", "clamp"
    stems: str | None  # --stems as typed (comma-separated)
    two_stems: str | None
    residual: bool
    filename: str
    overwrite: bool
    downmix: bool
    stream: int | None
    quiet: bool
    json_lines: bool
    report: Path | None
    shard: str | None  # "I/N" as typed; checked by run._shard_argument
    ray: bool
    ray_address: str | None
    workers: int | None
    cpus_per_worker: float | None
    gpus_per_worker: float | None
    songs_per_batch: int | None
    debug: bool

    @classmethod
    def from_options(cls, options: dict[str, Any], *, task: str, batch: bool) -> SeparationFlags:
        """The flags from a command's options by name (Typer's values: enums, ``--out`` as typed).

        Raises :class:`UsageError` for an empty ``--out`` (``Path("")`` is ``.``: the stems would land
        in the current folder), the run's first check."""
        if not str(options["out"]).strip():
            raise UsageError("--out: the folder name is empty; name a folder (-o . for the current one)")
        precision = options["precision"]
        return cls(
            **{
                **options,
                "task": task,
                "batch": batch,
                "inputs": tuple(options["inputs"]),
                "out": Path(options["out"]),
                "fmt": options["fmt"].value,
                "clip_mode": options["clip_mode"].value,
                "precision": None if precision is None else precision.value,
            }
        )
