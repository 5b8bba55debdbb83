"""The Mamba-1 selective scan (S6) in plain PyTorch.

For every channel ``d`` and state ``n`` the scan runs the recurrence (Gu & Dao,
2023, Algorithm 2, zero-order hold for A, Euler step for B)::

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n] + D[d] * u_t[d]

and, when a gate ``z`` is given, returns ``y * silu(z)``.

Two implementations live here:

* :func:`selective_scan` - chunked. Inside a chunk of ``q`` steps the
  recurrence is solved by recursive doubling (log2(q) passes: after the pass
  with stride k, every step holds the decay product and the state of the last
  2k steps); between chunks only the [channels, d_state] state is carried, in
  a loop over chunks, not steps. Every number it forms is a decay product
  (<= 1) or a partial state, so nothing overflows however strong the decays
  are. Memory: the [chunk, channels, d_state] tensors of one chunk at a time.
  With autograd each chunk is checkpointed: only its inputs, output and end
  state are kept, and the backward pass recomputes its [chunk, channels,
  d_state] tensors (one more forward of the scan; without it a batch of four
  3 s mixtures needs ~1 GB per U-Mamba-Net layer).
* :func:`selective_scan_ref` - the recurrence step by step. Slow; it exists so
  tests can check :func:`selective_scan` against the definition (in float64).

Why not Mamba-2's matrix form (:mod:`.ssd`)? There the decay is one number per
head and step, so a chunk's step-to-step weights are one [q, q] matrix per
head. Here it differs for every (channel, state) pair: the same matrices
would take q times the memory of the states themselves, and factoring them as
exp(L_i) * exp(-L_j) (cumulative log-decays) overflows float32 within a few
dozen steps of strong decay.

Layout: [batch, length, channels] like the rest of the portable code;
mamba_ssm's ``selective_scan_fn`` takes [batch, channels, length] (see
:class:`stemsplit.model.layers.mamba1.Mamba`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .ssd import chunk_layout

__all__ = ["selective_scan", "selective_scan_ref"]


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    chunk_size: int = 32,
) -> Tensor:
    """Chunked selective scan.

    Args:
        u: [batch, length, channels] inputs.
        delta: [batch, length, channels] step sizes (already through softplus, >= 0).
        A: [channels, d_state] continuous-time rates (negative).
        B: [batch, length, d_state] input projections.
        C: [batch, length, d_state] output projections.
        D: [channels] skip connection, or None.
        z: [batch, length, channels] gate, or None: the output is multiplied by silu(z).
        chunk_size: longest chunk. The sequence is cut into the fewest chunks of
            at most this length, all equal (:func:`.ssd.chunk_layout`).

    Returns:
        y: [batch, length, channels].
    """
    length = u.shape[1]
    q = chunk_layout(length, chunk_size)[1]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    state = None  # [b, d, n] at the end of the previous chunk
    ys = []
    # A loop over chunks, not steps: each chunk's [q, d, n] tensors stay in the CPU's
    # cache through all the passes below, and the state is handed on to the next chunk.
    for start in range(0, length, q):
        steps = slice(start, start + q)
        args = (state, u[:, steps], delta[:, steps], A, B[:, steps], C[:, steps])
        if training:
            # Keep only each chunk's inputs for the backward pass and recompute its [q, d, n]
            # tensors there: a 3 s U-Mamba-Net batch would otherwise hold ~1 GB per layer.
            y, state = checkpoint(_scan_chunk, *args, False, use_reentrant=True)
        else:
            y, state = _scan_chunk(*args, in_place=True)
        ys.append(y)
    y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
    if D is not None:
        y = y + u * D
    return y if z is None else y * F.silu(z)


def _scan_chunk(
    state: Tensor | None, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, in_place: bool
) -> tuple[Tensor, Tensor]:
    """One chunk of :func:`selective_scan` (no D, no gate): ``y`` [b, q, d] and the state after its last
    step [b, d, n], from the ``state`` entering it (None: zero). ``in_place`` only without autograd."""
    dt = delta[..., None]  # [b, q, d, 1]
    a = torch.exp(dt * A)  # decay of each step, [b, q, d, n]
    h = (dt * u[..., None]) * B[:, :, None, :]  # input of each step
    # 1. Within the chunk, by doubling: after the pass with stride k, step i holds the
    #    decay product a_i and the state h_i of steps i-2k+1..i (from a zero state).
    k = 1
    while k < a.shape[1]:
        if in_place:  # the right-hand sides are formed before the writes
            h[:, k:] += a[:, k:] * h[:, :-k]
            a[:, k:] = a[:, k:] * a[:, :-k]
        else:
            h = torch.cat([h[:, :k], torch.addcmul(h[:, k:], a[:, k:], h[:, :-k])], dim=1)
            a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    # 2. a_i is now the decay from the chunk's start through step i: add what the
    #    state entering the chunk leaves at each step.
    if state is not None:
        h = h.addcmul_(a, state[:, None]) if in_place else torch.addcmul(h, a, state[:, None])
    # 3. Read out y_i = h_i C_i; hand the last state on.
    return torch.matmul(h, C[..., None])[..., 0], h[:, -1].clone()


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
) -> Tensor:
    """The recurrence one step at a time (reference for tests; same arguments as :func:`selective_scan`)."""
    batch, length, channels = u.shape
    state = u.new_zeros(batch, channels, A.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)  # [b, d, n]
        state = decay * state + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((state * C[:, t, None, :]).sum(-1))  # [b, d]
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D
    return y if z is None else y * F.silu(z)
