"""Re-create examples/demo-song.flac, the example song the README's quick start separates.

    python examples/make_demo_song.py [OUT.flac]

It is a synthetic song (``stemsplit.datasets.synth``) that the demo model never saw
in training (`stemsplit synth` datasets draw 64-bit hashed seeds; this one is small). Because it is
generated, its true stems are known (:func:`true_stems`), so tests can score the
demo model on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from stemsplit.datasets.synth import Song, generate_song

SEED = 2027
SECONDS = 20.0
SAMPLE_RATE = 44100
OUT = Path(__file__).parent / "demo-song.flac"


def render() -> Song:
    """The song: stems [2, frames] float32 and their sum, the mixture."""
    return generate_song(SEED, SECONDS, SAMPLE_RATE)


def true_stems() -> dict[str, np.ndarray]:
    """{stem: [2, frames]} of the example song."""
    return render().stems


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    song = render()
    sf.write(out, song.mixture.T, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    print(f"{out}: {SECONDS:g} s, seed {SEED}: {song.description}")


if __name__ == "__main__":
    main()
