"""bf16 against fp32 on a whole song: how far apart the stems are, and how much faster bf16 is.

    python benchmarks/bench_precision.py                      # the demo model, a soundfont-rendered song
    python benchmarks/bench_precision.py --model ts-musdb18hq --input song.flac --seconds 60

bench_model.py measures bf16's error on one window of the golden input; this
runs the separation engine on a song (``--input``, or a ``stemsplit synth
--soundfont timgm6mb`` song when FluidSynth and the TimGM6mb soundfont are
installed, else a plain synthetic song) once with ``precision="fp32"`` and once
with ``"bf16"``, the paper's protocol (3 s windows, 0.5 s hop, last stage), and
prints for each stem the relative error ||bf16 - fp32|| / ||fp32|| (issue 13's
target: <= 5e-3), and both wall times. ``--precision auto`` picks bf16 on this
CPU only if it has native bf16 (see ``stemsplit doctor``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from machine import describe

from stemsplit.engine.runtime import cpu_auto_precision
from stemsplit.separate import Separator


def test_song(folder: Path, seconds: float, seed: int) -> tuple[Path, str]:
    """A song file to separate and what it is: soundfont-rendered if FluidSynth can, else the plain synth."""
    from stemsplit.datasets.fluidsynth import FluidSynthError, find_soundfont
    from stemsplit.datasets.synth import generate_song

    try:
        font, what = find_soundfont("timgm6mb"), "soundfont song (TimGM6mb)"
    except FluidSynthError:
        font, what = None, "synthetic song (no FluidSynth/TimGM6mb here)"
    song = generate_song(seed, seconds, soundfont=font, scratch=folder)
    path = folder / "song.wav"
    sf.write(path, sum(song.stems.values()).T, 44100, subtype="FLOAT")
    return path, f"{what}, seed {seed}, {seconds:g} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo", help="registry name or checkpoint [demo]")
    parser.add_argument("--input", type=Path, help="a song file [a rendered song]")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the rendered song")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {describe(torch.device('cpu'))}; load average {os.getloadavg()[0]:.1f}")
    print(f"--precision auto here: {' '.join(cpu_auto_precision())}")

    with tempfile.TemporaryDirectory() as tmp:
        if args.input:
            song, what = args.input, str(args.input)
        else:
            song, what = test_song(Path(tmp), args.seconds, args.seed)
        audio, rate = sf.read(song, dtype="float32", always_2d=True)
        print(f"song: {what}; model: {args.model}")
        stems, seconds = {}, {}
        for precision in ("fp32", "bf16"):
            separator = Separator(args.model, device="cpu", precision=precision, download_progress=False)
            start = time.perf_counter()
            stems[precision] = separator.separate(audio.T, rate)
            seconds[precision] = time.perf_counter() - start

    print(f"{'stem':<10} {'rel. error':>10}")
    errors = []
    for name, reference in stems["fp32"].items():
        error = np.linalg.norm(stems["bf16"][name] - reference) / max(np.linalg.norm(reference), 1e-12)
        errors.append(error)
        print(f"{name:<10} {error:>10.2e}")
    print(f"{'max':<10} {max(errors):>10.2e}   (target <= 5e-3)")
    fp32, bf16 = seconds["fp32"], seconds["bf16"]
    print(f"fp32 {fp32:.1f} s, bf16 {bf16:.1f} s: bf16 {fp32 / bf16:.2f}x faster")


if __name__ == "__main__":
    main()
