"""How good a teacher's labels are (BSRNN Sec. III-A, as ``stemsplit finetune`` makes them) on songs
whose stems are known: the pseudo-labels' uSDR and the clean-segment calls.

    python benchmarks/teacher_labels.py --musdb data/fr3 --model demo
    python benchmarks/teacher_labels.py --musdb data/fr3 --model demo --teacher-window 1.5 --teacher-views 1
    python benchmarks/teacher_labels.py --musdb data/fr3 --model runs/ft/best.safetensors --clean-db 30 20 15

``stemsplit finetune`` labels an unlabeled crop with its teacher's estimate of
each stem (through ``--teacher-views`` windows of ``--teacher-window`` seconds
around the crop, averaged: finetune's own :func:`~stemsplit.train.teacher.teacher_estimates`;
the second command above is the crop alone), calls the crop a *clean residual*
for a stem when that estimate is more than ``--clean-db`` below the mixture,
and a *clean target* when the rest is; it never sees the real stems. Here the
songs have them (a MUSDB18-HQ-layout folder, ``<subset>/<track>/<stem>.wav``),
so each crop, drawn as finetune draws them (a salient segment of the mixture,
then a uniform offset inside it; the same crops for the same ``--seed``), is
scored: the uSDR of each stem's label against the real stem (mean over
crops), and each crop classified twice, by the real stems (how often the case
exists) and by the teacher (:func:`~stemsplit.train.teacher.classify`, the
very test finetune runs). Per stem and threshold it prints how often the case
truly occurs, how many crops the teacher calls so, how many of those are
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

from stemsplit.datasets.musdb import find_tracks
from stemsplit.datasets.musdb_layout import DatasetError
from stemsplit.evaluate.metrics import usdr
from stemsplit.train.config import MAX_TEACHER_VIEWS, FinetuneConfig
from stemsplit.train.data import salient_segments
from stemsplit.train.teacher import CLEAN_RESIDUAL, CLEAN_TARGET, classify, teacher_estimates, view_offsets
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
    parser.add_argument(
        "--teacher-window",
        type=float,
        default=FinetuneConfig.teacher_window,
        help="finetune's (0: the crop itself)",
    )
    parser.add_argument("--teacher-views", type=int, default=FinetuneConfig.teacher_views)
    parser.add_argument("--sad-seconds", type=float, default=FinetuneConfig.sad_seconds)
    parser.add_argument("--sad-quantile", type=float, default=FinetuneConfig.sad_quantile)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.crops_per_song < 1 or not 0 < args.crop_seconds <= args.sad_seconds:
        parser.error(
            "--crops-per-song must be 1 or more, and --crop-seconds above 0 and at most --sad-seconds"
        )
    if not (args.teacher_window == 0 or args.teacher_window >= args.crop_seconds):
        parser.error("--teacher-window must be 0 (the crop itself) or at least --crop-seconds")
    if not 1 <= args.teacher_views <= MAX_TEACHER_VIEWS:
        parser.error(f"--teacher-views must be from 1 to {MAX_TEACHER_VIEWS}")
    if args.teacher_views > 1 and not args.teacher_window > args.crop_seconds:
        parser.error("--teacher-views above 1 needs a --teacher-window longer than --crop-seconds")

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
    rate = tracks[0].sample_rate
    segment, frames = round(args.sad_seconds * rate), round(args.crop_seconds * rate)
    window = args.teacher_window or args.crop_seconds  # as finetune resolves it
    context = round(window * rate) - frames
    views = len(view_offsets(context, args.teacher_views))
    # Per crop and stem: dB below the mixture of the real stem and of the real rest; the label's uSDR;
    # the teacher's class.
    stem_db, rest_db, label_usdr, calls = [], [], [], {threshold: [] for threshold in args.clean_db}
    for track in tracks:
        audio = {stem: track.read(stem) for stem in stems}
        mixture = sum(audio.values())
        starts = salient_segments(mixture, rate, args.sad_seconds, quantile=args.sad_quantile)
        # The crop's context may reach past the song's ends: zeros there, as finetune reads it.
        padded = np.pad(mixture, ((0, 0), (context, context + frames)))
        for _ in range(args.crops_per_song if len(starts) else 0):
            start = int(rng.choice(starts)) + int(rng.integers(max(segment - frames, 0) + 1))
            region = np.ascontiguousarray(padded[:, start : start + frames + 2 * context])
            crop = region[:, context : context + frames]
            parts = [audio[stem][:, start : start + frames] for stem in stems]
            parts = [np.pad(p, ((0, 0), (0, frames - p.shape[1]))) for p in parts]  # past the end: silence
            stem_db.append([_below_db(crop, part) for part in parts])
            rest_db.append([_below_db(crop, crop - part) for part in parts])
            guess = teacher_estimates(teacher, torch.from_numpy(region)[None], None, context, views)[0]
            label_usdr.append([usdr(part, guess[k].numpy()) for k, part in enumerate(parts)])
            mixtures = torch.from_numpy(crop).expand(len(stems), *crop.shape)
            for threshold in args.clean_db:  # finetune's own test
                calls[threshold].append(classify(mixtures, guess, threshold).numpy())
    if not stem_db:
        parser.error(
            f"{args.musdb}: no song is longer than one --sad-seconds segment ({args.sad_seconds:g} s)"
        )
    stem_db, rest_db, label_usdr = np.array(stem_db), np.array(rest_db), np.array(label_usdr)
    print(
        f"teacher {loaded.name}; {len(stem_db)} crops of {args.crop_seconds:g} s from {len(tracks)} songs; "
        f"labels through {views} window{'s' if views > 1 else ''} of {window:g} s"
    )
    labels = dict(zip(stems, label_usdr.mean(axis=0).tolist(), strict=True))
    print(
        "label uSDR (dB): "
        + "  ".join(f"{s} {v:.2f}" for s, v in labels.items())
        + f"  mean {label_usdr.mean():.2f}"
    )
    figures: dict = {
        "crops": len(stem_db),
        "songs": len(tracks),
        "teacher_window": window,
        "teacher_views": views,
        "label_usdr": {**labels, "mean": float(label_usdr.mean())},
        "rows": [],
    }
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
