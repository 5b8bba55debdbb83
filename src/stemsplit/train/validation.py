"""The validation score after each epoch: the validation set separated with the chunked protocol
(the engine's :class:`~stemsplit.engine.separator.Separator`, ``--valid-window`` and ``--valid-hop``)
and scored by the task's measure, uSDR for music and SI-SNRi for speakers (:mod:`stemsplit.evaluate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..datasets.libri2mix import SpeechTrack
    from ..datasets.musdb import Track

__all__ = ["validation_score"]


def validation_score(
    model: torch.nn.Module,
    tracks: list[Track] | list[SpeechTrack],
    task: str,
    device: torch.device,
    window: float,
    hop: float,
    precision: str,
) -> float:
    """Mean uSDR over stems and ``tracks`` (``task`` speakers: mean SI-SNRi over talkers and
    mixtures), separated in ``window``-second chunks ``hop`` apart; ``model`` is left training."""
    from ..engine.separator import Separator
    from ..evaluate.scoring import evaluate_speech, evaluate_tracks

    separator = Separator(model, device=device, window=window, hop=hop, precision=precision)
    try:
        if task == "speakers":
            return evaluate_speech(separator, tracks, compute_sdr=False, compute_stoi=False).mean("si_snri")
        return evaluate_tracks(separator, tracks, compute_csdr=False).usdr()["avg"]
    finally:
        model.train()
