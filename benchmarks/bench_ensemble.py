"""Peak memory of an ensemble on a long file: it must not grow with the song's length.

    python benchmarks/bench_ensemble.py --minutes 10 60

Writes a synthetic stereo song of --minutes (16-bit wav at 44.1 kHz, written block by block)
to a temporary folder and separates it into 16-bit wav stems, in a fresh process per length
and per run (so peaks do not mix), twice: with one stub network (``single``), then with an
ensemble of two (``ensemble``). The stubs give each stem as a fixed fraction of the mixture
(the network is not what is measured): one at 44.1 kHz with 3 s windows every 1.5 s, the other
at 48 kHz (resampled to and back) with 2 s windows every 1 s, so the ensemble lines up members
of other rates, windows and hops. Printed: the peak resident memory of each process, and the
seconds it took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import torch
from machine import describe

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np, soundfile as sf, torch
from stemsplit.card import MUSIC_STEMS, ModelCard
from stemsplit.engine.ensemble import Ensemble
from stemsplit.separate import Separator

minutes, mode, folder = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
rate, song = 44100, folder / "long.wav"
with sf.SoundFile(song, "w", rate, 2, subtype="PCM_16") as f:
    rng = np.random.default_rng(0)
    for start in range(0, int(minutes * 60 * rate), 60 * rate):
        t = (start + np.arange(60 * rate)) / rate
        block = 0.2 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((len(t), 2))
        f.write(block[: int(minutes * 60 * rate) - start])


class Fractions(torch.nn.Module):
    def __init__(self, values, rate, window, hop):
        super().__init__()
        self.fractions = torch.nn.Parameter(torch.tensor(values))
        self.card = ModelCard("fractions", MUSIC_STEMS, rate, 16, (2048, 512), window=window, hop=hop)

    def forward(self, x):
        return self.fractions[None, :, None, None] * x[:, None]


a = Fractions([0.1, 0.2, 0.3, 0.4], 44100, 3.0, 1.5)
b = Fractions([0.4, 0.3, 0.2, 0.1], 48000, 2.0, 1.0)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "single":
    separator = Separator(a, device="cpu", batch_size=4)
else:
    separator = Ensemble([a, b], device="cpu", batch_size=4)
separator.separate_file(song, folder / "out", bit_depth=16)
print(json.dumps({"minutes": minutes, "mode": mode, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "song_mb": song.stat().st_size / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--modes", nargs="+", choices=["single", "ensemble"], default=["single", "ensemble"])
    args = parser.parse_args()

    print(f"machine: {describe(torch.device('cpu'))}")
    print(f"{'minutes':>8} {'file MB':>8} {'mode':>9} {'peak RSS MB':>12} {'seconds':>8}")
    for minutes in args.minutes:
        for mode in args.modes:
            with tempfile.TemporaryDirectory() as folder:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(minutes), mode, folder],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
            figures = f"{row['peak_rss_mb']:12.0f} {row['seconds']:8.1f}"
            print(f"{minutes:8g} {row['song_mb']:8.0f} {mode:>9} {figures}", flush=True)


if __name__ == "__main__":
    main()
