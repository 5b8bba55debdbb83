"""The networks, and what they are built from. Sees tensors only: no files, no audio formats, no CLI.

- the networks, one file a family: ``ts_bsmamba2``, ``bsrnn``, ``u_mamba_net``, ``bs_roformer``,
  ``mel_band_roformer`` and ``bs_mamba2`` (on the core they share, ``roformer``), ``htdemucs`` (with
  its ``htdemucs_transformer``), ``scnet``;
- ``families``: the architecture registry (every family by name); ``state_dict``: checks weights
  against a network;
- ``layers/``: building blocks several networks share (STFT, band split/merge, Mamba-1, Mamba-2);
- ``ops/``: the scans and kernels under them (SSD, selective scan, oneDNN), each beside its reference.
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
