"""The scripts in examples/ and benchmarks/ run as documented."""

import numpy as np
import soundfile as sf
import torch
from helpers import GOLDEN_WEIGHTS, RATE, ROOT, python, song


def test_network_api_example_writes_the_model_stems(tmp_path, golden_model):
    mix = song(tmp_path / "song.wav", seconds=1.5)

    result = python(
        ROOT / "examples" / "network_api.py", GOLDEN_WEIGHTS, tmp_path / "song.wav", tmp_path / "stems"
    )
    assert result.returncode == 0, result.stderr
    stems = {
        name: sf.read(tmp_path / "stems" / f"{name}.wav", always_2d=True)
        for name in ["drums", "bass", "other", "vocals"]
    }
    for audio, stem_rate in stems.values():
        assert stem_rate == RATE and audio.shape == mix.shape
    # The files hold the model's stage-2 output.
    with torch.no_grad():
        _, expected = golden_model(torch.from_numpy(mix.T.copy()).unsqueeze(0))
    np.testing.assert_allclose(stems["vocals"][0], expected[0, 3].T.numpy(), atol=1e-5)


def test_bench_model_runs(tmp_path):
    result = python(
        ROOT / "benchmarks" / "bench_model.py",
        *("--presets", "l-ts", "--seconds", "0.1", "--repeats", "1"),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("machine: ")
    row = result.stdout.strip().splitlines()[-1].split()
    assert row[0] == "ts-bsmamba2:l-ts" and row[1] == "27.7M" and float(row[3]) > 0  # params, s/window
