"""The separation engine: windows, batches, overlap-add, streaming. No CLI code here.

A song is cut into windows of ``window`` seconds every ``hop`` seconds (the
paper's protocol: 3 s every 0.5 s), with ``window - hop`` of zeros before and
after it so every sample is covered by the same number of windows. Windows go
through the model in batches; their outputs are summed where they overlap and
divided by the number of windows covering each sample (plain overlap-add
averaging, as in BSRNN's chunked evaluation). An identity model therefore gives
back its input exactly, for any length.

Everything streams: :class:`StreamingOverlapAdd` takes the song block by
block and hands back finished output as soon as no later window can touch it,
so memory does not grow with the song's length.

Speaker separation (a card with ``permutation_invariant``): a network trained
with a permutation-invariant loss gives each window's talkers in an order of
its own, so before a window is added its outputs are reordered to match what
the earlier windows left on the overlap (the permutation with the largest
summed inner product with the output so far there, i.e. the least-squares
match). Without that, talkers would swap files every few seconds. Speech
networks are mono (``card.channels == 1``): the input's channels are averaged,
and the talkers come out mono.

Python API::

    from stemsplit.separate import Separator
    sep = Separator("path/to/model.safetensors", device="auto")
    stems = sep.separate(audio, sample_rate)          # audio [channels, samples]
    sep.separate_file("song.flac", "stems/")          # stems/song/vocals.wav, ...

Files: :meth:`Separator.separate_file` is a short composition of the engine
(:meth:`Separator.song_blocks`: audio blocks in, named stem blocks out) and
the output side (:mod:`stemsplit.output`: the plan and the all-or-nothing
:class:`~stemsplit.output.StemWriter`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio.decode import read_blocks, unplayable_sample
from .audio.downmix import downmix_to_stereo
from .audio.info import AudioInfo
from .audio.resample import BlockResampler
from .card import LIGHT_HOP, NORMALIZATIONS, ModelCard
from .model.stft import istft, stft
from .output.plan import DEFAULT_FILENAME, OutputOptions, SongOutputs
from .output.writer import StemWriter
from .request import EngineSettings, StemChoice, prepare, stem_names
from .runtime import pick_device, resolve_precision
from .settings import (
    MAX_CHANNELS,
    RESIDUAL,
    SeparationError,
    check_sample_rate,
    check_settings,
    choose_stems,
    shown,
    task_mismatch,
)
from .weights import load_model
from .weights.msst import MSSTConfig

__all__ = [
    "SeparationError",
    "SeparationResult",
    "Separator",
    "SongSeparator",
    "StreamingOverlapAdd",
    "WindowPool",
    "as_audio_array",
    "check_sample_rate",
    "check_settings",
    "choose_stems",
    "pick_device",
    "share_residual",
    "song_stats",
    "window_count",
]

READ_BLOCK_SECONDS = 10.0

# Callback for progress events: a dict with an "event" key (see Separator.separate_file).
ProgressCallback = Callable[[dict[str, Any]], None]


# --- overlap-add -------------------------------------------------------------------------------


def window_count(samples: int, window: int, hop: int) -> int:
    """Windows needed for ``samples`` samples: starts every ``hop`` until past the last sample."""
    return (window - hop + samples - 1) // hop + 1


class StreamingOverlapAdd:
    """Cut a stream into overlapping windows, run them in batches, overlap-add the results.

    Args:
        run_batch: windows [n, channels, window] -> outputs [n, S, channels, window].
        window, hop: in samples (hop <= window).
        batch_size: windows per call of ``run_batch``.
        align_stems: how many leading outputs come in an arbitrary order per window (a
            permutation-invariant network's talkers; 0 or 1: none). Each window's first
            ``align_stems`` outputs are permuted to best match the output accumulated so far on
            the part of the window that earlier windows covered (largest summed inner product over
            the ``align_stems!`` permutations) before they are added; the outputs after them (the
            mixture carried along for a residual) stay where they are.

    Feed input with :meth:`push` ([channels, n] tensors) and end with
    :meth:`finish`; both yield finished output [S, channels, m], in order, that
    together have exactly the input's length.
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        window: int,
        hop: int,
        batch_size: int = 1,
        align_stems: int = 0,
    ) -> None:
        if not 0 < hop <= window:
            raise ValueError(f"hop ({hop}) must be in (0, window ({window})]")
        self.run_batch = run_batch
        # Every order of the talkers, as rows of indices (row 0 is the identity: kept on ties).
        self._permutations = (
            torch.tensor(list(itertools.permutations(range(align_stems)))) if align_stems > 1 else None
        )
        self.window, self.hop, self.batch_size = window, hop, max(1, batch_size)
        self.lead = window - hop  # zeros before the song (and at least as many after)
        self.samples = 0  # real input samples received so far
        self.windows_done = 0
        self._input: torch.Tensor | None = None  # padded input from index _input_start
        self._input_start = 0
        self._sum: torch.Tensor | None = None  # [S, C, n] window outputs summed, from _out_start
        self._count: torch.Tensor | None = None  # [n] windows covering each sample
        self._out_start = 0
        self._emitted = self.lead  # padded index up to which output was handed back

    def windows_for(self, samples: int) -> int:
        """Number of windows a song of ``samples`` samples takes."""
        return window_count(samples, self.window, self.hop)

    def push(self, block: torch.Tensor) -> Iterator[torch.Tensor]:
        if self._input is None:
            self._input = block.new_zeros(block.shape[0], self.lead)
        self._input = torch.cat([self._input, block], dim=1)
        self.samples += block.shape[1]
        yield from self._run(final=False)

    def finish(self) -> Iterator[torch.Tensor]:
        if self._input is None or self.samples == 0:
            return
        total = self.windows_for(self.samples)
        needed = (total - 1) * self.hop + self.window - self._input_start
        missing = needed - self._input.shape[1]
        if missing > 0:
            self._input = torch.cat(
                [self._input, self._input.new_zeros(self._input.shape[0], missing)], dim=1
            )
        yield from self._run(final=True, total=total)

    def _run(self, final: bool, total: int | None = None) -> Iterator[torch.Tensor]:
        input_end = self._input_start + self._input.shape[1]
        while True:
            starts = []
            k = self.windows_done
            while len(starts) < self.batch_size and (total is None or k < total):
                start = k * self.hop
                if start + self.window > input_end:
                    break
                starts.append(start)
                k += 1
            if not starts or (len(starts) < self.batch_size and not final):
                return
            offsets = [s - self._input_start for s in starts]
            batch = torch.stack([self._input[:, o : o + self.window] for o in offsets])
            self._accumulate(starts, self.run_batch(batch))
            self.windows_done += len(starts)
            # Nothing before the next window's start will change any more.
            ready = self.windows_done * self.hop if not final or self.windows_done < total else math.inf
            yield from self._emit(ready, final)
            self._drop_input(self.windows_done * self.hop)

    def _accumulate(self, starts: list[int], outputs: torch.Tensor) -> None:
        end = starts[-1] + self.window
        if self._sum is None:
            self._sum = outputs.new_zeros(*outputs.shape[1:3], 0)
            self._count = outputs.new_zeros(0)
            self._out_start = starts[0]
        grow = end - (self._out_start + self._sum.shape[-1])
        if grow > 0:
            self._sum = torch.cat([self._sum, self._sum.new_zeros(*self._sum.shape[:2], grow)], dim=-1)
            self._count = torch.cat([self._count, self._count.new_zeros(grow)])
        for start, out in zip(starts, outputs, strict=True):
            o = start - self._out_start
            if self._permutations is not None:
                out = self._aligned(out, o)
            self._sum[..., o : o + self.window] += out
            self._count[o : o + self.window] += 1

    def _aligned(self, out: torch.Tensor, o: int) -> torch.Tensor:
        """``out`` [S, C, window] with its first stems reordered to match the output so far from ``o`` on.

        Windows come in order, so the part of this window that earlier ones covered is a prefix.
        """
        covered = int((self._count[o : o + self.window] > 0).sum())
        if covered == 0:
            return out
        n = self._permutations.shape[1]
        so_far = (self._sum[:n, ..., o : o + covered] / self._count[o : o + covered]).reshape(n, -1)
        scores = out[:n, ..., :covered].reshape(n, -1).double() @ so_far.double().T  # [new, so far]
        # Row p of the permutations puts new output p[j] in place j: its score is sum_j scores[p[j], j].
        totals = scores[self._permutations, torch.arange(n)].sum(dim=1)
        best = self._permutations[int(totals.argmax())]
        return torch.cat([out[best], out[n:]])

    def _emit(self, ready: float, final: bool) -> Iterator[torch.Tensor]:
        last_real = self.lead + self.samples  # padded index just past the last real sample
        stop = int(min(ready, last_real, self._out_start + self._sum.shape[-1]))
        if stop <= self._emitted:
            return
        a, b = self._emitted - self._out_start, stop - self._out_start
        yield self._sum[..., a:b] / self._count[a:b]
        self._emitted = stop
        keep = stop - self._out_start
        self._sum, self._count = self._sum[..., keep:], self._count[keep:]
        self._out_start = stop

    def _drop_input(self, before: int) -> None:
        drop = before - self._input_start
        if drop > 0:
            self._input = self._input[:, drop:]
            self._input_start = before


