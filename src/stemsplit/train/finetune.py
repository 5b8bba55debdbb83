"""``stemsplit finetune``: BSRNN's semi-supervised fine-tuning with self-boosting (Luo & Yu, Sec. III, IV-B).

A model P trained on a labeled set L is fine-tuned on L plus a folder U of
unlabeled songs. P is both the source activity detector and the
pseudo-label generator (Sec. III-A, Fig. 2), for each target stem s:

- a crop of an unlabeled mixture (from its salient segments: the same energy
  SAD as the labeled stems, Sec. IV-B) goes through the teacher, which gives
  its estimate of s; the *residual* is the mixture minus that estimate;
- the estimate more than ``clean_db`` (30 dB) below the mixture: the crop is a
  **clean residual** (s is absent): the mixture itself is a residual signal,
  and s is silence;
- the residual more than ``clean_db`` below the mixture: the crop is a **clean
  target** (only s plays): the mixture itself is a target signal;
- otherwise the teacher's target and residual are **pseudo-labels**.

The decision is taken on the very crop an example uses (the paper speaks of
"a segment"), so it holds for the signal trained on. Those signals join the
labeled ones and go through the supervised remix (gains uniform in
±``gain_db``, each source dropped with ``drop_prob``, sum, rescale when a peak
exceeds 1). Self-boosting: the student starts from P;
P's own validation score is the first best, and whenever the student beats the
best score it becomes the teacher (a new *generation*). Learning rate 1e-4;
everything else is ``stemsplit train``'s recipe for the model's family (this
is a :class:`~stemsplit.train.loop.Run`: resume, DDP, exports, log.jsonl).

How the signals make training examples (where this extends the paper):

- **One-target model** (BSRNN ``--target vocals``, the paper's setting): an
  example is one target plus one residual. The target comes from an unlabeled
  crop with probability ``unlabeled_ratio`` (its clean or pseudo target), else
  from a labeled track; the residual likewise from an unlabeled crop (its clean
  or pseudo residual) or, as in ``train``, from the other labeled stems, each
  from its own track. The paper gathers "all clean and pseudo signals" and
  resamples from them without giving a ratio of unlabeled to labeled signals;
  ``unlabeled_ratio`` (default 0.5) is that ratio, one flag.
- **Multi-stem model** (TS-BSMamba2, a BSRNN bag): every stem of the remix
  already comes from its own random track; stem s now comes, with
  probability ``unlabeled_ratio``, from an unlabeled crop instead: the crop
  itself when it is a clean target for s, the teacher's estimate of s when it
  is a pseudo-label, silence when it is a clean residual for s (s is known to
  be absent: the same as a dropped stem). The residual of s is the sum of
  the other stems of the example, as in the supervised remix. Each unlabeled
  stem is its own crop, so an example may mix several unlabeled songs.

Pseudo-labels are computed **on the fly**, on the training device, batched
inside the training step (a frozen copy of the network runs the crops of a
batch in one no-grad pass), not cached per teacher generation. Why:

- the teacher changes at every new best epoch (the paper replaces it
  "whenever" the student is better), and a cache would have to re-separate
  all of U at each generation before training goes on: for 1,000 songs of 4
  minutes, 67 hours of audio per generation (400 hours of windows with the
  3 s / 0.5 s protocol), while one epoch of 100k examples separates on the
  fly 100k x 1.8 crops of 3 s (150 hours): the same order, spread over the
  epoch, and each new teacher is used from its first step;
- a cache of the 4 stems of 1,000 songs of 4 minutes, 44.1 kHz stereo, is
  169 GB per generation as 16-bit PCM (roughly 100 GB as FLAC), besides the
  mixtures; on the fly keeps only the mixtures;
- the paper's own pipeline is on the fly (Sec. IV-B: "the on-the-fly
  simulation pipeline").

How the teacher hears a crop (``teacher_window``, ``teacher_views``; ours): by
default the crop alone, as in the paper, whose 3 s crops are the 3 s windows its
models separate songs in. A shorter crop (the demo's CPU recipe trains on 1.5 s)
is labelled worse than inference would separate the same stretch of song, both
for lack of context and for lack of the overlap-add's averaging: it can go
through ``teacher_views`` windows of ``teacher_window`` seconds, each holding the
whole crop (shifted from the crop at a window's end to the crop at its start),
their estimates of the crop averaged. Measured on 400 crops of 1.5 s from 20
FluidR3 songs with the shipped demo as teacher (``benchmarks/teacher_labels.py``;
label uSDR against the real stems, mean of 4 stems and of crops): the crop alone
1.64 dB; one 3 s window 1.74; two of 2.25 s 1.97; two of 3 s 1.99; three of 3 s
2.08; for comparison, the song separated whole with the 3 s / 0.5 s protocol and cut
at the crop: 1.93 against 1.38 for the crop alone on 240 other crops. Each view
is one more teacher pass on a longer window: with three 3 s views a demo
fine-tuning run made 0.1-0.2 examples a second on a shared 2-core CPU against
0.5 for the same run without unlabeled crops, and whether the student gains
from the better labels is not yet measured, so the default stays the paper's.

The cost: one teacher forward pass (inference only, about a third of a
training step's cost per crop) for each unlabeled source of an example:
``unlabeled_ratio × (1 - drop_prob)`` of the sources, 1.8 crops per example for
a 4-stem model at the defaults; and a second copy of the weights on the device
(TS-BSMamba2: 35.5 M parameters, 142 MB in float32; the BSRNN bag: 4 × 25 M,
about 410 MB), with the activations of the teacher's pass, which is run in
batches no larger than the training batch.

The unlabeled songs are decoded once into ``OUT/unlabeled/`` (any format
:mod:`stemsplit.audio` reads; resampled to the model's rate, folded to the
labeled set's channel count, scaled down if a peak exceeds 1, stored as 16-bit
FLAC so that crops can be read at random offsets; a song's salient segments
in ``OUT/unlabeled/index.json``). For 1,000 songs of 4 minutes that is 42 GB
of 16-bit PCM, about 25-30 GB as FLAC (music usually compresses to 55-70%),
written once and reused by ``--resume``; the training process holds no audio
beyond its batches (decoding holds one song at a time: 85 MB for 4 minutes).

Files: ``OUT/teachers/gen-K.safetensors`` is teacher generation K
(safetensors, loadable by :func:`stemsplit.weights.load_model`; generation 0
is the given model), ``best.safetensors`` always equals the current teacher.
``last.pt`` records the generation, so ``--resume`` restores the same teacher
and best score; a generation's file is deleted only once ``last.pt`` names a
newer one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist

from ..audio.decode import read_blocks
from ..audio.downmix import downmix_to_stereo
from ..audio.info import AudioError, sf_name
from ..audio.probing import probe
from ..audio.resample import BlockResampler
from ..card import MUSIC_STEMS
from ..datasets.musdb_layout import DatasetError
from ..files import write_atomically
from ..weights import LoadedModel, WeightsError, load_model, save_checkpoint
from .config import FinetuneConfig
from .data import RemixDataset, salient_segments
from .loop import Run, TrainError, train

__all__ = [
    "CLEAN_RESIDUAL",
    "CLEAN_TARGET",
    "LABELED",
    "PSEUDO",
    "RESIDUAL",
    "TARGET",
    "FinetuneDataset",
    "FinetuneRun",
    "UnlabeledSong",
    "classify",
    "configure",
    "finetune",
    "load_pretrained",
    "prepare_unlabeled",
    "sources_from",
    "teacher_estimates",
    "teacher_sources",
    "view_offsets",
]

# What the teacher made of an unlabeled crop, for one target stem (Sec. III-A).
PSEUDO, CLEAN_TARGET, CLEAN_RESIDUAL = 0, 1, 2
CLASS_NAMES = ("pseudo", "clean_target", "clean_residual")
# What a slot of an example takes from its unlabeled crop: nothing (labeled), the target, the residual.
LABELED, TARGET, RESIDUAL = 0, 1, 2
POOL_VERSION = 1
INDEX_SAVE_SECONDS = 60.0  # while decoding, the index is saved this often (a restart skips what is done)


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


# --- the unlabeled songs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UnlabeledSong:
    """One unlabeled song, decoded: ``file`` at the model's rate and channel count, its salient segments."""

    source: str  # the user's file
    file: Path  # our decoded copy (16-bit FLAC)
    frames: int
    starts: np.ndarray  # start frames of the salient segments

    def read(self, start: int, frames: int) -> np.ndarray:
        """``frames`` frames from ``start``, float32 [channels, frames], zero-padded outside the song
        (``start`` may be negative: the teacher's context before a crop at the song's start)."""
        before = min(max(-start, 0), frames)
        try:
            audio, _ = sf.read(
                sf_name(self.file),
                start=start + before,
                frames=frames - before,
                dtype="float32",
                always_2d=True,
            )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise DatasetError(
                f"{self.file}: cannot read ({exc}); delete the folder to decode again"
            ) from None
        out = np.zeros((audio.shape[1], frames), np.float32)
        out[:, before : before + len(audio)] = audio.T
        return out


