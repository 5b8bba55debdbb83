"""What a training run is asked to do: :class:`TrainConfig`, every recipe number with one default.

Importable without torch, so ``stemsplit --help`` and ``stemsplit train --help`` (which
shows these defaults) start fast. :data:`RECIPES` holds where a family's paper trains
differently from TS-BSMamba2's recipe, which the defaults are.

A run trains on one dataset: ``musdb`` (a MUSDB18-HQ-layout folder, for music
models) or ``libri2mix`` (a Libri2Mix-layout folder, as ``stemsplit synth-speech``
writes, for speaker-separation models); the model card's task must match it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..card import MUSIC_STEMS, SPEAKER_STEMS, stem_name_problem
from ..engine.settings import SeparationError, check_settings, parse_device
from ..files import creation_problem

if TYPE_CHECKING:
    from typing_extensions import Self  # (typing's from Python 3.11; only the checker reads this)

__all__ = [
    "DEFAULT_ARCH",
    "FINETUNE_FIELDS",
    "LR_SCHEDULES",
    "MAX_TEACHER_VIEWS",
    "RECIPES",
    "RECIPE_FIELDS",
    "RUN_FILES",
    "SPEECH_ARCH",
    "FinetuneConfig",
    "TrainConfig",
    "either",
    "family_names",
    "flag_name",
    "inside_dataset_problem",
    "out_problem",
]

# stemsplit.model.ts_bsmamba2.ARCHITECTURE, spelled out (importing the model would import torch;
# tests/unit/train/test_train_loop.py checks that the two agree).
DEFAULT_ARCH = "ts-bsmamba2"
# The family `train --libri2mix` trains when no --arch is given: U-Mamba-Net (stemsplit.model.u_mamba_net).
SPEECH_ARCH = "u-mamba-net"
# The learning-rate schedules train/schedule.py's LrSchedule implements.
LR_SCHEDULES = ("plateau", "step", "constant")
# torch.manual_seed takes 64 bits; a run adds offsets per rank and step to its seed.
MAX_SEED = 2**63 - 1


@dataclass
class TrainConfig:
    musdb: Path | None = None  # MUSDB18-HQ layout: music models
    libri2mix: Path | None = None  # Libri2Mix layout (train-100/, dev/): speaker-separation models
    mixture: str = "mix_both"  # libri2mix: the input folder, mix_both (noisy) or mix_clean
    out: Path = Path("runs")
    arch: str = DEFAULT_ARCH  # a family of stemsplit.model.families
    preset: str | None = None  # the family's named config (None: its default; --light: l-ts)
    light: bool = False
    model_config: Path | None = None
    stems: tuple[str, ...] | None = None  # the dataset's stems (None: MUSIC_STEMS, or SPEAKER_STEMS)
    target: str = "all"  # the stems the model outputs: all, or one (BSRNN: one network per target)
    epochs: int = 100
    epoch_size: int = 100_000
    batch_size: int = 16  # global, over all ranks
    lr: float = 1e-3
    # plateau: x lr_decay after `patience` bad epochs; step: every lr_every; constant: never
    lr_schedule: str = "plateau"
    lr_decay: float = 0.8
    patience: int = 2
    lr_every: int = 2
    early_stop: int | None = None  # stop after this many epochs without a better validation score
    clip_norm: float = 5.0
    crop_seconds: float = 3.0  # the length of a training example
    gain_db: float = 10.0  # remix: each stem's gain uniform in +-gain_db
    drop_prob: float = 0.1  # remix: each stem silent with this probability
    sad_seconds: float = 6.0  # source activity detection: salient segments of this length ...
    sad_quantile: float = 0.15  # ... above this quantile of a track's chunk energies
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    precision: str | None = None  # bf16 on CUDA, fp32 on CPU
    checkpoint_activations: bool = False
    save_every_minutes: float = 30.0
    save_every_steps: int | None = None
    valid_window: float = 3.0
    valid_hop: float = 0.5
    valid_tracks: int | None = None  # limit, for quick runs
    resume: bool = False
    override: bool = False  # --resume may change RECIPE_FIELDS

    # The fields --resume refuses to change without --override (RECIPE_FIELDS, below).
    recipe_fields: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        if self.stems is None:
            self.stems = SPEAKER_STEMS if self.libri2mix is not None else MUSIC_STEMS

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def problem(self) -> str | None:
        """What is wrong with the recipe's numbers and names, in one line naming the flag, or None.

        Checked before a run builds anything (no torch needed): a NaN learning rate or a hop
        longer than its window would otherwise fail after an epoch, and a negative clipping
        norm or a drop probability of 1 would train silently wrong.
        """

        def number(
            name: str,
            low: float,
            high: float = math.inf,
            *,
            least: bool = False,
            most: bool = True,
            finite: bool = True,
        ) -> str | None:
            """None if low < value (<= with ``least``) and value <= high (< without ``most``)."""
            value = getattr(self, name)
            fits = (value >= low if least else value > low) and (value <= high if most else value < high)
            if fits and (math.isfinite(value) or not finite):  # NaN never fits
                return None
            bound = f"{'at least' if least else 'above'} {low:g}"
            if high < math.inf:
                bound += f" and {'at most' if most else 'below'} {high:g}"
            return f"{flag_name(name)} must be {'a finite number ' if finite else ''}{bound}, not {value:g}"

        checks = [
            number("lr", 0),  # an infinite rate gives NaN weights at the first step
            number("lr_decay", 0, 1),
            number("clip_norm", 0, finite=False),  # inf: no clipping; a negative norm flips the gradients
            number("crop_seconds", 0),
            number("gain_db", 0, least=True),
            number("drop_prob", 0, 1, least=True, most=False),  # 1 would drop every stem of every example
            number("sad_seconds", 0),
            number("sad_quantile", 0, 1, least=True),
            number("save_every_minutes", 0, finite=False),  # inf: only at the end of each epoch
        ]
        try:  # the validation protocol runs the separation engine: its limits, its words
            check_settings(self.valid_window, self.valid_hop, None, None, None)
            parse_device(self.device)
        except SeparationError as exc:
            checks.append(
                f"--{'valid-' if exc.option in ('window', 'hop') else ''}{exc.option}: {exc.problem}"
            )
        if not 0 <= self.seed <= MAX_SEED:
            checks.append(f"--seed must be from 0 to {MAX_SEED}, not {self.seed}")
        counts = ("epochs", "epoch_size", "batch_size", "patience", "lr_every", "early_stop")
        for name in (*counts, "save_every_steps", "valid_tracks", "workers"):
            # 0 workers: load in the main process; 0 validation tracks: none; every 0 steps: never
            value, least = getattr(self, name), 1 if name in counts else 0
            if value is not None and value < least:
                checks.append(f"{flag_name(name)} must be at least {least}, not {value}")
        checks += [f"--stems: {problem}" for problem in map(stem_name_problem, self.stems or ()) if problem]
        checks.append(self._stems_problem())
        if self.lr_schedule not in LR_SCHEDULES:
            checks.append(f"--lr-schedule must be {either(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if self.target != "all" and self.target not in (self.stems or ()):
            stems = ", ".join(self.stems or ())
            checks.append(f"--target must be all or one of --stems ({stems}), not {self.target!r}")
        checks.append(out_place_problem(self.out) or inside_dataset_problem(self.out, self.datasets()))
        if self.musdb is not None and self.crop_seconds > self.sad_seconds:
            checks.append(
                f"--crop-seconds {self.crop_seconds:g} is longer than the --sad-seconds {self.sad_seconds:g} "
                "salient segments the crops are cut from"
            )
        return next((c for c in checks if c), None)

    def _stems_problem(self) -> str | None:
        """Why ``stems`` cannot be a dataset's stems, or None: a name given twice; with ``musdb``, the
        mixture (each example's input is the sum of its stems: a "mixture" stem would be learned as
        the input itself, and scored as a perfect separation)."""
        stems = self.stems or ()
        twice = next((name for k, name in enumerate(stems) if name in stems[:k]), None)
        if twice is not None:
            return f"--stems: {twice} is named twice ({', '.join(stems)}); name each stem once"
        if self.musdb is not None and "mixture" in stems:
            return (
                "--stems: mixture is the input, not a stem (each training mixture is the sum of the stems); "
                "name only the stems"
            )
        return None

    def datasets(self) -> dict[str, Path]:
        """The folders this run reads its data from, by flag (none of them is ever written to)."""
        return {
            flag: path for flag, path in (("--musdb", self.musdb), ("--libri2mix", self.libri2mix)) if path
        }

    def folder_problem(self) -> str | None:
        """What is wrong with ``out`` for this run (:func:`out_problem`), or None. Checked before any work,
        after the flags (:meth:`problem`: a run folder inside the dataset is one of those)."""
        return out_problem(self.out, self.resume)

    @classmethod
    def for_arch(cls, arch: str = DEFAULT_ARCH, **given: Any) -> Self:
        """The recipe of ``arch``'s paper, with the fields in ``given`` (None: not given) changed."""
        chosen = {k: v for k, v in given.items() if v is not None}
        return cls(**{"arch": arch, **RECIPES.get(arch, {}), **chosen})

    @property
    def dataset_stems(self) -> tuple[str, ...]:
        """``stems`` once given or defaulted: the dataset's stems."""
        assert self.stems is not None  # (__post_init__ sets the default)
        return self.stems

    @property
    def model_stems(self) -> tuple[str, ...]:
        """The stems the model outputs: every dataset stem, or the one ``target``."""
        return self.dataset_stems if self.target == "all" else (self.target,)


