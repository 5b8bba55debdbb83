"""``stemsplit finetune``: BSRNN's semi-supervised fine-tuning with self-boosting (Luo & Yu, Sec. III, IV-B).

A model P trained on a labeled set L is fine-tuned on L plus a folder U of unlabeled songs
(:mod:`.unlabeled`). P is the teacher: it labels each unlabeled crop an example draws, on the fly on
the training device (:mod:`.teacher`: clean target, clean residual or pseudo-label, Sec. III-A,
Fig. 2), and those signals join the labeled ones in the supervised remix. Self-boosting: the
student starts from P, P's validation score is the first best, and whenever the student beats the
best it becomes the teacher (a new *generation*). Learning rate 1e-4; everything else is
``stemsplit train``'s recipe for the model's family (a :class:`~stemsplit.train.loop.Run`: resume,
DDP, exports, log.jsonl). docs/finetuning.md describes how the signals make examples (one-target
and multi-stem models), why the labels are not cached, and the costs.

Files: ``OUT/teachers/gen-K.safetensors`` is teacher generation K (generation 0 is the given
model), ``best.safetensors`` always equals the current teacher. ``last.pt`` records the
generation, so ``--resume`` restores the same teacher and best score; a generation's file is
deleted only once ``last.pt`` names a newer one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..card import MUSIC_STEMS
from ..datasets.musdb import Track
from ..datasets.musdb_layout import DatasetError
from ..weights import LoadedModel, WeightsError, load_model, save_checkpoint
from .config import FinetuneConfig
from .data import EpochDataset, RemixDataset, SalientIndex
from .distributed import broadcast_from_main
from .errors import TrainError
from .loop import Run, train
from .progress import append_record
from .teacher import CLASS_NAMES, LABELED, RESIDUAL, TARGET, teacher_sources, view_offsets
from .unlabeled import UnlabeledSong, prepare_unlabeled

__all__ = ["FinetuneDataset", "FinetuneRun", "configure", "finetune", "load_pretrained"]


# --- the pre-trained model and the config ---------------------------------------------------------


def load_pretrained(spec: str | Path) -> LoadedModel:
    """The model to fine-tune, by registry name or checkpoint path; TrainError if it cannot be."""
    try:
        loaded = load_model(spec, progress=True)
    except WeightsError as exc:
        raise TrainError(f"--model: {exc}") from None
    if loaded.card.task != "music":  # train's message would point to --libri2mix, which finetune lacks
        raise TrainError(
            f"--model: {loaded.name} separates {loaded.card.task}; finetune takes music models "
            "(train --libri2mix trains speaker models)"
        )
    if loaded.normalization != "none":
        raise TrainError(
            f"--model: {loaded.name} standardises its input ({loaded.normalization}); "
            "training feeds raw audio, so only models with normalization none can be fine-tuned"
        )
    return loaded


def configure(
    pretrained: LoadedModel, model: str, stems: Sequence[str] | None = None, **given: Any
) -> FinetuneConfig:
    """The run's config: the model's family recipe, its stems and target, and ``given`` (None: default).

    ``model`` is how the user named the model (kept in the config, so ``--resume``
    checks it). A model of several stems is fine-tuned on a labeled set of those
    stems (``stems`` may only repeat them); a one-stem model (BSRNN ``--target``)
    on remixes of ``stems`` (default drums, bass, other, vocals), its stem among them.
    """
    own = pretrained.stems
    if len(own) == 1:
        stems = tuple(stems or MUSIC_STEMS)
        if own[0] not in stems:
            raise TrainError(f"--stems: the model separates {own[0]}, which is not one of {', '.join(stems)}")
        target = own[0]
    else:
        if stems and tuple(stems) != own:
            raise TrainError(
                f"--stems: the model separates {', '.join(own)}; the labeled set needs those stems"
            )
        stems, target = own, "all"
    arch = pretrained.card.architecture
    return FinetuneConfig.for_arch(arch, model=model, stems=tuple(stems), target=target, **given)


# --- the examples -------------------------------------------------------------------------------------


class FinetuneDataset(RemixDataset):
    """The remix of labeled stems and unlabeled crops, before the teacher has seen the crops.

    Item ``i`` of epoch ``e`` (a pure function of ``(seed, e, i)``, as in
    :class:`RemixDataset`) is four tensors, S being the labeled set's stems:

    - ``stems`` [S, C, T]: the labeled stems, gain applied (zero where dropped or unlabeled);
    - ``crops`` [S, C, T + 2 * context]: the unlabeled mixture crop of each unlabeled slot with
      ``context`` frames of its song on each side, for the teacher (else zero);
    - ``kinds`` [S] int64: LABELED, TARGET (the slot takes the crop's target) or RESIDUAL;
    - ``gains`` [S] float32: the linear gain of each unlabeled slot (its crop is not yet scaled).

    ``target`` is "all" (every slot a target of its stem) or one stem: then its
    slot is the target and the first other slot carries the residual, which,
    when it comes from a crop, replaces all the other labeled stems.
    """

    def __init__(
        self,
        tracks: Sequence[Any],
        stems: Sequence[str],
        seconds: float,
        epoch_size: int,
        seed: int,
        *,
        songs: Sequence[UnlabeledSong],
        target: str = "all",
        ratio: float = 0.5,
        context: int = 0,
        **remix: Any,
    ) -> None:
        super().__init__(tracks, stems, seconds, epoch_size, seed, **remix)
        if not songs:
            raise DatasetError("no unlabeled songs")
        self.songs, self.ratio, self.context = list(songs), ratio, context
        if target == "all":
            self.target_slots, self.residual_slot = list(range(len(self.stems))), None
        else:
            slot = self.stems.index(target)
            self.target_slots = [slot]
            self.residual_slot = next(k for k in range(len(self.stems)) if k != slot)

    def sample(self, epoch: int, i: int) -> tuple[torch.Tensor, ...]:
        size = (len(self.stems), self.channels, self.frames)
        stems, crops = (
            np.zeros(size, np.float32),
            np.zeros((*size[:2], self.frames + 2 * self.context), np.float32),
        )
        kinds, gains = np.zeros(len(self.stems), np.int64), np.zeros(len(self.stems), np.float32)
        # The unlabeled choices have their own random stream, so the labeled ones are train's.
        rng = np.random.default_rng([self.seed, epoch, i, 1])
        unlabeled = {k: TARGET for k in self.target_slots if rng.random() < self.ratio}
        if self.residual_slot is not None and rng.random() < self.ratio:
            unlabeled[self.residual_slot] = RESIDUAL
        for k, (stem, draw) in enumerate(zip(self.stems, self._draws(epoch, i), strict=True)):
            if k in unlabeled:
                song = self.songs[int(rng.integers(len(self.songs)))]
                start = int(song.starts[rng.integers(len(song.starts))])
                start += int(rng.integers(max(self.segment_frames - self.frames, 0) + 1))
                gain = float(rng.uniform(*self.gain_db))
                if rng.random() >= self.drop_prob:
                    crops[k], kinds[k], gains[k] = (
                        song.read(start - self.context, self.frames + 2 * self.context),
                        unlabeled[k],
                        10 ** (gain / 20),
                    )
            elif RESIDUAL in unlabeled.values() and k not in self.target_slots:
                continue  # the crop's residual stands for all the other stems
            elif not draw.dropped:
                audio = self.tracks[draw.track].read(stem, draw.start, self.frames)
                stems[k, :, : audio.shape[1]] = audio * np.float32(10 ** (draw.gain_db / 20))
        return tuple(map(torch.from_numpy, (stems, crops, kinds, gains)))


# --- the run ------------------------------------------------------------------------------------------


class FinetuneRun(Run):
    """A :class:`Run` that starts from a pre-trained model and remixes teacher-labeled unlabeled crops."""

    config: FinetuneConfig

    def __init__(
        self,
        config: FinetuneConfig,
        log: Callable[[str], None] = print,
        pretrained: LoadedModel | None = None,
    ) -> None:
        if not 0 <= config.unlabeled_ratio <= 1:
            raise TrainError(f"--unlabeled-ratio must be between 0 and 1, not {config.unlabeled_ratio:g}")
        if not config.clean_db > 0:
            raise TrainError(f"--clean-db must be positive, not {config.clean_db:g}")
        self.pretrained = pretrained or load_pretrained(config.model)
        if (
            tuple(self.pretrained.stems) != config.model_stems
            or self.pretrained.card.architecture != config.arch
        ):
            raise TrainError(
                f"--model: {self.pretrained.name} is a {self.pretrained.card.architecture} separating "
                f"{', '.join(self.pretrained.stems)}; the run is set up for {config.arch} and "
                f"{', '.join(config.model_stems)}"
            )
        self.generation = 0
        self.counts = torch.zeros(2, 3, dtype=torch.int64)  # [TARGET/RESIDUAL slot, class] this epoch
        self.epoch_counts = self.counts.clone()
        self.resumed = False
        # The teacher's windows (a crop plus teacher_context frames), needed by _training_data.
        rate, crop = self.pretrained.sample_rate, config.crop_seconds
        teacher_window = config.teacher_window or crop
        self.teacher_context = round(teacher_window * rate) - round(crop * rate)
        self.teacher_views = len(view_offsets(self.teacher_context, config.teacher_views))
        super().__init__(config, log)
        self.teacher_dir = config.out / "teachers"
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        model_stems = config.model_stems
        self.teacher_index = torch.tensor(
            [model_stems.index(s) if s in model_stems else 0 for s in config.dataset_stems],
            device=self.device,
        )
        if self.ranks.main and self.teacher_context:
            views = self.teacher_views
            self.log(
                f"the teacher labels each unlabeled crop of {config.crop_seconds:g} s through {views} "
                f"window{'s' if views > 1 else ''} of {teacher_window:g} s"
                + (", its estimates averaged" if views > 1 else "")
            )
        if self.resumed:
            self._load_teacher()
        else:
            self._start()

    # -- where the network and the data come from --

    def _model_config(self) -> Any:
        return self.pretrained.model.config

    def _network(self, model_config: Any) -> torch.nn.Module:
        return copy.deepcopy(self.pretrained.model).train().requires_grad_(True)

    def _training_data(self, tracks: list[Track], index: SalientIndex | None) -> EpochDataset:
        config, first = self.config, tracks[0]

        def prepare() -> list[UnlabeledSong]:
            return prepare_unlabeled(
                config.unlabeled,
                config.out / "unlabeled",
                self.pretrained.sample_rate,
                first.channels,
                config.sad_seconds,
                config.sad_quantile,
                self.log if self.ranks.main else (lambda text: None),
            )

        songs = prepare() if self.ranks.main else None
        if self.ranks.world > 1:
            dist.barrier()  # rank 0 decoded the songs; the others read its index
            songs = songs or prepare()
        assert songs is not None  # (every rank has them: a lone process is rank 0)
        return FinetuneDataset(
            tracks,
            config.dataset_stems,
            config.crop_seconds,
            config.epoch_size,
            config.seed,
            songs=songs,
            target=config.target,
            ratio=config.unlabeled_ratio,
            context=self.teacher_context,
            index=index,
            gain_db=(-config.gain_db, config.gain_db),
            drop_prob=config.drop_prob,
        )

    # -- teachers --

    def teacher_path(self, generation: int) -> Path:
        return self.teacher_dir / f"gen-{generation}.safetensors"

    def _start(self) -> None:
        """Generation 0: the given model, its validation score the first best; saved before any step."""
        score = broadcast_from_main(self.validate() if self.ranks.main else 0.0, self.ranks, self.device)
        self.schedule.best = score
        if self.ranks.main:
            self._save_teacher(score)
            save_checkpoint(self.model, self.config.out / "best.safetensors", epoch=0, generation=0)
            valid = score if self.valid_tracks else None
            record = {"epoch": 0, "global_step": 0, "valid_usdr": valid, "best": True, "teacher": 0}
            append_record(self.config.out / "log.jsonl", record)
            if self.valid_tracks:
                self.log(f"pre-trained model {self.pretrained.name}: valid uSDR {score:.2f} dB (teacher 0)")
            else:
                self.log("no validation tracks: the teacher stays the pre-trained model")
        self.save()

    def _save_teacher(self, score: float) -> None:
        """teachers/gen-K.safetensors (the run's own copy; best.safetensors is the export)."""
        self.teacher_dir.mkdir(exist_ok=True)
        extra = {"epoch": self.epoch, "generation": self.generation, "valid_usdr": score}
        save_checkpoint(self.teacher, self.teacher_path(self.generation), **extra)

    def _load_teacher(self) -> None:
        path = self.teacher_path(self.generation)
        try:
            weights = load_model(path, progress=False).model.state_dict()
            self.teacher.load_state_dict(weights)
        except (WeightsError, RuntimeError) as exc:
            raise TrainError(f"--resume: teacher generation {self.generation}: {exc}") from None
        self.log(f"teacher generation {self.generation} from {path}")

    def validate(self) -> float:
        """As train's, but with no validation set every epoch counts as worse than the pre-trained model:
        no evidence, no new teacher (and best.safetensors stays the pre-trained model)."""
        return super().validate() if self.valid_tracks else -float(self.global_step)

    def end_epoch(self, improved: bool, score: float) -> None:
        if self.ranks.world > 1:
            dist.all_reduce(self.counts)
        self.epoch_counts, self.counts = self.counts, torch.zeros_like(self.counts)
        if not improved:
            return
        self.teacher.load_state_dict(self.model.state_dict())  # self-boosting: the student is the teacher
        self.generation += 1
        if self.ranks.main:
            self._save_teacher(score)
            self.log(
                f"teacher generation {self.generation}: the student of epoch {self.epoch} ({score:.2f} dB)"
            )

    def export_metadata(self) -> dict[str, Any]:
        return {"generation": self.generation}  # best.safetensors: the teacher of this generation

    def log_fields(self) -> dict[str, Any]:
        counts = self.epoch_counts.tolist()
        return {
            "teacher": self.generation,
            "unlabeled_targets": dict(zip(CLASS_NAMES, counts[0], strict=True)),
            "unlabeled_residuals": dict(zip(CLASS_NAMES, counts[1], strict=True)),
        }

    # -- checkpoints --

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "teacher_generation": self.generation, "unlabeled_counts": self.counts}

    def _resume(self) -> dict[str, Any]:
        state = super()._resume()
        if "teacher_generation" not in state:
            raise TrainError(f"--resume: {self.last_path} is a train run, not a finetune run")
        self.generation = int(state["teacher_generation"])
        self.counts = state["unlabeled_counts"].to(torch.int64)
        self.resumed = True
        return state

    def save(self) -> None:
        super().save()
        if self.ranks.main and self.teacher_dir.is_dir():  # last.pt names this generation: older ones can go
            for path in self.teacher_dir.glob("gen-*.safetensors"):
                if path != self.teacher_path(self.generation):
                    path.unlink(missing_ok=True)

    # -- training --

    def remix(
        self, stems: torch.Tensor, crops: torch.Tensor, kinds: torch.Tensor, gains: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of :class:`FinetuneDataset` items -> (mixture [B, C, T], targets [B, S, C, T]).

        The teacher labels the unlabeled crops (:func:`teacher_sources`); then the remix's sum and rescale.
        """
        stems, crops, kinds, gains = (
            t.to(self.device, non_blocking=True) for t in (stems, crops, kinds, gains)
        )
        where = (kinds > LABELED).nonzero(as_tuple=True)
        if len(where[0]):
            signals, classes = teacher_sources(
                self.teacher,
                crops[where],
                self.teacher_index[where[1]],
                kinds[where],
                self.config.clean_db,
                self.teacher_context,
                self.teacher_views,
                batch=len(stems),  # never more at once than a training batch
                bf16=self.precision == "bf16",
            )
            stems[where] = signals * gains[where][:, None, None]
            pairs = (kinds[where] - 1) * 3 + classes
            self.counts += torch.bincount(pairs, minlength=6).view(2, 3).cpu()
        mixture = stems.sum(1)
        peak = torch.maximum(mixture.abs().flatten(1).amax(1), stems.abs().flatten(1).amax(1)).clamp(min=1)
        stems = stems / peak[:, None, None, None]
        return stems.sum(1), stems

    def train_step(self, *batch: torch.Tensor) -> float:  # type: ignore[override]
        return super().train_step(*self.remix(*batch))


def finetune(
    config: FinetuneConfig, log: Callable[[str], None] = print, pretrained: LoadedModel | None = None
) -> Path:
    """Fine-tune (or resume); returns the run folder (last.pt, best.safetensors, teachers/, log.jsonl)."""
    return train(config, log, lambda c, lg: FinetuneRun(c, lg, pretrained))  # type: ignore[arg-type]
