"""The oneDNN CPU kernels compute what their plain PyTorch fallbacks compute."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_l2

from stemsplit.model.layers.mamba2 import Mamba2
from stemsplit.model.ops import onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="PyTorch built without oneDNN")


def both(fn, *args, **kwargs):
    """(oneDNN result, plain PyTorch result) of one call."""
    with torch.no_grad():
        fast = fn(*args, **kwargs)
        with onednn.enabled(False):
            plain = fn(*args, **kwargs)
    return fast, plain


@needs_onednn
@pytest.mark.parametrize("activation", [None, "tanh", "silu"])
def test_linear(activation):
    x, w, b = torch.randn(3, 50, 24), torch.randn(40, 24), torch.randn(40)
    fast, plain = both(onednn.linear, x, w, b, activation=activation)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    expected = F.linear(x, w, b)
    expected = {None: expected, "tanh": torch.tanh(expected), "silu": F.silu(expected)}[activation]
    torch.testing.assert_close(plain, expected)


@needs_onednn
def test_linear_add_and_grouped_linear():
    x, w, b, other = torch.randn(2, 30, 16), torch.randn(8, 16), torch.randn(8), torch.randn(2, 30, 8)
    fast, plain = both(onednn.linear_add, x, w, b, other)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    conv = torch.nn.Conv1d(16, 12, 1, groups=4)
    fast, plain = both(onednn.grouped_linear, x, conv.weight, conv.bias, 4, activation="tanh")
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = torch.tanh(conv(x.reshape(-1, 16, 1)))[..., 0].reshape(2, 30, 12)
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_bmm_and_causal_conv():
    a, b = torch.randn(3, 4, 20, 13), torch.randn(3, 4, 13, 7)
    fast, plain = both(onednn.bmm, a, b)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    x, conv = torch.randn(5, 33, 24), torch.nn.Conv1d(24, 24, 4, groups=24, padding=3)
    fast, plain = both(onednn.causal_conv1d_silu, x, conv.weight, conv.bias)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = F.silu(conv(x.transpose(1, 2))[..., :33].transpose(1, 2))
    torch.testing.assert_close(plain, expected)


@needs_onednn
def test_mamba2_layer_with_and_without_onednn():
    torch.manual_seed(0)
    layer = Mamba2(32, expand=4, backend="portable").eval()
    u = torch.randn(3, 259, 32)
    fast, plain = both(layer, u)
    assert rel_l2(fast, plain) < 1e-5


def test_plain_pytorch_path_matches_golden(golden, golden_model):
    io = golden["io"]
    with torch.no_grad(), onednn.enabled(False):
        stage1, stage2 = golden_model(io["mixture"])
    assert rel_l2(stage1, io["stage1"]) < 1e-5
    assert rel_l2(stage2, io["stage2"]) < 1e-5


def test_autograd_takes_the_plain_path():
    x, w = torch.randn(4, 8), torch.randn(3, 8, requires_grad=True)
    y = onednn.linear(x, w, activation="tanh")
    y.sum().backward()
    assert w.grad is not None


@needs_onednn
def test_first_call_under_autocast_keeps_onednn_on():
    onednn._ops.cache_clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        onednn.linear(torch.randn(4, 8), torch.randn(3, 8))
    assert onednn.available()


@pytest.mark.skipif(
    not (onednn.available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()), reason="no oneDNN bf16"
)
def test_bf16_autocast_stays_close_to_fp32(golden, golden_model):
    """The bf16 budget of issue 13: stage 2 within 5e-3 (relative L2) of the fp32 output."""
    mixture = golden["io"]["mixture"]
    with torch.inference_mode():
        reference = golden_model(mixture)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stage1, stage2 = golden_model(mixture)
    assert stage2.dtype == torch.float32
    assert rel_l2(stage2, reference) < 5e-3
    assert rel_l2(stage1, golden["io"]["stage1"]) < 5e-3