# Demucs's shift trick: the song is run again up to this much later against the window grid.
MAX_SHIFT_SECONDS = 0.5


def shift_delays(shifts: int, rate: int) -> list[int]:
    """The delays (samples) of ``shifts`` runs: evenly spread over [0, 0.5 s), the first 0.

    Demucs draws each at random from [0, 0.5 s]; spread evenly they average the same way, and two
    runs of the same song give the same stems.
    """
    return [round(k * MAX_SHIFT_SECONDS * rate / shifts) for k in range(shifts)]


class ShiftedOverlapAdd:
    """:class:`StreamingOverlapAdd` once per delay, the song that many samples later against the window
    grid each time, the outputs lined up again and averaged (Demucs's ``shifts``: the windows fall at
    other places in the music, which makes the network closer to time-equivariant; Demucs reports up
    to 0.2 dB SDR).

    The same interface as :class:`StreamingOverlapAdd` (``push``, ``finish``, ``windows_done``,
    ``windows_for``); each run keeps only what it has given ahead of the slowest, so memory stays flat.
    """

    def __init__(self, make: Callable[[], StreamingOverlapAdd], delays: Sequence[int]) -> None:
        self.runs = [make() for _ in delays]
        self.delays = list(delays)
        self._skip = list(delays)  # output samples each run still drops (the silence put before the song)
        self._queues: list[collections.deque[torch.Tensor]] = [collections.deque() for _ in delays]
        self._started = False

    @property
    def windows_done(self) -> int:
        return sum(run.windows_done for run in self.runs)

    def windows_for(self, samples: int) -> int:
        return sum(run.windows_for(samples + d) for run, d in zip(self.runs, self.delays, strict=True))

    def push(self, block: torch.Tensor) -> Iterator[torch.Tensor]:
        for index, (run, delay) in enumerate(zip(self.runs, self.delays, strict=True)):
            late = self._started or not delay
            for out in run.push(block if late else torch.cat([block.new_zeros(len(block), delay), block], 1)):
                self._take(index, out)
        self._started = True
        yield from self._averaged()

    def finish(self) -> Iterator[torch.Tensor]:
        for index, run in enumerate(self.runs):
            for out in run.finish():
                self._take(index, out)
        yield from self._averaged()

    def _take(self, index: int, out: torch.Tensor) -> None:
        drop = min(self._skip[index], out.shape[-1])
        self._skip[index] -= drop
        if out.shape[-1] > drop:
            self._queues[index].append(out[..., drop:])

    def _averaged(self) -> Iterator[torch.Tensor]:
        ready = min(sum(part.shape[-1] for part in queue) for queue in self._queues)
        if ready:
            yield sum(torch.cat(take_queued(queue, ready), dim=-1) for queue in self._queues) / len(self.runs)


