import json

import pytest
import torch
from helpers import FIXTURES
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
    """A small random TS-BSMamba2 (N = 16, 1 + 1 layers) saved as safetensors: fast plumbing tests."""
    from stemsplit.model import TSBSMamba2

    torch.manual_seed(0)
    model = TSBSMamba2(feature_dim=16, num_repeat_mask=1, num_repeat_map=1)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_file(model.state_dict(), path)
    return str(path)
