"""Seconds per window, and per minute of audio, through any family or registry model (random weights).

    python benchmarks/bench_model.py                      # TS and L-TS, CPU: 1 and 2 threads, fp32 and bf16
    python benchmarks/bench_model.py --presets l-ts --threads 2 --precisions fp32 --rounds 3
    python benchmarks/bench_model.py --device cuda --batch 16 --precisions bf16
    python benchmarks/bench_model.py --arch bsrnn         # a row per target network (a 4-stem bag: all four)
    python benchmarks/bench_model.py --arch u-mamba-net --precisions fp32  # 3 s mono at 8 kHz, 2 speakers
    python benchmarks/bench_model.py --arch bs-roformer   # the paper's BS-RoFormer (L 12, D 384), 8 s windows
    python benchmarks/bench_model.py --arch mel-band-roformer --threads 2 --precisions fp32 bf16
    python benchmarks/bench_model.py --arch bs-mamba2 --presets msst-vocals  # MSST's BSMamba2 vocals size
    python benchmarks/bench_model.py --registry --threads 2 --precisions fp32 --repeats 1
        # every registry model at its own window and hop: the s/min that `stemsplit models` shows

The window is what the model's card says (3 s for TS-BSMamba2 and BSRNN, 8 s for
the RoFormers, a registry entry's own window), stereo at 44.1 kHz for the music
families, mono at 8 kHz for U-Mamba-Net; --seconds sets another. "s/min" is
seconds per minute of audio: seconds per window times the windows a minute takes
at the card's (or entry's) hop.

Randomly initialised weights: the cost does not depend on their values.
Prints the machine, then one row per (model, threads, precision): seconds per
window (best of --repeats after one warm-up, and best over --rounds), the
relative L2 error of the bf16 stage-2 output against fp32, the peak resident
memory of the process that ran it, and the 1-minute load average when it ran.

Every configuration runs in a fresh process (so peak memory is its own), and
with --rounds > 1 the configurations take turns, round after round: on a
shared machine a burst of load then hits all of them, not one.
``--no-onednn`` times the plain PyTorch path (``STEMSPLIT_ONEDNN=0``) for an A/B.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from machine import describe

from stemsplit.card import MUSIC_STEMS, default_stem_names
from stemsplit.engine.runtime import cpu_bf16_support, tune_cpu_allocator
from stemsplit.model import FAMILIES, build_model, family, make_config
from stemsplit.model.bsrnn import TARGET_SCHEMES
from stemsplit.model.u_mamba_net import speaker_names
from stemsplit.weights import load_registry
from stemsplit.weights.load import entry_config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_model(model, batch: torch.Tensor, precision: str) -> torch.Tensor:
    autocast = torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        out = model(batch)
        return out[-1] if isinstance(out, tuple) else out  # the final stage


def time_model(model, batch: torch.Tensor, precision: str, repeats: int) -> tuple[float, torch.Tensor]:
    """Best seconds of ``repeats`` forward passes after a warm-up, and the stage-2 output."""
    out = run_model(model, batch, precision)  # warm-up: kernel autotuning, allocator
    best = float("inf")
    for _ in range(repeats):
        sync(batch.device)
        start = time.perf_counter()
        run_model(model, batch, precision)
        sync(batch.device)
        best = min(best, time.perf_counter() - start)
    return best, out


def _preset_stems(kind: str, preset: str) -> tuple[str, ...]:
    """A preset's own stem count, named as a checkpoint without names would be (htdemucs_6s: six)."""
    field = family(kind).stem_field
    count = getattr(make_config(kind, preset), field) if field else len(MUSIC_STEMS)
    return default_stem_names(count)


def build(spec: str) -> tuple[torch.nn.Module, float, float]:
    """The network ``spec`` names (``family:preset[:target]`` or ``entry:NAME``), its window and hop."""
    kind, name, *target = spec.split(":")
    if kind == "entry":
        entry = load_registry().get(name)
        model = build_model(entry.architecture, entry_config(entry), entry.stems)
        return model, entry.window or model.card.window, entry.hop or model.card.hop
    stems = tuple(target) or (speaker_names(2) if kind == "u-mamba-net" else _preset_stems(kind, name))
    model = build_model(kind, make_config(kind, name, {}, stems), stems)
    return model, model.card.window, model.card.hop