def decode(path: Path, sample_rate: int, channels: int) -> np.ndarray:
    """A whole file as float32 [channels, frames] at ``sample_rate``: any format stemsplit reads.

    More than two channels are folded to stereo as the engine does; stereo to
    mono by averaging, mono to stereo by copying. Scaled down when a peak exceeds 1.
    """
    info = probe(path)
    resample = BlockResampler(info.sample_rate, sample_rate, min(info.channels, 2))
    pieces = []
    for block in read_blocks(info, 1 << 18):
        block = downmix_to_stereo(block, info.layout) if info.channels > 2 else block
        pieces.append(resample(block))
    pieces.append(resample.flush(min(info.channels, 2)))
    audio = np.concatenate(pieces).T
    if audio.shape[0] != channels:
        audio = audio.mean(axis=0, keepdims=True) if channels == 1 else np.repeat(audio, channels, axis=0)
    peak = float(np.abs(audio).max(initial=0.0))
    return np.ascontiguousarray(audio / peak if peak > 1 else audio, dtype=np.float32)


def prepare_unlabeled(
    folder: Path,
    into: Path,
    sample_rate: int,
    channels: int,
    segment_seconds: float,
    quantile: float,
    log: Callable[[str], None] = print,
) -> list[UnlabeledSong]:
    """Every audio file under ``folder`` (recursive), decoded into ``into`` once, with its salient segments.

    Files unchanged since an earlier call (same path, size and modification
    time, same settings) are not decoded again. A file that cannot be read is
    skipped with a line in the log, as is one without a salient segment; none
    usable at all is a :class:`TrainError`.
    """
    from ..batch.songs import BatchError, find_songs

    try:
        found = find_songs([Path(folder)], into.parent)
    except BatchError as exc:
        raise TrainError(f"--unlabeled: {exc}") from None
    for note in found.notes:
        log(f"--unlabeled: {note}")
    if not found.songs:  # before anything is written into the run folder
        raise TrainError(f"--unlabeled: {folder}: no audio files in it or below it")
    settings = {
        "version": POOL_VERSION,
        "sample_rate": sample_rate,
        "channels": channels,
        "segment_seconds": segment_seconds,
        "quantile": quantile,
    }
    index_path = into / "index.json"
    known: dict[str, dict[str, Any]] = {}
    ours: set[str] = set()  # the files earlier calls decoded (the folder may hold the user's own too)
    try:
        saved = json.loads(index_path.read_text())
        ours = set(saved.get("files", [])) | {f"{entry['key'][:20]}.flac" for entry in saved["songs"]}
        if saved.get("settings") == settings:
            known = {entry["key"]: entry for entry in saved["songs"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: decode again
    into.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    songs = []

    def save_index(listed: list[dict[str, Any]], files: set[str]) -> None:
        text = json.dumps({"settings": settings, "songs": listed, "files": sorted(files)})
        write_atomically(index_path, lambda temp: temp.write_text(text))

    saved_at = time.monotonic()
    for k, song in enumerate(found.songs):
        if time.monotonic() - saved_at > INDEX_SAVE_SECONDS:  # an interrupted call keeps what it decoded
            done = {e["key"] for e in entries}
            save_index(entries + [e for key, e in known.items() if key not in done], ours)
            saved_at = time.monotonic()
        try:
            stat = song.path.stat()
        except OSError as exc:  # removed since the folder was walked
            log(f"--unlabeled: skipped {song.path} ({exc.strerror or exc})")
            continue
        key = hashlib.sha256(
            f"{song.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        ).hexdigest()
        file = into / f"{key[:20]}.flac"
        entry = known.get(key)
        if entry is None or not file.is_file():
            try:
                audio = decode(song.path, sample_rate, channels)
            except AudioError as exc:
                log(f"--unlabeled: skipped {exc}")
                continue
            starts = salient_segments(audio, sample_rate, segment_seconds, quantile=quantile)
            ours.add(file.name)  # before writing: a half-written file is ours to remove too
            try:
                write_atomically(
                    file,
                    lambda temp, a=audio: sf.write(sf_name(temp), a.T, sample_rate, "PCM_16", format="FLAC"),
                )
            except (OSError, sf.LibsndfileError, RuntimeError) as exc:  # a full or read-only disk
                raise TrainError(f"{file}: cannot write the decoded song ({exc})") from None
            entry = {
                "key": key,
                "source": str(song.path),
                "frames": audio.shape[1],
                "starts": starts.tolist(),
            }
            log(f"unlabeled {k + 1}/{len(found.songs)}: {song.path} ({len(starts)} salient segments)")
        entries.append(entry)
        if entry["starts"]:
            songs.append(UnlabeledSong(entry["source"], file, entry["frames"], np.asarray(entry["starts"])))
        else:
            log(f"--unlabeled: skipped {song.path} (no salient {segment_seconds:g} s segment)")
    wanted = {f"{e['key'][:20]}.flac" for e in entries}
    save_index(entries, wanted)
    for stale in ours - wanted:  # decoded earlier, for songs removed from the folder or changed since
        (into / stale).unlink(missing_ok=True)
    if not songs:
        raise TrainError(
            f"--unlabeled: {folder}: no usable songs (audio files with at least one salient "
            f"{segment_seconds:g} s segment)"
        )
    return songs


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


def classify(mixture: torch.Tensor, target: torch.Tensor, clean_db: float = 30.0) -> torch.Tensor:
    """Sec. III-A's energy test of the teacher's ``target`` estimate against the ``mixture``: [N] classes.

    mixture, target: [N, C, T]. CLEAN_RESIDUAL when the target is more than
    ``clean_db`` below the mixture, CLEAN_TARGET when the residual (mixture -
    target) is, PSEUDO otherwise (a silent crop too).
    """
    energy = mixture.float().square().sum(dim=(1, 2))
    below = 10 ** (clean_db / 10)
    absent = energy > below * target.float().square().sum(dim=(1, 2))
    alone = energy > below * (mixture.float() - target.float()).square().sum(dim=(1, 2))
    classes = torch.full_like(energy, PSEUDO, dtype=torch.int64)
    classes[alone] = CLEAN_TARGET
    classes[absent] = CLEAN_RESIDUAL
    return classes


def sources_from(
    mixture: torch.Tensor, target: torch.Tensor, kinds: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """The signal each crop gives its slot: [N, C, T] from mixtures and teacher targets [N, C, T].

    A TARGET slot takes the mixture (clean target), silence (clean residual) or
    the teacher's target (pseudo); a RESIDUAL slot takes silence, the mixture,
    or the mixture minus the teacher's target.
    """
    wants_target = (kinds == TARGET)[:, None, None]
    pseudo = torch.where(wants_target, target, mixture - target)
    clean = torch.where(wants_target, mixture, torch.zeros_like(mixture))
    silent = torch.where(wants_target, torch.zeros_like(mixture), mixture)
    out = torch.where((classes == CLEAN_TARGET)[:, None, None], clean, pseudo)
    return torch.where((classes == CLEAN_RESIDUAL)[:, None, None], silent, out)


def view_offsets(context: int, views: int) -> list[int]:
    """Where each of ``views`` teacher windows starts in a crop's region (the crop with ``context``
    frames each side; a window is the crop plus ``context``): spread evenly from the crop at a
    window's end to the crop at its start; one view is centred. No context: one view, the crop."""
    if context == 0 or views == 1:
        return [context // 2]
    return [round(k * context / (views - 1)) for k in range(views)]


def teacher_estimates(
    teacher: torch.nn.Module,
    regions: torch.Tensor,
    outputs: torch.Tensor | None = None,
    context: int = 0,
    views: int = 1,
    batch: int = 16,
    bf16: bool = False,
) -> torch.Tensor:
    """The teacher's estimate of the middle of N regions [N, C, T + 2 * context]: [N, C, T].

    Each region is a crop with ``context`` frames of its song on each side. The teacher separates
    :func:`view_offsets`' windows of T + context frames (``batch`` at a time, no gradients, its last
    stage) and the crop's part of each is averaged; region n's estimate is its output ``outputs[n]``
    (None: every output, [N, S, C, T]).
    """
    frames = regions.shape[-1] - 2 * context
    total: torch.Tensor | float = 0.0
    offsets = view_offsets(context, views)
    with torch.no_grad(), torch.autocast(regions.device.type, dtype=torch.bfloat16, enabled=bf16):
        for offset in offsets:
            windows = regions[..., offset : offset + frames + context]
            estimates = []
            for chunk in windows.split(max(1, batch)):
                out = teacher(chunk)
                estimates.append((out[-1] if isinstance(out, tuple) else out).float())
            crop_at = context - offset  # where the crop lies in this window
            total = total + torch.cat(estimates)[..., crop_at : crop_at + frames]
    estimate = total / len(offsets)
    return (
        estimate if outputs is None else estimate[torch.arange(len(regions), device=regions.device), outputs]
    )


def teacher_sources(
    teacher: torch.nn.Module,
    regions: torch.Tensor,
    outputs: torch.Tensor,
    kinds: torch.Tensor,
    clean_db: float = 30.0,
    context: int = 0,
    views: int = 1,
    batch: int = 16,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 2 for N unlabeled crops: (the signal each gives its slot [N, C, T], its class [N]).

    regions [N, C, T + 2 * context]: each crop with its context (see :func:`teacher_estimates`);
    crop n's estimate is the teacher's output ``outputs[n]``; ``kinds[n]`` says whether its slot
    wants the TARGET or the RESIDUAL (see :func:`sources_from`).
    """
    estimate = teacher_estimates(teacher, regions, outputs, context, views, batch, bf16)
    crops = regions[..., context : regions.shape[-1] - context]
    classes = classify(crops, estimate, clean_db)
    return sources_from(crops, estimate, kinds, classes), classes


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
            [model_stems.index(s) if s in model_stems else 0 for s in config.stems], device=self.device
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

    def _training_data(self, index: Any) -> torch.utils.data.Dataset:
        config, first = self.config, self.train_tracks[0]

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
        return FinetuneDataset(
            self.train_tracks,
            config.stems,
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
        score = self._broadcast(self.validate() if self.ranks.main else 0.0)
        self.schedule.best = score
        if self.ranks.main:
            self._save_teacher(score)
            save_checkpoint(self.model, self.config.out / "best.safetensors", epoch=0, generation=0)
            valid = score if self.valid_tracks else None
            record = {"epoch": 0, "global_step": 0, "valid_usdr": valid, "best": True, "teacher": 0}
            with open(self.config.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
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
