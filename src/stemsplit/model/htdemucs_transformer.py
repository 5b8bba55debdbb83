"""HTDemucs' cross-domain transformer (Rouard et al., "Hybrid Transformers for Music Source Separation",
arXiv 2211.08553), checkpoint-compatible with ``demucs/transformer.py`` of facebookresearch/demucs.

It sits at the bottom of the two U-nets (``htdemucs.py``) and works on two sequences at once::

    x  [B, C, Fr, T1] (spectrogram branch)  -> tokens [B, T1*Fr, C], token t*Fr + f
    xt [B, C, T2]     (waveform branch)     -> tokens [B, T2, C]
    x  = norm_in(x)   + weight * 2-d sin/cos position (time in channels [0, C/2), frequency above)
    xt = norm_in_t(xt) + weight * 1-d position (sin, cape or a learned "scaled" table)
    layer i (of t_layers), each branch its own weights (layers.i for x, layers_t.i for xt):
        i % 2 == 0 (1 with cross_first): self-attention layer, x and xt each on their own
        otherwise:                       cross-attention layer, x attends to xt and xt to the old x
    -> x [B, C, Fr, T1], xt [B, C, T2]

A layer (pre-norm, ``norm_first``; the published models)::

    x = x + gamma_1 * attention(norm1(x))            (cross: attention(norm1(q), norm2(k)))
    x = x + gamma_2 * linear2(act(linear1(norm2(x)))) (cross: norm3)
    x = norm_out(x)                                   GroupNorm(1): over ALL tokens and channels

Module and parameter names are upstream's (``MyTransformerEncoderLayer``,
``CrossTransformerEncoderLayer``, torch's ``nn.MultiheadAttention`` inside them), so
a Demucs state dict loads strictly. Only inference is written here: dropout,
the random shifts and CAPE augmentation that upstream draws in training, and the
sparse (xformers) attention are not.
"""

from __future__ import annotations

import math
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossTransformerEncoder", "LayerScale", "sin_embedding", "sin_embedding_2d"]

EMBEDDINGS = ("sin", "cape", "scaled")


class LayerScale(nn.Module):
    """A learned scale per channel: ``scale * x`` on [..., C] (channel_last) or [B, C, T]."""

    def __init__(self, channels: int, init: float = 0.0, channel_last: bool = False) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x if self.channel_last else self.scale[:, None] * x


class SequenceGroupNorm(nn.GroupNorm):
    """GroupNorm of tokens [B, T, C] (upstream ``MyGroupNorm``): with one group, over all T and C."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class MultiheadAttention(nn.Module):
    """torch's ``nn.MultiheadAttention`` (batch first, no dropout), its parameters under their names.

    query [B, N, C], key = value [B, M, C] -> [B, N, C]; softmax(q k^T / sqrt(C / heads)) v per head.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        w_q, w_kv = self.in_proj_weight.split((query.shape[-1], 2 * query.shape[-1]))
        b_q, b_kv = self.in_proj_bias.split((query.shape[-1], 2 * query.shape[-1]))
        q = F.linear(query, w_q, b_q).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, h, N, d]
        k, v = F.linear(key, w_kv, b_kv).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


def _norm(dim: int, group_norm: bool) -> nn.Module:
    return SequenceGroupNorm(1, dim) if group_norm else nn.LayerNorm(dim)


