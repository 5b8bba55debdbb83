"""The CPU allocator setting removes the page faults of large activations in a forward pass."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from stemsplit.model import TSBSMamba2
from stemsplit.runtime import tune_cpu_allocator
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
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
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
    from stemsplit.runtime import tune_cpu_allocator

    assert tune_cpu_allocator() == tune_cpu_allocator()
