"""The chunked Mamba-1 selective scan equals the step-by-step recurrence; the Mamba-1 layer."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from stemsplit.model.layers.mamba1 import Mamba
from stemsplit.model.ops.selective_scan import selective_scan, selective_scan_ref

HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None


def random_scan_inputs(length, batch=2, channels=6, d_state=5, seed=0, decay=8.0):
    g = torch.Generator().manual_seed(seed + length)
    kw = dict(generator=g, dtype=torch.float64)
    return dict(
        u=torch.randn(batch, length, channels, **kw),
        delta=F.softplus(torch.randn(batch, length, channels, **kw) - 1),
        A=-torch.rand(channels, d_state, **kw) * decay - 0.1,
        B=torch.randn(batch, length, d_state, **kw),
        C=torch.randn(batch, length, d_state, **kw),
        D=torch.randn(channels, **kw),
        z=torch.randn(batch, length, channels, **kw),
    )


@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 100, 259])
@pytest.mark.parametrize("chunk_size", [1, 8, 32, 256])
def test_chunked_scan_equals_recurrence_float64(length, chunk_size):
    inputs = random_scan_inputs(length)
    expected = selective_scan_ref(**inputs)
    got = selective_scan(**inputs, chunk_size=chunk_size)
    assert got.shape == expected.shape == (2, length, 6)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_scan_without_skip_and_gate():
    inputs = random_scan_inputs(50)
    inputs["D"] = inputs["z"] = None
    torch.testing.assert_close(selective_scan(**inputs, chunk_size=16), selective_scan_ref(**inputs))


def test_strong_decays_stay_finite_in_float32():
    """Decays of e^-200 per step: a factored exp(-cumsum) form would overflow; doubling does not."""
    inputs = random_scan_inputs(300, decay=2000.0)
    single = selective_scan(**{k: v.float() for k, v in inputs.items()}, chunk_size=64)
    assert torch.isfinite(single).all()
    exact = selective_scan_ref(**inputs)
    assert ((single.double() - exact).norm() / exact.norm()).item() < 1e-5


def test_scan_float32_close_to_float64():
    inputs = random_scan_inputs(200)
    exact = selective_scan_ref(**inputs)
    single = selective_scan(**{k: v.float() for k, v in inputs.items()}, chunk_size=32)
    assert ((single.double() - exact).norm() / exact.norm()).item() < 1e-5


@pytest.mark.parametrize("chunk_size", [8, 32])
def test_gradients_equal_the_recurrences(chunk_size):
    """With autograd on, the scan takes its out-of-place arrangement: same values, exact grads."""
    inputs = random_scan_inputs(45)
    with torch.no_grad():
        reference = selective_scan(**inputs, chunk_size=chunk_size)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, chunk_size=chunk_size)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    naive = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    (selective_scan_ref(**naive) * weights).sum().backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, naive[name].grad, rtol=1e-9, atol=1e-9)


def test_scan_is_causal():
    inputs = random_scan_inputs(90)
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["u"][:, 60:] += 1.0
    changed["B"][:, 60:] -= 2.0
    a = selective_scan(**inputs, chunk_size=32)
    b = selective_scan(**changed, chunk_size=32)
    torch.testing.assert_close(a[:, :60], b[:, :60], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 60:], b[:, 60:])


# --- the Mamba-1 layer ---------------------------------------------------------------------------


def perturbed_layer(d_model=16, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    layer = Mamba(d_model, d_state=8, **kwargs).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer


def naive_mamba(layer: Mamba, u: torch.Tensor) -> torch.Tensor:
    """The layer written out from its definition (mamba_ssm's slow path), with the step-by-step scan."""
    length = u.shape[1]
    x, z = layer.in_proj(u).chunk(2, dim=-1)
    x = F.conv1d(
        F.pad(x.transpose(1, 2), (layer.d_conv - 1, 0)),
        layer.conv1d.weight,
        layer.conv1d.bias,
        groups=layer.d_inner,
    )
    x = F.silu(x).transpose(1, 2)[:, :length]
    dt, B, C = layer.x_proj(x).split([layer.dt_rank, layer.d_state, layer.d_state], -1)
    delta = F.softplus(layer.dt_proj(dt))
    y = selective_scan_ref(x, delta, -torch.exp(layer.A_log), B, C, layer.D, z)
    return layer.out_proj(y)


def test_parameter_layout_matches_mamba_ssm():
    layer = Mamba(128, d_state=16, d_conv=4, expand=2)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "A_log": (256, 16),
        "D": (256,),
        "in_proj.weight": (512, 128),
        "conv1d.weight": (256, 1, 4),
        "conv1d.bias": (256,),
        "x_proj.weight": (8 + 32, 256),
        "dt_proj.weight": (256, 8),
        "dt_proj.bias": (256,),
        "out_proj.weight": (128, 256),
    }


def test_initialisation_follows_mamba_ssm():
    layer = Mamba(64)
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(-torch.exp(layer.A_log[3]), -torch.arange(1.0, 17.0))
    assert torch.equal(layer.D, torch.ones(128))


@pytest.mark.parametrize("length", [1, 5, 70])
def test_portable_layer_equals_definition(length):
    layer = perturbed_layer(backend="portable", chunk_size=16)
    u = torch.randn(3, length, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(u), naive_mamba(layer, u), rtol=1e-9, atol=1e-9)


def test_portable_layer_float32_fast_path_close_to_float64():
    """float32 without autograd takes the oneDNN kernels where present: same numbers."""
    layer = perturbed_layer(backend="portable")
    u = torch.randn(2, 100, 16, dtype=torch.float64)
    with torch.no_grad():
        exact = naive_mamba(layer, u)
        fast = layer.float()(u.float()).double()
    assert ((fast - exact).norm() / exact.norm()).item() < 1e-5


def test_forcing_cuda_backend_on_cpu_tensor_fails_clearly():
    layer = Mamba(16, backend="cuda")
    with pytest.raises(RuntimeError, match="not a CUDA device"):
        layer(torch.randn(1, 5, 16))


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_MAMBA_SSM), reason="needs a CUDA GPU and mamba_ssm"
)
def test_cuda_backend_matches_portable():
    torch.backends.cuda.matmul.allow_tf32 = False
    layer = perturbed_layer(dtype=torch.float32).cuda()
    u = torch.randn(4, 259, 16, device="cuda")
    with torch.no_grad():
        layer.backend = "cuda"
        fast = layer(u)
        layer.backend = "portable"
        portable = layer(u)
    assert ((fast - portable).norm() / portable.norm()).item() < 1e-5
