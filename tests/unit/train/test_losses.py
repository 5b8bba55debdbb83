"""Training losses: the permutation-invariant SI-SNR loss of the speaker networks."""

import pytest
import torch

from stemsplit.evaluate.si_snr import pit_si_snr, si_snr
from stemsplit.train.losses import pit_si_snr_loss


@pytest.mark.parametrize("talkers_count", [2, 3])
def test_pit_loss_is_permutation_invariant_and_is_minus_si_snr_in_the_right_order(talkers_count):
    torch.manual_seed(0)
    targets = torch.randn(4, talkers_count, 1, 2000)
    estimates = targets + 0.3 * torch.randn_like(targets)
    right = -si_snr(estimates, targets).mean(dim=(1, 2)).mean()
    torch.testing.assert_close(pit_si_snr_loss(estimates, targets), right)
    swap = [1, 0, *range(2, talkers_count)]
    for order in [swap, [2, 0, 1]] if talkers_count == 3 else [swap]:
        shuffled = estimates[:, order]
        torch.testing.assert_close(pit_si_snr_loss(shuffled, targets), right)
        _score, found = pit_si_snr(shuffled, targets)
        assert (shuffled[torch.arange(4)[:, None], found] == estimates).all()  # it finds the way back
    # A wrong order costs: each output scored against another talker is far worse.
    wrong = -si_snr(estimates[:, [1, 0, *range(2, talkers_count)]], targets).mean(dim=(1, 2)).mean()
    assert wrong > right + 20
    # Two stages: the sum of both stages' losses.
    torch.testing.assert_close(
        pit_si_snr_loss((estimates, estimates[:, [1, 0, *range(2, talkers_count)]]), targets), 2 * right
    )
