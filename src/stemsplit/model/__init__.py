"""The TS-BSMamba2 network. Sees tensors only: no files, no audio formats, no CLI."""

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
    "PRESETS",
    "Mamba2",
    "StateDictMismatch",
    "TSBSMamba2",
    "TSBSMamba2Config",
    "check_state_dict",
    "config_from_state_dict",
    "unwrap_state_dict",
]
