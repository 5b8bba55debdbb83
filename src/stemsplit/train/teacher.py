"""What the teacher makes of an unlabeled crop (BSRNN's Sec. III-A and Fig. 2): its estimate of a stem,
the crop's class for that stem (clean target, clean residual or pseudo-label), and the signal the crop
gives an example's slot.

A teacher may hear a crop through several longer windows (``teacher_window``, ``teacher_views``;
ours, not the paper's), their estimates of the crop averaged: docs/finetuning.md has why and what it
measured.
"""

from __future__ import annotations

import torch

__all__ = [
    "CLASS_NAMES",
    "CLEAN_RESIDUAL",
    "CLEAN_TARGET",
    "LABELED",
    "PSEUDO",
    "RESIDUAL",
    "TARGET",
    "classify",
    "sources_from",
    "teacher_estimates",
    "teacher_sources",
    "view_offsets",
]

# What the teacher made of an unlabeled crop, for one target stem (Sec. III-A).
PSEUDO, CLEAN_TARGET, CLEAN_RESIDUAL = 0, 1, 2
CLASS_NAMES = ("pseudo", "clean_target", "clean_residual")
# What a slot of an example takes from its unlabeled crop: nothing (labeled), the target, the residual.
LABELED, TARGET, RESIDUAL = 0, 1, 2


def classify(mixture: torch.Tensor, target: torch.Tensor, clean_db: float = 30.0) -> torch.Tensor:
    """Sec. III-A's energy test of the teacher's ``target`` estimate against the ``mixture``: [N] classes.

    mixture, target: [N, C, T]. CLEAN_RESIDUAL when the target is more than
    ``clean_db`` below the mixture, CLEAN_TARGET when the residual (mixture -
    target) is, PSEUDO otherwise (a silent crop too).
    """
    energy = mixture.float().square().sum(dim=(1, 2))
    below = 10 ** (clean_db / 10)
    absent = energy > below * target.float().square().sum(dim=(1, 2))
    alone = energy > below * (mixture.float() - target.float()).square().sum(dim=(1, 2))
    classes = torch.full_like(energy, PSEUDO, dtype=torch.int64)
    classes[alone] = CLEAN_TARGET
    classes[absent] = CLEAN_RESIDUAL
    return classes


def sources_from(
    mixture: torch.Tensor, target: torch.Tensor, kinds: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """The signal each crop gives its slot: [N, C, T] from mixtures and teacher targets [N, C, T].

    A TARGET slot takes the mixture (clean target), silence (clean residual) or
    the teacher's target (pseudo); a RESIDUAL slot takes silence, the mixture,
    or the mixture minus the teacher's target.
    """
    wants_target = (kinds == TARGET)[:, None, None]
    pseudo = torch.where(wants_target, target, mixture - target)
    clean = torch.where(wants_target, mixture, torch.zeros_like(mixture))
    silent = torch.where(wants_target, torch.zeros_like(mixture), mixture)
    out = torch.where((classes == CLEAN_TARGET)[:, None, None], clean, pseudo)
    return torch.where((classes == CLEAN_RESIDUAL)[:, None, None], silent, out)


def view_offsets(context: int, views: int) -> list[int]:
    """Where each of ``views`` teacher windows starts in a crop's region (the crop with ``context``
    frames each side; a window is the crop plus ``context``): spread evenly from the crop at a
    window's end to the crop at its start; one view is centred. No context: one view, the crop."""
    if context == 0 or views == 1:
        return [context // 2]
    return [round(k * context / (views - 1)) for k in range(views)]


def teacher_estimates(
    teacher: torch.nn.Module,
    regions: torch.Tensor,
    outputs: torch.Tensor | None = None,
    context: int = 0,
    views: int = 1,
    batch: int = 16,
    bf16: bool = False,
) -> torch.Tensor:
    """The teacher's estimate of the middle of N regions [N, C, T + 2 * context]: [N, C, T].

    Each region is a crop with ``context`` frames of its song on each side. The teacher separates
    :func:`view_offsets`' windows of T + context frames (``batch`` at a time, no gradients, its last
    stage) and the crop's part of each is averaged; region n's estimate is its output ``outputs[n]``
    (None: every output, [N, S, C, T]).
    """
    frames = regions.shape[-1] - 2 * context
    total: torch.Tensor | float = 0.0
    offsets = view_offsets(context, views)
    with torch.no_grad(), torch.autocast(regions.device.type, dtype=torch.bfloat16, enabled=bf16):
        for offset in offsets:
            windows = regions[..., offset : offset + frames + context]
            estimates = []
            for chunk in windows.split(max(1, batch)):
                out = teacher(chunk)
                estimates.append((out[-1] if isinstance(out, tuple) else out).float())
            crop_at = context - offset  # where the crop lies in this window
            total = total + torch.cat(estimates)[..., crop_at : crop_at + frames]
    assert isinstance(total, torch.Tensor)  # (view_offsets gives one view at least)
    estimate = total / len(offsets)
    return (
        estimate if outputs is None else estimate[torch.arange(len(regions), device=regions.device), outputs]
    )


def teacher_sources(
    teacher: torch.nn.Module,
    regions: torch.Tensor,
    outputs: torch.Tensor,
    kinds: torch.Tensor,
    clean_db: float = 30.0,
    context: int = 0,
    views: int = 1,
    batch: int = 16,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fig. 2 for N unlabeled crops: (the signal each gives its slot [N, C, T], its class [N]).

    regions [N, C, T + 2 * context]: each crop with its context (see :func:`teacher_estimates`);
    crop n's estimate is the teacher's output ``outputs[n]``; ``kinds[n]`` says whether its slot
    wants the TARGET or the RESIDUAL (see :func:`sources_from`).
    """
    estimate = teacher_estimates(teacher, regions, outputs, context, views, batch, bf16)
    crops = regions[..., context : regions.shape[-1] - context]
    classes = classify(crops, estimate, clean_db)
    return sources_from(crops, estimate, kinds, classes), classes
