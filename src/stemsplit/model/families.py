"""The architecture registry: every network family stemsplit can build, by name.

A family is one model file (``ts_bsmamba2.py``, ``bsrnn.py``, ``u_mamba_net.py``, ``bs_roformer.py``,
``mel_band_roformer.py``, ``bs_mamba2.py``, ``htdemucs.py``, ``scnet.py``) plus one :class:`Family`
entry below.
The entry says how to make the family's config from a preset and overrides
(what ``weights.toml`` and ``train --arch`` give), how to build the network
for a list of stems, and how to shrink a config for a quick trial run.
Everything else (the engine, the loader, training, eval) works through
``model.card`` and ``model.config`` and never names a family.

Adding a family: write ``model/NAME.py`` with a frozen config dataclass
(integer/float/string/bool fields or tuples of integers or of floats, ``sr`` among them) and an
``nn.Module`` that takes it, carries ``config`` and ``card`` and maps a mixture
[B, channels, samples] to stems [B, S, channels, samples] (or a tuple of such,
one per stage, the last final); then add a :class:`Family` to ``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypedDict

import torch
from torch import nn

from ..card import card_of
from ..errors import StemsplitError, first_line
from .bs_mamba2 import ARCHITECTURE as BS_MAMBA2
from .bs_mamba2 import MAY_BE_ZERO as BS_MAMBA2_MAY_BE_ZERO
from .bs_mamba2 import PRESETS as BS_MAMBA2_PRESETS
from .bs_mamba2 import BSMamba2, BSMamba2Config
from .bs_roformer import ARCHITECTURE as BS_ROFORMER
from .bs_roformer import PRESETS as BS_ROFORMER_PRESETS
from .bs_roformer import BSRoformer, BSRoformerConfig
from .bsrnn import ARCHITECTURE as BSRNN
from .bsrnn import PRESETS as BSRNN_PRESETS
from .bsrnn import BSRNNBag, BSRNNConfig
from .htdemucs import ARCHITECTURE as HTDEMUCS
from .htdemucs import MAY_BE_ZERO as HTDEMUCS_MAY_BE_ZERO
from .htdemucs import PRESETS as HTDEMUCS_PRESETS
from .htdemucs import HTDemucs, HTDemucsConfig
from .htdemucs import shrink as shrink_htdemucs
from .mel_band_roformer import ARCHITECTURE as MEL_BAND_ROFORMER
from .mel_band_roformer import PRESETS as MEL_PRESETS
from .mel_band_roformer import MelBandRoformer, MelBandRoformerConfig
from .roformer import MAY_BE_ZERO, Roformer, RoformerConfig
from .scnet import ARCHITECTURE as SCNET
from .scnet import PRESETS as SCNET_PRESETS
from .scnet import SCNet, SCNetConfig
from .scnet import shrink as shrink_scnet
from .ts_bsmamba2 import ARCHITECTURE as TS_BSMAMBA2
from .ts_bsmamba2 import PRESETS as TS_PRESETS
from .ts_bsmamba2 import TSBSMamba2, TSBSMamba2Config
from .u_mamba_net import ARCHITECTURE as U_MAMBA_NET
from .u_mamba_net import PRESETS as U_MAMBA_PRESETS
from .u_mamba_net import UMambaNet, UMambaNetConfig

__all__ = [
    "FAMILIES",
    "Family",
    "FamilyError",
    "build_model",
    "config_dict",
    "config_problem",
    "family",
    "make_config",
]


class FamilyError(StemsplitError, ValueError):
    """An unknown family or preset, or a config the family cannot be built with (one line)."""


@dataclass(frozen=True)
class Family:
    """One network family.

    name: how ``weights.toml``, checkpoints and ``train --arch`` name it.
    config_type: its frozen config dataclass.
    presets: named configs; ``default_preset`` is used when none is named.
    build: (config, stems) -> the network, its ``card.stems`` set to ``stems``.
    stem_field: the config field that must equal the number of stems (or None).
    shrink: config -> a tiny one with the same spectrogram and outputs (for quick checks).
    rest_stem: the stems may name one more than ``stem_field`` says: the last is then the
        mixture minus the others (``card.rest_stem``).
    may_be_zero: number fields that may be 0 (all others must be positive).
    aliases: other names of config fields (upstream's), e.g. ``sample_rate`` for ``sr``.
    """

    name: str
    summary: str
    config_type: type
    presets: Mapping[str, Any]
    default_preset: str
    build: Callable[[Any, tuple[str, ...]], nn.Module]
    shrink: Callable[[Any], Any]
    stem_field: str | None = None
    rest_stem: bool = False
    may_be_zero: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)

    def field_names(self) -> list[str]:
        return [f.name for f in fields(self.config_type)]


def _build_ts(config: TSBSMamba2Config, stems: tuple[str, ...]) -> TSBSMamba2:
    model = TSBSMamba2(config)
    model.card = replace(model.card, stems=stems)
    return model


def _build_u_mamba(config: UMambaNetConfig, stems: tuple[str, ...]) -> UMambaNet:
    model = UMambaNet(config)
    if stems:
        model.card = replace(model.card, stems=stems)
    return model


def _build_roformer(
    network: type[BSRoformer | MelBandRoformer],
) -> Callable[[Any, tuple[str, ...]], Roformer]:
    """Builds a RoFormer family's network (BSMamba2 is a BSRoformer) from that network's own config: its
    card names ``stems``, the last of them the rest when there is one more than the network estimates."""

    def build(config: Any, stems: tuple[str, ...]) -> Roformer:
        model = network(config)
        if stems:
            rest = stems[-1] if len(stems) == config.num_stems + 1 else None
            model.card = replace(model.card, stems=stems, rest_stem=rest)
        return model

    return build


def _build_sources(network: type[HTDemucs | SCNet]) -> Callable[[Any, tuple[str, ...]], nn.Module]:
    """Builds a network whose config counts its outputs as ``num_sources`` (HTDemucs, SCNet): its card
    names ``stems``, or its default names when none are given."""

    def build(config: Any, stems: tuple[str, ...]) -> nn.Module:
        if stems and len(stems) != config.num_sources:
            raise ValueError(f"num_sources = {config.num_sources}, but {len(stems)} stems are named")
        model = network(config)
        if stems:
            model.card = replace(model.card, stems=tuple(stems))
        return model

    return build


def _shrink_roformer(c: RoformerConfig) -> RoformerConfig:
    return replace(
        c,
        dim=8,
        depth=1,
        heads=1,
        dim_head=8,
        time_transformer_depth=1,
        freq_transformer_depth=1,
        linear_transformer_depth=min(c.linear_transformer_depth, 1),
        mask_estimator_depth=1,
        mlp_expansion_factor=1,
    )


class _RoformerOptions(TypedDict):
    """What the RoFormer families' entries share."""

    shrink: Callable[[RoformerConfig], RoformerConfig]
    stem_field: str
    rest_stem: bool
    may_be_zero: frozenset[str]


_ROFORMER_OPTIONS = _RoformerOptions(
    shrink=_shrink_roformer,
    stem_field="num_stems",
    rest_stem=True,
    may_be_zero=MAY_BE_ZERO,
)

FAMILIES: dict[str, Family] = {
    TS_BSMAMBA2: Family(
        name=TS_BSMAMBA2,
        summary="TS-BSMamba2: two-stage band-split Mamba-2 (arXiv 2409.06245), all stems in one network",
        config_type=TSBSMamba2Config,
        presets=TS_PRESETS,
        default_preset="ts",
        build=_build_ts,
        shrink=lambda c: replace(c, feature_dim=16, num_repeat_mask=1, num_repeat_map=1),
        stem_field="num_output",
    ),
    BSRNN: Family(
        name=BSRNN,
        summary="BSRNN: band-split RNN (Luo & Yu 2022), one network per stem, run as a bag",
        config_type=BSRNNConfig,
        presets=BSRNN_PRESETS,
        default_preset="paper",
        build=lambda config, stems: BSRNNBag.for_targets(stems, config),
        shrink=lambda c: replace(c, feature_dim=8, num_layers=1),
    ),
    U_MAMBA_NET: Family(
        name=U_MAMBA_NET,
        summary="U-Mamba-Net: U-nets and Mamba-1 in the time domain (APSIPA 2024), speech at 8 kHz",
        config_type=UMambaNetConfig,
        presets=U_MAMBA_PRESETS,
        default_preset="paper",
        build=_build_u_mamba,
        shrink=lambda c: replace(c, feature_dim=8, num_blocks=1, depth=min(c.depth, 2), d_state=4),
        stem_field="num_speakers",
    ),
    BS_ROFORMER: Family(
        name=BS_ROFORMER,
        summary="BS-RoFormer: band-split RoPE transformer (arXiv 2309.02612), MSST's checkpoints",
        config_type=BSRoformerConfig,
        presets=BS_ROFORMER_PRESETS,
        default_preset="paper",
        build=_build_roformer(BSRoformer),
        **_ROFORMER_OPTIONS,
    ),
    MEL_BAND_ROFORMER: Family(
        name=MEL_BAND_ROFORMER,
        summary="Mel-Band RoFormer: RoPE transformer on mel bands (arXiv 2310.01809), MSST's checkpoints",
        config_type=MelBandRoformerConfig,
        presets=MEL_PRESETS,
        default_preset="paper",
        build=_build_roformer(MelBandRoformer),
        aliases={"sample_rate": "sr"},
        **_ROFORMER_OPTIONS,
    ),
    BS_MAMBA2: Family(
        name=BS_MAMBA2,
        summary="BSMamba2: band-split Mamba-2 (arXiv 2508.14556), MSST's bs_mamba2 checkpoints since 2026",
        config_type=BSMamba2Config,
        presets=BS_MAMBA2_PRESETS,
        default_preset="msst",
        build=_build_roformer(BSMamba2),  # a Roformer with Mamba-2 layers: the same stems and rest stem
        shrink=lambda c: replace(c, dim=16, depth=1, mask_estimator_depth=1),
        stem_field="num_stems",
        rest_stem=True,
        may_be_zero=BS_MAMBA2_MAY_BE_ZERO,
    ),
    HTDEMUCS: Family(
        name=HTDEMUCS,
        summary="HTDemucs: hybrid transformer Demucs v4 (arXiv 2211.08553), Demucs' htdemucs and htdemucs_6s",
        config_type=HTDemucsConfig,
        presets=HTDEMUCS_PRESETS,
        default_preset="htdemucs",
        build=_build_sources(HTDemucs),
        shrink=shrink_htdemucs,
        stem_field="num_sources",
        may_be_zero=HTDEMUCS_MAY_BE_ZERO,
        aliases={"samplerate": "sr"},
    ),
    SCNET: Family(
        name=SCNET,
        summary="SCNet: sparse compression network (arXiv 2401.13276), MSST's scnet checkpoints",
        config_type=SCNetConfig,
        presets=SCNET_PRESETS,
        default_preset="msst",
        build=_build_sources(SCNet),
        shrink=shrink_scnet,
        stem_field="num_sources",
    ),
}


def family(name: str) -> Family:
    """The family called ``name``; :class:`FamilyError` listing the known ones otherwise."""
    if name not in FAMILIES:
        raise FamilyError(f"unknown architecture {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def make_config(
    name: str,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    stems: Sequence[str] = (),
) -> Any:
    """The config of family ``name``: its ``preset`` (default preset if None) with ``overrides``.

    ``stems`` (if given) sets the family's stem-count field. Field names and
    value types are checked; :class:`FamilyError` names the first bad one.
    """
    fam = family(name)
    preset = preset or fam.default_preset
    if preset not in fam.presets:
        raise FamilyError(f"{name} has no preset {preset!r} (presets: {', '.join(fam.presets)})")
    base = fam.presets[preset]
    overrides = _unaliased(fam, overrides or {})
    known = fam.field_names()
    for key, value in overrides.items():
        if key not in known:
            raise FamilyError(f"{name} config has no field {key!r} (fields: {', '.join(known)})")
        overrides[key] = _checked_value(fam, key, value, getattr(base, key))
    if stems and fam.stem_field:
        count = overrides.get(fam.stem_field, len(stems))
        if count != len(stems) and not (fam.rest_stem and count + 1 == len(stems)):
            raise FamilyError(f"{fam.stem_field} = {count}, but {len(stems)} stems are named")
        overrides[fam.stem_field] = count
    problem = _problem_of(base, overrides)
    if problem:
        raise FamilyError(f"{name} config: {problem}")
    return replace(base, **overrides)


def _unaliased(fam: Family, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with upstream names turned into the family's; both names given must agree."""
    result = {k: v for k, v in overrides.items() if k not in fam.aliases}
    for alias, key in fam.aliases.items():
        if alias in overrides:
            if key in result and result[key] != overrides[alias]:
                raise FamilyError(f"{alias} = {overrides[alias]!r} differs from {key} = {result[key]!r}")
            result[key] = overrides[alias]
    return result


def _checked_value(fam: Family, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the field's ``default``; :class:`FamilyError` if it is not one."""
    wanted = type(default)
    if wanted is tuple and any(isinstance(v, float) for v in default):  # positive numbers (SCNet's band_SR)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise FamilyError(f"{fam.name} config field {key} must be a list of positive numbers: {value!r}")
        return tuple(float(v) for v in value)
    if wanted is tuple:  # tuples of positive integers (JSON and TOML give lists)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise FamilyError(f"{fam.name} config field {key} must be a list of positive integers: {value!r}")
        return tuple(value)
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, wanted) or isinstance(value, bool) != (wanted is bool):
        raise FamilyError(f"{fam.name} config field {key} must be {wanted.__name__}, not {value!r}")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and (value < 0 or (value == 0 and key not in fam.may_be_zero)):
        least = "0 or more" if key in fam.may_be_zero else "positive"
        raise FamilyError(f"{fam.name} config field {key} must be {least}, not {value!r}")
    return value


def _problem_of(base: Any, overrides: Mapping[str, Any]) -> str | None:
    """What the config says of itself (``problem()``, where the config type has one)."""
    check = getattr(base, "problem", None)
    return replace(base, **overrides).problem() if check is not None else None


def config_problem(name: str, config: Any, stems: Sequence[str]) -> str | None:
    """Why family ``name`` cannot be built or run with ``config``, or None when it can.

    The full network is built on the meta device (shapes only, no memory); a
    shrunk network of the same spectrogram and outputs then runs a short input
    for real, which catches what only a forward pass finds (bands without bins,
    an STFT that cannot be inverted).
    """
    fam = family(name)
    try:
        with torch.device("meta"):
            fam.build(config, tuple(stems))
        tiny = fam.build(fam.shrink(config), tuple(stems))
        with torch.no_grad():
            tiny(torch.zeros(1, 1, 2 * card_of(tiny).min_samples))
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as exc:
        return first_line(exc)[:200]
    return None


def build_model(name: str, config: Any, stems: Sequence[str]) -> nn.Module:
    """Family ``name``'s network for ``config`` and ``stems`` (random weights, train mode)."""
    return family(name).build(config, tuple(stems))


def config_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict (what checkpoints store)."""
    return asdict(config)
