"""The networks (TS-BSMamba2, BSRNN, U-Mamba-Net). Sees tensors only: no files, no audio formats, no CLI.

``families`` is the architecture registry (every family by name); each family
is one file (``ts_bsmamba2.py``, ``bsrnn.py``, ``u_mamba_net.py``); ``state_dict`` checks
weights against a network; ``bands``, ``mamba1``, ``mamba2``, ``selective_scan``, ``ssd`` and
``onednn`` are layers and kernels.
"""

from .bsrnn import BSRNN, BSRNNBag, BSRNNConfig
from .families import FAMILIES, Family, FamilyError, build_model, config_problem, family, make_config
from .layers.mamba2 import Mamba2
from .state_dict import StateDictMismatch, check_state_dict, unwrap_state_dict
from .ts_bsmamba2 import PRESETS, TSBSMamba2, TSBSMamba2Config, config_from_state_dict

__all__ = [
    "BSRNN",
    "FAMILIES",
    "PRESETS",
    "BSRNNBag",
    "BSRNNConfig",
    "Family",
    "FamilyError",
    "Mamba2",
    "StateDictMismatch",
    "TSBSMamba2",
    "TSBSMamba2Config",
    "build_model",
    "check_state_dict",
    "config_from_state_dict",
    "config_problem",
    "family",
    "make_config",
    "unwrap_state_dict",
]
