"""The chunked SSD scan equals the step-by-step recurrence."""

import pytest
import torch
import torch.nn.functional as F

from stemsplit.model.ops.ssd import chunk_layout, ssd_scan, ssd_scan_naive


def random_scan_inputs(length, batch=2, heads=3, headdim=8, d_state=16, seed=0):
    g = torch.Generator().manual_seed(seed + length)
    kw = dict(generator=g, dtype=torch.float64)
    return dict(
        x=torch.randn(batch, length, heads, headdim, **kw),
        dt=F.softplus(torch.randn(batch, length, heads, **kw) - 1),
        A=-torch.rand(heads, **kw) * 8 - 0.5,
        B=torch.randn(batch, length, d_state, **kw),
        C=torch.randn(batch, length, d_state, **kw),
        D=torch.randn(heads, **kw),
    )


@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 64, 100, 259])
@pytest.mark.parametrize("chunk_size", [8, 32, 256])
def test_chunked_scan_equals_recurrence_float64(length, chunk_size):
    inputs = random_scan_inputs(length)
    expected = ssd_scan_naive(**inputs)
    got = ssd_scan(**inputs, chunk_size=chunk_size)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_scan_without_skip_term():
    inputs = random_scan_inputs(50)
    inputs["D"] = None
    torch.testing.assert_close(ssd_scan(**inputs, chunk_size=16), ssd_scan_naive(**inputs))


def test_scan_float32_close_to_float64():
    inputs = random_scan_inputs(200)
    exact = ssd_scan_naive(**inputs)
    single = ssd_scan(**{k: v.float() for k, v in inputs.items()}, chunk_size=64)
    assert ((single.double() - exact).norm() / exact.norm()).item() < 1e-5


def test_gradient_path_matches_inference_path():
    """With autograd on, the scan takes its autograd-friendly arrangement: same values, exact grads."""
    inputs = random_scan_inputs(70)
    with torch.no_grad():
        reference = ssd_scan(**inputs, chunk_size=16)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = ssd_scan(**leaves, chunk_size=16)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    naive_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    ssd_scan_naive(**naive_leaves).square().sum().backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, naive_leaves[name].grad, rtol=1e-9, atol=1e-9)


def test_scan_is_causal():
    inputs = random_scan_inputs(90)
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["x"][:, 60:] += 1.0
    changed["B"][:, 60:] -= 2.0
    a = ssd_scan(**inputs, chunk_size=32)
    b = ssd_scan(**changed, chunk_size=32)
    torch.testing.assert_close(a[:, :60], b[:, :60], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 60:], b[:, 60:])


@pytest.mark.parametrize(
    ("length", "chunk", "expected"),
    [(1, 256, (1, 1)), (256, 256, (1, 256)), (259, 256, (2, 130)), (57, 16, (4, 15))],
)
def test_chunk_layout(length, chunk, expected):
    n, q = chunk_layout(length, chunk)
    assert (n, q) == expected
    assert n * q >= length and q <= chunk
