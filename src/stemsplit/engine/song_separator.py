"""What every separator does with songs (:class:`SongSeparator`, the base of
:class:`~stemsplit.engine.separator.Separator` and :class:`~stemsplit.engine.ensemble.Ensemble`):
audio in memory or a song's file in, its stems out, block by block, so that memory does not grow
with the song's length; and the helpers of that (the song's statistics, arrays as audio, decoding
ahead in a thread)."""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio.decode import read_blocks, unplayable_sample
from ..audio.downmix import downmix_to_stereo
from ..audio.info import AudioInfo
from ..output.plan import DEFAULT_FILENAME, OutputOptions, SongOutputs
from ..output.writer import StemWriter
from .request import StemChoice, prepare
from .settings import (
    MAX_CHANNELS,
    RESIDUAL,
    SeparationError,
    check_sample_rate,
)

__all__ = ["SeparationResult", "SongSeparator", "as_audio_array", "song_stats"]

READ_BLOCK_SECONDS = 10.0

# Callback for progress events: a dict with an "event" key (see Separator.separate_file).
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class SeparationResult:
    """What :meth:`Separator.separate_file` did."""

    source: Path
    outputs: dict[str, Path]
    duration: float  # of the song, in seconds
    windows: int
    rescaled_by: float = 1.0  # common gain applied to integer outputs (1.0 = none)
    residual_db: float | None = None  # exact=True: residual level relative to the mixture


