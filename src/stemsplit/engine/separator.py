"""The separator: a model and its settings, songs in, stems out, block by block. No CLI code here.

What it shares with an ensemble (arrays or files in, stems out) is :mod:`.song_separator`'s.
The windows go through :mod:`.overlap_add` (streaming, so memory does not grow with the
song's length), several songs' windows can share calls through :mod:`.pool`, and ``exact``
is :mod:`.residual`'s. Speech networks are mono (``card.channels == 1``): the input's
channels are averaged, and the talkers come out mono.

Python API (also importable as :mod:`stemsplit.separate` and ``stemsplit.Separator``)::

    from stemsplit.separate import Separator
    sep = Separator("path/to/model.safetensors", device="auto")
    stems = sep.separate(audio, sample_rate)          # audio [channels, samples]
    sep.separate_file("song.flac", "stems/")          # stems/song/vocals.wav, ...

Files: :meth:`Separator.separate_file` builds the command line's request
(:func:`stemsplit.engine.request.prepare`) and is a short composition of the engine
(:meth:`Separator.song_blocks`: audio blocks in, named stem blocks out) and the output
side (:mod:`stemsplit.output`: the plan and the all-or-nothing
:class:`~stemsplit.output.StemWriter`).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..audio.info import AudioInfo
from ..audio.resample import BlockResampler
from ..card import LIGHT_HOP, NORMALIZATIONS, ModelCard
from ..errors import first_line
from ..weights import load_model
from ..weights.msst import MSSTConfig
from .overlap_add import ShiftedOverlapAdd, StreamingOverlapAdd, shift_delays, take_queued, window_count
from .pool import WindowPool
from .request import EngineSettings, stem_names
from .residual import share_residual
from .runtime import pick_device, resolve_precision
from .settings import (
    SeparationError,
    check_sample_rate,
    check_settings,
    choose_stems,
    shown,
    task_mismatch,
)
from .song_separator import ProgressCallback, SongSeparator

__all__ = ["Separator"]


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
            :func:`stemsplit.engine.runtime.resolve_precision`).
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
        settings: the settings above as one checked :class:`~stemsplit.engine.request.EngineSettings` (a
            request's, see :mod:`stemsplit.engine.request`); given, it replaces ``device`` ... ``compile``.

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
        if settings is None:  # the request's checks (stemsplit.engine.request), as the command line's
            settings = EngineSettings(
                device, window, hop, batch_size, precision, stage, exact, shifts, light, compile
            )
        elif not isinstance(settings, EngineSettings):
            raise SeparationError(f"must be an EngineSettings, not {shown(settings)}", "settings")
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
            changes: dict[str, Any] = {"stems": stems, "normalization": normalization}
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
        check_settings(window, hop, None, None, None)  # the pair the card completed (the rest: settings)
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
                message = f"torch.compile failed ({first_line(exc)}); run without compiling"
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
