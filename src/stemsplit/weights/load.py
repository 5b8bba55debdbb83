"""From a name, path or URL to a verified, ready network: the steps of :mod:`stemsplit.weights` in order."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

from ..card import ModelCard, card_of
from ..files import sha256_of, write_atomically
from ..model import families
from ..model.bs_mamba2 import BSMamba2Config
from .cache import (
    Source,
    cache_error,
    check_hash,
    clear_hint,
    locked,
    pin_hash,
    record_path,
    source_of,
    source_of_url,
)
from .checkpoint import (
    BS_MAMBA2_KINDS,
    build_network,
    network_from_file,
    read_checkpoint,
    read_pickle,
    read_safetensors,
)
from .download import html_hint, obtain
from .errors import (
    CheckpointError,
    ChecksumError,
    RegistryError,
    UnknownModelError,
    UnsafeCheckpointError,
)
from .metadata import read_info, read_metadata
from .msst import ModelConfigError, MSSTConfig, read_msst_config
from .registry import CHECKPOINT_SUFFIXES, ModelEntry, load_registry

__all__ = ["LoadedModel", "VerifyResult", "entry_config", "fetch", "load_model", "verify"]


@dataclass(frozen=True)
class LoadedModel:
    """A ready network (eval mode, on the CPU, ``model.card`` filled in) and where it came from."""

    model: nn.Module
    name: str  # registry name, or the file name for a path or URL
    light: bool = False

    @property
    def card(self) -> ModelCard:
        return card_of(self.model)

    @property
    def stems(self) -> tuple[str, ...]:
        return self.card.stems

    @property
    def sample_rate(self) -> int:
        return self.card.sample_rate

    @property
    def normalization(self) -> str:
        return self.card.normalization


def entry_config(entry: ModelEntry) -> object:
    """The family config a registry entry describes; :class:`RegistryError` at the entry's file:line."""
    try:
        config = families.make_config(entry.architecture, entry.preset, entry.config, entry.stems)
    except families.FamilyError as exc:
        text = str(exc)
        key = next((k for k in ("field", "preset", "stems") if k in text), "architecture")
        key = "config" if key == "field" else key
        raise RegistryError(f"{entry.where(key)}: [models.{entry.name}] {exc}") from None
    return config


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    light: bool = False,
    progress: bool = True,
    task: str | None = None,
    model_config: str | os.PathLike | MSSTConfig | None = None,
) -> LoadedModel:
    """Load a model by registry name, local checkpoint path or http(s) URL, verified, on the CPU.

    ``None`` is the registry default, or its light model when ``light`` is set
    and the registry has one (see :func:`has_light_model`; without one this
    returns the default and ``LoadedModel.light`` is False); with ``task =
    "speakers"``, the registry's first speaker-separation model
    (:class:`UnknownModelError` when it has none). ``light`` and ``task`` do not
    choose when ``spec`` is given. Downloads show a progress bar on stderr
    unless ``progress`` is False. ``model_config``: the MSST YAML (a path, or
    read by :func:`read_msst_config`) that builds a checkpoint file's or URL's
    network and gives its stems, window and hop (:mod:`stemsplit.weights.msst`).
    Every failure raises a :class:`WeightsError`.
    """
    if model_config is not None:
        return _load_with_msst_config(spec, model_config, progress)
    if spec is None:
        registry = load_registry()
        if task not in (None, "music"):
            entry = registry.default_for(task)
            if entry is None:
                raise UnknownModelError(
                    f'{registry.path} has no {task} model (an entry with task = "{task}"); '
                    "name a checkpoint file or URL"
                )
            return _load_entry(entry, progress)
        entry = (registry.light_model if light else None) or registry.models[registry.default]
        return _load_entry(entry, progress)
    found = _read_file_or_url(spec, progress)
    if found is None:
        return _load_entry(load_registry().get(os.fspath(spec)), progress)
    state_dict, metadata, label = found
    model = network_from_file(state_dict, metadata, label)
    if not metadata.get("architecture", "").strip() and Path(label).suffix != ".safetensors":
        how = "its state dict's key names say"
        if card_of(model).architecture == "bs-mamba2":  # what the weights cannot say was assumed
            config = model.config
            assert isinstance(config, BSMamba2Config)
            hop = config.stft_hop_length
            how += f" (STFT hop {hop}, MSST's published; --model-config gives its YAML's)"
        _say_which_bs_mamba2(model, label, how, progress)
    return LoadedModel(model, label)


def _say_which_bs_mamba2(model: nn.Module, label: str, how: str, progress: bool) -> None:
    """One line on stderr (unless quiet) for a network MSST names ``bs_mamba2``: which of the two it is."""
    kind = BS_MAMBA2_KINDS.get(card_of(model).architecture)
    if progress and kind is not None:
        print(f"stemsplit: {label}: loaded as {kind}, as {how}", file=sys.stderr)