def worker(args: argparse.Namespace) -> None:
    """One configuration, in this process: prints one JSON line."""
    device = torch.device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    os.environ["STEMSPLIT_MAMBA_BACKEND"] = args.backend
    model, window, hop = build(args.worker)
    model = model.to(device).eval()
    card = model.card
    window = args.seconds or window
    batch = torch.randn(args.batch, card.channels, round(window * card.sample_rate), device=device) * 0.1
    parameters = sum(p.numel() for p in model.parameters())
    seconds, out = time_model(model, batch, args.precision, args.repeats)
    load = os.getloadavg()[0]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    error = None
    if args.precision == "bf16":
        reference = run_model(model, batch, "fp32")
        error = ((out.float() - reference).norm() / reference.norm()).item()
    print(
        json.dumps(
            dict(seconds=seconds, error=error, peak_mb=peak_mb, load=load, params=parameters, hop=hop)
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ts-bsmamba2", choices=list(FAMILIES))
    parser.add_argument(
        "--registry", nargs="*", metavar="NAME", help="registry models at their own window and hop [all]"
    )
    parser.add_argument(
        "--presets", nargs="+", default=None, help="[ts-bsmamba2: ts l-ts; the other families: paper]"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--seconds", type=float, default=None, help="window length [the model's]")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="CPU threads [1 and all cores]")
    parser.add_argument(
        "--precisions", "--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"]
    )
    parser.add_argument("--backend", choices=["auto", "portable", "cuda"], default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per process")
    parser.add_argument("--rounds", type=int, default=1, help="times each configuration runs, in turns")
    parser.add_argument("--no-onednn", action="store_true", help="plain PyTorch kernels (A/B)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads-one", dest="threads_one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-precision", dest="precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads_one
        worker(args)
        return

    device = torch.device(args.device)
    default_threads = [1, os.cpu_count() or 1] if device.type == "cpu" else [torch.get_num_threads()]
    threads = sorted(set(args.threads or default_threads))
    print(f"machine: {describe(device)}")
    if device.type == "cpu":
        print(f"native bf16: {cpu_bf16_support()[1]}")
    setup = f"batch {args.batch}, {args.backend} backend" + (", oneDNN off" if args.no_onednn else "")
    audio = "mono 8 kHz" if args.arch == "u-mamba-net" else "stereo 44.1 kHz"
    audio = "the model's audio" if args.registry is not None else audio
    window = f"window {args.seconds} s" if args.seconds else "the model's window,"
    print(f"{window} {audio}, {setup}; best of {args.repeats} x {args.rounds} rounds")
    if args.registry is not None:
        models = [f"entry:{name}" for name in args.registry or load_registry().models]
    elif args.arch == "bsrnn":  # one model per target (other uses vocals' scheme: the same network)
        models = [f"bsrnn:{p}:{t}" for p in args.presets or ["paper"] for t in TARGET_SCHEMES if t != "other"]
    elif args.arch == "u-mamba-net":
        models = [f"u-mamba-net:{p}" for p in args.presets or ["paper"]]
    elif args.arch == "ts-bsmamba2":
        models = [f"ts-bsmamba2:{p}" for p in args.presets or ["ts", "l-ts"]]
    else:
        models = [f"{args.arch}:{p}" for p in args.presets or FAMILIES[args.arch].presets]
    configs = [(m, t, prec) for m in models for t in threads for prec in args.precisions]
    best: dict[tuple, dict] = {}
    env = dict(os.environ, **({"STEMSPLIT_ONEDNN": "0"} if args.no_onednn else {}))
    for _ in range(args.rounds):
        for preset, n_threads, precision in configs:
            command = [sys.executable, __file__, "--worker", preset, "--threads-one", str(n_threads)]
            command += ["--worker-precision", precision, "--device", args.device, "--batch", str(args.batch)]
            command += ["--seconds", str(args.seconds or 0), "--backend", args.backend]
            command += ["--repeats", str(args.repeats)]
            run = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            result = json.loads(run.stdout)
            key = (preset, n_threads, precision)
            if key not in best or result["seconds"] < best[key]["seconds"]:
                best[key] = result
    print(
        f"{'model':36} {'params':>7} {'s/batch':>9} {'s/window':>9} {'s/min':>7} {'threads':>7} "
        f"{'prec':>5} {'bf16 err':>9} {'peak RSS':>9} {'load':>5}"
    )
    for (preset, n_threads, precision), r in best.items():
        per_window = r["seconds"] / args.batch
        error = "-" if r["error"] is None else f"{r['error']:.1e}"
        per_minute = per_window * 60 / r["hop"]  # windows start every hop
        print(
            f"{preset:36} {r['params'] / 1e6:6.1f}M {r['seconds']:9.2f} {per_window:9.2f} "
            f"{per_minute:7.0f} {n_threads:7d} {precision:>5} {error:>9} {r['peak_mb']:7.0f}MB "
            f"{r['load']:5.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
