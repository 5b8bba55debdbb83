"""Windows of several songs in one network call: :class:`WindowPool` (``batch --songs-per-batch``),
which keeps a GPU busy on short songs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


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
        assert call.result is not None  # (a call finishes with its result or its error)
        return call.result

    def _full(self, waited: bool) -> bool:
        queued = sum(len(call.windows) for call in self._waiting)
        return waited or queued >= self.max_windows or len(self._waiting) >= self._songs

    def _take(self) -> list[_PooledCall]:
        """The calls to run now: the oldest, and the later ones with windows of its shape, to max_windows."""
        shape = self._waiting[0].windows.shape[1:]
        batch: list[_PooledCall] = []
        kept: list[_PooledCall] = []
        count = 0
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
