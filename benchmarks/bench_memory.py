"""Peak memory of separating a long file: it must not grow with the song's length.

    python benchmarks/bench_memory.py --minutes 60

Writes a synthetic stereo song of --minutes (16-bit wav, written block by block)
to a temporary folder, separates it with a small random TS-BSMamba2 (N = 16,
1 + 1 layers: the model's size is not what is measured) and prints the peak
resident memory of the process. Each length runs in a fresh process, so peaks
do not mix. The default hop is the window (no overlap) to keep the run short;
the streaming buffers do not depend on it.
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
from stemsplit.model import TSBSMamba2
from stemsplit.separate import Separator

minutes, hop, folder = float(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
rate, song = 44100, folder / "long.wav"
with sf.SoundFile(song, "w", rate, 2, subtype="PCM_16") as f:
    rng = np.random.default_rng(0)
    for start in range(0, int(minutes * 60 * rate), 60 * rate):
        t = (start + np.arange(60 * rate)) / rate
        block = 0.2 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal((len(t), 2))
        f.write(block[: int(minutes * 60 * rate) - start])
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.manual_seed(0)
model = TSBSMamba2(feature_dim=16, num_repeat_mask=1, num_repeat_map=1)
start = time.perf_counter()
Separator(model, window=3.0, hop=hop, device="cpu", batch_size=4).separate_file(song, folder / "out")
print(json.dumps({"minutes": minutes, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "song_mb": song.stat().st_size / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 60])
    parser.add_argument("--hop", type=float, default=3.0, help="seconds between windows")
    args = parser.parse_args()

    print(f"machine: {describe(torch.device('cpu'))}")
    print(f"{'minutes':>8} {'file MB':>8} {'peak RSS MB':>12} {'seconds':>8}")
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as folder:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(minutes), str(args.hop), folder],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{minutes:8g} {row['song_mb']:8.0f} {row['peak_rss_mb']:12.0f} {row['seconds']:8.1f}", flush=True
        )


if __name__ == "__main__":
    main()