# What a run writes into its folder besides last.pt (a new run never replaces any of them).
RUN_FILES = ("best.safetensors", "last.safetensors", "log.jsonl")


def out_problem(out: Path, resume: bool = False, run_files: tuple[str, ...] = RUN_FILES) -> str | None:
    """Why ``out`` cannot be this run's folder, or None: it is a file; a new run would replace what is
    there (``last.pt`` or one of ``run_files``); ``--resume`` finds no ``last.pt``."""
    if problem := out_place_problem(out):
        return problem
    last = out / "last.pt"
    if resume:
        return None if last.is_file() else f"--resume: no checkpoint at {last}"
    if last.exists():
        return f"{last} exists: add --resume to continue that run, or choose another --out"
    for name in run_files:
        if (out / name).exists():
            return f"{out / name} exists (not this run's); choose another --out"
    return None


def out_place_problem(out: Path) -> str | None:
    """Why no run folder can be at ``out`` whatever it holds (a file; a place that takes no new folder),
    or None: a flag's problem, said with the others (what the folder holds is said after them)."""
    if out.exists() and not out.is_dir():
        return f"--out: {out} is not a folder; name a new or existing run folder"
    if problem := creation_problem(out):
        return f"--out: {problem}"
    return None


def inside_dataset_problem(out: Path, datasets: dict[str, Path]) -> str | None:
    """Why the run folder ``out`` cannot be where it is, or None: it is one of the ``datasets`` folders
    (by flag) or inside one, where the run's files would be written among the data (and a MUSDB
    layout would take its folders for tracks). Compared as real paths: links and ``..`` resolved."""
    where = Path(os.path.realpath(out))
    for flag, folder in datasets.items():
        root = Path(os.path.realpath(folder))
        if where == root or root in where.parents:
            return f"--out: {out} is inside the {flag} folder {folder}; write the run outside the dataset"
    return None


