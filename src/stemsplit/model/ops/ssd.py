"""The Mamba-2 selective state-space scan in plain PyTorch.

For every head ``h`` the scan runs the recurrence (state ``s`` of shape
[headdim, d_state])::

    s_t = exp(dt_t * A_h) * s_{t-1} + dt_t * x_t B_t^T
    y_t = s_t C_t + D_h * x_t

Two implementations live here:

* :func:`ssd_scan` - the chunked "state-space duality" algorithm (Dao & Gu,
  2024) that mamba_ssm's kernels also use. Inside a chunk of ``q`` steps the
  recurrence is one masked matrix product (attention-like, cost q^2); between
  chunks only the [headdim, d_state] states are carried. No Python loop over
  time steps; memory is linear in the sequence length. On the CPU its batched
  products run through oneDNN (:func:`.onednn.bmm`).
* :func:`ssd_scan_naive` - the recurrence step by step. Slow; it exists so
  tests can check :func:`ssd_scan` against the definition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .onednn import bmm

__all__ = ["chunk_layout", "ssd_scan", "ssd_scan_naive"]


def chunk_layout(length: int, chunk_size: int) -> tuple[int, int]:
    """(number of chunks, chunk length): the fewest chunks of at most ``chunk_size`` steps, all equal."""
    n_chunks = max(1, math.ceil(length / chunk_size))
    return n_chunks, math.ceil(length / n_chunks)


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """Chunked SSD scan.

    Args:
        x: [batch, length, heads, headdim] inputs.
        dt: [batch, length, heads] step sizes (already through softplus, >= 0).
        A: [heads] decay rates (negative).
        B: [batch, length, d_state] input projections (one group, shared by all heads).
        C: [batch, length, d_state] output projections.
        D: [heads] skip connection, or None.
        chunk_size: longest chunk. The sequence is cut into the fewest chunks of
            at most this length, all of equal size, so no compute goes to a
            nearly empty last chunk.

    Returns:
        y: [batch, length, heads, headdim].
    """
    batch, length, heads, headdim = x.shape
    d_state = B.shape[-1]
    n_chunks, q = chunk_layout(length, chunk_size)
    pad = n_chunks * q - length
    # Without autograd, a faster arrangement of the same steps (in-place arithmetic
    # and outputs written where they are read); autograd needs the intermediate values,
    # and torch.compile traces the plain steps below (inductor does its own fusing).
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, dt, A, B, C, D))
    if not (grads or torch.compiler.is_compiling()):
        return _ssd_scan_inference(x, dt, A, B, C, D, chunk_size)

    xdt = x * dt[..., None]
    if pad:
        # Zero steps at the end (dt = 0) leave the state untouched and, the scan
        # being causal, cannot change earlier outputs.
        xdt = F.pad(xdt, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))

    # Chunked views: c = chunk, i/j = step inside the chunk.
    xdt = xdt.reshape(batch, n_chunks, q, heads, headdim)
    B = B.reshape(batch, n_chunks, q, d_state)
    C = C.reshape(batch, n_chunks, q, d_state)
    # Log of the decay from the chunk start through step i.
    log_decay = torch.cumsum((dt * A).reshape(batch, n_chunks, q, heads), dim=2)  # [b, c, i, h]

    # 1. Within each chunk: y_i = sum_{j <= i} (C_i . B_j) exp(L_i - L_j) dt_j x_j.
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    scores = bmm(C, B.transpose(-1, -2)).masked_fill(~causal, 0)  # [b, c, i, j]
    log_t = log_decay.transpose(2, 3).contiguous()  # [b, c, h, i]
    # L_i - L_j <= 0 on and below the diagonal; above it the clamp keeps exp finite
    # and the zeroed scores remove it.
    seg = log_t[..., :, None] - log_t[..., None, :]  # [b, c, h, i, j]
    weights = seg.clamp_max(0).exp() * scores[:, :, None]
    y_heads = bmm(weights, xdt.transpose(2, 3))  # [b, c, h, i, p]

    # Back to [b, c, i, h, p], with the skip connection D_h x_i folded into the same pass.
    if D is None:
        y = y_heads.transpose(2, 3).contiguous()
    else:
        x_chunks = F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x
        y = (x_chunks.reshape(xdt.shape) * D[:, None]).add_(y_heads.transpose(2, 3))

    if n_chunks > 1:
        # 2. The state each chunk leaves behind from its own inputs, kept transposed
        #    ([n, h*p], the layout the products below want):
        #    s_c^T = sum_j B_j exp(L_last - L_j) dt_j x_j^T, as [b, c-1, n, h*p].
        to_end = torch.exp(log_decay[:, :-1, -1:] - log_decay[:, :-1])  # [b, c-1, j, h]
        weighted = (xdt[:, :-1] * to_end[..., None]).reshape(batch, n_chunks - 1, q, heads * headdim)
        chunk_states = bmm(B[:, :-1].transpose(-1, -2), weighted)

        # 3. Carry states across chunks (a loop over chunks, not steps).
        chunk_decay = torch.exp(log_decay[:, :, -1]).repeat_interleave(headdim, dim=-1)[:, :, None]
        carried = [chunk_states[:, 0]]
        for c in range(1, n_chunks - 1):
            carried.append(chunk_decay[:, c] * carried[-1] + chunk_states[:, c])
        incoming = torch.stack(carried, dim=1)  # state entering chunks 1.., [b, c-1, n, h*p]

        # 4. What the incoming state adds: exp(L_i) C_i s.
        from_state = bmm(C[:, 1:], incoming).reshape(batch, n_chunks - 1, q, heads, headdim)
        y[:, 1:] += from_state * torch.exp(log_decay[:, 1:])[..., None]

    return y.reshape(batch, n_chunks * q, heads, headdim)[:, :length]


def _ssd_scan_inference(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, chunk_size: int
) -> Tensor:
    """:func:`ssd_scan` without autograd, arranged for speed (same arguments and result).

    The same four steps, but every large tensor is written once, in the layout
    its consumer reads (``out=`` and in-place arithmetic). The products and the
    result are in ``x``'s dtype (bfloat16 under autocast), the decays in float32;
    small operands are cast to the big one's dtype first, as element-wise ops on
    mixed dtypes take a slow, unvectorised path.
    """
    batch, length, heads, headdim = x.shape
    d_state = B.shape[-1]
    n_chunks, q = chunk_layout(length, chunk_size)
    pad = n_chunks * q - length
    if pad:  # zero steps at the end (dt = 0): no effect on the state or on earlier outputs
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    work = x.dtype  # of the products
    x = x.reshape(batch, n_chunks, q, heads, headdim)
    dt = dt.reshape(batch, n_chunks, q, heads)
    B = B.reshape(batch, n_chunks, q, d_state)
    C = C.reshape(batch, n_chunks, q, d_state)
    log_decay = torch.cumsum(dt * A, dim=2)  # [b, c, i, h]

    # dt_j x_j with heads before steps, [b, c, h, j, p]: the layout of the product in step 1.
    xdt = x.new_empty(batch, n_chunks, heads, q, headdim, dtype=work)
    torch.mul(x.transpose(2, 3), dt.to(work).transpose(2, 3)[..., None], out=xdt)

    # 1. Within each chunk: y_i = sum_{j <= i} (C_i . B_j) exp(L_i - L_j) dt_j x_j.
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    scores = bmm(C, B.transpose(-1, -2)).masked_fill_(~causal, 0)  # [b, c, i, j]
    log_t = log_decay.transpose(2, 3).contiguous()  # [b, c, h, i]
    weights = torch.sub(log_t[..., :, None], log_t[..., None, :]).clamp_max_(0).exp_()  # [b, c, h, i, j]
    weights = weights.mul_(scores.to(weights.dtype)[:, :, None]).to(work)
    y_heads = bmm(weights, xdt)  # [b, c, h, i, p]
    del weights

    # Back to [b, c, i, h, p] in one pass, the skip connection D_h x_i added on the way.
    y = x.new_empty(batch, n_chunks, q, heads, headdim, dtype=work)
    if D is None:
        y.copy_(y_heads.transpose(2, 3))
    else:
        torch.addcmul(y_heads.transpose(2, 3), x, D.to(work)[:, None], out=y)
    del y_heads

    if n_chunks > 1:
        # 2. The state each chunk leaves behind, transposed: s_c^T = sum_j B_j exp(L_last - L_j) dt_j x_j^T.
        to_end = torch.exp(log_decay[:, :-1, -1:] - log_decay[:, :-1]).mul_(dt[:, :-1])  # [b, c-1, j, h]
        weighted = x.new_empty(batch, n_chunks - 1, q, heads, headdim, dtype=work)
        torch.mul(x[:, :-1], to_end.to(work)[..., None], out=weighted)
        chunk_states = bmm(B[:, :-1].transpose(-1, -2), weighted.view(batch, n_chunks - 1, q, -1))

        # 3. Carry states across chunks.
        chunk_decay = torch.exp(log_decay[:, :, -1]).repeat_interleave(headdim, dim=-1)[:, :, None]
        carried = [chunk_states[:, 0]]
        for c in range(1, n_chunks - 1):
            carried.append(torch.addcmul(chunk_states[:, c], chunk_decay[:, c], carried[-1]))
        incoming = torch.stack(carried, dim=1)  # [b, c-1, n, h*p]

        # 4. What the incoming state adds: exp(L_i) C_i s.
        from_state = bmm(C[:, 1:], incoming).view(batch, n_chunks - 1, q, heads, headdim)
        y[:, 1:].addcmul_(from_state, torch.exp(log_decay[:, 1:]).to(work)[..., None])

    return y.view(batch, n_chunks * q, heads, headdim)[:, :length]


def ssd_scan_naive(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """The recurrence one step at a time (reference for tests; same shapes as :func:`ssd_scan`)."""
    batch, length, heads, headdim = x.shape
    state = x.new_zeros(batch, heads, headdim, B.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # [b, h, 1, 1]
        update = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        state = decay * state + update
        ys.append((state @ C[:, t, None, :, None]).squeeze(-1))  # [b, h, p]
    y = torch.stack(ys, dim=1)
    return y if D is None else y + D[:, None] * x
