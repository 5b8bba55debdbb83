"""Quality of a model on held-out synthetic songs: per-stem uSDR vs. the mixture-as-estimate baseline.

    python benchmarks/eval_demo.py                       # the bundled demo model, 10 songs of 20 s
    python benchmarks/eval_demo.py --model runs/demo/best.safetensors --songs 10 --seed 1

Songs are the test subset of ``stemsplit synth --seed SEED`` (generated here, not
read from disk), which a model trained on ``stemsplit synth --seed SEED`` data
never saw. The baseline "estimates" every stem by the mixture itself; the gap to it
is what separation adds. Windows 3 s, hop 0.5 s (the paper's protocol).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from machine import describe

from stemsplit.datasets.synth import generate_song, song_seed
from stemsplit.engine.runtime import tune_cpu_allocator
from stemsplit.evaluate.metrics import usdr
from stemsplit.separate import Separator


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo")
    parser.add_argument("--songs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1, help="the synth seed of the training data")
    parser.add_argument("--hop", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()

    tune_cpu_allocator()
    separator = Separator(args.model, device=args.device, hop=args.hop)
    print(f"machine: {describe(separator.device)}")
    print(f"model {separator.name}; {args.songs} test songs of {args.seconds:g} s, synth seed {args.seed}")
    model_scores: dict[str, list[float]] = {stem: [] for stem in separator.stems}
    baseline_scores: dict[str, list[float]] = {stem: [] for stem in separator.stems}
    started = time.perf_counter()
    for i in range(args.songs):
        song = generate_song(song_seed(args.seed, "test", i), args.seconds)
        estimates = separator.separate(song.mixture, song.sample_rate)
        for stem in separator.stems:
            model_scores[stem].append(usdr(song.stems[stem], estimates[stem]))
            baseline_scores[stem].append(usdr(song.stems[stem], song.mixture))
    seconds = time.perf_counter() - started

    print(f"{'stem':8} {'model uSDR':>11} {'baseline':>9} {'gain':>6} {'worst song gain':>16}")
    rows = {}
    for stem in (*separator.stems, "avg"):
        if stem == "avg":
            model = np.mean([np.mean(v) for v in model_scores.values()])
            base = np.mean([np.mean(v) for v in baseline_scores.values()])
            worst = float("nan")
        else:
            model, base = np.mean(model_scores[stem]), np.mean(baseline_scores[stem])
            worst = np.min(np.subtract(model_scores[stem], baseline_scores[stem]))
        rows[stem] = {"model": float(model), "baseline": float(base), "worst_song_gain": float(worst)}
        print(f"{stem:8} {model:11.2f} {base:9.2f} {model - base:6.2f} {worst:16.2f}")
    print(f"{seconds:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps({"model": separator.name, "songs": args.songs, "scores": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