def _read_file_or_url(
    spec: str | os.PathLike, progress: bool
) -> tuple[dict[str, Tensor], dict[str, str], str] | None:
    """(state dict, metadata, label) of a checkpoint file or URL; None when ``spec`` is a registry name."""
    text = os.fspath(spec)
    if _is_url(text):
        source = source_of_url(text)
        state_dict, metadata = read_safetensors(_fetch_source(source, progress), source.label)
        return state_dict, metadata, source.label
    path = Path(text).expanduser()
    looks_like_path = path.suffix in CHECKPOINT_SUFFIXES or os.sep in text or path.is_file()
    if not (isinstance(spec, os.PathLike) or looks_like_path):
        return None
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    state_dict, metadata = read_checkpoint(path, path.name)
    return state_dict, metadata, path.name


def _load_with_msst_config(
    spec: str | os.PathLike | None, model_config: str | os.PathLike | MSSTConfig, progress: bool
) -> LoadedModel:
    msst = model_config if isinstance(model_config, MSSTConfig) else read_msst_config(model_config)
    found = None if spec is None else _read_file_or_url(spec, progress)
    if found is None:
        what = "no model" if spec is None else f"{os.fspath(spec)!r}, not a checkpoint file or URL,"
        raise ModelConfigError(
            f"{msst.path}: an MSST config goes with a checkpoint file or URL; {what} was given"
        )
    state_dict, _, label = found  # the YAML, not the file's metadata, says what the network is
    try:
        config = families.make_config(msst.architecture, overrides=msst.config, stems=msst.stems)
    except families.FamilyError as exc:
        raise ModelConfigError(f"{msst.path}: {exc}") from None
    model = build_network(
        state_dict, msst.architecture, config, msst.stems, label, msst.normalization, msst.path.name
    )
    # (nn.Module's __setattr__ is typed for tensors and modules only)
    model.card = replace(card_of(model), window=msst.window, hop=msst.hop)  # type: ignore[assignment]
    _say_which_bs_mamba2(model, label, f"{msst.path.name}'s model options say", progress)
    return LoadedModel(model, label)


def _load_entry(entry: ModelEntry, progress: bool) -> LoadedModel:
    config = entry_config(entry)  # before any download: a bad entry costs no bandwidth
    path = _fetch_source(source_of(entry), progress)
    state_dict, metadata = read_safetensors(path, entry.name)
    if read_info(metadata, entry.name).upstream:  # a Demucs file: its own kwargs build it, as upstream
        model = _upstream_network(entry, state_dict, metadata)
    else:
        model = build_network(
            state_dict,
            entry.architecture,
            config,
            entry.stems,
            entry.name,
            entry.normalization,
            "the registry",
        )
    card = card_of(model)
    card = replace(card, window=entry.window or card.window, hop=entry.hop or card.hop)
    model.card = card  # type: ignore[assignment]  # (nn.Module's __setattr__: tensors and modules only)
    if card.task != entry.task:
        raise RegistryError(
            f"{entry.where('task')}: [models.{entry.name}] task is {entry.task!r}, "
            f"but a {entry.architecture} network separates {card.task}"
        )
    return LoadedModel(model, entry.name, entry.light)


def _upstream_network(
    entry: ModelEntry, state_dict: dict[str, Tensor], metadata: dict[str, str]
) -> nn.Module:
    """The network of a file that says what it is in its upstream's terms (a Demucs model's class and
    kwargs): built from those, as upstream would, after checking they agree with the registry entry.

    The entry's config is what stemsplit checks before downloading; the file's kwargs are what
    trained the weights, so where an option the entry does not state differs, the file wins.
    """
    model = network_from_file(state_dict, metadata, entry.name)
    card = card_of(model)
    found = {"architecture": card.architecture, "stems": card.stems, "sample_rate": card.sample_rate}
    for key, value in found.items():
        if getattr(entry, key) != value:
            raise RegistryError(
                f"{entry.where(key)}: [models.{entry.name}] {key} is {getattr(entry, key)!r}, "
                f"but the file says {value!r}"
            )
    return model


# --- fetching and converting ------------------------------------------------------------------


def fetch(name: str, *, progress: bool = True) -> Path:
    """Make sure registry model ``name`` is downloaded and verified; return the file loading reads.

    For a pickled checkpoint that is its safetensors conversion in the cache.
    """
    return _fetch_source(source_of(load_registry().get(name)), progress)


def _fetch_source(source: Source, progress: bool) -> Path:
    with locked(source, progress):
        try:
            return _prepare(source, progress)
        except OSError as exc:  # the cache could not be written (read-only, full, not a folder)
            raise cache_error(exc) from None