def song_stats(blocks: Iterable[np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation of a song's mono mix, from [n, C] blocks (one streaming pass)."""
    count, total, squares = 0, 0.0, 0.0
    for block in blocks:
        mono = block.mean(axis=1, dtype=np.float64)
        count, total, squares = count + len(mono), total + mono.sum(), squares + np.square(mono).sum()
    mean = total / max(count, 1)
    std = math.sqrt(max(squares / max(count, 1) - mean**2, 0.0))
    return float(mean), float(std) if std > 0 else 1.0


def as_audio_array(audio: np.ndarray | torch.Tensor, fold_surround: bool = False) -> np.ndarray:
    """Audio from the Python API -> float32 [channels, samples], or :class:`SeparationError`.

    1-D is mono. Integer PCM is scaled by its type (int16 by 1/32768, uint8
    around 128, ...) to [-1, 1]. An array with more than :data:`MAX_CHANNELS`
    rows but few columns is taken for [samples, channels] and refused with a hint.
    More than two channels are refused, or with ``fold_surround`` (a mono
    network, which averages the channels anyway) folded to stereo as
    ``stemsplit speakers`` folds a file (:func:`.audio.downmix_to_stereo`).
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.dtype.kind in "iu":
        info = np.iinfo(audio.dtype)
        middle = (int(info.max) + 1) / 2 if info.kind == "u" else 0.0
        audio = (audio.astype(np.float64) - middle) / (int(info.max) + 1 - middle)
    elif audio.dtype.kind != "f":
        raise SeparationError(f"audio must be float or integer PCM samples, not {audio.dtype}")
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise SeparationError(f"expected audio [channels, samples], got shape {audio.shape}")
    channels, samples = audio.shape
    if channels > MAX_CHANNELS:
        hint = "; pass audio.T" if samples <= MAX_CHANNELS else ""
        raise SeparationError(
            f"audio of shape {audio.shape} has {channels} channels: expected [channels, samples]{hint}"
        )
    if channels > 2 and fold_surround:
        audio = downmix_to_stereo(audio.T.astype(np.float32)).T
    elif channels > 2:
        raise SeparationError(
            f"{channels} channels; stemsplit separates mono or stereo (fold down first, e.g. with "
            "stemsplit.audio.downmix_to_stereo(audio.T).T)"
        )
    assert isinstance(audio, np.ndarray)  # (a tensor was made an array above)
    audio = audio.astype(np.float32)
    if not np.isfinite(audio).all():
        raise SeparationError("audio contains NaN or infinite samples")
    return audio


def prefetch(iterator: Iterable, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead (decoding overlaps model work)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                items.put(item)
            items.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def _output(part: np.ndarray, index: dict[str, int], name: str) -> np.ndarray:
    """Output ``name`` [C, n] of a block [S + mixture, C, n]: a stem, ``no_X`` or the residual."""
    if name in index:
        return part[index[name]]
    if name == RESIDUAL:
        return part[-1] - part[:-1].sum(axis=0)
    return part[-1] - part[index[name[3:]]]


class SongSeparator:
    """What :class:`Separator` and :class:`stemsplit.engine.ensemble.Ensemble` share: audio in memory or a
    song's file in, its stems out.

    A subclass sets ``stems`` (output order), ``mono`` (its networks take one channel: the stems are
    mono) and ``progress``, and implements :meth:`_stream` (the input's blocks in, stem blocks out,
    frame for frame), :meth:`windows_for`, :meth:`check_input`, :meth:`residual_db` and
    :meth:`_needs_stats`.
    """

    stems: tuple[str, ...]
    mono: bool
    progress: ProgressCallback
    owner = "this model"  # what messages call it
    chosen: tuple[str, ...] | None = None  # the stems asked for when it was made (None: all)

    def _stream(
        self,
        blocks: Iterable[np.ndarray],
        rate: int,
        channels: int,
        frames: int,
        with_mixture: bool = False,
        stats: tuple[float, float] = (0.0, 1.0),
    ) -> Iterator[np.ndarray]:
        """[n, C] blocks at ``rate`` -> [S (+ 1 with ``with_mixture``: the input), C, n] float32 blocks."""
        raise NotImplementedError

    def windows_for(self, frames: int, rate: int) -> int:
        """Windows that separating ``frames`` frames at ``rate`` Hz runs (the progress events' total)."""
        raise NotImplementedError

    def check_input(self, info: AudioInfo, downmix: bool = False) -> None:
        raise NotImplementedError

    def residual_db(self) -> float | None:
        raise NotImplementedError

    def _needs_stats(self) -> bool:
        """Whether the song's mean and std are needed (a ``meanstd`` network): one more pass over it."""
        raise NotImplementedError

    # -- in-memory API -------------------------------------------------------------------------

    def separate(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> dict[str, np.ndarray]:
        """audio [channels, samples] at ``sample_rate`` -> {stem: [channels, samples]} at the same rate.

        Float samples are taken as they are; integer PCM is scaled to [-1, 1] by its type.
        """
        rate = check_sample_rate(sample_rate)
        if isinstance(audio, torch.Tensor):
            if (
                audio.device.type == "meta"
                or audio.layout != torch.strided  # sparse: a list of nonzero samples, not a signal
                or audio.is_complex()
                or audio.dtype == torch.bool
            ):
                sparse = "" if audio.layout == torch.strided else "sparse "
                kind = f"{sparse}{audio.dtype} tensor on {audio.device.type}"
                raise SeparationError(f"audio: a {kind} holds no samples stemsplit can take")
            if audio.is_floating_point() and audio.dtype != torch.float64:
                audio = audio.detach().float()  # bf16, fp16: numpy has no such type
        audio = as_audio_array(audio, fold_surround=self.mono)
        problem = unplayable_sample(audio.T)
        if problem is not None:
            raise SeparationError(f"audio: sample {problem[0]} {problem[1]}")
        blocks = [audio.T]
        stats = song_stats(blocks) if self._needs_stats() else (0.0, 1.0)
        parts = list(self._stream(blocks, rate, audio.shape[0], audio.shape[1], stats=stats))
        out = np.concatenate(parts, axis=-1)
        return {name: out[i] for i, name in enumerate(self.stems) if name in (self.chosen or self.stems)}

    # -- songs ---------------------------------------------------------------------------------

    def output_stems(
        self, stems: Iterable[str] | None = None, two_stems: str | None = None, residual: bool = False
    ) -> list[str]:
        """The stems to write (see :func:`choose_stems`), and with ``residual`` the mixture minus all of
        them (:data:`~stemsplit.engine.settings.RESIDUAL`)."""
        if stems is None and two_stems is None:
            stems = self.chosen
        return StemChoice(stems, two_stems, residual).resolve(self.stems, self.owner)

    def output_channels(self, channels: int) -> int:
        """Channels of the stems of a ``channels``-channel input: 1 for a mono network, else as many
        as the input (more than two folded to stereo)."""
        return 1 if self.mono else min(channels, 2)

    def song_blocks(
        self, info: AudioInfo, stems: Sequence[str], downmix: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Decode, separate and yield a song block by block: {stem: [frames, channels] float32}.

        ``stems`` are names from :meth:`output_stems` (``no_X`` is the mixture minus X,
        ``residual`` the mixture minus every stem).
        """
        block_frames = round(READ_BLOCK_SECONDS * info.sample_rate)

        def blocks() -> Iterator[np.ndarray]:
            for block in read_blocks(info, block_frames):
                if block.shape[1] != info.channels:  # replaced on disk since it was probed
                    raise SeparationError(f"{info.path}: changed while being separated; run again")
                yield downmix_to_stereo(block, info.layout) if info.channels > 2 else block

        stats = song_stats(blocks()) if self._needs_stats() else (0.0, 1.0)  # a first pass
        index = {name: i for i, name in enumerate(self.stems)}
        with_mixture = any(name not in index for name in stems)
        channels = min(info.channels, 2)
        for part in self._stream(
            prefetch(blocks()), info.sample_rate, channels, info.frames, with_mixture, stats
        ):
            yield {name: _output(part, index, name).T for name in stems}

    def separate_song(
        self, song: SongOutputs, info: AudioInfo, options: OutputOptions, downmix: bool = False
    ) -> SeparationResult:
        """Separate one planned song (see :func:`stemsplit.output.plan_outputs`) into its files."""
        self.check_input(info, downmix)
        channels = self.output_channels(info.channels)
        with StemWriter(song, options, info.sample_rate, channels) as writer:
            for stems in self.song_blocks(info, list(song.paths), downmix):
                writer.write(stems)
            gain = writer.commit()
        windows = self.windows_for(info.frames, info.sample_rate)
        return SeparationResult(info.path, dict(song.paths), info.seconds, windows, gain, self.residual_db())

    def separate_file(
        self,
        path: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        filename: str = DEFAULT_FILENAME,
        fmt: str = "wav",
        bit_depth: int | None = None,
        clip_mode: str = "rescale",
        stems: Iterable[str] | None = None,
        two_stems: str | None = None,
        overwrite: bool = False,
        downmix: bool = False,
        residual: bool = False,
        stream: int | None = None,
    ) -> SeparationResult:
        """Separate one file into ``out_dir`` (layout from ``filename``; see :mod:`stemsplit.output`).

        Everything is checked before the first window runs; the stems appear
        all together or not at all; existing files raise
        :class:`~stemsplit.output.OutputExistsError` unless ``overwrite``.
        Progress events: ``start`` (windows, seconds), ``windows`` (done, total).
        ``stream``: which audio stream of a file with several, from 1 (default:
        the file's default stream; see :func:`stemsplit.audio.probe`).
        """
        if stems is None and two_stems is None:
            stems = self.chosen
        request = prepare(
            [path],
            out_dir,
            output=OutputOptions(filename, fmt, bit_depth, clip_mode, overwrite),
            choice=StemChoice(stems, two_stems, residual),
            model_stems=self.stems,
            owner=self.owner,
            downmix=downmix,
            stream=stream,
        )  # the command line's pre-flight (stemsplit.engine.request)
        [song] = request.songs
        if song.problem is not None:
            raise song.problem
        assert song.info is not None  # (a song without a problem was probed)
        return self.separate_song(song.outputs, song.info, request.output, downmix)
