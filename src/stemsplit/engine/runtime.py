"""Where and how a process runs: device, precision, torchrun ranks, and what the CPU can do.

Kept apart from :mod:`stemsplit.model` (which only sees tensors). Each of these is
resolved here and nowhere else: ``--device auto`` (:func:`pick_device`), the
default and ``auto`` precision (:func:`resolve_precision`), a process's place
under torchrun (:func:`torchrun_ranks`). The engine, the CLI and the benchmarks
call :func:`tune_cpu_allocator` once at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import SeparationError, parse_device

if TYPE_CHECKING:
    import torch

__all__ = [
    "Ranks",
    "cpu_auto_precision",
    "cpu_bf16_support",
    "pick_device",
    "resolve_precision",
    "torchrun_ranks",
    "tune_cpu_allocator",
]


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's: global rank, number of processes, rank on this machine."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_ranks() -> Ranks:
    """From torchrun's RANK, WORLD_SIZE and LOCAL_RANK; one process when they are not set."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA if available; under torchrun this process's GPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    kind, index = parse_device(device)
    if kind == "auto":
        if not torch.cuda.is_available():
            chosen = torch.device("cpu")
        else:
            ranks = torchrun_ranks()
            chosen = torch.device(f"cuda:{ranks.local}" if ranks.world > 1 else "cuda")
        return _with_mamba_backend(chosen)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SeparationError("CUDA is not available here (no NVIDIA GPU, or a CPU-only torch)", "device")
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise SeparationError(
                f"there is no cuda:{index}: this machine has {count} CUDA device(s)", "device"
            )
    return _with_mamba_backend(torch.device(kind if index is None else f"{kind}:{index}"))


def _with_mamba_backend(device: torch.device) -> torch.device:
    """``device``, once the Mamba backend that STEMSPLIT_MAMBA_BACKEND asks for is known to run on it.

    Checked with the device, before any model is built: a misspelt value, or ``cuda`` on a CPU,
    otherwise fails at the first window.
    """
    from ..model.layers.mamba2 import BACKEND_ENV, resolve_backend

    try:
        resolve_backend(None, device)
    except (ValueError, RuntimeError) as exc:
        raise SeparationError(f"{BACKEND_ENV}={os.environ.get(BACKEND_ENV)}: {exc}") from None
    return device


def resolve_precision(precision: str | None, device: torch.device, cpu_bf16: bool = True) -> str:
    """``None`` (bf16 on CUDA, fp32 on the CPU), ``auto`` or as given.

    ``auto``: bf16 on CUDA; on the CPU bf16 where it is native (:func:`cpu_auto_precision`) and
    ``cpu_bf16`` (the model card's: bf16 measured faster for this family), else fp32.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        return cpu_auto_precision()[0] if cpu_bf16 else "fp32"
    return precision or ("bf16" if device.type == "cuda" else "fp32")


log = logging.getLogger(__name__)

# mallopt() parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations below this come from the reusable heap; above it, from fresh mmaps.
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def tune_cpu_allocator() -> bool:
    """Let glibc reuse freed memory for large tensors instead of returning it to the OS.

    By default glibc serves every allocation above 32 MB with a fresh ``mmap`` and
    unmaps it on free, so each such tensor is page-faulted in again, page by page,
    on its next use. A TS-BSMamba2 forward pass allocates hundreds of those
    (activations of 30k tokens x 1288 features), and the page faults cost as much
    as the arithmetic: a 3 s window went from 30 s to 15 s on a 2-core machine
    with this setting. The price is that the process keeps its peak memory
    mapped until it exits, which suits a separation run.

    Returns True if the allocator was tuned (glibc), False where it cannot be
    (other C libraries; then nothing changes). Safe to call more than once.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt(); CPU allocator left as it is")
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt() refused the thresholds; CPU allocator left as it is")
    return ok


# CPU flags (as /proc/cpuinfo names them) of instructions that compute in bfloat16.
_BF16_FLAGS = {
    "amx_bf16": "AMX-BF16",
    "avx512_bf16": "AVX512-BF16",
    "bf16": "Arm BF16",  # aarch64 "Features" line
}


def _cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_bf16_support(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Does this CPU compute bfloat16 natively (so bf16 inference can beat float32)? And why.

    Native means AVX512-BF16 or AMX-BF16 (x86) or the BF16 extension (Arm), read
    from /proc/cpuinfo, and a PyTorch whose oneDNN runs bfloat16 kernels. Without
    them bf16 is emulated and slower than float32. ``cpuinfo``: the text to read
    instead of /proc/cpuinfo (for tests). Returns (native, reason for people).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            system = platform.system()
            return False, f"cannot read /proc/cpuinfo ({system}): bf16 support unknown, fp32 assumed"
    flags = _cpu_flags(cpuinfo)
    found = [name for flag, name in _BF16_FLAGS.items() if flag in flags]
    if not found:
        return False, "no AVX512-BF16, AMX-BF16 or Arm BF16 in the CPU flags: bf16 would be emulated"
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False, f"CPU has {' and '.join(found)} but this PyTorch's oneDNN has no bf16 kernels"
    return True, f"CPU has {' and '.join(found)} (native bf16 through oneDNN)"


def cpu_auto_precision() -> tuple[str, str]:
    """``("bf16" or "fp32", reason)`` for ``--precision auto`` on the CPU.

    bf16 where the CPU computes it natively: on a 2-core Zen 5 (AVX512-BF16) it is
    1.25x faster than fp32 for TS-BSMamba2, with a stage-2 relative error of 1.6e-3
    against fp32 on the golden input (benchmarks/bench_model.py). fp32 everywhere else.
    """
    native, why = cpu_bf16_support()
    return ("bf16" if native else "fp32"), why
