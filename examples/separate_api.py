"""Separate a song from Python: files in and out, or arrays in memory.

    python examples/separate_api.py                                # the bundled example, demo model
    python examples/separate_api.py SONG OUT_DIR --model ts-musdb18hq  # the default model (downloads)

The demo model ships inside the package and works offline; it was trained on
synthetic songs (``stemsplit synth``), so it is for trying things out, not for
real music. Any registry name, checkpoint path or URL works as ``--model``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from stemsplit.separate import Separator

EXAMPLE = Path(__file__).parent / "demo-song.flac"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("song", type=Path, nargs="?", default=EXAMPLE)
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("stems"))
    parser.add_argument("--model", default="demo", help="registry name, checkpoint path or URL")
    args = parser.parse_args()

    # One Separator holds the model; reuse it for many songs. device="auto" takes a GPU if there is one.
    separator = Separator(args.model, device="auto")
    print(f"model {separator.name}: stems {', '.join(separator.stems)} at {separator.sample_rate} Hz")

    # 1. File to files: streamed block by block (memory does not grow with the song), written
    #    atomically as OUT_DIR/<song>/<stem>.flac. progress= receives events as dicts.
    result = separator.separate_file(args.song, args.out_dir, fmt="flac", overwrite=True)
    for stem, path in result.outputs.items():
        print(f"  {stem:7} -> {path}")
    print(f"{result.duration:.1f} s of audio, {result.windows} windows")

    # 2. Arrays in memory: audio [channels, samples] at any sample rate -> {stem: [channels, samples]}.
    audio, rate = sf.read(args.song, dtype="float32", always_2d=True)
    stems = separator.separate(audio.T, rate)
    for stem, estimate in stems.items():
        level = 20 * np.log10(np.sqrt(np.mean(estimate**2)) + 1e-12)
        print(f"  {stem:7} {level:6.1f} dBFS")
    # Stage-2 stems are close to, not exactly, a decomposition of the mix (Separator(exact=True) makes it so).
    residual = audio.T - sum(stems.values())
    print(f"mix - sum of stems: {20 * np.log10(np.sqrt(np.mean(residual**2)) + 1e-12):.1f} dBFS")


if __name__ == "__main__":
    main()
