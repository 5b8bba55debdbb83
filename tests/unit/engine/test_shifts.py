"""--shifts (Demucs's shift trick): the song run N times, each later against the window grid, the runs
lined up again and averaged, streaming as one run does."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from helpers import FIXTURES, RATE, music, run_cli

from stemsplit.engine.settings import SeparationError
from stemsplit.separate import Separator, shift_delays


def test_the_delays_spread_evenly_over_half_a_second():
    assert shift_delays(1, RATE) == [0]
    assert shift_delays(4, RATE) == [0, 5512, 11025, 16538]
    assert shift_delays(10, 8000)[-1] == 3600


def test_shifted_runs_are_the_unshifted_runs_of_the_delayed_song_averaged(golden_model):
    """Each run is the model on the song with d samples of silence before it, cut back by d."""
    mix = music(0.9).T
    one = Separator(golden_model, window=0.5, hop=0.5, device="cpu")
    events = []
    three = Separator(golden_model, window=0.5, hop=0.5, device="cpu", shifts=3, progress=events.append)
    got = three.separate(mix, RATE)
    expected = {stem: np.zeros_like(audio) for stem, audio in got.items()}
    for delay in shift_delays(3, RATE):
        delayed = one.separate(np.concatenate([np.zeros((2, delay), np.float32), mix], axis=1), RATE)
        for stem in expected:
            expected[stem] += delayed[stem][:, delay:] / 3
    for stem, audio in got.items():
        assert audio.shape == mix.shape
        np.testing.assert_allclose(audio, expected[stem], atol=2e-6)
    plain = one.separate(mix, RATE)
    assert max(np.abs(got[s] - plain[s]).max() for s in got) > 1e-3  # the shifts changed something
    windows = [e for e in events if e["event"] == "windows"]
    assert windows[-1]["done"] == windows[-1]["total"] == three.windows_for(mix.shape[1], RATE) > 3 * 2


@pytest.mark.parametrize("shifts", [0, 21, 1.5, True, "2"])
def test_a_bad_shift_count_is_refused(golden_model, shifts):
    with pytest.raises(SeparationError, match="shifts: must be a whole number from 1 to 20"):
        Separator(golden_model, shifts=shifts)


def test_speaker_models_take_no_shifts():
    with pytest.raises(SeparationError, match=r"shifts: .*talkers in an order of its own"):
        Separator("speakers-demo", shifts=2)


def test_shifts_through_the_command_line(tmp_path, capsys):
    """A Demucs file (the tiny six-stem HTDemucs of tests/fixtures/htdemucs/package), two shifts."""
    model = FIXTURES / "htdemucs" / "package" / "tiny6.th"
    mix = music(0.3)
    sf.write(tmp_path / "song.wav", mix, RATE, subtype="FLOAT")
    status, _, err = run_cli(capsys, tmp_path / "song.wav", "--shifts", "0", "-o", tmp_path / "bad")
    assert status == 2 and err.strip().endswith("--shifts: must be a whole number from 1 to 20, not 0")
    assert not (tmp_path / "bad").exists()
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", model, "--shifts", "2", "-o", tmp_path / "out"
    )
    assert status == 0, err
    expected = Separator(model, device="cpu", shifts=2).separate(mix.T, RATE)
    unshifted = Separator(model, device="cpu").separate(mix.T, RATE)
    for stem, audio in expected.items():
        written, _ = sf.read(tmp_path / "out" / "song" / f"{stem}.wav", dtype="float32")
        np.testing.assert_allclose(written.T, audio, atol=1e-6)
        assert np.abs(audio - unshifted[stem]).max() > 1e-4