def take_queued(queue: collections.deque[Any], count: int, axis: int = -1) -> list[Any]:
    """The first ``count`` entries along ``axis`` of the arrays (numpy or torch) queued, taken off the
    queue, as the pieces they were queued in (the last one cut, its rest put back)."""
    parts = []
    while count:
        head = queue.popleft()
        if head.shape[axis] > count:
            before = (slice(None),) * (axis % head.ndim)
            queue.appendleft(head[(*before, slice(count, None))])
            head = head[(*before, slice(None, count))]
        parts.append(head)
        count -= head.shape[axis]
    return parts


class WindowPool:
    """Windows of several songs, separated at once in threads, run through the network together.

    On a GPU a short song's windows fill a small part of a batch: the device waits while the song is
    decoded, written and the next one opened. With a pool, each song's thread (inside
    :meth:`song`) calls the pool in place of the network; a call waits until every song in flight has
    windows waiting, or ``max_windows`` are waiting, or ``patience`` seconds have passed, and then one
    thread runs the windows waiting (of one shape: a mono song's and a stereo song's are not mixed, up to
    ``max_windows``) in one call of ``forward`` and hands each song its part.

    Each window's stems depend on that window alone, so a song's stems are the same whichever windows
    share its batches, up to the float rounding of batched arithmetic (a batch of 8 may round differently
    from a batch of 1).
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        max_windows: int,
        patience: float = 0.05,
    ) -> None:
        self.forward, self.max_windows, self.patience = forward, max(1, max_windows), patience
        self._ready = threading.Condition()
        self._songs = 0  # songs in flight (threads inside song())
        self._waiting: list[_PooledCall] = []
        self._running = False

    @contextlib.contextmanager
    def song(self) -> Iterator[None]:
        """Run one song's separation inside this: the pool waits for its windows while it runs."""
        with self._ready:
            self._songs += 1
        try:
            yield
        finally:
            with self._ready:
                self._songs -= 1
                self._ready.notify_all()  # the others no longer wait for this song's windows

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [n, C, W] -> stems [n, S, C, W], run with other songs' windows."""
        call = _PooledCall(windows)
        deadline = time.monotonic() + self.patience
        with self._ready:
            self._waiting.append(call)
            self._ready.notify_all()
            while not call.finished:
                now = time.monotonic()
                if not self._running and self._waiting and self._full(now >= deadline):
                    batch = self._take()
                    self._running = True
                    self._ready.release()
                    try:
                        self._run(batch)
                    finally:
                        self._ready.acquire()
                        self._running = False
                        self._ready.notify_all()
                    continue
                self._ready.wait(timeout=max(deadline - now, 0.005))
        if call.error is not None:
            raise call.error
        return call.result

    def _full(self, waited: bool) -> bool:
        queued = sum(len(call.windows) for call in self._waiting)
        return waited or queued >= self.max_windows or len(self._waiting) >= self._songs

    def _take(self) -> list[_PooledCall]:
        """The calls to run now: the oldest, and the later ones with windows of its shape, to max_windows."""
        shape = self._waiting[0].windows.shape[1:]
        batch, kept, count = [], [], 0
        for call in self._waiting:
            if call.windows.shape[1:] != shape or (batch and count + len(call.windows) > self.max_windows):
                kept.append(call)
            else:
                batch.append(call)
                count += len(call.windows)
        self._waiting = kept
        return batch

    def _run(self, batch: list[_PooledCall]) -> None:
        try:
            outputs = self.forward(torch.cat([call.windows for call in batch]))
        except BaseException as exc:  # each song's thread raises it (CUDA out of memory: each halves)
            for call in batch:
                call.error, call.finished = exc, True
            return
        start = 0
        for call in batch:
            call.result, call.finished = outputs[start : start + len(call.windows)], True
            start += len(call.windows)