class _Layer(nn.Module):
    """What both layer kinds share: the feedforward, the layer scales and the closing norm.

    A subclass registers its attention, ``linear1``, ``linear2`` and norms, then calls
    :meth:`_finish` (upstream's registration order, which is the state dict's).
    """

    linear1: nn.Linear
    linear2: nn.Linear

    def __init__(self, gelu: bool, norm_first: bool) -> None:
        super().__init__()
        self.gelu = gelu
        self.norm_first = norm_first

    def _finish(self, dim: int, norm_out: bool, layer_scale: bool) -> None:
        # upstream: a norm_out only with norm_first, a GroupNorm of one group over the whole sequence
        self.norm_out = SequenceGroupNorm(1, dim) if self.norm_first and norm_out else None
        self.gamma_1 = LayerScale(dim, 1e-4, channel_last=True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(dim, 1e-4, channel_last=True) if layer_scale else nn.Identity()

    def feedforward(self, x: Tensor) -> Tensor:
        hidden = self.linear1(x)
        return self.linear2(F.gelu(hidden) if self.gelu else F.relu(hidden))

    def closed(self, x: Tensor) -> Tensor:
        return self.norm_out(x) if self.norm_out is not None else x


class SelfAttentionLayer(_Layer):
    """Upstream ``MyTransformerEncoderLayer``: tokens [B, N, C] -> same."""

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        gelu: bool,
        group_norm: bool,
        norm_first: bool,
        norm_out: bool,
        layer_scale: bool,
    ) -> None:
        super().__init__(gelu, norm_first)
        self.self_attn = MultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = _norm(dim, group_norm)
        self.norm2 = _norm(dim, group_norm)
        self._finish(dim, norm_out, layer_scale)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            y = self.norm1(x)
            x = x + self.gamma_1(self.self_attn(y, y))
            return self.closed(x + self.gamma_2(self.feedforward(self.norm2(x))))
        x = self.norm1(x + self.gamma_1(self.self_attn(x, x)))
        return self.norm2(x + self.gamma_2(self.feedforward(x)))


class CrossAttentionLayer(_Layer):
    """Upstream ``CrossTransformerEncoderLayer``: queries [B, N, C] attend to keys [B, M, C] -> [B, N, C]."""

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        gelu: bool,
        group_norm: bool,
        norm_first: bool,
        norm_out: bool,
        layer_scale: bool,
    ) -> None:
        super().__init__(gelu, norm_first)
        self.cross_attn = MultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = _norm(dim, group_norm)
        self.norm2 = _norm(dim, group_norm)
        self.norm3 = _norm(dim, group_norm)  # used with norm_first only; in the state dict either way
        self._finish(dim, norm_out, layer_scale)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        if self.norm_first:
            x = q + self.gamma_1(self.cross_attn(self.norm1(q), self.norm2(k)))
            return self.closed(x + self.gamma_2(self.feedforward(self.norm3(x))))
        x = self.norm1(q + self.gamma_1(self.cross_attn(q, k)))  # post-norm: the keys as they come
        return self.norm2(x + self.gamma_2(self.feedforward(x)))


class _LayerOptions(TypedDict):
    """The arguments both layer kinds take."""

    dim: int
    heads: int
    hidden: int
    gelu: bool
    group_norm: bool
    norm_first: bool
    norm_out: bool
    layer_scale: bool


class ScaledEmbedding(nn.Module):
    """A learned table, read times ``boost`` (upstream transformer.ScaledEmbedding): [N] -> [N, dim]."""

    def __init__(self, num: int, dim: int, boost: float = 3.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num, dim)
        self.boost = boost

    def forward(self, positions: Tensor) -> Tensor:
        return self.embedding(positions) * self.boost


def sin_embedding(
    length: int, dim: int, max_period: float, device: torch.device, centred: bool = False
) -> Tensor:
    """[length, dim]: cos then sin of position / max_period ** (i / (dim/2 - 1)), i < dim/2.

    Note the ``dim/2 - 1`` (not dim/2), as upstream. ``centred``: positions minus their mean
    (CAPE's ``mean_normalize``, at inference), else 0, 1, ..., length-1.
    """
    if centred:
        pos = torch.arange(length, device=device, dtype=torch.float32)
        pos = pos - pos.mean()
    else:
        pos = torch.arange(length, device=device)
    half = dim // 2
    periods = max_period ** (torch.arange(half, device=device) / (half - 1))
    phase = pos[:, None] / periods
    return torch.cat([phase.cos(), phase.sin()], dim=-1).float()


