"""Speaker separation in the engine (issue 17): a permutation-invariant network's windows are aligned
before overlap-add, so talkers never swap between windows.

A permuting oracle (a perfect separator that returns each window's talkers in a random order, as a
network trained with a permutation-invariant loss may) stands in for any speaker-separation network.
"""

from dataclasses import replace

import numpy as np
import torch
from helpers import SPEECH_RATE, talkers
from torch import nn

from stemsplit.card import SPEAKER_STEMS, ModelCard
from stemsplit.separate import Separator, StreamingOverlapAdd

RATE = SPEECH_RATE


class PermutingOracle(nn.Module):
    """A perfect speaker separator that, like a network trained with a permutation-invariant loss,
    returns each window's talkers in a random order of its own.

    It knows the recording's talkers and follows the engine's windows in order (the engine's
    padding: ``window - hop`` zeros first); each window is checked to be the mixture there.
    """

    def __init__(self, sources: np.ndarray, window: int, hop: int, seed: int = 0) -> None:
        super().__init__()
        lead = window - hop
        padded = np.zeros((2, lead + sources.shape[1] + window), np.float32)
        padded[:, lead : lead + sources.shape[1]] = sources
        self.padded, self.hop, self.windows = torch.from_numpy(padded), hop, 0
        self.rng = np.random.default_rng(seed)
        self.swapped = 0
        self.card = ModelCard(
            "oracle",
            SPEAKER_STEMS,
            RATE,
            1,
            (256, 64),
            channels=1,
            task="speakers",
            permutation_invariant=True,
        )
        self.anchor = nn.Parameter(torch.zeros(()))  # something for .to(device) and the fingerprint

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        outputs = []
        for window in windows:  # [1, W]
            start = self.windows * self.hop
            self.windows += 1
            truth = self.padded[:, start : start + window.shape[-1]]
            assert torch.allclose(window[0], truth.sum(0), atol=1e-6), "the oracle lost the engine's windows"
            order = self.rng.permutation(2)
            self.swapped += int(order[0] == 1)
            outputs.append(truth[order][:, None])
        return torch.stack(outputs)


def segment_correlations(output: np.ndarray, sources: np.ndarray, seconds: float = 1.0) -> np.ndarray:
    """Correlation of ``output`` with each source, per segment: [segments, 2]."""
    n = round(seconds * RATE)
    rows = []
    for start in range(0, output.shape[-1] - n + 1, n):
        out = output[start : start + n]
        rows.append([np.corrcoef(out, src[start : start + n])[0, 1] for src in sources])
    return np.array(rows)


def test_consecutive_windows_are_aligned_so_talkers_never_swap():
    sources = talkers(40.0)
    mixture = sources.sum(0, keepdims=True)

    def separate(aligned: bool):
        oracle = PermutingOracle(sources, window=3 * RATE, hop=RATE // 2)
        if not aligned:
            oracle.card = replace(oracle.card, permutation_invariant=False)
        separator = Separator(oracle, device="cpu", window=3.0, hop=0.5, precision="fp32")
        out = separator.separate(mixture, RATE)
        assert oracle.swapped > 20  # the oracle did shuffle: ~half of its 85 windows
        return out

    # Without alignment each sample averages windows of either order: speaker1 drifts between talkers.
    plain = segment_correlations(separate(aligned=False)["speaker1"][0], sources)
    closer_to_first = plain[:, 0] > plain[:, 1]
    assert closer_to_first.any() and not closer_to_first.all()
    assert plain.max(axis=1).min() < 0.9

    out = separate(aligned=True)
    first = segment_correlations(out["speaker1"][0], sources)
    second = segment_correlations(out["speaker2"][0], sources)
    talker = int(first[0].argmax())  # which talker speaker1 got is arbitrary; it must keep it throughout
    assert first[:, talker].min() > 0.99 and second[:, 1 - talker].min() > 0.99
    np.testing.assert_allclose(out["speaker1"][0], sources[talker], atol=1e-5)


def test_streaming_alignment_leaves_other_outputs_in_place():
    # A 3-talker oracle run straight through StreamingOverlapAdd, the mixture carried as a 4th output.
    rng = np.random.default_rng(1)
    sources = torch.from_numpy(rng.standard_normal((3, 5000)).astype(np.float32))
    window, hop = 400, 100
    padded = torch.cat([torch.zeros(3, window - hop), sources, torch.zeros(3, window)], dim=1)
    starts = iter(range(0, 10**6, hop))

    def run_batch(windows):
        outs = []
        for w in windows:
            start = next(starts)
            truth = padded[:, start : start + window]
            outs.append(torch.cat([truth[torch.from_numpy(rng.permutation(3))], w])[:, None])
        return torch.stack(outs)

    ola = StreamingOverlapAdd(run_batch, window, hop, batch_size=3, align_stems=3)
    blocks = [sources.sum(0, keepdim=True)[:, i : i + 700] for i in range(0, 5000, 700)]
    out = torch.cat([o for b in blocks for o in ola.push(b)] + list(ola.finish()), dim=-1)[:, 0]
    assert out.shape == (4, 5000)
    torch.testing.assert_close(out[3], sources.sum(0), atol=1e-5, rtol=0)  # the mixture, untouched
    order = [int(torch.stack([torch.dot(out[i], s) for s in sources]).argmax()) for i in range(3)]
    assert sorted(order) == [0, 1, 2]
    torch.testing.assert_close(out[:3], sources[order], atol=1e-5, rtol=0)
