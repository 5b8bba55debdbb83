"""Small helpers shared by the tests: fixtures' folder, a real CLI runner, real audio files."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 44100
FOUR_STEMS = ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]  # sorted file names of a song's stems
# Small windows on the CPU: plumbing tests run in seconds with the tiny checkpoint.
FAST = ["--window", "1", "--hop", "0.5", "--device", "cpu"]


def song(path, seconds=1.3, rate=RATE, channels=2, subtype="FLOAT", scale=0.3, fmt=None):
    """Write a chord of sines (one tone per channel) and return it as [frames, channels] float32."""
    t = np.arange(int(seconds * rate)) / rate
    tones = [np.sin(2 * np.pi * f * t) for f in (220, 330, 440, 550, 660, 770, 880, 990)[:channels]]
    audio = (scale * np.stack(tones, axis=1)).astype(np.float32)
    sf.write(path, audio, rate, subtype=subtype, format=fmt)
    return audio


def stemsplit(*args, check=None, timeout=300, **kwargs):
    """Run the installed ``stemsplit`` command; ``check`` asserts its exit status."""
    exe = shutil.which("stemsplit")
    result = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def files_under(folder, state=True):
    """Every file under ``folder`` (hidden ones too), relative, sorted; [] if it does not exist.

    ``state=False`` leaves out ``batch``'s own records (``.stemsplit/``).
    """
    folder = Path(folder)
    if not folder.exists():
        return []
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return files if state else [f for f in files if not f.startswith(".stemsplit/")]


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against the reference ``b``."""
    return ((a - b).norm() / b.norm()).item()
