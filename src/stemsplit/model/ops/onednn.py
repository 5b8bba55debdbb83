"""Fused CPU kernels from oneDNN (mkldnn), each with a plain PyTorch fallback.

Why this exists: on AMD CPUs the MKL that PyTorch ships runs float32 matrix
products with AVX2 code only; oneDNN, which ships in the same wheel, uses
AVX-512 (and AVX512-BF16/AMX for bfloat16). On a Zen 5 core a TS-BSMamba2
projection ([30k tokens, 128] x [128, 1288]) takes 2.3x less time through
oneDNN. oneDNN also fuses what follows a product (tanh, SiLU, an added
tensor) into the same pass over memory, and its channels-last depthwise
convolution with a fused SiLU is 4x faster than the ``F.conv1d`` path.

Every function here computes exactly what its docstring says with plain
PyTorch when oneDNN cannot be used: other devices, float64, autograd (the
oneDNN ops have no backward), a PyTorch built without mkldnn, or when
switched off with :func:`enabled` / ``STEMSPLIT_ONEDNN=0``.

Under CPU autocast the oneDNN calls get their operands cast to the autocast
dtype, as ``F.linear`` / ``F.conv1d`` would.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "available",
    "bmm",
    "causal_conv1d_silu",
    "enabled",
    "grouped_linear",
    "linear",
    "linear_add",
    "usable",
]

log = logging.getLogger(__name__)

ENV = "STEMSPLIT_ONEDNN"
_ACTIVATIONS = {None: ("none", None), "tanh": ("tanh", torch.tanh), "silu": ("swish", F.silu)}
_switch = {"on": os.environ.get(ENV, "1") != "0"}


@dataclass(frozen=True)
class _Ops:
    """oneDNN's operators (``torch.ops.mkldnn``) and whether the CPU runs bfloat16 natively."""

    linear: Callable[..., Tensor]
    linear_binary: Callable[..., Tensor]
    conv: Callable[..., Tensor]
    bf16: bool


@functools.cache
def _ops() -> _Ops | None:
    """The oneDNN operators, or None where they are missing or give wrong numbers."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        ops = _Ops(
            linear=torch.ops.mkldnn._linear_pointwise.default,
            linear_binary=torch.ops.mkldnn._linear_pointwise.binary,
            conv=torch.ops.mkldnn._convolution_pointwise.default,
            bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        )
        with torch.autocast("cpu", enabled=False):  # the first call may come under autocast
            x, w = torch.randn(5, 8), torch.randn(3, 8)
            torch.testing.assert_close(ops.linear(x, w, None, "none", [], ""), x @ w.T)
    except Exception as exc:  # missing operator, changed signature, wrong result
        log.debug("oneDNN CPU kernels unavailable (%s: %s)", type(exc).__name__, exc)
        return None
    return ops


def _loaded_ops() -> _Ops:
    """The oneDNN operators, once :func:`available` (or :func:`_dtype`) has said they loaded."""
    ops = _ops()
    assert ops is not None
    return ops


def available() -> bool:
    """oneDNN kernels are present and switched on."""
    return _switch["on"] and _ops() is not None


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Switch the oneDNN kernels on or off inside a ``with`` block (for A/B comparisons and tests)."""
    before = _switch["on"]
    _switch["on"] = on
    try:
        yield
    finally:
        _switch["on"] = before


def _dtype(x: Tensor, *others: Tensor | None) -> torch.dtype | None:
    """The dtype to run oneDNN in, or None if these tensors must take the PyTorch path."""
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not available():
        return None  # under torch.compile the plain ops are traced: inductor fuses them itself
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *others)):
        return None  # oneDNN's ops have no backward
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype == torch.float32 or (dtype == torch.bfloat16 and _loaded_ops().bf16):
        return dtype
    return None


def usable(*tensors: Tensor) -> bool:
    """The oneDNN path would be taken for these operands (CPU, float32/bf16, no autograd)."""
    return _dtype(*tensors) is not None


@overload
def _cast(t: Tensor, dtype: torch.dtype) -> Tensor: ...
@overload
def _cast(t: None, dtype: torch.dtype) -> None: ...


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """``activation(x @ weight.T + bias)``; x [..., in], weight [out, in] -> [..., out].

    ``activation``: None, ``"tanh"`` or ``"silu"``.
    """
    name, fn = _ACTIVATIONS[activation]
    dtype = _dtype(x, weight, bias)
    if dtype is None:
        y = F.linear(x, weight, bias)
        return y if fn is None else fn(y)
    return _loaded_ops().linear(_cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype), name, [], "")