@dataclass(eq=False)  # each call is itself: a == on its tensors would compare them element by element
class _PooledCall:
    windows: torch.Tensor
    result: torch.Tensor | None = None
    error: BaseException | None = None
    finished: bool = False


def share_residual(
    mixture: torch.Tensor, stems: torch.Tensor, n_fft: int = 2048, hop: int = 512
) -> torch.Tensor:
    """Make stems sum exactly to the mixture, sharing the residual by magnitude in each STFT bin.

    mixture [n, C, L], stems [n, S, C, L] -> corrected stems. In every
    time-frequency bin the residual (mixture minus the sum of stems) is split
    among the stems in proportion to their magnitudes there, so a stem that is
    silent in a bin stays silent. Since the STFT is linear and inverts exactly,
    the corrected stems sum to the mixture in the waveform too.
    """
    n, s, c, length = stems.shape
    window = torch.hann_window(n_fft, device=stems.device, dtype=stems.dtype)
    stem_spec = stft(stems.reshape(-1, length), n_fft, hop, window)
    stem_spec = stem_spec.reshape(n, s, c, *stem_spec.shape[-2:])
    mix_spec = stft(mixture.reshape(-1, length), n_fft, hop, window).reshape(n, c, *stem_spec.shape[-2:])
    residual = mix_spec - stem_spec.sum(dim=1)
    magnitude = stem_spec.abs()
    share = magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(stems.dtype).tiny)
    # Bins where every stem is silent: share equally (the mixture is all residual there).
    share = torch.where(magnitude.sum(dim=1, keepdim=True) > 0, share, torch.full_like(share, 1 / s))
    corrected = stem_spec + share * residual[:, None]
    audio = istft(corrected.reshape(-1, *corrected.shape[-2:]), n_fft, hop, window, length)
    return audio.reshape(n, s, c, length)


# --- the separator -------------------------------------------------------------------------------


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
    """What :class:`Separator` and :class:`stemsplit.ensemble.Ensemble` share: audio in memory or a
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
        them (:data:`~stemsplit.settings.RESIDUAL`)."""
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
        )  # the command line's pre-flight (stemsplit.request)
        [song] = request.songs
        if song.problem is not None:
            raise song.problem
        return self.separate_song(song.outputs, song.info, request.output, downmix)