def sin_embedding_2d(dim: int, height: int, width: int, max_period: float, device: torch.device) -> Tensor:
    """[dim, height, width] (upstream create_2d_sin_embedding): channels 2i / 2i+1 below dim/2 are
    sin / cos of the width position w * exp(-2i log(max_period) / (dim/2)); those from dim/2 on, the
    same of the height position. ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(
            f"the transformer's channels must be a multiple of 4 for its 2-d positions, not {dim}"
        )
    half = dim // 2
    div = torch.exp(torch.arange(0.0, half, 2, device=device) * -(math.log(max_period) / half))  # [half/2]
    w = torch.arange(0.0, width, device=device)[:, None] * div  # [W, half/2]
    h = torch.arange(0.0, height, device=device)[:, None] * div  # [H, half/2]
    pe = torch.zeros(dim, height, width, device=device)
    pe[0:half:2] = w.sin().t()[:, None, :]
    pe[1:half:2] = w.cos().t()[:, None, :]
    pe[half::2] = h.sin().t()[:, :, None]
    pe[half + 1 :: 2] = h.cos().t()[:, :, None]
    return pe


class CrossTransformerEncoder(nn.Module):
    """The bottom of HTDemucs: x [B, C, Fr, T1], xt [B, C, T2] -> the same shapes (see the module doc).

    Options are upstream's ``t_*`` arguments of HTDemucs without the prefix; ``norm_in_group``
    (used when ``norm_in`` is false) and ``group_norm`` are GroupNorms of one group over the sequence.
    """

    norm_in: nn.LayerNorm | SequenceGroupNorm | nn.Identity
    norm_in_t: nn.LayerNorm | SequenceGroupNorm | nn.Identity

    def __init__(
        self,
        dim: int,
        emb: str,
        hidden_scale: float,
        num_heads: int,
        num_layers: int,
        cross_first: bool,
        max_positions: int,
        norm_in: bool,
        norm_in_group: bool,
        group_norm: bool,
        norm_first: bool,
        norm_out: bool,
        max_period: float,
        layer_scale: bool,
        gelu: bool,
        weight_pos_embed: float,
        cape_mean_normalize: bool,
    ) -> None:
        super().__init__()
        if emb not in EMBEDDINGS:
            raise ValueError(f"t_emb must be one of {', '.join(EMBEDDINGS)}, not {emb!r}")
        if dim % num_heads:
            raise ValueError(f"the transformer's {dim} channels do not split into t_heads = {num_heads}")
        self.dim = dim
        self.emb = emb
        self.max_period = max_period
        self.weight_pos_embed = weight_pos_embed
        self.cape_mean_normalize = cape_mean_normalize
        self.classic_parity = 1 if cross_first else 0
        if emb == "scaled":
            self.position_embeddings = ScaledEmbedding(max_positions, dim)
        if norm_in:
            self.norm_in, self.norm_in_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        elif norm_in_group:
            self.norm_in, self.norm_in_t = SequenceGroupNorm(1, dim), SequenceGroupNorm(1, dim)
        else:
            self.norm_in, self.norm_in_t = nn.Identity(), nn.Identity()
        options = _LayerOptions(
            dim=dim,
            heads=num_heads,
            hidden=int(dim * hidden_scale),
            gelu=gelu,
            group_norm=group_norm,
            norm_first=norm_first,
            norm_out=norm_out,
            layer_scale=layer_scale,
        )
        kinds: list[type[SelfAttentionLayer | CrossAttentionLayer]] = [
            SelfAttentionLayer if i % 2 == self.classic_parity else CrossAttentionLayer
            for i in range(num_layers)
        ]
        self.layers = nn.ModuleList(kind(**options) for kind in kinds)
        self.layers_t = nn.ModuleList(kind(**options) for kind in kinds)

    def time_positions(self, length: int, device: torch.device) -> Tensor:
        """[length, C] positions of the waveform branch's tokens."""
        if self.emb == "scaled":
            return self.position_embeddings(torch.arange(length, device=device))
        centred = self.emb == "cape" and self.cape_mean_normalize
        return sin_embedding(length, self.dim, self.max_period, device, centred=centred)

    def forward(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        b, c, fr, t1 = x.shape
        pos_2d = sin_embedding_2d(c, fr, t1, self.max_period, x.device).permute(2, 1, 0).reshape(t1 * fr, c)
        x = x.permute(0, 3, 2, 1).reshape(b, t1 * fr, c)  # token t * Fr + f
        x = self.norm_in(x) + self.weight_pos_embed * pos_2d
        xt = xt.transpose(1, 2)  # [B, T2, C]
        xt = self.norm_in_t(xt) + self.weight_pos_embed * self.time_positions(xt.shape[1], x.device)

        for layer, layer_t in zip(self.layers, self.layers_t, strict=True):
            if isinstance(layer, SelfAttentionLayer):
                x, xt = layer(x), layer_t(xt)
            else:
                x, xt = layer(x, xt), layer_t(xt, x)  # xt attends to x as it was before this layer

        x = x.reshape(b, t1, fr, c).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)