def grouped_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, groups: int, activation: str | None = None
) -> Tensor:
    """A grouped 1x1 convolution on channels-last features: ``nn.Conv1d(groups=groups)`` per row.

    x: [..., groups * cin]; weight: [groups * cout, cin, 1]; -> [..., groups * cout]. Output
    group g is ``activation(x_g @ weight_g.T + bias_g)``.
    """
    name, fn = _ACTIVATIONS[activation]
    *lead, channels = x.shape
    dtype = _dtype(x, weight, bias)
    if dtype is None:
        cout, cin = weight.shape[0] // groups, weight.shape[1]
        y = torch.einsum("...gi,goi->...go", x.reshape(*lead, groups, cin), weight.reshape(groups, cout, cin))
        y = y.reshape(*lead, groups * cout) + (0 if bias is None else bias)
        return y if fn is None else fn(y)
    # [rows, C] memory is a [1, C, 1, rows] image in channels-last order.
    image = _cast(x, dtype).reshape(1, -1, channels).permute(0, 2, 1).unsqueeze(2)
    w4 = _cast(weight, dtype).unsqueeze(-1)
    y = _loaded_ops().conv(image, w4, _cast(bias, dtype), [0, 0], [1, 1], [1, 1], groups, name, [], "")
    return y[0, :, 0].T.reshape(*lead, -1)


def linear_add(x: Tensor, weight: Tensor, bias: Tensor | None, other: Tensor) -> Tensor:
    """``x @ weight.T + bias + other`` (other has the output's shape); the sum in one pass."""
    dtype = _dtype(x, weight, bias, other)
    if dtype is None:
        return torch.add(F.linear(x, weight, bias), other)
    if other.dtype != dtype:
        # Under bf16 autocast the float32 residual stream stays float32: add separately.
        return other + linear(x, weight, bias)
    return _loaded_ops().linear_binary(
        _cast(x, dtype), other.contiguous(), _cast(weight, dtype), _cast(bias, dtype), "add"
    )


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched matrix product ``a @ b``: a [..., M, K], b [..., K, P] -> [..., M, P] (same batch dims).

    PyTorch sends float32 batched products to MKL (AVX2 on AMD). oneDNN runs them
    as a grouped 1x1 convolution, one group per batch item: ``a`` is the weight
    [groups * M, K, 1, 1] and ``b`` the input [1, groups * K, 1, P]. On a Zen 5 core
    this is 1.5-2x faster for the scan's products ([130, 130] x [130, 64] and the like).
    bfloat16 products already go to oneDNN's matmul, which beats the convolution there.
    """
    dtype = _dtype(a, b)
    if dtype is None:
        return torch.matmul(a, b)
    if dtype == torch.bfloat16:  # PyTorch already sends these to oneDNN's matmul, faster here
        return torch.matmul(_cast(a, dtype), _cast(b, dtype))
    *batch, m, k = a.shape
    p = b.shape[-1]
    groups = a.numel() // (m * k)
    weight = _cast(a, dtype).reshape(groups * m, k, 1, 1).contiguous()
    image = _cast(b, dtype).reshape(1, groups * k, 1, p).contiguous()
    y = _loaded_ops().conv(image, weight, None, [0, 0], [1, 1], [1, 1], groups, "none", [], "")
    return y.reshape(*batch, m, p)


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """SiLU of a causal depthwise convolution over time, channels-last.

    x: [batch, length, channels]; weight: [channels, 1, width] (``nn.Conv1d``
    with ``groups=channels``); output y: [batch, length, channels] with
    ``y[:, t] = silu(bias + sum_k weight[:, 0, k] * x[:, t - width + 1 + k])``,
    zeros before the start. The result may be a view with padded rows.
    """
    length, channels = x.shape[1], x.shape[2]
    width = weight.shape[-1]
    dtype = _dtype(x, weight, bias)
    if dtype is None:
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=width - 1, groups=channels)
        return F.silu(y[..., :length].transpose(1, 2))
    # [b, L, C] memory is [b, C, 1, L] in channels-last order: no copy, and oneDNN's
    # NHWC depthwise kernel with the SiLU fused in. Padding is symmetric: drop the tail.
    x4 = _cast(x, dtype).contiguous().permute(0, 2, 1).unsqueeze(2)
    w4 = _cast(weight, dtype).unsqueeze(2)  # [C, 1, 1, width]
    y = _loaded_ops().conv(
        x4, w4, _cast(bias, dtype), [0, width - 1], [1, 1], [1, 1], channels, "swish", [], ""
    )
    return y[:, :, 0, :length].permute(0, 2, 1)
