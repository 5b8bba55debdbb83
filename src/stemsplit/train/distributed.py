"""Training on several processes (``torchrun``): the device of each rank, the process group (NCCL on
GPUs, gloo on the CPU), each rank's share of a global batch, and the few numbers the ranks exchange.

Global step s takes samples [s*B, (s+1)*B) split across ranks (:func:`shard_indices`), so the
batches do not depend on the number of processes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import torch
import torch.distributed as dist

from ..engine.runtime import Ranks, pick_device, torchrun_ranks
from ..engine.settings import SeparationError
from .errors import TrainError

__all__ = [
    "broadcast_from_main",
    "device_for",
    "leave_process_group",
    "mean_over_ranks",
    "ranks_agree",
    "setup_distributed",
    "shard_indices",
]


def device_for(device: str) -> torch.device:
    """``--device`` (with the Mamba backend STEMSPLIT_MAMBA_BACKEND asks for) as a torch device, or
    TrainError."""
    try:
        return pick_device(device)
    except SeparationError as exc:
        raise TrainError(f"--device: {exc.problem}" if exc.option else str(exc)) from None


def setup_distributed(device: str) -> tuple[Ranks, torch.device]:
    """The rank of this process and its device; with several processes, the process group joined."""
    ranks = torchrun_ranks()
    chosen = device_for(device)
    if ranks.world > 1:
        if chosen.type == "cuda":
            chosen = torch.device(f"cuda:{ranks.local}")  # one GPU per process
            torch.cuda.set_device(chosen)
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return ranks, chosen


def shard_indices(epoch_size: int, global_batch: int, ranks: Ranks, start_step: int) -> Iterator[int]:
    """Rank r's sample indices: global step s takes [s*B, (s+1)*B), rank r its r-th slice."""
    per_rank = global_batch // ranks.world
    for step in range(start_step, epoch_size // global_batch):
        first = step * global_batch + ranks.rank * per_rank
        yield from range(first, first + per_rank)


def mean_over_ranks(value: float, ranks: Ranks, device: torch.device) -> float:
    """The mean of every rank's ``value`` (every rank calls it)."""
    if ranks.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / ranks.world


def broadcast_from_main(value: float, ranks: Ranks, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (every rank calls it)."""
    if ranks.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t)


def ranks_agree(model: torch.nn.Module, ranks: Ranks) -> bool:
    """Every rank holds the same weights (DDP keeps them in sync; this checks it)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    mine = torch.stack([flat.sum(), flat.square().sum(), flat[:: max(1, len(flat) // 1000)].sum()])
    gathered = [torch.zeros_like(mine) for _ in range(ranks.world)]
    dist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def leave_process_group() -> None:
    """The end of a run on several processes (every rank calls it, once it has dropped its DDP wrapper):
    the process group destroyed in an order that cannot deadlock."""
    gc.collect()  # (DDP's autograd hooks make reference cycles)
    # gloo's worker thread may still be releasing the all_gather's tensors, which needs the GIL;
    # destroying the group joins that thread while holding the GIL: a deadlock seen under load.
    # The barrier is queued behind that release and waits without the GIL.
    dist.barrier()
    dist.destroy_process_group()
