"""Cross-song batching (``batch --ray --songs-per-batch K``): songs per second of one worker, by K.

    python benchmarks/bench_songs_per_batch.py --songs 8 --seconds 4 --songs-per-batch 1 2 4 8

Writes ``--songs`` synthetic stereo songs of ``--seconds`` (16-bit wav, 44.1 kHz) to a temporary
folder and separates them into 16-bit wav stems as one ``--ray`` worker does: one model, loaded once,
and K songs at a time, each in its own thread, their windows going through the network together
(:class:`stemsplit.separate.WindowPool`, batches of up to K x ``--batch-size`` windows). K = 1 is a
plain batch's loop. Ray itself is left out: what is measured is the worker's time, not the scheduler's.

Printed: the machine (and its load average: the figures are only as steady as the machine is idle),
then for each K the wall time, songs per second, the speed-up over K = 1, the windows per network call
on average, and the largest difference from K = 1's stems (batched arithmetic rounds differently).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from machine import describe

from stemsplit.audio import probe
from stemsplit.output import OutputOptions, SongSource, plan_outputs
from stemsplit.separate import Separator


def write_songs(folder: Path, count: int, seconds: float) -> list[Path]:
    rng = np.random.default_rng(0)
    rate, paths = 44100, []
    for k in range(count):
        t = np.arange(int(seconds * rate)) / rate
        tone = 0.2 * np.sin(2 * np.pi * (110 + 55 * k) * t)[:, None]
        audio = tone + 0.05 * rng.standard_normal((len(t), 2))
        paths.append(folder / f"song{k:02d}.wav")
        sf.write(paths[-1], audio.astype(np.float32), rate, subtype="PCM_16")
    return paths


def run(model: str, paths: list[Path], out: Path, songs_at_once: int, args: argparse.Namespace) -> dict:
    separator = Separator(
        model, device=args.device, window=args.window, hop=args.hop, batch_size=args.batch_size
    )
    options = OutputOptions(fmt="wav", bit_depth=16, overwrite=True)
    planned = plan_outputs([SongSource(p) for p in paths], out, list(separator.stems), options)
    infos = [probe(p) for p in paths]
    calls: list[int] = []
    separator.model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    pool = separator.pool_windows(songs_at_once) if songs_at_once > 1 else None
    queue = list(zip(planned, infos, strict=True))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                song, info = queue.pop(0)
            if pool is None:
                separator.separate_song(song, info, options)
            else:
                with pool.song():
                    separator.separate_song(song, info, options)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(songs_at_once)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "calls": len(calls), "windows": sum(calls)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=None, help="seconds [default: the model's]")
    parser.add_argument("--hop", type=float, default=None, help="seconds [default: the model's]")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per call for one song")
    parser.add_argument("--songs-per-batch", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args(argv)

    device = torch.device(args.device if args.device != "auto" else "cpu")
    print(f"machine: {describe(device)}; load average {os.getloadavg()[0]:.1f}")
    print(
        f"{args.songs} songs of {args.seconds:g} s, model {args.model}, batch size {args.batch_size}, "
        f"window {args.window or 'default'}, hop {args.hop or 'default'}"
    )
    print("| songs at once | wall s | songs/s | speed-up | windows per call | max diff vs 1 |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_songs(Path(folder), args.songs, args.seconds)
        first, reference = None, None
        for k in args.songs_per_batch:
            out = Path(folder) / f"out{k}"
            result = run(args.model, paths, out, k, args)
            stems = {p.relative_to(out): sf.read(p)[0] for p in sorted(out.rglob("*.wav"))}
            if reference is None:
                first, reference = result, stems
            diff = max(float(np.abs(stems[name] - reference[name]).max()) for name in reference)
            print(
                f"| {k} | {result['seconds']:.1f} | {args.songs / result['seconds']:.3f} | "
                f"{first['seconds'] / result['seconds']:.2f}x | {result['windows'] / result['calls']:.1f} | "
                f"{diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
