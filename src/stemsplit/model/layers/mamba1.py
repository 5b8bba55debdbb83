"""A Mamba-1 layer (Gu & Dao, 2023: selective SSM, "S6") with two interchangeable backends.

Parameters carry the names and shapes of ``mamba_ssm.modules.mamba_simple.Mamba``
(``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``),
so weights trained with mamba_ssm load unchanged. For u [batch, length, d_model]::

    x, z  = in_proj(u)                          two [b, L, d_inner] halves
    x     = silu(causal depthwise conv1d(x))    width d_conv
    dt, B, C = x_proj(x)                        [b, L, dt_rank], [b, L, d_state] x 2
    delta = softplus(dt_proj(dt))               [b, L, d_inner] (bias inside the softplus)
    y     = selective_scan(x, delta, A = -exp(A_log), B, C, D) * silu(z)
    out   = out_proj(y)                         [b, L, d_model]

Default sizes are mamba_ssm's: ``expand`` = 2 (d_inner = 2 d_model), ``d_state``
= 16, ``d_conv`` = 4, ``dt_rank`` = ceil(d_model / 16) (a network using the layer
says why it picks others). Initialisation as mamba_ssm:
A = -[1..d_state] for every channel (S4D-real), D = 1, dt log-uniform in
[dt_min, dt_max] stored through the inverse softplus in ``dt_proj.bias``.

Backends, chosen per call exactly as for the Mamba-2 layer
(:func:`.mamba2.resolve_backend`, ``STEMSPLIT_MAMBA_BACKEND``):

* ``portable`` - pure PyTorch (:func:`..ops.selective_scan.selective_scan`). Any device,
  float32 or float64.
* ``cuda`` - mamba_ssm's ``selective_scan_fn`` CUDA kernel on CUDA tensors, when
  it imports (else the reason is logged once and the portable scan runs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import onednn
from ..ops.selective_scan import selective_scan
from .mamba2 import cuda_kernels, resolve_backend

__all__ = ["Mamba"]


class Mamba(nn.Module):
    """Mamba-1 block: [batch, length, d_model] -> [batch, length, d_model].

    Args:
        d_model: feature size of the sequence.
        d_state: SSM state size per channel (N).
        d_conv: width of the causal depthwise convolution.
        expand: inner size is ``expand * d_model``.
        dt_rank: rank of the step-size projection; None: ceil(d_model / 16).
        chunk_size: longest chunk of the portable scan.
        backend: ``auto``/``portable``/``cuda``; ``None`` reads ``STEMSPLIT_MAMBA_BACKEND``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        chunk_size: int = 32,
        backend: str | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.chunk_size = chunk_size
        self.backend = backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)  # [x | z]
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)  # [dt | B | C]
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # mamba_ssm's initialisation (dt_scale 1, "random" dt_proj init).
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # [d_inner, d_state]
        self.D = nn.Parameter(torch.ones(self.d_inner))
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True  # type: ignore[attr-defined]  # mamba_ssm's optimizer flag, undeclared

    def forward(self, u: Tensor) -> Tensor:
        if resolve_backend(self.backend, u.device, kernel="selective_scan") == "cuda":
            return self._forward_cuda(u)
        return self._forward_portable(u)

    def _A(self) -> Tensor:
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def _forward_portable(self, u: Tensor) -> Tensor:
        """Pure PyTorch (oneDNN's fused CPU kernels where they apply; see :mod:`..ops.onednn`)."""
        w = self.in_proj.weight
        x = onednn.linear(u, w[: self.d_inner])  # [b, L, d_inner]
        gate = onednn.linear(u, w[self.d_inner :], activation="silu")  # silu(z)
        x = onednn.causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)
        dt, B, C = onednn.linear(x, self.x_proj.weight).split([self.dt_rank, self.d_state, self.d_state], -1)
        delta = F.softplus(F.linear(dt, self.dt_proj.weight, self.dt_proj.bias))
        y = selective_scan(x, delta, self._A(), B, C, self.D, chunk_size=self.chunk_size)
        return onednn.linear(y * gate, self.out_proj.weight)

    def _forward_cuda(self, u: Tensor) -> Tensor:
        """mamba_ssm's selective_scan_fn (layout [b, channels, L]); the rest in PyTorch."""
        length = u.shape[1]
        x, z = self.in_proj(u).transpose(1, 2).chunk(2, dim=1)  # [b, d_inner, L] each
        x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], -1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # [b, d_inner, L]; bias added in the kernel
        kernels = cuda_kernels()
        assert kernels is not None  # resolve_backend chose cuda: they imported
        y = kernels.selective_scan(
            x,
            delta,
            self._A(),
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))

    def macs(self, tokens: int) -> int:
        """Multiply-accumulates of a forward pass over ``tokens`` steps (all rows of the batch).

        The four projections and the depthwise convolution (one per weight and
        token), and the scan: per channel, state and step, one for the decayed
        state, one for the input (delta * u * B) and one for the read-out (C h);
        plus D u and the gate per channel and step.
        """
        projections = sum(m.weight.numel() for m in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj))
        conv = self.d_inner * self.d_conv
        scan = 3 * self.d_inner * self.d_state + 2 * self.d_inner
        return tokens * (projections + conv + scan)
