"""Seconds per 3 s stereo window through TS-BSMamba2 / L-TS-BSMamba2 (both stages).

    python benchmarks/bench_model.py                      # TS and L-TS, CPU, batch 1
    python benchmarks/bench_model.py --device cuda --batch 16 --precision bf16

Randomly initialised weights: the cost does not depend on their values.
Prints the machine, then one row per model: seconds per batch, per window,
and windows per second (best of --repeats after one warm-up).
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import describe

from stemsplit.model import TSBSMamba2
from stemsplit.runtime import tune_cpu_allocator


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(model, batch: torch.Tensor, precision: str, repeats: int) -> float:
    device = batch.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    best = float("inf")
    with torch.inference_mode(), autocast:
        model(batch)  # warm-up: kernel autotuning, allocator
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            model(batch)
            sync(device)
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["ts", "l-ts"], choices=["ts", "l-ts"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--seconds", type=float, default=3.0, help="window length")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--backend", choices=["auto", "portable", "cuda"], default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"machine: {describe(device)}")
    setup = f"batch {args.batch}, {args.precision}, {args.backend} backend"
    print(f"window {args.seconds} s stereo 44.1 kHz, {setup}")
    print(f"{'model':6} {'s/batch':>9} {'s/window':>9} {'windows/s':>10}")
    samples = round(args.seconds * 44100)
    batch = torch.randn(args.batch, 2, samples, device=device) * 0.1
    for preset in args.presets:
        torch.manual_seed(0)
        model = TSBSMamba2.from_preset(preset, mamba_backend=args.backend).to(device).eval()
        seconds = time_model(model, batch, args.precision, args.repeats)
        print(
            f"{preset:6} {seconds:9.2f} {seconds / args.batch:9.2f} {args.batch / seconds:10.2f}", flush=True
        )


if __name__ == "__main__":
    main()
