"""Speed and peak memory of one TS-BSMamba2 training step (forward, loss, backward, Adam).

    python benchmarks/bench_train.py                                   # CPU, batch 1
    python benchmarks/bench_train.py --device cuda --batch 4 --precision bf16

Random weights and random audio: the cost does not depend on their values.
The reference implementation measured 1.52 s per step at batch 4 x 3 s in bf16
on an H100 with 29 GiB peak (TS).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from machine import describe

from stemsplit.engine.runtime import tune_cpu_allocator
from stemsplit.model import TSBSMamba2
from stemsplit.train.losses import separation_loss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["ts", "l-ts"], choices=["ts", "l-ts"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--checkpoint-activations", action="store_true")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    print(f"machine: {describe(device)}")
    print(
        f"batch {args.batch} x {args.seconds} s stereo, {args.precision}, "
        f"activation checkpointing {'on' if args.checkpoint_activations else 'off'}"
    )
    print(f"{'model':6} {'s/step':>8} {'samples/s':>10} {'peak GiB':>9}")
    samples = round(args.seconds * 44100)
    for preset in args.presets:
        torch.manual_seed(0)
        model = TSBSMamba2.from_preset(preset).to(device).train()
        if args.checkpoint_activations:
            model.checkpoint_activations()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        targets = torch.randn(args.batch, 4, 2, samples, device=device) * 0.1
        mixture = targets.sum(1)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for step in range(args.steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with autocast:
                stage1, stage2 = model(mixture)
            loss = separation_loss((stage1, stage2), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step:
                times.append(time.perf_counter() - start)
        seconds = min(times)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak so far
        print(f"{preset:6} {seconds:8.2f} {args.batch / seconds:10.2f} {peak:9.1f}", flush=True)


if __name__ == "__main__":
    main()
