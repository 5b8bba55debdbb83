"""Run the TS-BSMamba2 network directly on a short excerpt of an audio file.

    python examples/network_api.py CHECKPOINT SONG.wav OUT_DIR [--seconds 3] [--stems drums,bass,other,vocals]

CHECKPOINT is a state dict saved by the reference code or Music-Source-Separation-Training
(``.ckpt``/``.pt``, loaded with ``weights_only=True``) or a ``.safetensors`` file. The
architecture is read off the weights. This shows the bare network API; whole songs
(windowing, overlap-add, resampling, formats) are the separation engine's job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import soundfile as sf
import torch
from safetensors.torch import load_file

from stemsplit.model import TSBSMamba2


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("song", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the excerpt")
    parser.add_argument(
        "--stems", default="drums,bass,other,vocals", help="source names, in the model's order"
    )
    args = parser.parse_args()

    model = TSBSMamba2.from_state_dict(load_weights(args.checkpoint)).eval()
    names = args.stems.split(",")
    if len(names) != model.config.num_output:
        parser.error(f"the model has {model.config.num_output} sources, --stems names {len(names)}")

    audio, rate = sf.read(args.song, dtype="float32", always_2d=True, frames=int(args.seconds * 44100))
    if rate != model.config.sr:
        parser.error(f"{args.song}: {rate} Hz; this example needs {model.config.sr} Hz audio")
    mixture = torch.from_numpy(audio.T.copy())[None]  # [1, channels, samples]

    with torch.inference_mode():
        _, stems = model(mixture)  # stage 2: [1, S, channels, samples]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, stem in zip(names, stems[0], strict=True):
        sf.write(args.out_dir / f"{name}.wav", stem.T.numpy(), rate, subtype="FLOAT")
        print(args.out_dir / f"{name}.wav")


if __name__ == "__main__":
    main()
