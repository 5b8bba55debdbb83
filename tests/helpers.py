"""Small helpers shared by the tests."""

from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against the reference ``b``."""
    return ((a - b).norm() / b.norm()).item()
