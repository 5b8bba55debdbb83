"""Quality of a speaker model on held-out synthetic two-talker mixtures, beside the mixture and an oracle.

    python benchmarks/eval_speakers.py                   # the bundled speakers-demo, 40 test mixtures of 4 s
    python benchmarks/eval_speakers.py --model runs/speakers-demo/best.safetensors --seed 3

The mixtures are the ``test`` split of ``stemsplit synth-speech --seed SEED``
(generated here, not read from disk): talkers from the test split's own voices,
which a model trained on that seed's ``train-100`` never heard. Each row is the
mean over mixtures and both talkers, against the direct-path talkers (``s1``,
``s2``), of the noisy reverberant mixture (``mix_both``):

- ``model``: the separation through the engine (windows and overlap-add, as
  ``stemsplit speakers`` runs it), outputs put in the talkers' order;
- ``mixture``: the mixture itself as both estimates (SI-SNRi 0 dB by definition;
  its SI-SNR is the starting point);
- ``IRM oracle``: the ideal ratio mask, which knows the talkers: on an STFT
  (32 ms Hann window, 8 ms hop), talker i's mask is
  sqrt(|S_i|^2 / (|S_i|^2 + |X - S_i|^2)), X the mixture, applied to X.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe

from stemsplit.datasets.speech_synth import SAMPLE_RATE, generate_mixture, mixture_seed
from stemsplit.evaluate.metrics import speech_scores
from stemsplit.evaluate.si_snr import si_snr
from stemsplit.separate import Separator

IRM_FFT = 256  # 32 ms at 8 kHz
IRM_HOP = 64  # 8 ms


def ideal_ratio_mask(mixture: np.ndarray, talkers: np.ndarray) -> np.ndarray:
    """mixture [samples], talkers [S, samples] -> the talkers kept by their ideal ratio masks [S, samples]."""
    window = torch.hann_window(IRM_FFT, dtype=torch.float64)

    def stft(x: np.ndarray) -> torch.Tensor:
        return torch.stft(torch.from_numpy(x), IRM_FFT, IRM_HOP, window=window, return_complex=True)

    mix = stft(np.asarray(mixture, dtype=np.float64))
    out = []
    for talker in np.asarray(talkers, dtype=np.float64):
        target = stft(talker)
        power, rest = target.abs() ** 2, (mix - target).abs() ** 2
        mask = torch.sqrt(power / (power + rest).clamp_min(1e-20))
        kept = torch.istft(mask * mix, IRM_FFT, IRM_HOP, window=window, length=len(mixture))
        out.append(kept.numpy())
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="speakers-demo")
    parser.add_argument("--mixtures", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=3, help="the synth-speech seed of the training data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()

    separator = Separator(args.model, task="speakers", device=args.device)
    stoi = importlib.util.find_spec("pystoi") is not None
    rows: dict[str, list[dict[str, list[float]]]] = {"model": [], "mixture": [], "IRM oracle": []}
    input_si_snr = []
    started = time.perf_counter()
    for i in range(args.mixtures):
        mixture = generate_mixture(mixture_seed(args.seed, "test", i), args.seconds, split="test")
        mix = mixture.mix_both.astype(np.float64)
        talkers = np.stack([mixture.s1, mixture.s2]).astype(np.float64)
        outputs = separator.separate(mix[None].astype(np.float32), SAMPLE_RATE)
        estimates = {
            "model": np.stack([outputs[name][0] for name in separator.stems[:2]]),
            "mixture": np.stack([mix, mix]),
            "IRM oracle": ideal_ratio_mask(mix, talkers),
        }
        for name, estimate in estimates.items():
            rows[name].append(speech_scores(mix, talkers, estimate, SAMPLE_RATE, compute_stoi=stoi))
        refs = torch.from_numpy(talkers)
        input_si_snr.append(float(si_snr(torch.from_numpy(np.stack([mix, mix])), refs).mean()))
    elapsed = time.perf_counter() - started

    metrics = list(rows["model"][0])
    print(f"machine: {describe(separator.device)}")
    print(
        f"model {args.model}: {args.mixtures} test mixtures of synth-speech seed {args.seed}, "
        f"{args.seconds:g} s each, {elapsed:.0f} s in all; mixture SI-SNR {np.mean(input_si_snr):.2f} dB"
    )
    print("| | " + " | ".join(metrics) + " |")
    print("| --- |" + " --- |" * len(metrics))
    table = {}
    for name, scores in rows.items():
        table[name] = {m: float(np.mean([np.mean(s[m]) for s in scores])) for m in metrics}
        print(f"| {name} | " + " | ".join(f"{table[name][m]:.2f}" for m in metrics) + " |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "seed": args.seed, "scores": table}, indent=2))


if __name__ == "__main__":
    main()
