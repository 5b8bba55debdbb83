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

Python API::

    from stemsplit.separate import Separator
    sep = Separator("path/to/model.safetensors", device="auto")
    stems = sep.separate(audio, sample_rate)          # audio [channels, samples]
    sep.separate_file("song.flac", "stems/")          # stems/song/vocals.wav, ...
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import BlockResampler, downmix_to_stereo, probe, read_blocks
from .model import TSBSMamba2
from .output import OUTPUT_FORMATS, TempStemFile, transcode
from .weights import DEFAULT_STEMS, load_model

__all__ = [
    "SeparationError",
    "SeparationResult",
    "Separator",
    "StreamingOverlapAdd",
    "pick_device",
    "share_residual",
    "song_stats",
    "window_count",
]

READ_BLOCK_SECONDS = 10.0

# Callback for progress events: a dict with an "event" key (see Separator.separate_file).
ProgressCallback = Callable[[dict[str, Any]], None]


class SeparationError(Exception):
    """A song cannot be separated as asked; the message names the file and the problem."""


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
    ) -> None:
        if not 0 < hop <= window:
            raise ValueError(f"hop ({hop}) must be in (0, window ({window})]")
        self.run_batch = run_batch
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
            self._sum[..., o : o + self.window] += out
            self._count[o : o + self.window] += 1

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

    def stft(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x.reshape(-1, length), n_fft, hop, window=window, return_complex=True)

    stem_spec = stft(stems).reshape(n, s, c, *stft(mixture[:1, :1]).shape[-2:])
    mix_spec = stft(mixture).reshape(n, c, *stem_spec.shape[-2:])
    residual = mix_spec - stem_spec.sum(dim=1)
    magnitude = stem_spec.abs()
    share = magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(stems.dtype).tiny)
    # Bins where every stem is silent: share equally (the mixture is all residual there).
    share = torch.where(magnitude.sum(dim=1, keepdim=True) > 0, share, torch.full_like(share, 1 / s))
    corrected = stem_spec + share * residual[:, None]
    audio = torch.istft(
        corrected.reshape(-1, *corrected.shape[-2:]), n_fft, hop, window=window, length=length
    )
    return audio.reshape(n, s, c, length)


# --- the separator -------------------------------------------------------------------------------


@dataclass
class SeparationResult:
    """What :meth:`Separator.separate_file` did."""

    source: Path
    outputs: dict[str, Path]
    seconds: float
    windows: int
    rescaled_by: float = 1.0  # common gain applied to integer outputs (1.0 = none)
    residual_db: float | None = None  # --exact: residual level relative to the mixture


