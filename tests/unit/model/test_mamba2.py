"""The Mamba-2 layer: mamba_ssm's parameter layout, the portable math, backend dispatch."""

import importlib.util
import logging

import pytest
import torch
import torch.nn.functional as F

from stemsplit.model.layers.mamba2 import BACKEND_ENV, Mamba2, cuda_kernels, resolve_backend
from stemsplit.model.ops.ssd import ssd_scan_naive

HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None


def perturbed_layer(d_model=32, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    layer = Mamba2(d_model, expand=4, **kwargs).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer


def naive_mamba2(layer: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """The layer written out from its definition, with the step-by-step scan."""
    length = u.shape[1]
    z, xBC, dt = layer.in_proj(u).split([layer.d_inner, layer.d_inner + 2 * layer.d_state, layer.nheads], -1)
    xBC = F.conv1d(
        F.pad(xBC.transpose(1, 2), (layer.d_conv - 1, 0)),
        layer.conv1d.weight,
        layer.conv1d.bias,
        groups=xBC.shape[-1],
    )
    x, B, C = F.silu(xBC.transpose(1, 2)).split([layer.d_inner, layer.d_state, layer.d_state], -1)
    dt = F.softplus(dt + layer.dt_bias)
    x = x.reshape(*x.shape[:2], layer.nheads, layer.headdim)
    y = ssd_scan_naive(x, dt, -torch.exp(layer.A_log), B, C, layer.D).reshape(u.shape[0], length, -1)
    g = y * F.silu(z)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm.weight
    return layer.out_proj(g)


def test_parameter_layout_matches_mamba_ssm():
    layer = Mamba2(128, d_state=128, d_conv=4, expand=4, headdim=64)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "dt_bias": (8,),
        "A_log": (8,),
        "D": (8,),
        "in_proj.weight": (1288, 128),
        "conv1d.weight": (768, 1, 4),
        "conv1d.bias": (768,),
        "norm.weight": (512,),
        "out_proj.weight": (128, 512),
    }


def test_initialisation_follows_mamba_ssm():
    layer = Mamba2(128, expand=4)
    dt = F.softplus(layer.dt_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    A = torch.exp(layer.A_log)
    assert A.min() >= 1 and A.max() <= 16
    assert torch.equal(layer.D, torch.ones(8)) and torch.equal(layer.norm.weight, torch.ones(512))


@pytest.mark.parametrize("length", [1, 3, 57, 259, 300])
def test_portable_layer_equals_definition(length):
    layer = perturbed_layer(backend="portable", chunk_size=64)
    u = torch.randn(3, length, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(u), naive_mamba2(layer, u), rtol=1e-9, atol=1e-9)


def test_layer_is_causal_and_batch_independent():
    layer = perturbed_layer(backend="portable")
    u = torch.randn(4, 120, 32, dtype=torch.float64)
    changed = u.clone()
    changed[:, 80:] = torch.randn(4, 40, 32, dtype=torch.float64)
    with torch.no_grad():
        out, out_changed = layer(u), layer(changed)
        alone = layer(u[2:3])
    torch.testing.assert_close(out[:, :80], out_changed[:, :80], rtol=0, atol=1e-12)
    torch.testing.assert_close(alone, out[2:3], rtol=1e-12, atol=1e-12)


def test_backend_choice(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend(None, cpu) == "portable"
    assert resolve_backend("auto", cpu) == "portable"
    monkeypatch.setenv(BACKEND_ENV, "portable")
    assert resolve_backend(None, cpu) == "portable"
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was requested"):
        resolve_backend(None, cpu)
    # An explicit argument beats the environment.
    assert resolve_backend("portable", cpu) == "portable"
    with pytest.raises(ValueError, match="unknown Mamba backend 'triton'"):
        resolve_backend("triton", cpu)


def test_forcing_cuda_backend_on_cpu_tensor_fails_clearly():
    layer = Mamba2(32, expand=4, backend="cuda")
    with pytest.raises(RuntimeError, match="not a CUDA device"):
        layer(torch.randn(1, 5, 32))


@pytest.mark.skipif(HAS_MAMBA_SSM, reason="mamba_ssm is installed here")
def test_missing_kernels_fall_back_loudly_once(caplog):
    cuda_kernels.cache_clear()
    with caplog.at_level(logging.WARNING, logger="stemsplit.model.layers.mamba2"):
        assert cuda_kernels() is None
        assert cuda_kernels() is None
    warnings = [r for r in caplog.records if "mamba_ssm CUDA kernels unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert "portable" in warnings[0].getMessage()
    cuda_kernels.cache_clear()


needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_MAMBA_SSM), reason="needs a CUDA GPU and mamba_ssm"
)


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("fused", [True, False])
def test_cuda_backend_matches_portable(fused, monkeypatch):
    kernels = cuda_kernels()
    if fused and not kernels.fused:
        pytest.skip("causal_conv1d not installed")
    monkeypatch.setattr(kernels, "fused", fused)
    torch.backends.cuda.matmul.allow_tf32 = False
    layer = perturbed_layer(dtype=torch.float32).cuda()
    u = torch.randn(4, 259, 32, device="cuda")
    with torch.no_grad():
        layer.backend = "cuda"
        fast = layer(u)
        layer.backend = "portable"
        portable = layer(u)
    assert ((fast - portable).norm() / portable.norm()).item() < 1e-5