def either(names: tuple[str, ...]) -> str:
    """``a, b or c``: the names a value may take, for a message."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def flag_name(field: str) -> str:
    """The command-line flag of a config field: crop_seconds -> --crop-seconds."""
    return "--" + field.replace("_", "-")


# Where a family's paper trains differently from TS-BSMamba2 (the TrainConfig defaults): BSRNN Sec. IV-A.
RECIPES: dict[str, dict[str, Any]] = {
    "bsrnn": {
        "lr_schedule": "step",
        "lr_decay": 0.98,
        "lr_every": 2,
        "early_stop": 10,
        "epoch_size": 160_000,
    },
    # U-Mamba-Net Sec. III-C: batch 4, initial lr 1.5e-4, random 3 s crops, at most 120 epochs,
    # permutation-invariant SI-SNR (the loss follows the model card's task). The paper names no
    # schedule and no clipping: the lr stays constant, and gradients are clipped at 5 as in
    # Conv-TasNet (its ref. [15], whose loss it takes). An epoch is one pass's worth of crops of
    # Libri2Mix train-100 (13900 mixtures, the paper's training set size).
    SPEECH_ARCH: {
        "batch_size": 4,
        "lr": 1.5e-4,
        "lr_schedule": "constant",
        "epochs": 120,
        "crop_seconds": 3.0,
        "epoch_size": 13_900,
    },
}

# The built-in families by name, without importing torch: the default, those with a recipe of their own,
# and those trained with the default recipe (tests/unit/train/test_train_loop.py keeps it equal to
# stemsplit.model.FAMILIES as the package ships it).
BUILTIN_ARCHS: tuple[str, ...] = (
    DEFAULT_ARCH,
    *RECIPES,
    "bs-roformer",
    "mel-band-roformer",
    "htdemucs",
    "bs-mamba2",
    "scnet",
)


def family_names() -> tuple[str, ...]:
    """Every family ``train --arch`` can build, by name, without importing torch when it need not.

    A family registered at run time is an entry added to ``stemsplit.model.families.FAMILIES``, so it
    exists only once that module is imported: then its registry answers; until then the built-in names
    are the whole registry, and train's usage errors come back before torch's start-up.
    """
    registry = sys.modules.get("stemsplit.model.families")
    return tuple(registry.FAMILIES) if registry is not None else BUILTIN_ARCHS


# Fields that change what a run computes: ``--resume`` refuses to change them without ``--override``
# (the architecture -- --light, --model-config, and --stems' count -- cannot change even then: the
# weights would not fit). The validation settings are here because the validation score drives the
# learning-rate schedule. Free to change on resume: epochs (to extend a run), workers, device,
# checkpoint_activations and the save intervals (none changes a single number of the result; the
# batches do not depend on workers or processes), and model_config's path when the architecture
# it gives is the same. ``precision`` is compared as given (unset = bf16 on CUDA, fp32 on CPU).
RECIPE_FIELDS = (
    "musdb",
    "libri2mix",
    "mixture",
    "stems",
    "target",
    "epoch_size",
    "batch_size",
    "lr",
    "lr_schedule",
    "lr_decay",
    "patience",
    "lr_every",
    "early_stop",
    "clip_norm",
    "crop_seconds",
    "gain_db",
    "drop_prob",
    "sad_seconds",
    "sad_quantile",
    "seed",
    "precision",
    "valid_window",
    "valid_hop",
    "valid_tracks",
)

TrainConfig.recipe_fields = RECIPE_FIELDS


MAX_TEACHER_VIEWS = 16  # each view is one more teacher pass per unlabeled crop


@dataclass
class FinetuneConfig(TrainConfig):
    """``stemsplit finetune`` (BSRNN Sec. III and IV-B): TrainConfig's recipe, lr 1e-4, and the sampling.

    ``arch``, ``target`` and the network come from ``model`` (a registry name or a
    checkpoint); ``musdb`` is the labeled set, ``unlabeled`` a folder of songs.
    """

    model: str = ""  # the pre-trained model P: the student's starting point and the first teacher
    unlabeled: Path = Path()
    lr: float = 1e-4  # Sec. IV-B: "the initial learning rate for the finetuning stage to 1e-4"
    clean_db: float = 30.0  # Sec. III-A: a separated signal this far below the mixture is "absent"
    unlabeled_ratio: float = 0.5  # probability that a remix source comes from the unlabeled songs
    # How the teacher labels a crop (ours; train/finetune.py has the measurements): through teacher_views
    # windows of teacher_window seconds that each hold the whole crop, their estimates averaged.
    # 0: the crop itself, as in the paper.
    teacher_window: float = 0.0
    teacher_views: int = 1

    def problem(self) -> str | None:
        """TrainConfig's checks, and the sampling's."""
        if not self.clean_db > 0:
            return f"--clean-db must be positive, not {self.clean_db:g}"
        if not 0 <= self.unlabeled_ratio <= 1:
            return f"--unlabeled-ratio must be between 0 and 1, not {self.unlabeled_ratio:g}"
        if not (math.isfinite(self.teacher_window) and self.teacher_window >= 0):
            return f"--teacher-window must be a finite number at least 0, not {self.teacher_window:g}"
        if 0 < self.teacher_window < self.crop_seconds:
            return (
                f"--teacher-window {self.teacher_window:g} is shorter than the --crop-seconds "
                f"{self.crop_seconds:g} (the teacher sees the whole crop, and more)"
            )
        if not 1 <= self.teacher_views <= MAX_TEACHER_VIEWS:
            return f"--teacher-views must be from 1 to {MAX_TEACHER_VIEWS}, not {self.teacher_views}"
        if self.teacher_views > 1 and not self.teacher_window > self.crop_seconds:
            return (
                f"--teacher-views {self.teacher_views} needs a --teacher-window longer than the "
                f"--crop-seconds {self.crop_seconds:g}: each view would be the crop itself"
            )
        return super().problem()

    def datasets(self) -> dict[str, Path]:
        """TrainConfig's, and the unlabeled songs' folder (when given: its default is no folder)."""
        unlabeled = {"--unlabeled": self.unlabeled} if self.unlabeled != Path() else {}
        return super().datasets() | unlabeled

    def folder_problem(self) -> str | None:
        """TrainConfig's, and the finetune run's own: ``teachers/`` (a new run would replace and delete
        ``gen-*.safetensors`` there) and ``unlabeled/index.json`` (reused only when a finetune wrote it)."""
        problem = out_problem(self.out, self.resume, (*RUN_FILES, "teachers"))
        pool, index = self.out / "unlabeled", self.out / "unlabeled" / "index.json"
        if problem or not pool.exists():
            return problem
        if not pool.is_dir():
            return f"{pool} is not a folder (the run decodes the unlabeled songs there); choose another --out"
        if index.exists() and not is_pool_index(index):
            return f"{index} exists (not this run's); choose another --out"
        return None


def is_pool_index(path: Path) -> bool:
    """Whether ``path`` is an index ``stemsplit finetune`` wrote (train/finetune.py: prepare_unlabeled)."""
    try:
        saved = json.loads(path.read_bytes())
        return isinstance(saved["settings"]["version"], int) and isinstance(saved["songs"], list)
    except (OSError, ValueError, KeyError, TypeError):
        return False


# The paper gives clean_db; the ratio of unlabeled to labeled signals and the teacher's windows are ours
# (see train/finetune.py).
FINETUNE_FIELDS = ("model", "unlabeled", "clean_db", "unlabeled_ratio", "teacher_window", "teacher_views")
FinetuneConfig.recipe_fields = RECIPE_FIELDS + FINETUNE_FIELDS
