"""How well a teacher finds BSRNN's clean segments (Sec. III-A) on songs whose stems are known.

    python benchmarks/clean_segments.py --musdb data/fr3 --model demo
    python benchmarks/clean_segments.py --musdb data/fr3 --model runs/ft/best.safetensors --clean-db 30 20 15

``stemsplit finetune`` calls an unlabeled crop a *clean residual* for a stem
when the teacher's estimate of that stem is more than ``--clean-db`` below the
mixture, and a *clean target* when the rest is; it never sees the real stems.
Here the songs have them (a MUSDB18-HQ-layout folder, ``<subset>/<track>/<stem>.wav``),
so each crop, drawn as finetune draws them (a salient segment of the mixture,
then a uniform offset inside it), is classified twice: by the real stems (how
often the case exists) and by the teacher (:func:`stemsplit.train.finetune.classify`,
the very test finetune runs). Per stem and threshold it prints how often the
case truly occurs, how many crops the teacher calls so, how many of those are
right (precision) and how many true ones it finds (recall), and the loudest
stem the teacher called absent: a present stem called absent is trained as silence.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from machine import describe

from stemsplit.train.data import DatasetError, find_tracks, salient_segments
from stemsplit.train.finetune import CLEAN_RESIDUAL, CLEAN_TARGET, classify
from stemsplit.weights import WeightsError, load_model


def _below_db(mixture: np.ndarray, part: np.ndarray) -> float:
    """How far ``part`` lies below ``mixture`` in energy, dB (inf for silence)."""
    energy = float(np.sum(np.square(part, dtype=np.float64)))
    total = float(np.sum(np.square(mixture, dtype=np.float64)))
    return np.inf if energy == 0 else 10 * np.log10(total / energy)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--musdb", type=Path, required=True, help="songs and stems, MUSDB18-HQ layout")
    parser.add_argument("--subset", default="train")
    parser.add_argument("--model", default="demo", help="the teacher: registry name or checkpoint")
    parser.add_argument("--clean-db", type=float, nargs="+", default=[30.0], help="thresholds to try")
    parser.add_argument("--crops-per-song", type=int, default=40)
    parser.add_argument("--crop-seconds", type=float, default=1.5)
    parser.add_argument("--sad-seconds", type=float, default=6.0, help="finetune's --sad-seconds")
    parser.add_argument("--sad-quantile", type=float, default=0.15, help="finetune's --sad-quantile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.crops_per_song < 1 or not 0 < args.crop_seconds <= args.sad_seconds:
        parser.error(
            "--crops-per-song must be 1 or more, and --crop-seconds above 0 and at most --sad-seconds"
        )

    try:
        loaded = load_model(args.model)
        tracks = find_tracks(args.musdb, args.subset, loaded.stems)
    except (WeightsError, DatasetError) as exc:
        parser.error(str(exc))
    teacher, stems = loaded.model, loaded.stems
    if tracks[0].sample_rate != loaded.card.sample_rate:  # the teacher would hear every crop wrong
        parser.error(
            f"{args.musdb}: songs at {tracks[0].sample_rate} Hz, the model at {loaded.card.sample_rate} Hz"
        )
    print(f"machine: {describe(torch.device('cpu'))}")
    rng = np.random.default_rng(args.seed)
    segment = round(args.sad_seconds * tracks[0].sample_rate)
    frames = round(args.crop_seconds * tracks[0].sample_rate)
    # Per crop and stem: dB below the mixture of the real stem and of the real rest; the teacher's class.
    stem_db, rest_db, calls = [], [], {threshold: [] for threshold in args.clean_db}
    for track in tracks:
        audio = {stem: track.read(stem) for stem in stems}
        mixture = sum(audio.values())
        starts = salient_segments(mixture, track.sample_rate, args.sad_seconds, quantile=args.sad_quantile)
        for _ in range(args.crops_per_song if len(starts) else 0):
            start = int(rng.choice(starts)) + int(rng.integers(max(segment - frames, 0) + 1))
            crop = np.ascontiguousarray(mixture[:, start : start + frames])
            parts = [audio[stem][:, start : start + frames] for stem in stems]
            stem_db.append([_below_db(crop, part) for part in parts])
            rest_db.append([_below_db(crop, crop - part) for part in parts])
            with torch.no_grad():
                out = teacher(torch.from_numpy(crop)[None])
            guess = (out[-1] if isinstance(out, tuple) else out)[0]  # [stems, channels, frames]
            mixtures = torch.from_numpy(crop).expand(len(stems), *crop.shape)
            for threshold in args.clean_db:  # finetune's own test
                calls[threshold].append(classify(mixtures, guess.float(), threshold).numpy())
    if not stem_db:
        parser.error(
            f"{args.musdb}: no song is longer than one --sad-seconds segment ({args.sad_seconds:g} s)"
        )
    stem_db, rest_db = np.array(stem_db), np.array(rest_db)
    print(f"teacher {loaded.name}; {len(stem_db)} crops of {args.crop_seconds:g} s from {len(tracks)} songs")
    figures: dict = {"crops": len(stem_db), "songs": len(tracks), "rows": []}
    for threshold in args.clean_db:
        classes = np.array(calls[threshold])
        for case, real, label in (("absent", stem_db, CLEAN_RESIDUAL), ("alone", rest_db, CLEAN_TARGET)):
            for k, stem in enumerate(stems):
                true, called = real[:, k] > threshold, classes[:, k] == label
                right, wrong = int(np.sum(true & called)), called & ~true
                row = {
                    "clean_db": threshold,
                    "case": case,  # absent: a clean residual for the stem; alone: a clean target
                    "stem": stem,
                    "truly": float(np.mean(true)),
                    "called": int(np.sum(called)),
                    "precision": right / int(np.sum(called)) if called.any() else None,
                    "recall": right / int(np.sum(true)) if true.any() else None,
                    # of the wrong calls, the loudest real stem (absent) or rest (alone), dB below the mixture
                    "loudest_wrong_db": float(np.min(real[wrong, k])) if wrong.any() else None,
                }
                figures["rows"].append(row)
                precision = "-" if row["precision"] is None else f"{row['precision']:.0%}"
                recall = "-" if row["recall"] is None else f"{row['recall']:.0%}"
                loudest = "" if not wrong.any() else f", loudest wrong {row['loudest_wrong_db']:.1f} dB"
                print(
                    f"{threshold:g} dB {case:6} {stem:7} truly {row['truly']:6.1%}  "
                    f"called {row['called']:4d}  precision {precision:>4}  recall {recall:>4}{loudest}"
                )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
