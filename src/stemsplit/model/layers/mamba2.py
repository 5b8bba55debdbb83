"""A Mamba-2 layer with two interchangeable backends.

Parameters carry the names and shapes of ``mamba_ssm.modules.mamba2.Mamba2``
(``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``,
``out_proj``), so checkpoints trained with mamba_ssm load unchanged.

Backends:

* ``portable`` - pure PyTorch (:mod:`stemsplit.model.ops.ssd`). Any device, float32
  or float64.
* ``cuda`` - mamba_ssm's fused Triton kernels on CUDA tensors, with
  causal_conv1d's kernel when that package is installed (without it, mamba_ssm's
  unfused path: PyTorch convolution + chunked scan kernel + gated RMSNorm kernel).

The backend is chosen per call: ``cuda`` when the input is on a CUDA device and
mamba_ssm imports, else ``portable``. Force one with ``backend=`` or the
``STEMSPLIT_MAMBA_BACKEND`` environment variable (``auto``, ``portable``,
``cuda``). If mamba_ssm fails to import (missing, or a compiled extension built
for another torch), the reason is logged once and the portable path is used.
The Mamba-1 layer (:mod:`.mamba1`) goes through the same :func:`resolve_backend`
and :func:`cuda_kernels`, needing mamba_ssm's ``selective_scan_fn`` instead.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import onednn
from ..ops.ssd import chunk_layout, ssd_scan

__all__ = ["BACKENDS", "Mamba2", "RMSNormGated", "cuda_kernels", "resolve_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "portable", "cuda")
BACKEND_ENV = "STEMSPLIT_MAMBA_BACKEND"


@functools.cache
def cuda_kernels() -> SimpleNamespace | None:
    """mamba_ssm's (and causal_conv1d's) kernels, or ``None`` if they cannot be imported.

    Imported on first use, not with stemsplit, so that a broken install costs
    nothing until a CUDA tensor needs it. The reason for a failure is logged once.
    """
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import (
            mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined,
        )
    except Exception as exc:  # ImportError, OSError, RuntimeError from ABI mismatches...
        log.warning(
            "stemsplit: mamba_ssm CUDA kernels unavailable (%s: %s); using the portable "
            "PyTorch Mamba-2 backend",
            type(exc).__name__,
            exc,
        )
        return None
    try:
        import causal_conv1d  # noqa: F401  (the fused path calls its CUDA extension)
        import causal_conv1d_cuda  # noqa: F401

        fused = True
    except Exception as exc:
        log.warning(
            "stemsplit: causal_conv1d unavailable (%s: %s); the CUDA backend uses mamba_ssm's unfused path",
            type(exc).__name__,
            exc,
        )
        fused = False
    try:  # Mamba-1's scan is a compiled extension of its own (selective_scan_cuda)
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:
        log.warning(
            "stemsplit: mamba_ssm's selective_scan_fn unavailable (%s: %s); Mamba-1 layers use "
            "the portable PyTorch scan",
            type(exc).__name__,
            exc,
        )
        selective_scan_fn = None
    return SimpleNamespace(
        fused=fused,
        split_conv1d_scan=mamba_split_conv1d_scan_combined,
        chunk_scan=mamba_chunk_scan_combined,
        rmsnorm=rmsnorm_fn,
        selective_scan=selective_scan_fn,
    )


def resolve_backend(requested: str | None, device: torch.device, kernel: str = "chunk_scan") -> str:
    """Pick ``portable`` or ``cuda`` for a tensor on ``device``.

    ``requested`` overrides the environment variable; ``None`` or ``auto``
    means: cuda where possible. ``kernel``: the :func:`cuda_kernels` entry the
    layer needs (Mamba-2: ``chunk_scan``, Mamba-1: ``selective_scan``).
    """
    choice = requested or os.environ.get(BACKEND_ENV, "auto")
    if choice not in BACKENDS:
        raise ValueError(
            f"unknown Mamba backend {choice!r} (expected {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]})"
        )
    if choice == "portable":
        return "portable"
    kernels = cuda_kernels() if device.type == "cuda" else None
    usable = kernels is not None and getattr(kernels, kernel) is not None
    if choice == "cuda" and not usable:
        why = (
            f"this runs on {device.type}, not a CUDA device"
            if device.type != "cuda"
            else f"mamba_ssm's {kernel} kernel is not importable (stemsplit doctor says why)"
        )
        raise RuntimeError(f"Mamba backend 'cuda' was requested, but {why}")
    return "cuda" if usable else "portable"


def _may_overwrite(*tensors: Tensor) -> bool:
    """In-place arithmetic is safe: autograd does not need these tensors' values."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


