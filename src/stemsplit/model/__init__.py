"""The networks (TS-BSMamba2, BSRNN). See tensors only: no files, no audio formats, no CLI."""

from .bsrnn import BSRNN, TARGET_SCHEMES, BSRNNBag, BSRNNConfig
from .mamba2 import Mamba2
from .ts_bsmamba2 import (
    PRESETS,
    StateDictMismatch,
    TSBSMamba2,
    TSBSMamba2Config,
    check_state_dict,
    config_from_state_dict,
    unwrap_state_dict,
)

__all__ = [
    "BSRNN",
    "PRESETS",
    "TARGET_SCHEMES",
    "BSRNNBag",
    "BSRNNConfig",
    "Mamba2",
    "StateDictMismatch",
    "TSBSMamba2",
    "TSBSMamba2Config",
    "check_state_dict",
    "config_from_state_dict",
    "unwrap_state_dict",
]