class Separator(SongSeparator):
    """Separate songs with any model stemsplit can load (TS-BSMamba2, BSRNN, ...).

    Args:
        model: a registry name, checkpoint path or URL (see :mod:`stemsplit.weights`),
            or a network with a ``card`` (see :mod:`stemsplit.card`; ``stems``,
            ``sample_rate`` and ``normalization`` then replace the card's; a loaded model's card
            is its own: ``sample_rate`` or ``normalization`` with one is an error).
        stems: with a registry name or checkpoint, the stems to give (``["vocals"]`` or
            ``"vocals,drums"``, as ``--stems``; default all): :meth:`separate` returns them and
            :meth:`separate_file` writes them unless it is given its own.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        window, hop: seconds (default: the model card's, 3 and 0.5 for the paper's protocol).
        batch_size: windows per forward pass (default 1 on CPU; on CUDA sized from free memory).
        precision: ``fp32``, ``bf16`` or ``auto`` (the default: bf16 on CUDA, and on CPUs that compute
            it natively for models whose card says bf16 pays there; fp32 elsewhere; see
            :func:`stemsplit.runtime.resolve_precision`).
        stage: which output of a multi-stage model (TS-BSMamba2: 1 = masked stems, which sum
            to the mixture; 2 = the paper's final output); default: the last.
        exact: correct the stems to sum exactly to the input (see :func:`share_residual`).
        light: fast mode. With no ``model``, the registry's light model where it has one;
            otherwise (or with a given model) a hop of :data:`~stemsplit.card.LIGHT_HOP` seconds
            unless ``hop`` is given. ``self.light_note`` says which, for people.
        compile: run the network through ``torch.compile(fullgraph=True)`` (inductor: fused
            kernels from the portable path, for CUDA without mamba-ssm and for the CPU). Every
            batch is padded to ``batch_size`` windows so that a run compiles once; the first
            batch pays the compile time, reported as a ``compiled`` event.
        task: ``music`` or ``speakers`` (:data:`stemsplit.card.TASKS`): with no ``model``, the
            registry's model for it; with one, a model of another task is refused. None: any
            model, the registry default when none is given.
        progress: called with event dicts while separating.
        download_progress: show a progress bar on stderr while a model downloads.
        model_config: the Music-Source-Separation-Training YAML of a checkpoint file or URL
            ``model`` (BS-RoFormer, Mel-Band RoFormer, TS-BSMamba2): it builds the network and
            gives the stems and the default window and hop (see :mod:`stemsplit.weights.msst`).
        shifts: run the song this many times, each up to 0.5 s later against the window grid, and
            average (Demucs's ``--shifts``; see :class:`ShiftedOverlapAdd`): ``shifts`` times the
            work. 1 (the default) runs it once, unshifted.
        settings: the settings above as one checked :class:`~stemsplit.request.EngineSettings` (a
            request's, see :mod:`stemsplit.request`); given, it replaces ``device`` ... ``compile``.

    Speaker separation::

        sep = Separator("talkers.safetensors", task="speakers")
        talkers = sep.separate(audio, rate)          # {"speaker1": [1, samples], "speaker2": ...}
        sep.separate_file("interview.m4a", "out/", residual=True)  # out/interview/speaker1.wav, ...

    The model's card (``self.card``) says its stems, sample rate, normalisation
    and shortest window. Every setting is checked here, before anything runs: a
    bad one raises :class:`SeparationError` with ``option`` naming it.
    """

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module | None = None,
        *,
        device: str | torch.device = "auto",
        window: float | None = None,
        hop: float | None = None,
        batch_size: int | None = None,
        precision: str | None = None,
        stage: int | None = None,
        exact: bool = False,
        light: bool = False,
        compile: bool = False,
        stems: Iterable[str] | None = None,
        sample_rate: int | None = None,
        normalization: str | None = None,
        task: str | None = None,
        progress: ProgressCallback | None = None,
        download_progress: bool = True,
        model_config: str | os.PathLike | None = None,
        shifts: int = 1,
        settings: EngineSettings | None = None,
    ) -> None:
        if settings is None:  # the request's checks (stemsplit.request), as the command line's
            settings = EngineSettings(
                device, window, hop, batch_size, precision, stage, exact, shifts, light, compile
            )
        device, window, hop, batch_size = settings.device, settings.window, settings.hop, settings.batch_size
        precision, stage, exact, shifts = settings.precision, settings.stage, settings.exact, settings.shifts
        light, compile = settings.light, settings.compile
        if not (model is None or isinstance(model, (str, os.PathLike, torch.nn.Module))):
            raise SeparationError(
                f"must be a registry name, a checkpoint path or URL, or a network, not {shown(model)}",
                "model",
            )
        stems = stem_names(stems)
        if normalization is not None and normalization not in NORMALIZATIONS:
            raise SeparationError(f"must be none or meanstd, not {shown(normalization)}", "normalization")
        if not isinstance(model, torch.nn.Module):  # a loaded model's card is its own
            for name, value in (("sample_rate", sample_rate), ("normalization", normalization)):
                if value is not None:
                    raise SeparationError(
                        "sets a network's card; a registry model or checkpoint runs at its own (songs at "
                        "other rates are resampled)",
                        name,
                    )
        self.device = pick_device(device)
        if model_config is not None and not isinstance(model_config, (str, os.PathLike, MSSTConfig)):
            raise SeparationError(
                f"must be the path of an MSST YAML, not {shown(model_config)}", "model_config"
            )
        if isinstance(model, torch.nn.Module):
            if model_config is not None:
                raise SeparationError("goes with a checkpoint file or URL, not a network", "model_config")
            card = getattr(model, "card", None)
            if not isinstance(card, ModelCard):
                raise SeparationError("a network given to Separator needs a ModelCard as .card", "model")
            changes = {"stems": stems, "normalization": normalization}
            if sample_rate is not None:
                changes["sample_rate"] = check_sample_rate(sample_rate)
            try:
                self.card = replace(card, **{k: v for k, v in changes.items() if v is not None})
            except ValueError as exc:
                raise SeparationError(str(exc), "stems") from None
            self.model, self.name = model, "custom"
            light_model = False
        else:
            loaded = load_model(
                model,
                light=light and model is None,
                progress=download_progress,
                task=task,
                model_config=model_config,
            )
            self.model, self.name, self.card = loaded.model, loaded.name, loaded.card
            light_model = loaded.light
        problem = task and task_mismatch(self.name, self.card.task, self.card.stems, task)
        if problem:
            raise SeparationError(problem, "task")
        self.stems, self.sample_rate = self.card.stems, self.card.sample_rate
        # A loaded model's ``stems``: the ones to give (a network's renamed its outputs above).
        self.chosen = None if isinstance(model, torch.nn.Module) else stems
        if self.chosen is not None:
            choose_stems(self.stems, self.chosen)
        self.normalization = self.card.normalization
        self.mono = self.card.channels == 1
        window = self.card.window if window is None else window
        self.light_note = None
        if light and light_model:
            self.light_note = f"light: the registry's light model ({self.name})"
        elif light and hop is None:
            hop = min(LIGHT_HOP, window)
            self.light_note = f"light: {self.name} with a {hop:g} s hop (no light model to use)"
        hop = min(self.card.hop, window) if hop is None else hop
        check_settings(window, hop, batch_size, precision, stage)
        self.window = round(window * self.sample_rate)
        self.hop = round(hop * self.sample_rate)
        if self.window < self.card.min_samples:
            shortest = self.card.min_samples / self.sample_rate
            raise SeparationError(
                f"{window:g} s is shorter than this model's minimum ({shortest:.3f} s)", "window"
            )
        if self.card.max_samples is not None and self.window > self.card.max_samples:
            longest = self.card.max_samples / self.sample_rate
            raise SeparationError(
                f"{window:g} s is longer than this model's longest window ({longest:.4g} s, the segment it "
                "was trained on)",
                "window",
            )
        if self.hop < 1:
            raise SeparationError(f"{hop:g} s is less than one sample at {self.sample_rate} Hz", "hop")
        self.stage = self.card.stages if stage is None else stage
        if self.stage > self.card.stages:
            raise SeparationError(f"this model has {self.card.stages} stage(s), not {self.stage}", "stage")
        self.exact = exact
        if shifts > 1 and self.card.permutation_invariant:
            raise SeparationError(
                f"{self.name} gives its talkers in an order of its own on each run: runs at other shifts "
                "cannot be averaged (use 1)",
                "shifts",
            )
        self.shifts = shifts
        self.precision = resolve_precision(precision or "auto", self.device, self.card.cpu_bf16)
        self.model = self.model.to(self.device).eval()
        self.batch_size = batch_size or self._default_batch_size()
        self._network = torch.compile(self.model, fullgraph=True, dynamic=False) if compile else self.model
        self.compiled, self._compiled_once = compile, False
        self.progress = progress or (lambda event: None)
        self._energy = threading.local()  # exact: this thread's song's residual and mixture energies
        self._fingerprint: str | None = None
        self._pool: WindowPool | None = None
        if self.device.type == "cpu":
            from .runtime import tune_cpu_allocator

            tune_cpu_allocator()

    # -- model calls -------------------------------------------------------------------------

    def pool_windows(self, songs: int) -> WindowPool:
        """Let ``songs`` songs separated at once in threads share the network's calls (see
        :class:`WindowPool`: batches of up to ``songs`` times the batch size); run each song inside the
        pool's :meth:`~WindowPool.song`. Not with ``exact`` (its residual is measured per call)."""
        if self.exact:
            raise SeparationError("exact measures each song's residual on its own calls; use 1", "songs")
        self._pool = WindowPool(self._forward, self.batch_size * songs)
        return self._pool

    def _default_batch_size(self) -> int:
        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        # Rough activation footprint of one 3 s window of TS at N = 128 (fp32), scaled.
        features = getattr(self.model.config, "feature_dim", 128)
        per_window = 1.5e9 * (self.window / 132300) * (features / 128)
        per_window *= 0.6 if self.precision == "bf16" else 1.0
        return int(max(1, min(32, free * 0.7 // per_window)))

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [n, C, W] (CPU float32) -> stems [n, S, C, W] (CPU float32)."""
        if self.device.type == "cuda":
            windows = windows.pin_memory()  # lets the copy run asynchronously
        x = windows.to(self.device, non_blocking=True)
        count = len(x)
        size = self.batch_size if self._pool is None else self._pool.max_windows
        if self.compiled and count < size:  # one shape, one compilation
            x = torch.cat([x, x.new_zeros(size - count, *x.shape[1:])])
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        first = self.compiled and not self._compiled_once
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            try:
                outputs = self._network(x)
            except Exception as exc:  # e.g. inductor finds no C++ compiler, or the network breaks the graph
                if not first:
                    raise
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                message = f"torch.compile failed ({reason}); run without compiling"
                raise SeparationError(message, "compile") from exc
        if first:
            self._compiled_once = True
            self.progress({"event": "compiled", "seconds": time.perf_counter() - started})
        stems = (outputs[self.stage - 1] if isinstance(outputs, tuple) else outputs)[:count].float()
        x = x[:count]
        if self.exact:
            mix = x.float()
            self._energy.residual += float((mix - stems.sum(dim=1)).square().sum())
            self._energy.mix += float(mix.square().sum())
            stems = share_residual(mix, stems, *self.card.stft)
        return stems.cpu()

    def fingerprint(self) -> str:
        """SHA-256 of the model's weights (names, shapes, dtypes and bytes): what made a song's stems."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in self.model.state_dict().items():
                t = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{name} {tuple(tensor.shape)} {t.dtype}\n".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def residual_db(self) -> float | None:
        """exact=True: level of the residual that was shared out, relative to the mixture (dB), of the last
        song this thread separated (songs separated at once in other threads keep theirs apart)."""
        mix = getattr(self._energy, "mix", 0.0)
        if not (self.exact and mix > 0):
            return None
        return 10 * math.log10(max(self._energy.residual, 1e-30) / mix)

    def _run_batch(self, windows: torch.Tensor) -> torch.Tensor:
        """Run windows, halving the batch on CUDA out-of-memory.

        Windows of pure digital silence are not run: their stems are silence
        (the stage-2 mapping would otherwise add a faint learned bias).
        """
        stems = windows.new_zeros(len(windows), len(self.stems), *windows.shape[1:])
        audible = windows.flatten(1).abs().amax(dim=1) > 0
        if audible.any():
            stems[audible] = self._run_audible(windows[audible])
        return stems

    def _run_audible(self, windows: torch.Tensor) -> torch.Tensor:
        size = min(self.batch_size, len(windows))
        forward = self._forward if self._pool is None else self._pool
        outputs, i = [], 0
        while i < len(windows):
            try:
                outputs.append(forward(windows[i : i + size]))
                i += size
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise SeparationError("CUDA out of memory even for one window; try the CPU") from None
                size = max(1, size // 2)
                self.batch_size = size
                if self._pool is not None:  # the songs' batches together shrink by as much
                    self._pool.max_windows = max(1, self._pool.max_windows // 2)
                torch.cuda.empty_cache()
                self.progress({"event": "batch_size_reduced", "batch_size": size})
        return torch.cat(outputs)

    def _stream(
        self,
        blocks: Iterable[np.ndarray],
        rate: int,
        channels: int,
        frames: int,
        with_mixture: bool = False,
        stats: tuple[float, float] = (0.0, 1.0),
    ) -> Iterator[np.ndarray]:
        """[n, C] blocks at ``rate`` -> [S, C, n] float32 stem blocks at ``rate``.

        The output has exactly as many frames as the blocks had; ``frames`` (which
        may be a decoder's estimate) only sizes the progress events. With
        ``with_mixture`` a last "stem" is the input itself at its own rate (channels folded as the
        network's), frame for frame with the stems, for mixture-minus-stem outputs: carried through
        the model's rate instead, a residual would lose all above that rate's band (4 kHz for an
        8 kHz speech model). ``stats`` is
        the (mean, std) the model's input is standardised with (``meanstd``
        checkpoints); stems are scaled back, each as upstream does it (Demucs's ``apply``, MSST's
        ``demix``): ``stem * std + mean``, so a song's DC offset is in every stem, as in the
        standardised song each network output was made from; with ``exact`` each stem gets
        ``mean / S`` instead, so that the stems, which sum to the standardised song, sum to the song.
        """
        mean, std = stats
        self._energy.residual = self._energy.mix = 0.0
        s = len(self.stems)
        folded = channels
        channels = self.output_channels(channels)
        to_model = BlockResampler(rate, self.sample_rate, channels)
        from_model = BlockResampler(self.sample_rate, rate, s * channels)
        frames_read = 0

        offset = mean / s if self.exact else mean  # S stems each + mean would sum to the song + (S-1) mean

        def run_batch(windows: torch.Tensor) -> torch.Tensor:
            return self._run_batch(windows) * std + offset

        pending: collections.deque[np.ndarray] = collections.deque()  # input not yet matched by output

        def mixture(frames: int) -> np.ndarray:
            """The next ``frames`` frames of the input, [1, C, frames] (output never runs ahead of it)."""
            parts = take_queued(pending, frames, axis=0)  # blocks [n, C]
            return np.concatenate(parts).T[None] if parts else np.zeros((1, channels, 0), np.float32)

        align = len(self.stems) if self.card.permutation_invariant else 0

        def overlap_add() -> StreamingOverlapAdd:
            return StreamingOverlapAdd(run_batch, self.window, self.hop, self.batch_size, align)

        delays = shift_delays(self.shifts, self.sample_rate)
        ola = ShiftedOverlapAdd(overlap_add, delays) if self.shifts > 1 else overlap_add()
        total = self.windows_for(frames, rate)
        self.progress({"event": "start", "windows": total, "seconds": frames / rate})

        def model_rate_input() -> Iterator[torch.Tensor]:
            nonlocal frames_read
            for block in blocks:
                frames_read += len(block)
                if folded != channels:  # a mono network: the channels averaged
                    block = block.mean(axis=1, keepdims=True, dtype=np.float32)
                if with_mixture:
                    pending.append(block.astype(np.float32, copy=False))
                if (mean, std) != (0.0, 1.0):
                    block = ((block - mean) / std).astype(np.float32)
                resampled = to_model(block)
                if len(resampled):
                    yield torch.from_numpy(np.ascontiguousarray(resampled.T))
            tail = to_model.flush(channels)
            if len(tail):
                yield torch.from_numpy(np.ascontiguousarray(tail.T))

        def model_rate_output() -> Iterator[np.ndarray]:
            for block in model_rate_input():
                for stems in ola.push(block):
                    yield stems.reshape(s * channels, -1).T.numpy()
                    self.progress({"event": "windows", "done": ola.windows_done, "total": total})
            for stems in ola.finish():
                yield stems.reshape(s * channels, -1).T.numpy()
                self.progress({"event": "windows", "done": ola.windows_done, "total": total})

        # Back at the input's rate, cut or zero-pad to exactly the frames read (resampling may be off by one;
        # output never runs ahead of the input, so cutting to the count so far is safe).
        produced = 0
        tail = (from_model.flush(s * channels) for _ in range(1))  # only after the last block
        for block in itertools.chain(map(from_model, model_rate_output()), tail):
            block = block[: max(0, frames_read - produced)]
            produced += len(block)
            if len(block):
                out = block.T.reshape(s, channels, -1)
                yield np.concatenate([out, mixture(len(block))]) if with_mixture else out
        if produced < frames_read:
            out = np.zeros((s, channels, frames_read - produced), np.float32)
            yield np.concatenate([out, mixture(out.shape[-1])]) if with_mixture else out

    def windows_for(self, frames: int, rate: int) -> int:
        """Windows that separating ``frames`` frames at ``rate`` Hz runs (at the model's rate; all shifts)."""
        samples = math.ceil(frames * self.sample_rate / rate)
        delays = shift_delays(self.shifts, self.sample_rate)
        return sum(window_count(samples + delay, self.window, self.hop) for delay in delays)

    @property
    def window_seconds(self) -> float:
        return self.window / self.sample_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop / self.sample_rate

    def _needs_stats(self) -> bool:
        return self.normalization == "meanstd"

    def check_input(self, info: AudioInfo, downmix: bool = False) -> None:
        """Refuse a song this separator cannot take (channels, length) before anything runs."""
        if info.channels > 2 and not downmix and not self.mono:
            raise SeparationError(
                f"{info.path}: {info.channels} channels; stemsplit separates mono or stereo "
                "(downmix folds more channels down)"
            )
        shortest = self.card.min_samples / self.sample_rate
        if info.seconds < shortest:
            raise SeparationError(
                f"{info.path}: too short ({info.frames} samples, {info.seconds * 1000:.3g} ms; the model "
                f"needs at least {shortest * 1000:.3g} ms)"
            )
