"""Music-Source-Separation-Training's YAML configs, read as they are published. Importable without torch.

A checkpoint trained with MSST (the RoFormers UVR and python-audio-separator
download too) comes with a YAML that builds its network and says how to run it::

    audio:     sample_rate, chunk_size (samples per window)
    model:     the network's constructor options       -> the family's config
    training:  instruments, target_instrument          -> the stems
    inference: num_overlap (hop = chunk_size // num_overlap), chunk_size, normalize

``stemsplit song.wav --model model.ckpt --model-config config.yaml`` reads it
with :func:`read_msst_config`. The YAML names no network, so the family is
recognised by its options (``freqs_per_bands``: BS-RoFormer, ``num_bands``:
Mel-Band RoFormer, ``num_repeat_mask``: TS-BSMamba2, ``module_type``: BSMamba2; MSST builds both
Mamba networks under one name, ``bs_mamba2``; ``band_SR``: SCNet, whose ``sources`` become its
``num_sources``). YAML tags other than
``!!python/tuple`` (which MSST's configs use for lists) are refused: the file is
parsed safely and never runs code.

A single-target checkpoint (``num_stems: 1`` with a ``target_instrument``)
estimates the target; its second stem is the mixture minus the target, as
MSST's ``--extract_instrumental`` makes it. That stem is named after the other
instrument when ``instruments`` has two, else ``instrumental``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..card import stem_name_problem
from .errors import CheckpointError

__all__ = ["MSSTConfig", "ModelConfigError", "read_msst_config"]

# Options that only one family has, by which its MSST config is recognised.
_FAMILY_KEYS = {
    "num_bands": "mel-band-roformer",
    "freqs_per_bands": "bs-roformer",
    "num_repeat_mask": "ts-bsmamba2",  # MSST's bs_mamba2 key up to 2025
    "module_type": "bs-mamba2",  # the same key since 2026 (BSMamba2Model)
    "band_SR": "scnet",  # MSST's scnet (scnet_masked takes the same options: its weights tell it apart)
}
_ROFORMER_KEYS = {"dim", "depth", "time_transformer_depth", "freq_transformer_depth"}


class ModelConfigError(CheckpointError):
    """An MSST YAML that cannot be read or that describes no network stemsplit has (one line, the file)."""


@dataclass(frozen=True)
class MSSTConfig:
    """What an MSST YAML says of its checkpoint, in stemsplit's terms.

    architecture: the family. config: the ``model:`` section as written, ``sr``
    added (the family checks it when the network is built). stems: output names
    (a single-target config's second is the rest). window, hop: seconds.
    """

    path: Path
    architecture: str
    config: Mapping[str, Any]
    stems: tuple[str, ...]
    sample_rate: int
    window: float
    hop: float
    normalization: str


def _loader() -> type:
    import yaml  # here, not at import: only a --model-config needs it

    class Loader(yaml.SafeLoader):
        """The safe loader plus MSST's ``!!python/tuple`` (a list, as the configs use it)."""

    def tuple_of(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
        return tuple(loader.construct_sequence(node, deep=True))

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", tuple_of)
    return Loader


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelConfigError(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise ModelConfigError(f"{path}: not a text file") from None
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot be read ({(exc.strerror or str(exc)).lower()})") from None
    try:
        data = yaml.load(text, Loader=_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ModelConfigError(f"{path}: not a valid YAML file{line}: {problem}") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{path}: not an MSST config (no sections)")
    return data


def _section(data: Mapping[str, Any], name: str, path: Path, required: bool = False) -> dict[str, Any]:
    section = data.get(name)
    if section is None and not required:
        return {}
    if not isinstance(section, dict):
        raise ModelConfigError(f"{path}: not an MSST config: no {name}: section")
    return section


def _positive_int(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"{path}: {key} must be a positive whole number, not {value!r}")
    return value


def _architecture(model: Mapping[str, Any], path: Path) -> str:
    found = {family for key, family in _FAMILY_KEYS.items() if key in model}
    if "bs-mamba2" in found:  # BSMamba2 takes BS-RoFormer's freqs_per_bands as well
        found.discard("bs-roformer")
    if len(found) == 1:
        return found.pop()
    if not found and set(model) >= _ROFORMER_KEYS:  # a BS-RoFormer with the default bands
        return "bs-roformer"
    raise ModelConfigError(
        f"{path}: its model: section is not one stemsplit can build (it recognises BS-RoFormer by "
        "freqs_per_bands, Mel-Band RoFormer by num_bands, TS-BSMamba2 by num_repeat_mask, BSMamba2 by "
        "module_type and SCNet by band_SR)"
    )


def _scnet_options(model: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """An SCNet's ``model:`` section in stemsplit's terms: its ``sources`` (the stem names, upstream's
    default the four of MUSDB18) counted as ``num_sources``; MSST's SCNet-Tran refused by its options."""
    options = dict(model)
    if any(key.startswith("tran_") for key in options):
        raise ModelConfigError(
            f"{path}: an SCNet with transformer layers (tran_* options: MSST's scnet_tran) is not one "
            "stemsplit can build; it builds MSST's scnet"
        )
    sources = options.pop("sources", ("drums", "bass", "other", "vocals"))
    if not isinstance(sources, list | tuple) or not sources or not all(isinstance(s, str) for s in sources):
        raise ModelConfigError(f"{path}: model.sources must list the stems' names, not {sources!r}")
    options["num_sources"] = len(sources)
    return options


def _stems(training: Mapping[str, Any], model: Mapping[str, Any], path: Path) -> tuple[str, ...]:
    instruments = training.get("instruments")
    if (
        not isinstance(instruments, list)
        or not instruments
        or not all(isinstance(s, str) for s in instruments)
    ):
        raise ModelConfigError(f"{path}: training.instruments must list the stems' names")
    target = training.get("target_instrument")
    outputs = model.get("num_stems", model.get("num_output", model.get("num_sources", len(instruments))))
    if target is not None:
        if target not in instruments:
            raise ModelConfigError(f"{path}: target_instrument {target!r} is not in training.instruments")
        if outputs != 1:
            raise ModelConfigError(f"{path}: target_instrument is set, but the network has {outputs} outputs")
        rest = [s for s in instruments if s != target]
        stems = (target, rest[0] if len(rest) == 1 else "instrumental") if rest else (target,)
    elif outputs == len(instruments):
        stems = tuple(instruments)
    else:
        raise ModelConfigError(
            f"{path}: training.instruments names {len(instruments)} stems, but the network has {outputs} "
            "outputs (and no target_instrument)"
        )
    for stem in stems:
        problem = stem_name_problem(stem)
        if problem:
            raise ModelConfigError(f"{path}: {problem}")
    if len(set(stems)) != len(stems):
        raise ModelConfigError(f"{path}: training.instruments names a stem twice")
    return stems


def read_msst_config(path: str | os.PathLike[str]) -> MSSTConfig:
    """Read an MSST YAML; :class:`ModelConfigError` (one line naming the file) if it cannot be used."""
    path = Path(path).expanduser()
    data = _yaml(path)
    model = _section(data, "model", path, required=True)
    audio = _section(data, "audio", path)
    training = _section(data, "training", path)
    inference = _section(data, "inference", path)
    architecture = _architecture(model, path)
    if architecture == "scnet":
        model = _scnet_options(model, path)

    rate = _positive_int(audio.get("sample_rate", 44100), "audio.sample_rate", path)
    config = dict(model)
    rate_key = (
        "sample_rate" if architecture == "mel-band-roformer" else "sr"
    )  # as the upstream class names it
    if config.setdefault(rate_key, rate) != rate:
        raise ModelConfigError(
            f"{path}: model.{rate_key} {config[rate_key]} differs from audio.sample_rate {rate}"
        )

    chunk_key = "inference.chunk_size" if "chunk_size" in inference else "audio.chunk_size"
    chunk = inference.get("chunk_size", audio.get("chunk_size"))
    if chunk is None:
        raise ModelConfigError(f"{path}: no audio.chunk_size (the samples of a window)")
    chunk = _positive_int(chunk, chunk_key, path)
    overlap = _positive_int(inference.get("num_overlap", 1), "inference.num_overlap", path)
    step = chunk // overlap  # MSST's step, in whole samples
    if step < 1:
        raise ModelConfigError(f"{path}: inference.num_overlap {overlap} is more than the chunk's samples")
    normalize = inference.get("normalize", False)
    if not isinstance(normalize, bool):
        raise ModelConfigError(f"{path}: inference.normalize must be true or false, not {normalize!r}")
    return MSSTConfig(
        path=path,
        architecture=architecture,
        config=config,
        stems=_stems(training, model, path),
        sample_rate=rate,
        window=chunk / rate,
        hop=step / rate,
        # MSST's normalize: the mono mix's mean and std taken out before the windows, put back after
        normalization="meanstd" if normalize else "none",
    )
