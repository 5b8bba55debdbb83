"""The training run: any family with its paper's recipe (TS-BSMamba2: Bai et al. 2024, Sec. III; BSRNN:
Luo & Yu, Sec. IV-A; U-Mamba-Net: Dang et al. Sec. III-C), the data, the loss and the validation
score chosen by the model card's task (music: BSRNN's remix and uSDR; speakers: Libri2Mix crops,
PIT SI-SNR and SI-SNRi). Every number of the recipe is a field of :class:`TrainConfig` with one
default; docs/training.md describes the recipes and the files of a run.

Runs stop and resume exactly: ``last.pt`` (:mod:`.resume`) holds model, optimiser, schedule, epoch,
step and random state, and the data of sample i of epoch e depends only on (seed, e, i), so a
resumed run sees the batches it would have seen. Under ``torchrun`` (:mod:`.distributed`) each rank
takes its slice of every global batch and only rank 0 writes files. After each epoch: the validation
score (:mod:`.validation`), the exports (``best.safetensors``, ``last.safetensors``), the epoch's record
in ``log.jsonl`` and its line (:mod:`.progress`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from ..card import card_of
from ..engine.runtime import resolve_precision
from ..errors import first_line
from ..files import write_atomically
from ..model import build_model
from ..model.families import config_dict
from ..weights import save_checkpoint
from .config import TrainConfig
from .distributed import (
    broadcast_from_main,
    leave_process_group,
    mean_over_ranks,
    ranks_agree,
    setup_distributed,
    shard_indices,
)
from .errors import TrainError
from .losses import pit_si_snr_loss, separation_loss
from .model_config import model_config_for
from .progress import EpochProgress, append_record, epoch_line, score_field
from .resume import (
    CHECKPOINT_FORMAT,
    as_flag,
    check_resumable,
    load_checkpoint,
    rng_state,
    set_rng_state,
    writing_run_files,
)
from .schedule import LrSchedule
from .validation import validation_score

if TYPE_CHECKING:
    from ..datasets.libri2mix import SpeechTrack
    from ..datasets.musdb import Track
    from .data import EpochDataset, SalientIndex

__all__ = ["Run", "train"]


class Run:
    """One training run: model, optimiser, data, and the files in ``config.out``.

    Subclasses (``stemsplit finetune``: :class:`stemsplit.train.finetune.FinetuneRun`)
    change where the network and the training data come from (:meth:`_model_config`,
    :meth:`_network`, :meth:`_training_data`), what a batch is (:meth:`train_step`),
    what happens after each validation (:meth:`end_epoch`) and what ``last.pt``
    holds besides (:meth:`_state`, :meth:`_resume`).
    """

    # The data (music: MUSDB18-HQ tracks; speakers: Libri2Mix mixtures), set by _music_data or _speech_data.
    train_tracks: list[Track] | list[SpeechTrack]
    valid_tracks: list[Track] | list[SpeechTrack]
    dataset: EpochDataset

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.last_path = config.out / "last.pt"
        problem = config.problem() or config.folder_problem()  # before any work (finetune decodes into out)
        if problem:
            raise TrainError(problem)
        self.ranks, self.device = setup_distributed(config.device)
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
        self.target_index = [config.dataset_stems.index(stem) for stem in config.model_stems]
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = self._network(model_config)
        card = card_of(self.model)
        shortest = card.min_samples / card.sample_rate
        for name in ("crop_seconds", "valid_window"):
            if getattr(config, name) < shortest:
                raise TrainError(
                    f"{as_flag(name, getattr(config, name))} s is shorter than the network's shortest input "
                    f"({shortest * 1000:.1f} ms)"
                )
        # What the network separates decides the data, the loss and the validation score.
        self.task = card.task
        self._check_dataset_flags()
        if self.task == "speakers":
            self._speech_data()
        else:
            self._music_data()
        self.model = self.model.to(self.device)
        if config.checkpoint_activations:
            enable = getattr(self.model, "checkpoint_activations", None)  # some families have it
            if enable is None:
                raise TrainError(f"--checkpoint-activations: {config.arch} does not support it")
            enable()
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.ranks.world > 1
            else self.model
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.schedule = LrSchedule(
            self.optimizer, config.lr_schedule, config.lr_decay, config.patience, config.lr_every
        )
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
        assert config.musdb is not None  # (_check_dataset_flags: the task's dataset is given)
        tracks = find_tracks(config.musdb, "train", config.dataset_stems)
        self.train_tracks, self.valid_tracks = dataset_split(config.musdb, tracks)
        if not self.train_tracks:
            raise TrainError(f"{config.musdb}: no training tracks left after the validation split")
        self._say_short_tracks("tracks")
        # Before any audio is read (the salient-segment index, finetune's unlabeled songs): one format.
        self._check_sample_rate(common_format(self.train_tracks)[0])
        if config.valid_tracks is not None:
            self.valid_tracks = self.valid_tracks[: config.valid_tracks]
        build_index = partial(
            SalientIndex.build,
            self.train_tracks,
            config.dataset_stems,
            segment_seconds=config.sad_seconds,
            quantile=config.sad_quantile,
        )
        index = build_index() if self.ranks.main else None
        if self.ranks.world > 1:
            dist.barrier()  # rank 0 built the cache; the others read it
            index = index or build_index()
        self.dataset = self._training_data(self.train_tracks, index)

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
        network = card_of(self.model).sample_rate
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

    def _training_data(self, tracks: list[Track], index: SalientIndex | None) -> EpochDataset:
        """The music training samples: BSRNN's remix of the training ``tracks``' salient segments."""
        from .data import RemixDataset

        config = self.config
        return RemixDataset(
            tracks,
            config.dataset_stems,
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
        assert config.libri2mix is not None  # (_check_dataset_flags: the task's dataset is given)
        if len(config.dataset_stems) != 2:
            raise TrainError(
                f"--stems: a Libri2Mix-layout folder has two talkers, not {len(config.dataset_stems)}"
            )
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
            "rng": rng_state(),
            "config": json.dumps(self.config.to_json()),
            "model_config": json.dumps({"architecture": self.config.arch, **config_dict(self.model.config)}),
        }

    def save(self) -> None:
        if self.ranks.main:
            state = self._state()
            with writing_run_files(self.config.out, self.last_path):
                write_atomically(self.last_path, lambda tmp: torch.save(state, tmp))

    def _resume(self) -> dict[str, Any]:
        """Restore the run from ``last.pt``; returns the checkpoint (for what subclasses saved in it)."""
        state = load_checkpoint(self.last_path)
        architecture = {"architecture": self.config.arch, **config_dict(self.model.config)}
        saved, changes = check_resumable(self.config, state, architecture, self.last_path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["plateau"])
            self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise TrainError(f"--resume: {self.last_path}: damaged checkpoint ({first_line(exc)})") from None
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
        indices = list(shard_indices(self.config.epoch_size, self.config.batch_size, self.ranks, self.step))
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
            loss = separation_loss(outputs, targets, *card_of(self.model).stft)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        return float(loss.detach())

    def validate(self) -> float:
        """Mean uSDR over stems and validation tracks (speakers: mean SI-SNRi over talkers and dev
        mixtures), with the chunked protocol (rank 0)."""
        if not self.valid_tracks:
            # No validation set: each epoch counts as better than the last, so best.safetensors is the
            # latest and neither the plateau schedule nor early stopping acts without evidence.
            return float(self.global_step)
        config = self.config
        return validation_score(
            self.model,
            self.valid_tracks,
            self.task,
            self.device,
            config.valid_window,
            config.valid_hop,
            self.precision,
        )

    def run(self) -> None:
        cfg = self.config
        last_save = time.monotonic()
        log_path = cfg.out / "log.jsonl"
        while self.epoch < cfg.epochs and not self._stopped_early():
            self.model.train()
            started, losses = time.perf_counter(), []
            progress = EpochProgress(
                self.log,
                main=self.ranks.main,
                epoch=self.epoch + 1,
                epochs=cfg.epochs,
                step=self.step,
                steps=self.steps_per_epoch,
                batch_size=cfg.batch_size,
                started=started,
            )
            for batch in self._loader():
                losses.append(self.train_step(*batch))
                self.step += 1
                self.global_step += 1
                progress.update(self.step, losses, self.optimizer.param_groups[0]["lr"])
                due_steps = cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0
                due_time = time.monotonic() - last_save > cfg.save_every_minutes * 60
                if due_steps or due_time:
                    self.save()
                    last_save = time.monotonic()
            progress.close()
            seconds = time.perf_counter() - started
            mean_loss = float(np.mean(losses)) if losses else math.nan
            mean_loss = mean_over_ranks(mean_loss, self.ranks, self.device)
            score = self.validate() if self.ranks.main else 0.0
            score = broadcast_from_main(score, self.ranks, self.device)
            lr = self.optimizer.param_groups[0]["lr"]
            improved = self.schedule.step(score)
            self.epoch, self.step = self.epoch + 1, 0
            self.end_epoch(improved, score)
            if self.ranks.main:
                extra = {"epoch": self.epoch, **self.export_metadata()}
                with writing_run_files(cfg.out, self.last_path):
                    if improved:
                        save_checkpoint(self.model, cfg.out / "best.safetensors", **extra)
                    save_checkpoint(self.model, cfg.out / "last.safetensors", **extra)
                validated = bool(self.valid_tracks)  # without a validation set, score is global_step
                record = {
                    "epoch": self.epoch,
                    "global_step": self.global_step,
                    "loss": mean_loss,
                    score_field(self.score_name): score if validated else None,
                    "best": improved,
                    "lr": lr,
                    "samples_per_second": len(losses) * cfg.batch_size / max(seconds, 1e-9),
                    "seconds": seconds,
                    **self.log_fields(),
                }
                with writing_run_files(cfg.out, self.last_path):
                    append_record(log_path, record)
                self.log(epoch_line(record, cfg.epochs, self.score_name))
            self.save()
            last_save = time.monotonic()
        if self.ranks.world > 1:
            agree = ranks_agree(self.model, self.ranks)
            if self.ranks.main:
                append_record(
                    log_path, {"event": "finished", "ranks_agree": agree, "world": self.ranks.world}
                )
            # The DDP wrapper's reducer holds the process group: freed after the group was destroyed (when
            # the Run was dropped), its destructor waited for a peer that had exited (a hang seen in CI, in
            # ~Reducer -> ~ProcessGroup). So it goes first, while every rank is still here.
            self.ddp = self.model
            leave_process_group()

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