def song_stats(blocks: Iterable[np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation of a song's mono mix, from [n, C] blocks (one streaming pass)."""
    count, total, squares = 0, 0.0, 0.0
    for block in blocks:
        mono = block.mean(axis=1, dtype=np.float64)
        count, total, squares = count + len(mono), total + mono.sum(), squares + np.square(mono).sum()
    mean = total / max(count, 1)
    std = math.sqrt(max(squares / max(count, 1) - mean**2, 0.0))
    return float(mean), float(std) if std > 0 else 1.0


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SeparationError(f"device {device} requested but CUDA is not available")
    return device


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


class Separator:
    """Separate songs with a TS-BSMamba2 model.

    Args:
        model: a registry name, checkpoint path or URL (see :mod:`stemsplit.weights`),
            or a :class:`TSBSMamba2` instance (then give ``stems`` and ``sample_rate``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        window, hop: seconds (3 and 0.5 by default: the paper's protocol).
        batch_size: windows per forward pass (default 1 on CPU; on CUDA sized from free memory).
        precision: ``fp32`` or ``bf16`` (CUDA only; the default there).
        stage: 1 (masked stems, which sum to the mixture) or 2 (the paper's final output).
        exact: correct stage-2 stems to sum exactly to the input (see :func:`share_residual`).
        progress: called with event dicts while separating.
    """

    def __init__(
        self,
        model: str | os.PathLike | TSBSMamba2 | None = None,
        *,
        device: str | torch.device = "auto",
        window: float = 3.0,
        hop: float = 0.5,
        batch_size: int | None = None,
        precision: str | None = None,
        stage: int = 2,
        exact: bool = False,
        light: bool = False,
        stems: Iterable[str] | None = None,
        sample_rate: int | None = None,
        normalization: str = "none",
        progress: ProgressCallback | None = None,
    ) -> None:
        self.device = pick_device(device)
        if isinstance(model, TSBSMamba2):
            self.model = model
            self.name = "custom"
            self.stems = tuple(stems or DEFAULT_STEMS[: model.config.num_output])
            self.sample_rate = sample_rate or model.config.sr
            self.normalization = normalization
        else:
            loaded = load_model(model, light=light)
            self.model, self.name = loaded.model, loaded.name
            self.stems, self.sample_rate = tuple(loaded.stems), loaded.sample_rate
            self.normalization = loaded.normalization
        if len(self.stems) != self.model.config.num_output:
            raise SeparationError(
                f"{len(self.stems)} stem names for a model with {self.model.config.num_output}"
            )
        if stage not in (1, 2):
            raise SeparationError(f"stage must be 1 or 2, not {stage}")
        if not 0 < hop <= window:
            raise SeparationError(f"hop ({hop} s) must be positive and at most the window ({window} s)")
        self.window = round(window * self.sample_rate)
        self.hop = round(hop * self.sample_rate)
        if self.window < self.model.min_samples:
            raise SeparationError(f"window of {window} s is shorter than the model's minimum input")
        self.stage, self.exact = stage, exact
        self.precision = precision or ("bf16" if self.device.type == "cuda" else "fp32")
        if self.precision not in ("fp32", "bf16"):
            raise SeparationError(f"precision must be fp32 or bf16, not {self.precision!r}")
        self.model = self.model.to(self.device).eval()
        self.batch_size = batch_size or self._default_batch_size()
        self.progress = progress or (lambda event: None)
        self._residual_energy = self._mix_energy = 0.0
        if self.device.type == "cpu":
            from .runtime import tune_cpu_allocator

            tune_cpu_allocator()

    # -- model calls -------------------------------------------------------------------------

    def _default_batch_size(self) -> int:
        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        # Rough activation footprint of one 3 s window of TS at N = 128 (fp32), scaled.
        per_window = 1.5e9 * (self.window / 132300) * (self.model.config.feature_dim / 128)
        per_window *= 0.6 if self.precision == "bf16" else 1.0
        return int(max(1, min(32, free * 0.7 // per_window)))

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [n, C, W] (CPU float32) -> stems [n, S, C, W] (CPU float32)."""
        if self.device.type == "cuda":
            windows = windows.pin_memory()  # lets the copy run asynchronously
        x = windows.to(self.device, non_blocking=True)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), autocast:
            stage1, stage2 = self.model(x)
        stems = (stage1 if self.stage == 1 else stage2).float()
        if self.exact and self.stage == 2:
            mix = x.float()
            self._residual_energy += float((mix - stems.sum(dim=1)).square().sum())
            self._mix_energy += float(mix.square().sum())
            stems = share_residual(mix, stems, self.model.config.win, self.model.config.stride)
        return stems.cpu()

    def residual_db(self) -> float | None:
        """--exact: level of the residual that was shared out, relative to the mixture (dB), last song."""
        if not (self.exact and self.stage == 2 and self._mix_energy > 0):
            return None
        return 10 * math.log10(max(self._residual_energy, 1e-30) / self._mix_energy)

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
        outputs, i = [], 0
        while i < len(windows):
            try:
                outputs.append(self._forward(windows[i : i + size]))
                i += size
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise SeparationError(
                        "CUDA out of memory even for one window; try --device cpu"
                    ) from None
                size = max(1, size // 2)
                self.batch_size = size
                torch.cuda.empty_cache()
                self.progress({"event": "batch_size_reduced", "batch_size": size})
        return torch.cat(outputs)

    # -- in-memory API -------------------------------------------------------------------------

    def separate(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> dict[str, np.ndarray]:
        """audio [channels, samples] at ``sample_rate`` -> {stem: [channels, samples]} at the same rate."""
        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        if audio.dim() == 1:
            audio = audio[None]
        if audio.dim() != 2 or audio.shape[1] == 0:
            raise SeparationError(f"expected audio [channels, samples], got shape {tuple(audio.shape)}")
        if not torch.isfinite(audio).all():
            raise SeparationError("audio contains NaN or infinite samples")
        blocks = [audio.numpy().T]
        stats = song_stats(blocks) if self.normalization == "meanstd" else (0.0, 1.0)
        parts = list(self._stream(blocks, sample_rate, audio.shape[0], audio.shape[1], stats=stats))
        out = np.concatenate(parts, axis=-1)
        return {name: out[i] for i, name in enumerate(self.stems)}

    def _stream(
        self,
        blocks: Iterable[np.ndarray],
        rate: int,
        channels: int,
        frames: int,
        with_mixture: bool = False,
        stats: tuple[float, float] = (0.0, 1.0),
    ) -> Iterator[np.ndarray]:
        """[n, C] blocks at ``rate`` -> [S, C, n] float32 stem blocks at ``rate``, ``frames`` in all.

        With ``with_mixture`` a last "stem" carries the mixture through the same
        windowing and resampling (for mixture-minus-stem outputs). ``stats`` is
        the (mean, std) the model's input is standardised with (``meanstd``
        checkpoints); stems are scaled back.
        """
        mean, std = stats
        self._residual_energy = self._mix_energy = 0.0
        s = len(self.stems) + with_mixture
        to_model = BlockResampler(rate, self.sample_rate, channels)
        from_model = BlockResampler(self.sample_rate, rate, s * channels)

        def run_batch(windows: torch.Tensor) -> torch.Tensor:
            stems = self._run_batch(windows) * std + mean / len(self.stems)
            if with_mixture:
                stems = torch.cat([stems, windows[:, None] * std + mean], dim=1)
            return stems

        ola = StreamingOverlapAdd(run_batch, self.window, self.hop, self.batch_size)
        total = ola.windows_for(math.ceil(frames * self.sample_rate / rate))
        self.progress({"event": "start", "windows": total, "seconds": frames / rate})

        def model_rate_input() -> Iterator[torch.Tensor]:
            for block in blocks:
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

        # Back at the input's rate, cut or zero-pad to exactly ``frames`` (resampling may be off by one).
        produced = 0
        tail = (from_model.flush(s * channels) for _ in range(1))  # only after the last block
        for block in itertools.chain(map(from_model, model_rate_output()), tail):
            block = block[: max(0, frames - produced)]
            produced += len(block)
            if len(block):
                yield block.T.reshape(s, channels, -1)
        if produced < frames:
            yield np.zeros((s, channels, frames - produced), np.float32)

    # -- files ---------------------------------------------------------------------------------

    def output_paths(
        self,
        source: Path,
        out_dir: Path,
        stems: Iterable[str],
        filename: str = "{track}/{stem}.{ext}",
        fmt: str = "wav",
        track: str | None = None,
    ) -> dict[str, Path]:
        """Where each stem of ``source`` goes: ``out_dir / filename`` with {track}, {stem}, {ext}."""
        track = track or source.stem
        paths = {}
        for stem in stems:
            try:
                relative = filename.format(track=track, stem=stem, ext=fmt)
            except (KeyError, IndexError, ValueError) as exc:
                raise SeparationError(
                    f"--filename {filename!r}: unknown field {exc}; use {{track}}, {{stem}}, {{ext}}"
                ) from None
            paths[stem] = out_dir / relative
        if len(set(paths.values())) != len(paths):
            raise SeparationError(
                f"--filename {filename!r} gives the same file for different stems; add {{stem}}"
            )
        return paths

    def separate_file(
        self,
        path: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        filename: str = "{track}/{stem}.{ext}",
        fmt: str = "wav",
        bit_depth: int | None = None,
        clip_mode: str = "rescale",
        stems: Iterable[str] | None = None,
        two_stems: str | None = None,
        overwrite: bool = False,
        downmix: bool = False,
        track: str | None = None,
    ) -> SeparationResult:
        """Separate one file into ``out_dir`` (layout from ``filename``).

        Stems are streamed to temporary float32 files and moved into place
        only after the whole song succeeded; on any failure (or Ctrl-C) the
        temporary files are removed and no output is left. Existing outputs
        raise :class:`SeparationError` unless ``overwrite``.

        Progress events: ``start`` (windows), ``windows`` (done, total), ``done``.
        """
        info = probe(path)
        if fmt not in OUTPUT_FORMATS:
            raise SeparationError(f"unknown format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")
        if clip_mode not in ("none", "rescale", "clamp"):
            raise SeparationError(f"--clip-mode must be none, rescale or clamp, not {clip_mode!r}")
        if info.channels > 2 and not downmix:
            raise SeparationError(
                f"{info.path}: {info.channels} channels; stemsplit separates mono or stereo (add --downmix)"
            )
        min_seconds = self.model.min_samples / self.sample_rate
        if info.seconds < min_seconds:
            raise SeparationError(
                f"{info.path}: too short ({info.seconds * 1000:.1f} ms; the model needs at least "
                f"{min_seconds * 1000:.1f} ms)"
            )
        wanted = self.output_stems(stems, two_stems)
        outputs = self.output_paths(info.path, Path(out_dir), wanted, filename, fmt, track)
        existing = [str(p) for p in outputs.values() if p.exists()]
        if existing and not overwrite:
            raise SeparationError(
                f"{info.path}: output exists, not overwriting without --overwrite: {existing[0]}"
            )
        for p in outputs.values():
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SeparationError(f"{p.parent}: cannot create output folder ({exc.strerror})") from None
            if not os.access(p.parent, os.W_OK):
                raise SeparationError(f"{p.parent}: output folder is not writable")

        channels = 2 if info.channels > 2 else info.channels
        temps: dict[str, TempStemFile] = {}
        try:
            for name, dest in outputs.items():
                temps[name] = TempStemFile(dest, info.sample_rate, channels)
            blocks = read_blocks(info, round(READ_BLOCK_SECONDS * info.sample_rate))
            if info.channels > 2:
                blocks = (downmix_to_stereo(b) for b in blocks)
            index = {name: i for i, name in enumerate(self.stems)}
            stats = (0.0, 1.0)
            if self.normalization == "meanstd":  # a first pass over the file for the song's statistics
                stats = song_stats(read_blocks(info, round(READ_BLOCK_SECONDS * info.sample_rate)))
            parts = self._stream(
                prefetch(blocks), info.sample_rate, channels, info.frames, two_stems is not None, stats
            )
            for part in parts:
                for name, temp in temps.items():
                    temp.write(self._stem_block(part, name, index).T)
            windows = window_count(
                math.ceil(info.frames * self.sample_rate / info.sample_rate), self.window, self.hop
            )
            result = SeparationResult(
                info.path, outputs, info.seconds, windows, residual_db=self.residual_db()
            )
            self._finalise(temps, fmt, bit_depth, clip_mode, overwrite, result)
        except OSError as exc:
            raise SeparationError(f"{info.path}: writing stems failed ({exc.strerror or exc})") from None
        finally:
            for temp in temps.values():
                temp.discard()
        self.progress(
            {"event": "done", "source": str(info.path), "outputs": {k: str(v) for k, v in outputs.items()}}
        )
        return result

    def output_stems(self, stems: Iterable[str] | None = None, two_stems: str | None = None) -> list[str]:
        """The stems ``separate_file`` writes: ``stems`` (default: all the model's), or with
        ``two_stems=X`` the pair ``[X, no_X]``. Unknown names raise :class:`SeparationError`."""
        if two_stems is not None:
            if two_stems not in self.stems:
                raise SeparationError(
                    f"--two-stems {two_stems}: the model's stems are {', '.join(self.stems)}"
                )
            return [two_stems, f"no_{two_stems}"]
        wanted = list(stems) if stems else list(self.stems)
        unknown = [s for s in wanted if s not in self.stems]
        if unknown:
            raise SeparationError(
                f"unknown stem {unknown[0]!r}; the model's stems are {', '.join(self.stems)}"
            )
        return wanted

    @staticmethod
    def _stem_block(part: np.ndarray, name: str, index: dict[str, int]) -> np.ndarray:
        """One output stem from a [S (+ mixture), C, n] block; ``no_X`` is the mixture minus X."""
        if name.startswith("no_") and name not in index:
            return part[-1] - part[index[name[3:]]]
        return part[index[name]]

    def _finalise(
        self,
        temps: dict[str, TempStemFile],
        fmt: str,
        bit_depth: int | None,
        clip_mode: str,
        overwrite: bool,
        result: SeparationResult,
    ) -> None:
        for temp in temps.values():
            temp.close()
        peak = max(t.peak for t in temps.values())
        integer = fmt != "wav" or bit_depth is not None
        gain = 1.0
        if integer and clip_mode == "rescale" and peak > 1.0:
            gain = 1.0 / peak  # one factor for all stems, so they still sum to the mix
        result.rescaled_by = gain
        for temp in temps.values():
            if not overwrite and temp.destination.exists():
                raise SeparationError(f"{temp.destination}: appeared while separating; not overwriting")
            if fmt == "wav" and bit_depth is None:
                os.replace(temp.path, temp.destination)
            else:
                transcode(
                    temp.path, temp.destination, fmt, bit_depth, gain, clamp=integer and clip_mode == "clamp"
                )
