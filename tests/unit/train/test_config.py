"""Training recipes (``TrainConfig.for_arch``): each family's is its paper's."""

import torch
from torch import nn

from stemsplit.card import SPEAKER_STEMS


def test_u_mamba_net_recipe_is_the_papers():
    from pathlib import Path

    from stemsplit.train.config import TrainConfig
    from stemsplit.train.schedule import LrSchedule

    config = TrainConfig.for_arch("u-mamba-net", libri2mix=Path("data"))
    assert (config.batch_size, config.lr, config.epochs, config.crop_seconds) == (4, 1.5e-4, 120, 3.0)
    assert config.stems == SPEAKER_STEMS and config.lr_schedule == "constant" and config.clip_norm == 5.0
    assert TrainConfig(musdb=Path("m")).stems == ("drums", "bass", "other", "vocals")
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.5e-4)
    schedule = LrSchedule(optimizer, "constant")
    for score in (1.0, 0.5, 0.4, 0.3, 0.2):
        schedule.step(score)
    assert optimizer.param_groups[0]["lr"] == 1.5e-4 and schedule.since_best == 4
