"""The Python API refuses what it cannot take, with a hint: transposed or non-audio arrays, rates,
settings of the wrong kind (docs/guarantees.md, "Checked before anything runs", for the Python API)."""

import numpy as np
import pytest
from helpers import (
    RATE,
    StubConfig,
    StubNet,
)


@pytest.fixture(scope="module")
def separator():
    """The engine around the stand-in network (stage 1 sums to the mixture, as the golden model's does)."""
    from stemsplit.separate import Separator

    return Separator(StubNet(StubConfig()).eval(), stage=1, window=1.0, hop=0.5, device="cpu")


def test_api_refuses_transposed_audio_with_a_hint(separator):
    from stemsplit.separate import SeparationError

    with pytest.raises(SeparationError, match=r"pass audio\.T"):
        separator.separate(np.zeros((RATE, 2), np.float32), RATE)


def test_api_scales_integer_pcm_by_its_type(separator):
    rng = np.random.default_rng(0)
    pcm = (rng.uniform(-0.5, 0.5, (2, RATE)) * 32768).astype(np.int16)
    stems = separator.separate(pcm, RATE)
    assert np.abs(sum(stems.values()) - pcm / 32768).max() < 1e-5  # stage 1 sums to the scaled mixture
    unsigned = (pcm.astype(np.int32) // 256 + 128).astype(np.uint8)
    stems = separator.separate(unsigned, RATE)
    assert np.abs(sum(stems.values()) - (unsigned - 128.0) / 128).max() < 1e-5


def test_api_refuses_samples_that_are_not_audio(separator):
    from stemsplit.separate import SeparationError

    audio = np.zeros((2, RATE), np.float32)
    audio[1, 100] = -1e30
    with pytest.raises(SeparationError, match=r"sample 100 is -1e\+30, beyond ±1e\+06: not audio"):
        separator.separate(audio, RATE)


@pytest.mark.parametrize(
    "rate",
    [0, 1, -44100, 44100.5, float("nan"), "fast", "44100", True, 10**7, pytest.param(10**400, id="10**400")],
)
def test_api_checks_the_sample_rate(separator, rate):
    from stemsplit.separate import SeparationError

    with pytest.raises(SeparationError, match="sample rate"):
        separator.separate(np.zeros((2, RATE), np.float32), rate)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"window": 1e9}, "window"),
        ({"hop": 0}, "hop"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_api_settings_name_the_option(golden_model, kwargs, option):
    from stemsplit.separate import SeparationError, Separator

    with pytest.raises(SeparationError) as error:
        Separator(golden_model, **kwargs)
    assert error.value.option == option and "--" not in str(error.value)  # the library names no flags


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"exact": "no"}, "exact"),
        ({"stage": True}, "stage"),
        ({"window": "3"}, "window"),
        ({"hop": "0.5"}, "hop"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"precision": ["fp32"]}, "precision"),
        ({"model": 123}, "model"),
        ({"stems": ["vocals", "vocals", "drums", "bass"]}, "stems"),
        ({"normalization": "z-score"}, "normalization"),
        ({"settings": {"window": 1.0}}, "settings"),
    ],
)
def test_api_refuses_settings_of_the_wrong_type(kwargs, option, stub_checkpoint):
    """Before: exact="no" ran as exact, stage=True as stage 1; window="3", model=123 were deep TypeErrors."""
    from stemsplit.separate import SeparationError, Separator

    with pytest.raises(SeparationError) as error:
        Separator(kwargs.pop("model", stub_checkpoint), device="cpu", **kwargs)
    assert error.value.option == option, error.value


def test_api_refuses_an_absurd_sample_rate_for_a_model(golden_model):
    from stemsplit.separate import SeparationError, Separator

    with pytest.raises(
        SeparationError, match=r"sample rate must be a whole number of Hz .*\(401 characters\)"
    ):
        Separator(golden_model, sample_rate=10**400, device="cpu")


def test_api_takes_a_bf16_tensor_and_refuses_a_meta_one(separator):
    import torch

    from stemsplit.separate import SeparationError

    audio = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, (2, RATE)).astype(np.float32))
    stems = separator.separate(audio.to(torch.bfloat16), RATE)
    assert np.abs(sum(stems.values()) - audio.to(torch.bfloat16).float().numpy()).max() < 1e-5  # stage 1
    with pytest.raises(SeparationError, match=r"audio: a torch\.float32 tensor on meta holds no samples"):
        separator.separate(torch.empty(2, RATE, device="meta"), RATE)
