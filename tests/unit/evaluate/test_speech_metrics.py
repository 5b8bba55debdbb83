"""Speech metrics: SI-SNR is its formula and scale-invariant; the improvements (SI-SNRi, SDRi) of
``stemsplit eval --libri2mix`` are zero for the mixture itself."""

import numpy as np
import torch
from helpers import SPEECH_RATE, talkers

from stemsplit.evaluate.metrics import speech_scores
from stemsplit.evaluate.si_snr import si_snr

RATE = SPEECH_RATE


def test_si_snr_by_hand_and_scale_invariant():
    t = torch.sin(torch.arange(8000.0) * 0.05)
    noise = torch.sin(torch.arange(8000.0) * 0.31)  # nearly orthogonal to t
    estimate = t + 0.1 * noise
    scale = torch.dot(estimate - estimate.mean(), t - t.mean()) / (t - t.mean()).square().sum()
    signal = scale * (t - t.mean())
    expected = 10 * torch.log10(
        signal.square().sum() / ((estimate - estimate.mean()) - signal).square().sum()
    )
    torch.testing.assert_close(si_snr(estimate, t), expected)
    torch.testing.assert_close(si_snr(3 * estimate + 0.2, t), si_snr(estimate, t), rtol=1e-4, atol=1e-4)
    assert si_snr(estimate, t) > 15


def test_the_mixture_itself_improves_nothing():
    sources = talkers(2.0)
    mixture = sources.sum(0) + 0.01 * np.random.default_rng(0).standard_normal(sources.shape[1])
    scores = speech_scores(
        mixture, sources, np.stack([mixture, mixture]), RATE, compute_sdr=True, compute_stoi=False
    )
    np.testing.assert_allclose(scores["si_snri"], 0, atol=1e-9)
    np.testing.assert_allclose(scores["sdri"], 0, atol=1e-6)
    good = speech_scores(mixture, sources, sources[::-1] + 0.001, RATE, compute_sdr=True)
    assert min(good["si_snri"]) > 10 and min(good["sdri"]) > 10  # found the order, and gained
