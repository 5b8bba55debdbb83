"""The scripts in examples/ and benchmarks/ run as documented."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from helpers import FIXTURES

ROOT = Path(__file__).parent.parent


def test_network_api_example_writes_the_model_stems(tmp_path, golden_model):
    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    song = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sign(np.sin(2 * np.pi * 3 * t))], axis=1) * 0.3
    sf.write(tmp_path / "song.wav", song.astype(np.float32), rate, subtype="FLOAT")

    result = subprocess.run(
        [
            sys.executable,
            ROOT / "examples" / "network_api.py",
            FIXTURES / "golden_small_weights.safetensors",
            tmp_path / "song.wav",
            tmp_path / "stems",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    stems = {
        name: sf.read(tmp_path / "stems" / f"{name}.wav", always_2d=True)
        for name in ["drums", "bass", "other", "vocals"]
    }
    for audio, stem_rate in stems.values():
        assert stem_rate == rate and audio.shape == song.shape
    # The files hold the model's stage-2 output.
    with torch.no_grad():
        _, expected = golden_model(torch.from_numpy(song.T.astype(np.float32)).unsqueeze(0))
    np.testing.assert_allclose(stems["vocals"][0], expected[0, 3].T.numpy(), atol=1e-5)


def test_bench_model_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            ROOT / "benchmarks" / "bench_model.py",
            "--presets",
            "l-ts",
            "--seconds",
            "0.1",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("machine: ")
    row = result.stdout.strip().splitlines()[-1].split()
    assert row[0] == "ts-bsmamba2:l-ts" and row[1] == "27.7M" and float(row[3]) > 0  # params, s/window