def _prepare(source: Source, progress: bool) -> Path:
    """Obtain, verify and (for pickles) convert; return the safetensors file to load. Caller locks.

    A pickle's conversion, once made, is all later loads need (the published
    file may even be deleted). It is hashed when made and checked against that
    hash on every load, like a download; it is made afresh when its hash record
    is missing or when it was converted from another file than the one the
    registry (or the first download's record) names.
    """
    converted = source.converted_path
    pickled = not source.filename.endswith(".safetensors")
    if pickled and converted.is_file() and _conversion_is_current(source, converted):
        return converted
    original, fresh = obtain(source, progress)
    record = record_path(source.download_path)
    hint = "reinstall stemsplit" if source.shipped else clear_hint(source, original)
    try:
        sha = check_hash(original, source.sha256, record, source.label, hint=hint)
        # Parse before trusting: an HTML error page served as 200 must not be cached, let alone pinned.
        if pickled:
            state_dict, file_metadata = read_pickle(original, source.label)
        else:
            read_metadata(original, source.label)
    except (CheckpointError, UnsafeCheckpointError) as exc:
        if fresh:
            html = html_hint(original)
            original.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                original.parent.rmdir()  # only if empty: leave no trace of a failed first download
            raise type(exc)(f"{exc}{html}; the download was deleted") from None
        raise type(exc)(f"{exc}; {hint}") from None
    if not source.sha256 and not source.shipped and not record.is_file():
        pin_hash(record, sha)  # trust on first use, now that it is known to be a checkpoint
    if not pickled:
        return original
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = {**file_metadata, "source": original.name, "source_sha256": sha}
    converted.parent.mkdir(parents=True, exist_ok=True)
    digest = []

    def write(temp: Path) -> None:
        save_file(tensors, str(temp), metadata=metadata)
        digest.append(sha256_of(temp))

    # The conversion first, then its record: a crash in between leaves a conversion without a
    # record, which the next load makes afresh (the other order could pin a file never written).
    write_atomically(converted, write)
    pin_hash(record_path(converted), digest[0])
    return converted


def _conversion_is_current(source: Source, converted: Path) -> bool:
    """The cached conversion is intact (its recorded hash) and made from the right published file.

    False (convert again) when it has no hash record or comes from another file; a
    :class:`ChecksumError` when it changed since it was made.
    """
    record = record_path(converted)
    if not record.is_file():
        return False
    hint = clear_hint(source, converted, record)
    check_hash(converted, "", record, source.label, hint=hint)
    try:
        made_from = read_metadata(converted, source.label).get("source_sha256")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {hint}") from None
    original_record = record_path(source.download_path)
    expected = source.sha256 or (original_record.read_text().strip() if original_record.is_file() else None)
    return expected is None or made_from == expected


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-hashing one cached model."""

    name: str
    status: str  # "ok", "mismatch", "not cached", "unverified" (no hash known yet)
    detail: str


def verify(name: str | None = None) -> list[VerifyResult]:
    """Re-hash the cached files of one registry model (or all) against the registry or recorded hashes."""
    registry = load_registry()
    entries = [registry.get(name)] if name is not None else list(registry.models.values())
    results = []
    for entry in entries:
        source = source_of(entry)
        with locked(source, progress=False):
            results.append(_verify_one(source))
    return results


def _verify_one(source: Source) -> VerifyResult:
    original = source.local_file()
    checks = []  # (file, registry hash, record, how to clear it)
    if original is not None:
        record = record_path(source.download_path)
        if not source.sha256 and not record.is_file():
            return VerifyResult(source.label, "unverified", f"no hash known or recorded for {original}")
        hint = "reinstall stemsplit" if source.shipped else clear_hint(source, original)
        checks.append((original, source.sha256, record, hint))
    converted = source.converted_path
    if not source.filename.endswith(".safetensors") and converted.is_file():
        record = record_path(converted)
        if not record.is_file():  # the next load converts it afresh
            return VerifyResult(source.label, "unverified", f"no hash recorded for {converted}")
        checks.append((converted, "", record, clear_hint(source, converted, record)))
    if not checks:
        return VerifyResult(source.label, "not cached", f"run `stemsplit models download {source.label}`")
    for path, expected, record, hint in checks:
        try:
            check_hash(path, expected, record, source.label, hint=hint)
        except ChecksumError as exc:
            return VerifyResult(source.label, "mismatch", str(exc))
    basis = "registry sha256" if source.sha256 else "hashes recorded on first use"
    return VerifyResult(source.label, "ok", f"{', '.join(str(c[0]) for c in checks)} match the {basis}")
