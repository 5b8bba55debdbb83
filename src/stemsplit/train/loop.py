"""Training any family with its paper's recipe: TS-BSMamba2 (Bai et al. 2024, Sec. III) and BSRNN
(Luo & Yu, Sec. IV-A), which share BSRNN's data pipeline and loss; and speaker-separation
networks (U-Mamba-Net, Dang et al. Sec. III-C), chosen by the model card's task.

Recipe (every value a field of :class:`TrainConfig` with one default, every field a CLI flag;
:data:`RECIPES` holds where a family's paper differs from TS-BSMamba2's):

- data: MUSDB18-HQ train split minus the 14 MUSDB validation tracks, BSRNN
  remixing of salient 3 s crops (:mod:`stemsplit.train.data`), 100k samples an epoch;
- loss: per stage, for every source, L1 of the real and of the imaginary STFT
  parts plus L1 of the waveform; stage 1 + stage 2 (:func:`separation_loss`);
- Adam, lr 1e-3, x0.8 after 2 epochs without validation improvement, gradient
  norm clipped at 5, global batch 16, 100 epochs; bf16 autocast on CUDA;
- BSRNN: one network per target (``--target vocals``, or ``all``: a bag of
  the four trained side by side), lr x0.98 every 2 epochs, early stopping after
  10 epochs without a better validation score, 160k samples an epoch (10000
  batches of 2 on 8 GPUs);
- validation every epoch: uSDR of whole validation tracks separated with the
  3 s / 0.5 s chunked protocol.

Speaker separation (``card.task == "speakers"``, ``--libri2mix FOLDER``): random
3 s crops of the Libri2Mix-layout folder's ``train-100`` mixtures
(:class:`~stemsplit.train.data.SpeechCrops`), the permutation-invariant SI-SNR loss
(:func:`~stemsplit.train.losses.pit_si_snr_loss`), Adam at a constant 1.5e-4,
batch 4, up to 120 epochs; validation: mean SI-SNRi of ``dev``'s mixtures.

Runs stop and resume exactly: the checkpoint holds model, optimiser,
scheduler, epoch, step, RNG state, and the data of sample i of epoch e
depends only on (seed, e, i), so a resumed run sees the batches it would
have seen. ``last.pt`` holds only tensors, numbers, strings and plain
containers (the config as JSON text, RNG states as tensors), so ``--resume``
reads it with ``torch.load(weights_only=True)``: a planted ``last.pt`` that
needs pickle code is refused before any of it runs. ``--resume`` also refuses
a changed recipe (see :data:`RECIPE_FIELDS`) unless ``override`` is set.

``torchrun --nproc-per-node N -m stemsplit train ...`` trains with
DDP (NCCL on GPUs, gloo on CPU): global step s takes samples
[s*B, (s+1)*B) split across ranks, so the batches do not depend on N; only
rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError

from ..card import MUSIC_STEMS
from ..engine.settings import SeparationError
from ..errors import StemsplitError
from ..files import write_atomically, write_failure
from ..model import FamilyError, build_model, config_problem, family, make_config
from ..model.ts_bsmamba2 import ARCHITECTURE as TS_BSMAMBA2
from ..runtime import Ranks, pick_device, resolve_precision, torchrun_ranks
from ..weights import WeightsError, save_checkpoint, torch_load_safely
from .config import LR_SCHEDULES, RECIPE_FIELDS, RECIPES, TrainConfig, either, flag_name
from .losses import pit_si_snr_loss, separation_loss

__all__ = [
    "RECIPES",
    "RECIPE_FIELDS",
    "LrSchedule",
    "TrainConfig",
    "TrainError",
    "load_model_config",
    "model_config_for",
    "separation_loss",
    "train",
]


PROGRESS_LINE_SECONDS = 60.0  # without a terminal, a progress line this often
CHECKPOINT_FORMAT = "stemsplit-train-2"  # last.pt layout; 2: weights-only loadable (JSON config, RNG tensors)


class TrainError(StemsplitError):
    """A training run cannot start or continue; the message says why."""


# --- learning-rate schedule -------------------------------------------------------------------


class LrSchedule:
    """The learning rate after each epoch's validation score, and whether to stop early.

    ``plateau`` (TS-BSMamba2): multiply by ``factor`` after ``patience`` epochs
    without a new best score; ``step`` (BSRNN): multiply by ``factor`` every
    ``every`` epochs; ``constant`` (U-Mamba-Net, whose paper names no schedule):
    never. Either way ``since_best`` counts the epochs since the best score, for
    early stopping.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        mode: str = "plateau",
        factor: float = 0.8,
        patience: int = 2,
        every: int = 2,
    ) -> None:
        if mode not in LR_SCHEDULES:
            raise ValueError(f"learning-rate schedule must be {either(LR_SCHEDULES)}, not {mode!r}")
        self.optimizer, self.mode, self.factor, self.patience, self.every = (
            optimizer,
            mode,
            factor,
            patience,
            every,
        )
        self.best = -math.inf
        self.bad_epochs = 0  # plateau: epochs without a new best since the last decay
        self.since_best = 0
        self.epochs = 0

    def step(self, score: float) -> bool:
        """Record an epoch's validation score (higher is better); True if it is a new best."""
        self.epochs += 1
        improved = score > self.best
        if improved:
            self.best, self.bad_epochs, self.since_best = score, 0, 0
        else:
            self.bad_epochs += 1
            self.since_best += 1
        if self.mode == "plateau" and self.bad_epochs >= self.patience:
            self._decay()
            self.bad_epochs = 0
        elif self.mode == "step" and self.epochs % self.every == 0:
            self._decay()
        return improved

    def _decay(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= self.factor

    def state_dict(self) -> dict[str, float]:
        return {
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "since_best": self.since_best,
            "epochs": self.epochs,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        # Runs saved before early stopping have only best and bad_epochs.
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
        self.since_best, self.epochs = int(state.get("since_best", 0)), int(state.get("epochs", 0))


# --- model and files ---------------------------------------------------------------------------


def load_model_config(
    path: Path | None,
    arch: str = TS_BSMAMBA2,
    preset: str | None = None,
    stems: tuple[str, ...] = MUSIC_STEMS,
) -> Any:
    """The family's preset with fields overridden by a TOML file of its config names (e.g. TSBSMamba2Config).

    Every problem with the file -- unreadable, not TOML, an unknown field, a value
    of the wrong type or one the network cannot be built with -- is a one-line
    :class:`TrainError` naming the file and the field.
    """
    try:
        config = make_config(arch, preset, {}, stems)
    except FamilyError as exc:
        raise TrainError(str(exc)) from None
    if path is None:
        return config
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        overrides = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrainError(f"{path}: cannot read model config ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainError(f"{path}: not a valid TOML model config ({exc})") from None
    names = family(arch).field_names()
    for key, value in overrides.items():
        if key not in names:
            raise TrainError(f"{path}: unknown model config field {key!r} (known: {', '.join(names)})")
        expected = type(getattr(config, key))
        shown = json.dumps(value) if isinstance(value, str | bool | float) else type(value).__name__
        if expected is str and not isinstance(value, str):
            raise TrainError(f"{path}: {key} must be a name in quotes, not {shown}")
        if expected is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise TrainError(f"{path}: {key} must be a whole number, not {shown}")
        if expected is int and value < 1:
            raise TrainError(f"{path}: {key} must be at least 1, not {value}")
    stem_field = family(arch).stem_field
    if stem_field and overrides.get(stem_field, len(stems)) != len(stems):
        raise TrainError(
            f"{path}: {stem_field} = {overrides[stem_field]}, but --stems names {len(stems)} stems "
            f"(leave {stem_field} out: --stems sets it)"
        )
    for hop, size in (("stride", "win"), ("hop", "n_fft")):  # the STFT fields of the families (when both are)
        if (
            hop in names
            and size in names
            and overrides.get(hop, getattr(config, hop)) >= overrides.get(size, getattr(config, size))
        ):
            raise TrainError(f"{path}: {hop} must be smaller than {size} (the STFT could not be inverted)")

    def problem(fields: dict[str, Any]) -> str | None:
        try:
            return config_problem(arch, replace(config, **fields), stems)
        except FamilyError as exc:
            return str(exc)

    if problem(overrides) is not None:
        # Name the field(s) to blame: those that fail on their own, else all of them together.
        alone = [key for key in overrides if problem({key: overrides[key]})]
        blamed = ", ".join(f"{key} = {overrides[key]}" for key in alone or overrides)
        raise TrainError(f"{path}: the network cannot be built with {blamed} ({problem(overrides)})")
    return replace(config, **overrides)


# --- distributed --------------------------------------------------------------------------------


def model_config_for(config: TrainConfig) -> Any:
    """The family config a new run builds: the preset (or --light), with --model-config's fields."""
    preset = config.preset or ("l-ts" if config.light and config.arch == TS_BSMAMBA2 else None)
    if config.light and config.arch != TS_BSMAMBA2:
        raise TrainError(f"--light is TS-BSMamba2's small preset; {config.arch} has presets: --preset")
    return load_model_config(config.model_config, config.arch, preset, config.model_stems)


def device_for(device: str) -> torch.device:
    """``--device`` (with the Mamba backend STEMSPLIT_MAMBA_BACKEND asks for) as a torch device, or
    TrainError."""
    try:
        return pick_device(device)
    except SeparationError as exc:
        raise TrainError(f"--device: {exc.problem}" if exc.option else str(exc)) from None


def _setup_distributed(device: str) -> tuple[Ranks, torch.device]:
    ranks = torchrun_ranks()
    chosen = device_for(device)
    if ranks.world > 1:
        if chosen.type == "cuda":
            chosen = torch.device(f"cuda:{ranks.local}")  # one GPU per process
            torch.cuda.set_device(chosen)
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return ranks, chosen


def _shard_indices(epoch_size: int, global_batch: int, ranks: Ranks, start_step: int) -> Iterator[int]:
    """Rank r's sample indices: global step s takes [s*B, (s+1)*B), rank r its r-th slice."""
    per_rank = global_batch // ranks.world
    for step in range(start_step, epoch_size // global_batch):
        first = step * global_batch + ranks.rank * per_rank
        yield from range(first, first + per_rank)


def _rng_state() -> dict[str, Any]:
    """The global random states as tensors and numbers, which ``torch.load(weights_only=True)`` reads."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor(words, dtype=torch.int64),  # 625 32-bit words
        "python_version": version,
        "python_gauss": gauss,  # None or a float
        "numpy": torch.from_numpy(keys.astype(np.int64)),  # 624 32-bit words
        "numpy_kind": kind,
        "numpy_position": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    words = tuple(int(w) for w in state["python"].tolist())
    random.setstate((state["python_version"], words, state["python_gauss"]))
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(
        (
            state["numpy_kind"],
            keys,
            state["numpy_position"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _flag(name: str, value: Any) -> str:
    """How the CLI spells a config field and its value: ``--lr 0.001``."""
    if isinstance(value, list | tuple):
        value = ",".join(map(str, value))
    elif value is None:
        value = "(unset)"
    return f"{flag_name(name)} {value}"


# Config fields saved in last.pt under an older name -> today's.
RENAMED = {"seconds": "crop_seconds"}


# --- the run ------------------------------------------------------------------------------------


class Run:
    """One training run: model, optimiser, data, and the files in ``config.out``.

    Subclasses (``stemsplit finetune``: :class:`stemsplit.train.finetune.FinetuneRun`)
    change where the network and the training data come from (:meth:`_model_config`,
    :meth:`_network`, :meth:`_training_data`), what a batch is (:meth:`train_step`),
    what happens after each validation (:meth:`end_epoch`) and what ``last.pt``
    holds besides (:meth:`_state`, :meth:`_resume`).
    """

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.last_path = config.out / "last.pt"
        problem = config.problem() or config.folder_problem()  # before any work (finetune decodes into out)
        if problem:
            raise TrainError(problem)
        self.ranks, self.device = _setup_distributed(config.device)
        if config.batch_size % self.ranks.world:
            raise TrainError(
                f"--batch-size {config.batch_size} is not divisible by {self.ranks.world} processes"
            )
        self.precision = resolve_precision(config.precision, self.device)
        self.steps_per_epoch = config.epoch_size // config.batch_size
        if self.steps_per_epoch == 0:
            raise TrainError(
                f"--epoch-size {config.epoch_size} is smaller than one batch ({config.batch_size})"
            )

        # The model config first: a bad file fails at once, not after the salient-segment index.
        model_config = self._model_config()
        self.target_index = [config.stems.index(stem) for stem in config.model_stems]
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = self._network(model_config)
        shortest = self.model.card.min_samples / self.model.card.sample_rate
        for name in ("crop_seconds", "valid_window"):
            if getattr(config, name) < shortest:
                raise TrainError(
                    f"{_flag(name, getattr(config, name))} s is shorter than the network's shortest input "
                    f"({shortest * 1000:.1f} ms)"
                )
        # What the network separates decides the data, the loss and the validation score.
        self.task = self.model.card.task
        self._check_dataset_flags()
        if self.task == "speakers":
            self._speech_data()
        else:
            self._music_data()
        self.model = self.model.to(self.device)
        if config.checkpoint_activations:
            if not hasattr(self.model, "checkpoint_activations"):
                raise TrainError(f"--checkpoint-activations: {config.arch} does not support it")
            self.model.checkpoint_activations()
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.ranks.world > 1
            else self.model
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        try:
            self.schedule = LrSchedule(
                self.optimizer, config.lr_schedule, config.lr_decay, config.patience, config.lr_every
            )
        except ValueError as exc:
            raise TrainError(f"--lr-schedule: {exc}") from None
        self.epoch, self.step, self.global_step = 0, 0, 0
        config.out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            self._resume()
        torch.manual_seed(config.seed + 1000 * self.ranks.rank + self.global_step)

    # -- what subclasses change --

    def _model_config(self) -> Any:
        """The family config to build: :func:`model_config_for` the run's config."""
        return model_config_for(self.config)

    def _network(self, model_config: Any) -> torch.nn.Module:
        """The network to train (on the CPU): a new one, initialised from the seed."""
        return build_model(self.config.arch, model_config, self.config.model_stems)

    # -- data --

    def _check_dataset_flags(self) -> None:
        """One dataset, of the kind the network separates: --musdb for music, --libri2mix for speakers."""
        config, arch = self.config, self.config.arch
        if (config.musdb is None) == (config.libri2mix is None):
            raise TrainError("give one dataset: --musdb (music models) or --libri2mix (speaker models)")
        if self.task == "speakers" and config.musdb is not None:
            raise TrainError(
                f"--musdb: {arch} separates speakers; give a Libri2Mix-layout folder with --libri2mix"
            )
        if self.task != "speakers" and config.libri2mix is not None:
            raise TrainError(
                f"--libri2mix: {arch} separates {self.task}; give a MUSDB18-HQ-layout folder with --musdb"
            )

    def _music_data(self) -> None:
        """MUSDB18-HQ layout: the training tracks' salient segments, uSDR on the validation tracks."""
        from ..datasets.musdb import common_format, dataset_split, find_tracks
        from .data import SalientIndex

        config = self.config
        self.data_root, self.score_name = config.musdb, "uSDR"
        tracks = find_tracks(config.musdb, "train", config.stems)
        self.train_tracks, self.valid_tracks = dataset_split(config.musdb, tracks)
        if not self.train_tracks:
            raise TrainError(f"{config.musdb}: no training tracks left after the validation split")
        self._say_short_tracks("tracks")
        # Before any audio is read (the salient-segment index, finetune's unlabeled songs): one format.
        self._check_sample_rate(common_format(self.train_tracks)[0])
        if config.valid_tracks is not None:
            self.valid_tracks = self.valid_tracks[: config.valid_tracks]
        sad = {"segment_seconds": config.sad_seconds, "quantile": config.sad_quantile}
        index = SalientIndex.build(self.train_tracks, config.stems, **sad) if self.ranks.main else None
        if self.ranks.world > 1:
            dist.barrier()  # rank 0 built the cache; the others read it
            index = index or SalientIndex.build(self.train_tracks, config.stems, **sad)
        self.dataset = self._training_data(index)

    def _say_short_tracks(self, noun: str) -> None:
        """One line before the first step when training tracks are shorter than a crop: their examples
        are padded with silence after their end (kept, not refused: Libri2Mix has such mixtures, and a
        short track still teaches; but the user should know, e.g. of a track cut short by mistake)."""
        crop = self.config.crop_seconds
        short = sorted(
            (t for t in self.train_tracks if t.frames < crop * t.sample_rate), key=lambda t: t.frames
        )
        if not short or not self.ranks.main:
            return
        named = ", ".join(f"{t.name} {t.frames / t.sample_rate:.1f} s" for t in short[:3])
        more = f" and {len(short) - 3} more" if len(short) > 3 else ""
        self.log(
            f"--crop-seconds {crop:g}: {len(short)} of {len(self.train_tracks)} training "
            f"{noun} {'is' if len(short) == 1 else 'are'} shorter ({named}{more}); "
            "their examples are padded with silence after their end"
        )

    def _check_sample_rate(self, rate: int) -> None:
        """The dataset's sample rate must be the network's."""
        network = self.model.card.sample_rate
        if rate != network:
            where = (
                f"set sr = {rate} in --model-config"
                if self.config.model_config
                else f"give a --model-config with sr = {rate}"
            )
            raise TrainError(
                f"{self.data_root}: the {'mixtures' if self.task == 'speakers' else 'tracks'} are at "
                f"{rate} Hz but the model works at {network} Hz; resample the dataset or {where}"
            )

    def _training_data(self, index: Any) -> torch.utils.data.Dataset:
        """The music training samples: BSRNN's remix of the training tracks' salient segments."""
        from .data import RemixDataset

        config = self.config
        return RemixDataset(
            self.train_tracks,
            config.stems,
            config.crop_seconds,
            config.epoch_size,
            config.seed,
            index=index,
            gain_db=(-config.gain_db, config.gain_db),
            drop_prob=config.drop_prob,
        )

    def _speech_data(self) -> None:
        """Libri2Mix layout: random crops of train-100's mixtures, SI-SNRi on dev's (when it has them)."""
        from ..datasets.libri2mix import SpeechSynthError, find_speech_mixtures
        from .data import SpeechCrops

        config = self.config
        self.data_root, self.score_name = config.libri2mix, "SI-SNRi"
        if len(config.stems) != 2:
            raise TrainError(f"--stems: a Libri2Mix-layout folder has two talkers, not {len(config.stems)}")
        try:
            self.train_tracks = find_speech_mixtures(config.libri2mix, "train-100", config.mixture)
            has_dev = (config.libri2mix / "dev").is_dir() or (
                config.libri2mix / "metadata" / f"mixture_dev_{config.mixture}.csv"
            ).is_file()
            self.valid_tracks = (
                find_speech_mixtures(config.libri2mix, "dev", config.mixture) if has_dev else []
            )
        except SpeechSynthError as exc:
            raise TrainError(f"--libri2mix: {exc}") from None
        self._say_short_tracks("mixtures")
        if config.valid_tracks is not None:
            self.valid_tracks = self.valid_tracks[: config.valid_tracks]
        self.dataset = SpeechCrops(self.train_tracks, config.crop_seconds, config.epoch_size, config.seed)
        self._check_sample_rate(self.dataset.sample_rate)

    def end_epoch(self, improved: bool, score: float) -> None:
        """Called on every rank after each epoch's validation (``improved``: a new best score)."""

    def log_fields(self) -> dict[str, Any]:
        """Extra fields of each epoch's line in log.jsonl."""
        return {}

    def export_metadata(self) -> dict[str, Any]:
        """Extra metadata of the exported best.safetensors and last.safetensors (besides the epoch)."""
        return {}

    # -- checkpoints --

    def _state(self) -> dict[str, Any]:
        """What ``last.pt`` holds: only what ``torch.load(weights_only=True)`` reads back."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.schedule.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "rng": _rng_state(),
            "config": json.dumps(self.config.to_json()),
            "model_config": json.dumps({"architecture": self.config.arch, **asdict(self.model.config)}),
        }

    def save(self) -> None:
        if self.ranks.main:
            state = self._state()
            with self._writing():
                write_atomically(self.last_path, lambda tmp: torch.save(state, tmp))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write into the run folder (a full disk: torch.save and safetensors raise
        RuntimeErrors for it) as one TrainError in the words of every failed write; what was written
        before stays (each file is replaced whole or not at all), so the run can go on with --resume."""
        try:
            yield
        except (OSError, RuntimeError, SafetensorError) as exc:
            out = self.config.out
            then = (
                f"the last checkpoint is kept: make room and continue with --resume -o {out}"
                if self.last_path.is_file()
                else "make room and run the same command again"
            )
            raise TrainError(
                f"{out}: writing the run's files failed: {write_failure(exc, out)}; {then}"
            ) from None

    def _load_checkpoint(self) -> dict[str, Any]:
        """``last.pt``, weights-only (no pickle code runs), checked to be one of ours; or TrainError."""
        if not self.last_path.is_file():
            raise TrainError(f"--resume: no checkpoint at {self.last_path}")
        try:
            state = torch_load_safely(self.last_path)
        except WeightsError as exc:
            raise TrainError(f"--resume: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TrainError(
                f"--resume: {self.last_path}: not a checkpoint of this version of stemsplit train "
                f"(no format {CHECKPOINT_FORMAT!r}); start a new run in another --out"
            )
        try:
            state["config"] = json.loads(state["config"])
            state["model_config"] = json.loads(state["model_config"])
            for key in ("config", "model_config"):
                if not isinstance(state[key], dict):
                    raise ValueError(f"{key} is not a table")
            for key in ("epoch", "step", "global_step"):
                if type(state[key]) is not int or state[key] < 0:
                    raise ValueError(f"{key} is not a count")
            batch_size, lr = state["config"].get("batch_size", 1), state["config"].get("lr", 1.0)
            if type(batch_size) is not int or batch_size < 1 or type(lr) not in (int, float):
                raise ValueError("config batch_size or lr is not a number")
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainError(f"--resume: {self.last_path}: damaged checkpoint ({exc})") from None
        return state

    def _saved_recipe(self, saved: dict[str, Any]) -> dict[str, Any]:
        """The saved run's config under today's names; a field saved before it existed has its default
        (the TS-BSMamba2 recipe), as the run had."""
        defaults = json.loads(json.dumps(type(self.config)(musdb=Path()).to_json()))
        return {**defaults, **{RENAMED.get(k, k): v for k, v in saved.items()}}

    def _recipe_changes(self, saved: dict[str, Any]) -> list[str]:
        """``--lr 0.001 (was 0.0005)`` for every RECIPE_FIELDS value that differs from the saved run."""
        now = json.loads(json.dumps(self.config.to_json()))  # tuples -> lists, as the saved side
        changes = []
        for name in self.config.recipe_fields:
            new, old = now.get(name), saved.get(name)
            # A folder or checkpoint file: the same path, however it is spelled.
            paths = ("musdb", "libri2mix", "unlabeled")
            is_path = isinstance(old, str) and isinstance(new, str)
            is_path = is_path and (name in paths or (name == "model" and Path(old).is_file()))
            same = Path(new).resolve() == Path(old).resolve() if is_path and old and new else new == old
            if not same:
                changes.append(f"{_flag(name, new)} (was {_flag(name, old).split(' ', 1)[1]})")
        return changes

    def _resume(self) -> dict[str, Any]:
        """Restore the run from ``last.pt``; returns the checkpoint (for what subclasses saved in it)."""
        state = self._load_checkpoint()
        architecture = {"architecture": self.config.arch, **asdict(self.model.config)}
        state["model_config"].setdefault("architecture", TS_BSMAMBA2)  # runs saved before families
        saved = self._saved_recipe(state["config"])
        changes = self._recipe_changes(saved)
        if changes and not self.config.override:
            raise TrainError(
                f"--resume: {self.last_path} was trained with another recipe: {', '.join(changes)}; "
                "resume with the run's own values, or add --override to continue with the new ones"
            )
        if state["model_config"] != architecture:
            differ = ", ".join(
                f"{key} {architecture.get(key)} (was {value})"
                for key, value in state["model_config"].items()
                if architecture.get(key) != value
            )
            raise TrainError(
                f"--resume: {self.last_path} holds another architecture ({differ}); --arch, --preset, "
                "--light, --model-config, --target and the number of --stems must be those of the run"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["plateau"])
            self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
            _set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise TrainError(f"--resume: {self.last_path}: damaged checkpoint ({_first_line(exc)})") from None
        if changes:
            if self.config.lr != saved["lr"]:  # the optimiser state holds the old (decayed) rate
                for group in self.optimizer.param_groups:
                    group["lr"] = self.config.lr
            if self.config.batch_size != saved["batch_size"]:  # keep the position in samples
                self.step = self.step * saved["batch_size"] // self.config.batch_size
            self.log(f"--override: continuing with {', '.join(changes)}")
        self.log(f"resumed {self.last_path}: epoch {self.epoch}, step {self.step}")
        if self.epoch >= self.config.epochs:
            self.log(f"the run has done its {self.epoch} epochs; raise --epochs to train longer")
        return state

    # -- training --

    def _loader(self) -> torch.utils.data.DataLoader:
        self.dataset.set_epoch(self.epoch)
        indices = list(_shard_indices(self.config.epoch_size, self.config.batch_size, self.ranks, self.step))
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.config.batch_size // self.ranks.world,
            sampler=indices,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
        )

    def train_step(self, mixture: torch.Tensor, targets: torch.Tensor) -> float:
        mixture, targets = (
            mixture.to(self.device, non_blocking=True),
            targets.to(self.device, non_blocking=True),
        )
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with autocast:
            outputs = self.ddp(mixture)
        targets = targets[:, self.target_index]  # BSRNN --target: one stem of the remix
        if self.task == "speakers":
            loss = pit_si_snr_loss(outputs, targets)
        else:
            loss = separation_loss(outputs, targets, *self.model.card.stft)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        return float(loss.detach())

    def validate(self) -> float:
        """Mean uSDR over stems and validation tracks (speakers: mean SI-SNRi over talkers and dev
        mixtures), with the chunked protocol (rank 0)."""
        from ..engine.separator import Separator
        from ..evaluate.scoring import evaluate_speech, evaluate_tracks

        if not self.valid_tracks:
            # No validation set: each epoch counts as better than the last, so best.safetensors is the
            # latest and neither the plateau schedule nor early stopping acts without evidence.
            return float(self.global_step)
        separator = Separator(
            self.model,
            device=self.device,
            window=self.config.valid_window,
            hop=self.config.valid_hop,
            precision=self.precision,
        )
        try:
            if self.task == "speakers":
                return evaluate_speech(
                    separator, self.valid_tracks, compute_sdr=False, compute_stoi=False
                ).mean("si_snri")
            return evaluate_tracks(separator, self.valid_tracks, compute_csdr=False).usdr()["avg"]
        finally:
            self.model.train()

    def run(self) -> None:
        cfg = self.config
        last_save = time.monotonic()
        log_path = cfg.out / "log.jsonl"
        while self.epoch < cfg.epochs and not self._stopped_early():
            self.model.train()
            started, losses = time.perf_counter(), []
            bar = self._progress_bar()
            last_line = time.monotonic()
            for batch in self._loader():
                losses.append(self.train_step(*batch))
                self.step += 1
                self.global_step += 1
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{losses[-1]:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}"
                    )
                    bar.update(1)
                elif self.ranks.main and time.monotonic() - last_line > PROGRESS_LINE_SECONDS:
                    # No terminal (a log file, a job scheduler): a plain line now and then instead.
                    last_line = time.monotonic()
                    rate = len(losses) * cfg.batch_size / (time.perf_counter() - started)
                    self.log(
                        f"epoch {self.epoch + 1}/{cfg.epochs}: step {self.step}/{self.steps_per_epoch}, "
                        f"loss {np.mean(losses[-50:]):.4f}, {rate:.1f} samples/s"
                    )
                due_steps = cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0
                due_time = time.monotonic() - last_save > cfg.save_every_minutes * 60
                if due_steps or due_time:
                    self.save()
                    last_save = time.monotonic()
            if bar is not None:
                bar.close()
            seconds = time.perf_counter() - started
            mean_loss = self._mean_over_ranks(float(np.mean(losses)) if losses else math.nan)
            score = self.validate() if self.ranks.main else 0.0
            score = self._broadcast(score)
            lr = self.optimizer.param_groups[0]["lr"]
            improved = self.schedule.step(score)
            self.epoch, self.step = self.epoch + 1, 0
            self.end_epoch(improved, score)
            if self.ranks.main:
                extra = {"epoch": self.epoch, **self.export_metadata()}
                with self._writing():
                    if improved:
                        save_checkpoint(self.model, cfg.out / "best.safetensors", **extra)
                    save_checkpoint(self.model, cfg.out / "last.safetensors", **extra)
                validated = bool(self.valid_tracks)  # without a validation set, score is global_step
                record = {
                    "epoch": self.epoch,
                    "global_step": self.global_step,
                    "loss": mean_loss,
                    "valid_" + self.score_name.lower().replace("-", "_"): score if validated else None,
                    "best": improved,
                    "lr": lr,
                    "samples_per_second": len(losses) * cfg.batch_size / max(seconds, 1e-9),
                    "seconds": seconds,
                    **self.log_fields(),
                }
                with self._writing(), open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                best = " (best)" if improved else ""
                speed = record["samples_per_second"]
                valid = f"valid {self.score_name} {score:.2f} dB{best}" if validated else "no validation set"
                self.log(
                    f"epoch {self.epoch}/{cfg.epochs}: loss {mean_loss:.4f}, "
                    f"{valid}, lr {lr:.2e}, {speed:.1f} samples/s"
                )
            self.save()
            last_save = time.monotonic()
        if self.ranks.world > 1:
            agree = self._ranks_agree()
            if self.ranks.main:
                with open(log_path, "a") as f:
                    f.write(
                        json.dumps({"event": "finished", "ranks_agree": agree, "world": self.ranks.world})
                        + "\n"
                    )
            # gloo's worker thread may still be releasing the all_gather's tensors, which needs the GIL;
            # destroying the group joins that thread while holding the GIL: a deadlock seen under load.
            # The barrier is queued behind that release and waits without the GIL.
            dist.barrier()
            dist.destroy_process_group()

    def _stopped_early(self) -> bool:
        """BSRNN's early stopping: --early-stop epochs without a better validation score end the run."""
        patience = self.config.early_stop
        if not patience or self.schedule.since_best < patience:
            return False
        self.log(
            f"stopped early after epoch {self.epoch}: no better validation score in {patience} epochs "
            f"(best {self.schedule.best:.2f} dB: best.safetensors)"
        )
        return True

    def _progress_bar(self):
        """A tqdm bar on rank 0 when stderr is a terminal; None otherwise (progress lines instead)."""
        if not self.ranks.main:
            return None
        from tqdm import tqdm

        bar = tqdm(
            disable=None,  # None: disabled when stderr is not a terminal
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            unit="step",
        )
        return None if bar.disable else bar

    def _mean_over_ranks(self, value: float) -> float:
        if self.ranks.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.ranks.world

    def _broadcast(self, value: float) -> float:
        if self.ranks.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t)

    def _ranks_agree(self) -> bool:
        """Every rank holds the same weights (DDP keeps them in sync; this checks it)."""
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        mine = torch.stack([flat.sum(), flat.square().sum(), flat[:: max(1, len(flat) // 1000)].sum()])
        gathered = [torch.zeros_like(mine) for _ in range(self.ranks.world)]
        dist.all_gather(gathered, mine)
        return all(torch.equal(g, gathered[0]) for g in gathered)


def train(
    config: TrainConfig,
    log: Callable[[str], None] = print,
    run_type: Callable[[TrainConfig, Callable[[str], None]], Run] = Run,
) -> Path:
    """Train (or resume) a run; returns the folder with last.pt, best.safetensors and log.jsonl.

    ``run_type`` makes the run (``stemsplit finetune``: a FinetuneRun).
    """
    run = run_type(config, log)
    run.run()
    return config.out
