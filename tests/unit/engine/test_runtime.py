"""The CPU allocator setting removes the page faults of large activations in a forward pass."""

import sys

import pytest
from helpers import python

PROBE = """
import resource, sys, torch
from stemsplit.model import TSBSMamba2
from stemsplit.engine.runtime import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == "tune" else False
torch.manual_seed(0)
model = TSBSMamba2(feature_dim=32, num_repeat_mask=1, num_repeat_map=1).eval()
mixture = torch.randn(1, 2, 6 * 44100)  # activations of 100-200 MB
with torch.inference_mode():
    model(mixture)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(mixture)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> tuple[bool, int]:
    out = python("-c", PROBE, mode, check=0)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_tuned_allocator_reuses_large_blocks():
    tuned, faults_tuned = minor_faults("tune")
    _, faults_default = minor_faults("default")
    assert tuned
    # Default glibc: every activation above 32 MB is a fresh mmap, faulted in page by page.
    assert faults_default > 200_000
    assert faults_tuned < faults_default / 10


def test_tuning_twice_is_harmless():
    from stemsplit.engine.runtime import tune_cpu_allocator

    assert tune_cpu_allocator() == tune_cpu_allocator()


X86_BF16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_bf16_support_reads_the_flags(monkeypatch):
    import torch

    from stemsplit.engine.runtime import cpu_bf16_support

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert cpu_bf16_support(X86_BF16) == (True, "CPU has AVX512-BF16 (native bf16 through oneDNN)")
    assert cpu_bf16_support(ARM_BF16)[0]
    native, why = cpu_bf16_support(X86_AVX2)
    assert not native and "emulated" in why
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    native, why = cpu_bf16_support(X86_BF16)
    assert not native and "no bf16 kernels" in why


def test_cpu_auto_precision_names_a_precision_and_a_reason():
    from stemsplit.engine.runtime import cpu_auto_precision, cpu_bf16_support

    precision, why = cpu_auto_precision()
    assert precision == ("bf16" if cpu_bf16_support()[0] else "fp32")
    assert why == cpu_bf16_support()[1]