class RMSNormGated(nn.Module):
    """``norm(y * silu(z))`` with RMS normalisation over all features (mamba_ssm, norm_before_gate=False)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        g = y * F.silu(z)
        return g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba2(nn.Module):
    """Mamba-2 block: [batch, length, d_model] -> [batch, length, d_model].

    Args:
        d_model: feature size of the sequence.
        d_state: SSM state size per head (N).
        d_conv: width of the causal depthwise convolution.
        expand: inner size is ``expand * d_model``.
        headdim: features per head (P); ``nheads = d_inner / headdim``.
        chunk_size: longest chunk of the SSD scan.
        backend: ``auto``/``portable``/``cuda``; ``None`` reads ``STEMSPLIT_MAMBA_BACKEND``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 256,
        backend: str | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.headdim = headdim
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not a multiple of headdim {headdim}")
        self.nheads = self.d_inner // headdim
        self.chunk_size = chunk_size
        self.backend = backend

        # Order of the projection: [z, x, B, C, dt] (x, B, C go through the conv).
        conv_dim = self.d_inner + 2 * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)

        # mamba_ssm's initialisation: dt log-uniform in [dt_min, dt_max] stored through
        # the inverse softplus, A uniform in A_init_range stored as log, D = 1.
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]  # mamba_ssm's optimizer flag, undeclared

        self.norm = RMSNormGated(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        if resolve_backend(self.backend, u.device) == "cuda":
            return self._forward_cuda(u)
        return self._forward_portable(u)

    def _split_conv(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """in_proj output -> z, x, B, C (after the causal conv + SiLU) and raw dt."""
        length = zxbcdt.shape[1]
        z, xBC, dt = zxbcdt.split([self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], -1)
        # Causal depthwise convolution over time (left context only).
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :length].transpose(1, 2)
        x, B, C = F.silu(xBC).split([self.d_inner, self.d_state, self.d_state], -1)
        return z, x, B, C, dt

    def _forward_portable(self, u: Tensor) -> Tensor:
        """Pure PyTorch (with oneDNN's fused CPU kernels where they apply; see :mod:`..ops.onednn`)."""
        batch, length, _ = u.shape
        # Zero steps appended up to a whole number of chunks: the layer is causal, so
        # they change no earlier output, and the scan's big tensors need no padding.
        n_chunks, q = chunk_layout(length, self.chunk_size)
        padded = n_chunks * q
        if padded > length:
            u = F.pad(u, (0, 0, 0, padded - length))
        # in_proj as three products over row blocks of its weight [z | xBC | dt], so
        # each result is contiguous and silu(z) comes out of the product's own pass.
        w = self.in_proj.weight
        conv_dim = self.d_inner + 2 * self.d_state
        gate = onednn.linear(u, w[: self.d_inner], activation="silu")  # silu(z), [b, l, d_inner]
        xBC = onednn.linear(u, w[self.d_inner : self.d_inner + conv_dim])  # [b, l, conv_dim]
        dt = F.linear(u, w[self.d_inner + conv_dim :])  # [b, l, h]
        xBC = onednn.causal_conv1d_silu(xBC, self.conv1d.weight, self.conv1d.bias)
        x, B, C = xBC.split([self.d_inner, self.d_state, self.d_state], -1)
        dt = F.softplus(dt + self.dt_bias)  # [b, l, h]
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))  # [h]
        x = x.reshape(batch, padded, self.nheads, self.headdim)
        y = ssd_scan(x, dt, A, B, C, self.D, self.chunk_size)
        out = self._gated_norm_out_proj(y.reshape(batch, padded, self.d_inner), gate)
        return out[:, :length]

    def _gated_norm_out_proj(self, y: Tensor, gate: Tensor) -> Tensor:
        """``out_proj(norm(y, z))`` given gate = silu(z); y, gate [b, l, d_inner] -> [b, l, d_model].

        RMSNorm scales each token by one number r, and out_proj is linear, so r is
        applied to the d_model outputs instead of the d_inner inputs, and the norm's
        weight is folded into out_proj's: two fewer passes over the widest tensor.
        """
        g = y.mul_(gate) if _may_overwrite(y, gate) else y * gate
        stats = torch.promote_types(g.dtype, torch.float32)  # bf16 products, float32 statistics
        rms = torch.linalg.vector_norm(g, dim=-1, keepdim=True, dtype=stats) / math.sqrt(g.shape[-1])
        r = torch.rsqrt(rms.square() + self.norm.eps)  # [b, l, 1]
        weight = self.out_proj.weight * self.norm.weight
        return onednn.linear(g, weight) * r

    def _forward_cuda(self, u: Tensor) -> Tensor:
        kernels = cuda_kernels()
        assert kernels is not None  # resolve_backend chose cuda: they imported
        zxbcdt = self.in_proj(u)
        A = -torch.exp(self.A_log.float())
        conv_weight = self.conv1d.weight.squeeze(1)  # [conv_dim, d_conv]
        if kernels.fused:
            return kernels.split_conv1d_scan(
                zxbcdt,
                conv_weight,
                self.conv1d.bias,
                self.dt_bias,
                A,
                D=self.D,
                chunk_size=self.chunk_size,
                activation="silu",
                rmsnorm_weight=self.norm.weight,
                rmsnorm_eps=self.norm.eps,
                outproj_weight=self.out_proj.weight,
                outproj_bias=None,
                headdim=self.headdim,
                ngroups=1,
                norm_before_gate=False,
            )
        batch, length, _ = u.shape
        z, x, B, C, dt = self._split_conv(zxbcdt)
        y = kernels.chunk_scan(
            x.reshape(batch, length, self.nheads, self.headdim),
            dt,
            A,
            B[:, :, None],  # one group
            C[:, :, None],
            chunk_size=self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
        )
        y = kernels.rmsnorm(
            y.reshape(batch, length, self.d_inner),
            self.norm.weight,
            None,
            z=z,
            eps=self.norm.eps,
            group_size=self.d_inner,
            norm_before_gate=False,
        )
        return self.out_proj(y)
