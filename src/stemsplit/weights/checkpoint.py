"""Checkpoint files: safe reading, one metadata schema, and the network they hold.

**Safe loading**: safetensors directly; pickled checkpoints (``.ckpt``, ``.pt``,
``.pth``, Demucs's ``.th``) only with ``torch.load(weights_only=True)``, so a file that needs
arbitrary pickle code is refused before anything in it runs (a Demucs package may name its
model class and a Fraction, and nothing more: :mod:`stemsplit.weights.demucs`).

**Metadata**: see :mod:`stemsplit.weights.metadata` (torch-free), the one schema
:func:`save_checkpoint` writes and :func:`read_info` reads.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from ..card import card_of, default_stem_names
from ..files import write_atomically
from ..model import bs_mamba2, families
from ..model.htdemucs import config_from_kwargs
from ..model.state_dict import StateDictMismatch, check_state_dict, unwrap_state_dict
from ..model.ts_bsmamba2 import ARCHITECTURE as TS_BSMAMBA2
from ..model.ts_bsmamba2 import TSBSMamba2Config, config_from_state_dict
from .demucs import load_markers, package_to_file
from .errors import CheckpointError, UnsafeCheckpointError
from .metadata import CheckpointInfo, _where, read_info
from .registry import CHECKPOINT_SUFFIXES

__all__ = [
    "BS_MAMBA2_KINDS",
    "bare_architecture",
    "build_network",
    "network_from_file",
    "read_checkpoint",
    "read_pickle",
    "read_safetensors",
    "save_checkpoint",
    "torch_load_safely",
]


def _as_state_dict(obj: Any, label: str) -> dict[str, torch.Tensor]:
    """Unwrap trainer wrappers and check that what is left maps names to tensors."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label}: holds a {type(obj).__name__}, not a state dict")
    state_dict = unwrap_state_dict(obj)
    bad = [str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{label}: not a state dict: {', '.join(bad[:5])} are not tensors")
    return dict(state_dict)


def _unreadable(path: Path, label: str | None, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{_where(path, label)}: not a readable checkpoint ({_load_failure(exc)})")


def _load_failure(exc: BaseException) -> str:
    """The useful part of a torch.load error: its messages run to paragraphs of advice (including
    "set weights_only=False", which we never want a user to read as a fix). The file is a ZIP archive
    or a pickle (:func:`_not_a_checkpoint` said so): what failed is its inside."""
    text = str(exc).strip()
    if isinstance(exc, EOFError) or not text:
        return "damaged or cut short: the data ends early"
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    first = text.splitlines()[0].split(". ", 1)[0].rstrip(".")
    if not re.search(r"[A-Za-z]{3}", first):  # a bare key or number ("174812789"): say what kind of error
        first = f"{type(exc).__name__} {first}"
    return f"damaged or cut short: {first}"


# What a file that is not a checkpoint most often is, by its first bytes (a failed download, a Git LFS
# checkout without `git lfs pull`, a file saved under the wrong name).
_NOT_CHECKPOINTS = (
    (b"version https://git-lfs", "a Git LFS pointer, not the weights (run git lfs pull)"),
    (b"<!DOCTYPE", "an HTML page (a download that got a web page instead of the file?)"),
    (b"<html", "an HTML page (a download that got a web page instead of the file?)"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"{", "a JSON or text file"),
)


def _not_a_checkpoint(path: Path) -> str | None:
    """What ``path`` is instead, in words, when its first bytes are neither a ZIP archive (PyTorch's
    format since 1.6) nor a pickle (the older format, and Demucs's packages); else None."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # a ZIP archive; pickle's PROTO opcode
        return None
    for magic, kind in _NOT_CHECKPOINTS:
        if head.lstrip().lower().startswith(magic.lower()):
            return kind
    text = head.decode("utf-8", errors="replace")
    if all(c.isprintable() or c in "\t\n\r" for c in text.rstrip("\ufffd")):  # (a character cut at 64)
        return "a text file"
    return "unknown bytes: neither a ZIP archive (PyTorch's format) nor a pickle"


def torch_load_safely(path: Path, label: str | None = None, allow: list[Any] | None = None) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no pickle code runs.

    The one place stemsplit unpickles anything (checkpoints here, ``last.pt`` in
    training). ``allow``: more globals the unpickler may take, as
    ``torch.serialization.safe_globals`` lists them (plain values and inert markers only).
    Raises :class:`UnsafeCheckpointError` for a file that needs code
    (a class or function the weights-only unpickler does not allow) and
    :class:`CheckpointError` for anything unreadable; both one line naming ``path``
    (after ``label``, a model name, when given).
    """
    path = Path(path)
    try:
        kind = _not_a_checkpoint(path)
    except OSError as exc:
        raise CheckpointError(f"{_where(path, label)}: cannot read it ({exc.strerror or exc})") from None
    if kind:
        raise CheckpointError(f"{_where(path, label)}: not a readable checkpoint: {kind}")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(allow or []):
            # torch warns about legacy pickles before failing: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler stops at the first global (function or class) it does not allow.
        blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if blocked:
            raise UnsafeCheckpointError(
                f"{_where(path, label)}: refused: it needs arbitrary pickle code ({blocked.group(1)}); "
                "only plain tensor checkpoints are accepted and nothing in it was run"
            ) from None
        raise _unreadable(path, label, exc) from None
    except Exception as exc:  # torch.load raises many types on garbage: KeyError, RuntimeError, EOFError...
        raise _unreadable(path, label, exc) from None


def read_pickle(path: Path, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A pickled checkpoint, loaded weights-only (see :func:`torch_load_safely`): its state dict, and
    for a Demucs package the metadata Demucs 4.1's safetensors would carry (else none)."""
    obj = torch_load_safely(path, label, allow=load_markers())
    package = package_to_file(obj, label)
    if package is None:
        return _as_state_dict(obj, label), {}
    state, metadata = package
    return _as_state_dict(state, label), metadata


def read_safetensors(path: Path, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{_where(path, label)}: not a readable safetensors file ({exc})") from None
    return _as_state_dict(state_dict, label), metadata


def read_checkpoint(path: Path, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        return read_safetensors(path, label)
    if path.suffix in CHECKPOINT_SUFFIXES:
        return read_pickle(path, label)
    known = ", ".join(CHECKPOINT_SUFFIXES)
    raise CheckpointError(f"{label}: unknown checkpoint type {path.suffix!r} (known: {known})")


# --- building models ------------------------------------------------------------------------


# --- the metadata schema ---------------------------------------------------------------------


def save_checkpoint(model: nn.Module, path: Path, **extra: Any) -> None:
    """Write ``model``'s weights and the metadata that makes the file loadable on its own.

    The architecture, config, stems, sample rate and normalisation come from
    ``model.card`` and ``model.config``; ``extra`` (epoch, scores, ...) is kept as strings.
    """
    card = card_of(model)
    metadata = {
        "architecture": card.architecture,
        "config": json.dumps(families.config_dict(model.config)),
        "stems": ",".join(card.stems),
        "sample_rate": str(card.sample_rate),
        "normalization": card.normalization,
        "task": card.task,
        **{k: str(v) for k, v in extra.items()},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomically(Path(path), lambda temp: save_file(state, str(temp), metadata=metadata))


# --- the network a checkpoint holds ------------------------------------------------------------


def _config_of(info: CheckpointInfo, state_dict: Mapping[str, torch.Tensor], label: str) -> Any:
    """The family config from the metadata, or (old TS-BSMamba2 files) inferred from the weights."""
    config: Any  # the family's config dataclass
    try:
        if info.upstream == "demucs":  # Demucs's own constructor kwargs, defaults left out
            assert info.config is not None  # (read_info gives a Demucs file's kwargs as its config)
            config, _ = config_from_kwargs({**info.config, "sources": list(info.stems or ())})
        elif info.config is not None:
            config = families.make_config(info.architecture, overrides=info.config)
        elif info.architecture == TS_BSMAMBA2:
            config = config_from_state_dict(
                state_dict, sr=info.sample_rate or 44100, stride=info.stride or 512
            )
        elif info.architecture == bs_mamba2.ARCHITECTURE:  # its hop: MSST's published config's
            config = bs_mamba2.config_from_state_dict(state_dict, sr=info.sample_rate or 44100)
        else:
            raise CheckpointError(
                f"{label}: a {info.architecture} checkpoint needs its config in the metadata"
            )
    except (families.FamilyError, StateDictMismatch) as exc:
        raise CheckpointError(f"{label}: {exc}") from None
    if info.sample_rate is not None and getattr(config, "sr", info.sample_rate) != info.sample_rate:
        raise CheckpointError(
            f"{label}: metadata sample_rate={info.sample_rate} differs from config sr={config.sr}"
        )
    return config


def build_network(
    state_dict: Mapping[str, torch.Tensor],
    architecture: str,
    config: Any,
    stems: tuple[str, ...],
    label: str,
    normalization: str = "none",
    expected_by: str = "the checkpoint's metadata",
) -> nn.Module:
    """The network of ``architecture`` and ``config`` with these weights, in eval mode, card filled in.

    A mismatch raises :class:`CheckpointError` naming the offending keys (and,
    for TS-BSMamba2, which config fields the weights have instead).
    """
    try:
        with torch.device("meta"):  # shapes only: a config that does not fit the weights (say, one edited
            shapes = families.build_model(architecture, config, stems)  # to 100 GB) is named first
    except (families.FamilyError, ValueError) as exc:
        raise CheckpointError(f"{label}: {exc}") from None
    try:
        check_state_dict(shapes, state_dict)
    except StateDictMismatch as exc:
        raise CheckpointError(
            f"{label}: architecture differs from {expected_by}: {_found(state_dict, shapes)}{exc}"
        ) from None
    model = families.build_model(architecture, config, stems)
    model.load_state_dict(state_dict, strict=True)
    # (nn.Module's __setattr__ is typed for tensors and modules only)
    model.card = replace(card_of(model), stems=stems, normalization=normalization)  # type: ignore[assignment]
    return model.eval()


def _found(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """For a network that does not fit: the other family MSST's ``bs_mamba2`` builds, when the weights
    are that one's; for a TS-BSMamba2, which config fields the weights have instead."""
    other, architecture = bare_architecture(state_dict), card_of(model).architecture
    ts_weights = "BN_mask.0.1.weight" in state_dict
    mixed_up = other != architecture and (other == bs_mamba2.ARCHITECTURE or ts_weights)
    if architecture in BS_MAMBA2_KINDS and mixed_up:
        return f"the checkpoint is a {BS_MAMBA2_KINDS[other]}; "
    if architecture != TS_BSMAMBA2:
        return ""
    config = model.config
    assert isinstance(config, TSBSMamba2Config)
    try:
        found = config_from_state_dict(state_dict, sr=config.sr, stride=config.stride)
    except StateDictMismatch:
        return ""
    diff = ", ".join(
        f"{name} {getattr(found, name)} (expected {getattr(config, name)})"
        for name in families.family(TS_BSMAMBA2).field_names()
        if getattr(found, name) != getattr(config, name)
    )
    return f"the checkpoint has {diff}; " if diff else ""


# MSST's ``bs_mamba2`` key has built two networks; which one a checkpoint holds, for messages.
BS_MAMBA2_KINDS = {
    TS_BSMAMBA2: "TS-BSMamba2 (ts-bsmamba2: MSST's bs_mamba2 up to 2025)",
    bs_mamba2.ARCHITECTURE: "BSMamba2 (bs-mamba2: MSST's bs_mamba2 since 2026)",
}


def bare_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The family of a checkpoint whose metadata names none, by its key names: a BSMamba2 (MSST's
    .ckpt files hold bare state dicts), else TS-BSMamba2 (every stemsplit file before families)."""
    return bs_mamba2.ARCHITECTURE if bs_mamba2.is_bs_mamba2_state_dict(state_dict) else TS_BSMAMBA2


def network_from_file(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str], label: str
) -> nn.Module:
    """A checkpoint without a registry entry: everything from its metadata (and, if old, its weights)."""
    info = read_info(metadata, label)
    if not metadata.get("architecture", "").strip() and info.upstream is None:
        info = replace(info, architecture=bare_architecture(state_dict))
    config = _config_of(info, state_dict, label)
    family = families.family(info.architecture)
    outputs: int | None = getattr(config, family.stem_field or "", None)
    stems = info.stems  # (read_info gives None or names, never an empty tuple)
    if stems is None:
        if outputs is None:
            raise CheckpointError(
                f"{label}: a {info.architecture} checkpoint needs its stems in the metadata"
            )
        stems = default_stem_names(outputs)
    rest = family.rest_stem and outputs is not None and len(stems) == outputs + 1  # mixture minus the others
    if outputs is not None and len(stems) != outputs and not rest:
        raise CheckpointError(
            f"{label}: metadata names {len(stems)} stems but the network has {outputs} outputs"
        )
    model = build_network(state_dict, info.architecture, config, stems, label, info.normalization)
    task = card_of(model).task
    if info.task is not None and info.task != task:  # what the CLI checked before loading
        raise CheckpointError(
            f"{label}: metadata says task={info.task!r}, but a {info.architecture} network separates {task}"
        )
    return model
