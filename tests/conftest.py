import json

import pytest
from helpers import FIXTURES
from safetensors.torch import load_file


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
