import json

import pytest
from helpers import FIXTURES, tiny_model
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="session")
def golden():
    """The small reference model (feature_dim 32, 2 + 2 layers): config, weights, input and outputs."""
    return {
        "config": json.loads((FIXTURES / "golden_small_config.json").read_text()),
        "weights": load_file(FIXTURES / "golden_small_weights.safetensors"),
        "io": load_file(FIXTURES / "golden_small_io.safetensors"),
    }


@pytest.fixture(scope="session")
def golden_model(golden):
    from stemsplit.model import TSBSMamba2

    return TSBSMamba2.from_state_dict(golden["weights"]).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The tiny TS-BSMamba2 (N = 16, 1 + 1 layers) saved as a bare state dict (no metadata): fast
    plumbing tests."""
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_file(tiny_model().state_dict(), path)
    return str(path)
