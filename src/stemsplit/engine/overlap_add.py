"""Overlap-add: a song cut into windows, each window's output summed where they overlap, streaming.

A song is cut into windows of ``window`` samples every ``hop`` samples (the
paper's protocol: 3 s every 0.5 s), with ``window - hop`` of zeros before and
after it so every sample is covered by the same number of windows. Windows go
through the model in batches; their outputs are summed where they overlap and
divided by the number of windows covering each sample (plain overlap-add
averaging, as in BSRNN's chunked evaluation). An identity model therefore gives
back its input exactly, for any length.

Everything streams: :class:`StreamingOverlapAdd` takes the song block by
block and hands back finished output as soon as no later window can touch it,
so memory does not grow with the song's length.

Speaker separation (``align_stems``): a network trained with a permutation-invariant
loss gives each window's talkers in an order of its own, so before a window is added
its outputs are reordered to match what the earlier windows left on the overlap (the
permutation with the largest summed inner product with the output so far there, i.e.
the least-squares match). Without that, talkers would swap files every few seconds.

:class:`ShiftedOverlapAdd` runs the song at several delays against the window grid
and averages (Demucs's ``--shifts``).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch


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
        assert self._input is not None  # (push and finish start a song's input first)
        input_end = self._input_start + self._input.shape[1]
        while True:
            starts: list[int] = []
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
            more = not final or (total is not None and self.windows_done < total)
            ready = self.windows_done * self.hop if more else math.inf
            yield from self._emit(ready, final)
            self._drop_input(self.windows_done * self.hop)

    def _accumulate(self, starts: list[int], outputs: torch.Tensor) -> None:
        end = starts[-1] + self.window
        if self._sum is None:
            self._sum = outputs.new_zeros(*outputs.shape[1:3], 0)
            self._count = outputs.new_zeros(0)
            self._out_start = starts[0]
        assert self._sum is not None and self._count is not None
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
        assert self._sum is not None and self._count is not None and self._permutations is not None
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
        assert self._sum is not None and self._count is not None  # (a batch was accumulated first)
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
        if drop > 0 and self._input is not None:
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
            total = sum(torch.cat(take_queued(queue, ready), dim=-1) for queue in self._queues)
            yield cast(torch.Tensor, total) / len(self.runs)


def take_queued(queue: collections.deque[Any], count: int, axis: int = -1) -> list[Any]:
    """The first ``count`` entries along ``axis`` of the arrays (numpy or torch) queued, taken off the
    queue, as the pieces they were queued in (the last one cut, its rest put back)."""
    parts = []
    while count:
        head = queue.popleft()
        if head.shape[axis] > count:
            before = (slice(None),) * (axis % head.ndim)
            rest, first = (*before, slice(count, None)), (*before, slice(None, count))
            queue.appendleft(head[rest])
            head = head[first]
        parts.append(head)
        count -= head.shape[axis]
    return parts
