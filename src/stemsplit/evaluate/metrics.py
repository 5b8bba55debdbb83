"""The metrics, as the papers report them: cSDR and uSDR per stem (music); SI-SNRi, SDRi and STOI
per talker (speech).

- **uSDR** (utterance-level SDR, the MDX Challenge 2021 metric): one SNR-style
  number per track and stem over the whole song; the reported figure is the
  mean over tracks.
- **cSDR** (chunk-level SDR, SiSEC 2018): BSSEval v4 from the ``museval``
  package on 1 s frames; the median over a track's frames, then the median
  over tracks. Frames where a reference is silent are NaN and ignored, as in
  museval's own aggregation.

Speech (U-Mamba-Net's Tables III-V), per mixture and talker, the outputs matched
to the talkers in the order of the best mean SI-SNR (as in training), then the
mean over talkers and mixtures:

- **SI-SNRi**: SI-SNR of the estimate minus SI-SNR of the mixture, both against
  the talker (:func:`stemsplit.evaluate.si_snr.si_snr`);
- **SDRi**: the same with BSSEval's SDR (``museval``, the ``bss_eval_sources``
  variant of v3 with 512-tap distortion filters, over the whole mixture);
- **STOI** of the estimate (0-1), when ``pystoi`` is installed.
"""

from __future__ import annotations

import sys
import types

import numpy as np

__all__ = ["MUSEVAL_INSTALL", "csdr", "speech_scores", "usdr"]

MUSEVAL_INSTALL = "pip install museval (or 'stemsplit-cli[train]')"


def usdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-7) -> float:
    """Utterance-level SDR in dB over all channels and samples (MDX 2021).

    ``eps`` keeps a perfect estimate finite, and a silent stem finite (0 dB when estimated as silence).
    """
    reference = np.asarray(reference, dtype=np.float64)
    error = reference - np.asarray(estimate, dtype=np.float64)
    return float(10 * np.log10((np.sum(reference**2) + eps) / (np.sum(error**2) + eps)))


def _museval() -> types.ModuleType:
    """Import museval, also where ffmpeg is not installed.

    museval imports musdb, which imports stempeg, which raises at import time
    when ffmpeg is not on PATH; BSSEval itself needs only numpy and scipy, and
    stempeg only decodes ``.stem.mp4`` files, which we never read. So on that
    error a placeholder stempeg stands in for the import alone.
    """
    try:
        import museval
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"cSDR needs museval: {MUSEVAL_INSTALL}", name=exc.name) from None
    except RuntimeError as exc:
        if "ffmpeg" not in str(exc):
            raise
        placeholder = types.ModuleType("stempeg")
        sys.modules["stempeg"] = placeholder
        try:
            import museval
        finally:
            if sys.modules.get("stempeg") is placeholder:
                del sys.modules["stempeg"]
    return museval


def _silent(sources: np.ndarray) -> np.ndarray:
    """Per source [S, samples, ...]: silent throughout, by museval's own test (which then refuses)."""
    return np.all(np.sum(sources, axis=tuple(range(2, sources.ndim))) == 0, axis=1)


def csdr(references: np.ndarray, estimates: np.ndarray, sample_rate: int) -> np.ndarray:
    """Chunk-level SDR per stem of one track: references, estimates [S, samples, channels] -> [S] dB.

    museval's BSSEval v4 on 1 s frames, then per stem the median over frames
    that are not NaN (NaN where no frame is scorable). museval refuses a track
    with a stem silent throughout (an instrumental's vocals): that stem is NaN,
    as its silent frames would be, and the others are scored without it (a
    stem's SDR involves only its own reference and estimate).
    """
    scores = np.full(len(references), np.nan)
    kept = ~(_silent(references) | _silent(estimates))
    if not kept.any():
        return scores
    sdr = _museval().evaluate(references[kept], estimates[kept], win=sample_rate, hop=sample_rate)[0]
    for i, frames in zip(np.flatnonzero(kept), sdr, strict=True):
        frames = frames[~np.isnan(frames)]
        if len(frames):
            scores[i] = np.median(frames)
    return scores


def _bss_sdr(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """BSSEval SDR of each estimate [S, samples] against its reference, whole signals -> [S] dB;
    all NaN where a talker or an output is silent throughout (museval refuses those)."""
    if _silent(references[..., None]).any() or _silent(estimates[..., None]).any():
        return np.full(len(references), np.nan)
    sdr, _isr, _sir, _sar, _perm = _museval().metrics.bss_eval(
        references[..., None].astype(np.float64),
        estimates[..., None].astype(np.float64),
        window=np.inf,
        hop=np.inf,
        bsseval_sources_version=True,
    )
    return sdr[:, 0]


def speech_scores(
    mixture: np.ndarray,
    references: np.ndarray,
    estimates: np.ndarray,
    sample_rate: int,
    compute_sdr: bool = True,
    compute_stoi: bool = False,
) -> dict[str, list[float]]:
    """Scores of one mixture [samples], its talkers [S, samples] and the outputs [S, samples].

    The outputs are put in the talkers' order first (best mean SI-SNR). Returns metric -> one value
    per talker: ``si_snri`` (dB), ``sdri`` (dB, NaN with a silent talker) with ``compute_sdr``,
    ``stoi`` with ``compute_stoi``.
    """
    import torch

    from .si_snr import pit_si_snr, si_snr

    refs = torch.from_numpy(np.asarray(references, dtype=np.float64))
    _best, order = pit_si_snr(torch.from_numpy(np.asarray(estimates, dtype=np.float64))[None], refs[None])
    estimates = np.asarray(estimates, dtype=np.float64)[order[0].numpy()]
    mix = np.broadcast_to(np.asarray(mixture, dtype=np.float64), estimates.shape)
    ests = torch.from_numpy(estimates)
    gained = si_snr(ests, refs) - si_snr(torch.from_numpy(mix.copy()), refs)
    scores = {"si_snri": gained.tolist()}
    if compute_sdr:
        references = refs.numpy()
        scores["sdri"] = (_bss_sdr(references, estimates) - _bss_sdr(references, mix)).tolist()
    if compute_stoi:
        from pystoi import stoi

        scores["stoi"] = [
            float(stoi(r, e, sample_rate)) for r, e in zip(refs.numpy(), estimates, strict=True)
        ]
    return scores
