"""End-to-end separation speed: a song file in, four stems on disk (issue 8).

    python benchmarks/bench_separate.py          # CUDA: TS, L-TS x fp32, bf16 x batch 8/16/32 + HTDemucs
    python benchmarks/bench_separate.py --device cpu --seconds 4 --presets l-ts \\
        --precisions fp32 --batch-sizes 2 --skip-demucs  # smoke test

The song is a 4-minute stereo 44.1 kHz synthetic song (``stemsplit synth``,
fixed seed) written as a wav file to a temporary folder, or ``--input FILE``.
Each configuration builds the model with random weights (seeded: the cost does
not depend on their values), separates a short clip once (warm-up: kernel
compilation and autotuning, allocator), then times ``Separator.separate_file``
on the whole song with the paper's protocol (3 s windows, 0.5 s hop, stage 2):
file read, windows through the model, overlap-add, stems written as float32
wav and moved into place. Windows per second counts the song's windows over
that wall time.

HTDemucs (``demucs`` package; random initialisation, the architecture of the
released ``htdemucs`` model) runs on the same file with demucs's defaults
(segment 7.8 s, overlap 0.25, shifts 1, fp32), timed the same way: file read,
``demucs.apply.apply_model``, stems written with soundfile.

``--time-budget`` stops starting new configurations once the time is short and
says so; ``--json`` and ``--markdown`` are rewritten after every row, so a run
cut short still leaves its results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from machine import describe

from stemsplit.model import TSBSMamba2
from stemsplit.model.layers.mamba2 import cuda_kernels, resolve_backend
from stemsplit.separate import SeparationError, Separator

PRESET_NAMES = {"ts": "TS", "l-ts": "L-TS"}
TARGETS_S = {"ts": 2.5, "l-ts": 1.5}  # issue 8: one H100, 4-minute song, 3 s / 0.5 s, stage 2
STEMS = ("drums", "bass", "other", "vocals")
TINY = {"feature_dim": 16, "num_repeat_mask": 1, "num_repeat_map": 1}  # --tiny: smoke tests only
DEMUCS_RESERVE_S = 60.0  # --time-budget keeps this much for HTDemucs at the end


# --- environment -----------------------------------------------------------------------------------


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gpu_driver() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return "unknown"


def environment(device: torch.device) -> dict[str, str]:
    env = {"machine": describe(device), "python": platform.python_version()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["driver"] = gpu_driver()
        env["cuda"] = torch.version.cuda or "unknown"
    else:
        env["gpu"] = "none (CPU)"
    env["torch"] = torch.__version__
    for dist in ("triton", "mamba-ssm", "causal-conv1d", "demucs", "numpy", "soundfile"):
        env[dist] = dist_version(dist)
    env["mamba2_backend"] = mamba_backend(device)
    return env


def mamba_backend(device: torch.device) -> str:
    """The Mamba-2 path a model on ``device`` takes (STEMSPLIT_MAMBA_BACKEND honoured)."""
    try:
        backend = resolve_backend(None, device)
    except (RuntimeError, ValueError) as exc:
        return f"error: {exc}"
    if backend == "cuda":
        if cuda_kernels().fused:
            return "cuda (mamba_ssm Triton kernels, fused with causal_conv1d)"
        return "cuda (mamba_ssm Triton kernels, unfused: causal_conv1d not importable)"
    if device.type == "cuda":
        return "portable (PyTorch; mamba_ssm not importable or not chosen)"
    return "portable (PyTorch)"


# --- the song --------------------------------------------------------------------------------------


def make_song(folder: Path, seconds: float, seed: int) -> Path:
    """A stereo 44.1 kHz synthetic song of ``seconds`` written as float32 wav."""
    from stemsplit.datasets.synth import generate_song

    song = generate_song(seed, seconds)
    path = folder / f"song-{seed}-{seconds:g}s.wav"
    sf.write(path, song.mixture.T, song.sample_rate, subtype="FLOAT")
    return path


def clip_of(song: Path, seconds: float, folder: Path) -> Path:
    """The first ``seconds`` of ``song`` as its own file (warm-up input); cached by length."""
    path = folder / f"warmup-{seconds:g}s.wav"
    if not path.exists():
        info = sf.info(str(song))
        audio, rate = sf.read(str(song), frames=min(info.frames, round(seconds * info.samplerate)))
        sf.write(path, audio, rate, subtype="FLOAT")
    return path


# --- timing ----------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_outputs(folder: Path, frames: int) -> None:
    written = sorted(folder.rglob("*.wav"))
    if len(written) != len(STEMS):
        raise RuntimeError(f"expected {len(STEMS)} stems in {folder}, found {[p.name for p in written]}")
    for path in written:
        if sf.info(str(path)).frames != frames:
            raise RuntimeError(f"{path.name}: {sf.info(str(path)).frames} frames, expected {frames}")


def base_row(preset: str, precision: str, batch: int, hop: float | None = None) -> dict:
    model = PRESET_NAMES.get(preset, "HTDemucs")
    return {"model": model, "preset": preset, "precision": precision, "batch": batch, "hop": hop}


def run_stemsplit(args, preset, precision, batch, hop, song, song_info, work, device) -> dict:
    row = base_row(preset, precision, batch, hop)
    events: list[str] = []

    def progress(event: dict) -> None:
        if event.get("event") == "batch_size_reduced":
            events.append(f"batch reduced to {event['batch_size']} (out of memory)")

    torch.manual_seed(0)
    model = TSBSMamba2.from_preset(preset, **(TINY if args.tiny else {}))
    separator = Separator(
        model,
        device=device,
        window=args.window,
        hop=hop,
        batch_size=batch,
        precision=precision,
        stage=args.stage,
        sample_rate=44100,
        progress=progress,
    )
    row["backend"] = mamba_backend(device).split(" ")[0]
    out = work / "stems"
    # Warm-up: enough windows for two full batches, so the timed run meets no new shape but the last.
    warm = clip_of(song, max(6.0, 2 * batch * hop + args.window), work)
    shutil.rmtree(out, ignore_errors=True)
    separator.separate_file(warm, out, overwrite=True)
    walls, result = timed_runs(
        args.repeats, device, out, song_info, partial(separator.separate_file, song, out, overwrite=True)
    )
    wall = min(walls)
    row.update(
        wall_s=wall,
        windows=result.windows,
        windows_per_s=result.windows / wall,
        realtime=song_info.duration / wall,
        peak_gib=peak_gib(device),
        status="ok",
        note="; ".join(dict.fromkeys(events)),
    )
    if len(walls) > 1:
        row["walls_s"] = walls
    shutil.rmtree(out, ignore_errors=True)
    del separator, model
    free_memory(device)
    return row


def htdemucs_model(tiny: bool = False):
    """HTDemucs with the released ``htdemucs`` model's architecture (random weights).

    The released model's init arguments live in its weight file's metadata,
    which cannot be downloaded here; these are its training config (demucs
    conf ``htdemucs`` defaults with ``dconv_mode=3``, 5 transformer layers, no
    bottom channels, trained segment 7.8 s = 39/5).
    """
    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    small = {"channels": 8, "t_layers": 1} if tiny else {"t_layers": 5}
    model = HTDemucs(
        **small,
        sources=list(STEMS),
        audio_channels=2,
        samplerate=44100,
        segment=Fraction(39, 5),
        dconv_mode=3,
        bottom_channels=0,
    )
    return BagOfModels([model])  # what demucs.pretrained.get_model("htdemucs") returns


def demucs_separate(bag, song: Path, out: Path, device: torch.device) -> int:
    """demucs's CLI path: normalise, apply_model with its defaults, scale back, write stems. -> chunks run."""
    from demucs.apply import apply_model

    chunks = 0

    def count(event: dict) -> None:
        nonlocal chunks
        chunks += event.get("state") == "end"

    audio, rate = sf.read(str(song), dtype="float32", always_2d=True)
    wav = torch.from_numpy(np.ascontiguousarray(audio.T))
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    wav = (wav - mean) / std
    with torch.no_grad():
        sources = apply_model(
            bag, wav[None], device=device, shifts=1, split=True, overlap=0.25, progress=False, callback=count
        )[0]
    sources = sources * std + mean
    out.mkdir(parents=True, exist_ok=True)
    for name, source in zip(bag.sources, sources, strict=True):
        sf.write(out / f"{name}.wav", source.cpu().numpy().T, rate, subtype="FLOAT")
    return chunks


def demucs_missing() -> str | None:
    """Why demucs's model and apply code cannot be imported, or None if they can."""
    try:
        import demucs.apply
        import demucs.htdemucs  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def timed_runs(repeats, device, out, song_info, separate) -> tuple[list[float], object]:
    """Wall times of ``repeats`` runs of ``separate()`` (stems written to ``out``, then checked) and
    the last run's result; each run starts from an empty ``out`` and freed, synchronised memory."""
    walls, result = [], None
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        free_memory(device)
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        result = separate()
        sync(device)
        walls.append(time.perf_counter() - start)
        check_outputs(out, song_info.frames)
    return walls, result


def run_demucs(args, song, song_info, work, device) -> dict:
    row = base_row("htdemucs", "fp32", 1)
    bag = htdemucs_model(args.tiny)
    row["params_m"] = sum(p.numel() for p in bag.parameters()) / 1e6
    row["backend"] = "demucs"
    out = work / "demucs"
    demucs_separate(bag, clip_of(song, 20.0, work), out, device)  # warm-up
    walls, chunks = timed_runs(
        args.repeats, device, out, song_info, partial(demucs_separate, bag, song, out, device)
    )
    wall = min(walls)
    row.update(
        wall_s=wall,
        windows=chunks,
        windows_per_s=chunks / wall,
        realtime=song_info.duration / wall,
        peak_gib=peak_gib(device),
        status="ok",
        note=f"segment 7.8 s, overlap 0.25, shifts 1; {row['params_m']:.1f} M params; windows = segments",
    )
    shutil.rmtree(out, ignore_errors=True)
    del bag
    free_memory(device)
    return row


# --- output ----------------------------------------------------------------------------------------

COLUMNS = (
    ("model", "{}", 8),
    ("precision", "{}", 9),
    ("batch", "{}", 5),
    ("hop", "{:g}", 4),
    ("backend", "{}", 8),
    ("wall_s", "{:.2f}", 8),
    ("windows", "{}", 7),
    ("windows_per_s", "{:.1f}", 9),
    ("realtime", "{:.1f}", 8),
    ("peak_gib", "{:.2f}", 8),
    ("vs_htdemucs", "{:.1f}x", 9),
)
HEADERS = {
    "wall_s": "wall s",
    "windows_per_s": "windows/s",
    "realtime": "x realtime",
    "peak_gib": "peak GiB",
    "vs_htdemucs": "/HTDemucs",
}


def cells(row: dict) -> list[str]:
    out = []
    for key, fmt, _ in COLUMNS:
        value = row.get(key)
        out.append("-" if value is None else fmt.format(value))
    status = row.get("status", "")
    out.append(status if status != "ok" else row.get("note", ""))
    return out


def aligned(values: list[str]) -> str:
    """Columns padded to their widths (text left, numbers right), the note last."""
    text = [
        v.rjust(width) if i > 4 else v.ljust(width)
        for i, (v, (_, _, width)) in enumerate(zip(values, COLUMNS, strict=False))
    ]
    return " ".join([*text, values[-1]])


def print_header() -> None:
    print(aligned([HEADERS.get(key, key) for key, _, _ in COLUMNS] + ["note"]))


def print_row(row: dict) -> None:
    print(aligned(cells(row)), flush=True)


def targets_line(rows: list[dict]) -> str:
    parts = []
    for preset, target in TARGETS_S.items():
        done = [r for r in rows if r.get("preset") == preset and r.get("status") == "ok"]
        if not done:
            continue
        best = min(done, key=lambda r: r["wall_s"])
        verdict = "met" if best["wall_s"] <= target else "missed"
        setup = f"{best['precision']}, batch {best['batch']}"
        parts.append(f"{PRESET_NAMES[preset]} best {best['wall_s']:.2f} s ({setup}) vs {target} s: {verdict}")
    return "; ".join(parts)


def write_markdown(path: Path, meta: dict, rows: list[dict]) -> None:
    env = meta["environment"]
    driver = f", driver {env['driver']}, CUDA {env['cuda']}" if "driver" in env else ""
    hops = ", ".join(f"{h:g}" for h in meta["hops"])
    header = ["model", "precision", "batch", "hop", "backend", "wall s", "windows", "windows/s", "x realtime"]
    lines = [
        "# End-to-end separation benchmark",
        "",
        f"- Date: {meta['date']}",
        f"- Device: {env['gpu']}{driver}",
        f"- Machine: {env['machine']}",
        "- Versions: "
        + ", ".join(
            f"{k} {env[k]}" for k in ("torch", "triton", "mamba-ssm", "causal-conv1d", "demucs", "numpy")
        ),
        f"- Mamba-2 backend: {env['mamba2_backend']}",
        f"- Song: {meta['song']}",
        f"- Protocol: window {meta['window']} s, hops {hops} s, stage {meta['stage']}; "
        f"wall time = file in -> stems on disk (float32 wav), best of {meta['repeats']} after a warm-up; "
        + ("random weights" + (" (--tiny models: not a benchmark)" if meta.get("tiny") else "")),
        f"- Command: `{meta['command']}`",
        "",
        "| " + " | ".join([*header, "peak GiB", "time / HTDemucs's", "note"]) + " |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    targets = targets_line(rows)
    if targets:
        lines += ["", f"Targets (issue 8, one H100): {targets}."]
    if meta.get("stopped"):
        lines += ["", f"Stopped early: {meta['stopped']}."]
    path.write_text("\n".join(lines) + "\n")


def save(args, meta: dict, rows: list[dict]) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        write_markdown(Path(args.markdown), meta, rows)


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, help="song file to separate (default: a generated song)")
    parser.add_argument("--seconds", type=float, default=240.0, help="length of the generated song")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated song")
    parser.add_argument("--presets", nargs="+", default=["ts", "l-ts"], choices=["ts", "l-ts"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--hops", type=float, nargs="+", default=[0.5], help="seconds between windows")
    parser.add_argument("--stage", type=int, default=2, choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (best is kept)")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke tests only: tiny models (16 features, 1 + 1 layers)"
    )
    parser.add_argument("--skip-demucs", action="store_true", help="do not time HTDemucs")
    parser.add_argument(
        "--time-budget",
        type=float,
        help="seconds: start no new configuration that would likely end past this (HTDemucs keeps "
        f"{DEMUCS_RESERVE_S:.0f} s)",
    )
    parser.add_argument("--json", type=Path, help="write all rows (and the environment) as JSON")
    parser.add_argument("--markdown", type=Path, help="write a RESULTS.md-style table with date and device")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (as in bench_model.py)
    env = environment(device)
    for key in ("machine", "gpu", "driver", "cuda", "torch", "triton", "mamba-ssm", "causal-conv1d"):
        if key in env:
            print(f"{key}: {env[key]}")
    print(f"demucs: {env['demucs']}; Mamba-2 backend: {env['mamba2_backend']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-separate-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if args.input:
            song = args.input
            song_desc = f"{song.name}"
        else:
            song = make_song(work, args.seconds, args.seed)
            song_desc = f"synthetic (stemsplit.datasets.synth.generate_song seed {args.seed})"
        info = sf.info(str(song))
        song_desc += f", {info.duration:.1f} s, {info.channels} ch, {info.samplerate} Hz"
        print(f"song: {song_desc} (ready in {time.perf_counter() - t0:.1f} s)")
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "environment": env,
            "song": song_desc,
            "window": args.window,
            "hops": args.hops,
            "stage": args.stage,
            "repeats": args.repeats,
            "tiny": args.tiny,
            "command": " ".join(["python", "benchmarks/bench_separate.py", *(argv or sys.argv[1:])]),
        }
        rows: list[dict] = []
        hops = ", ".join(f"{h:g}" for h in args.hops)
        print(f"window {args.window} s, hops {hops} s, stage {args.stage}; wall: file in -> stems on disk")
        print_header()
        configs = [
            (preset, precision, batch, hop)
            for precision in args.precisions  # precision first: --precisions bf16 fp32 times bf16 first
            for preset in args.presets
            for hop in args.hops
            for batch in args.batch_sizes
        ]
        reserve = 0.0 if args.skip_demucs else min(DEMUCS_RESERVE_S, 0.25 * (args.time_budget or 0))
        last_cost = {}  # preset -> seconds the last configuration of it took (warm-up included)
        for preset, precision, batch, hop in configs:
            elapsed = time.perf_counter() - started
            estimate = last_cost.get(preset, max(last_cost.values(), default=0.0))
            if args.time_budget is not None and elapsed + estimate > args.time_budget - reserve:
                row = base_row(preset, precision, batch, hop)
                row["status"] = f"skipped: time budget ({elapsed:.0f} s used of {args.time_budget:.0f} s)"
                meta["stopped"] = f"time budget of {args.time_budget:.0f} s reached after {elapsed:.0f} s"
            else:
                begin = time.perf_counter()
                try:
                    row = run_stemsplit(args, preset, precision, batch, hop, song, info, work, device)
                except (SeparationError, RuntimeError) as exc:
                    row = base_row(preset, precision, batch, hop)
                    row["status"] = f"error: {type(exc).__name__}: {exc}"[:300]
                    free_memory(device)
                last_cost[preset] = time.perf_counter() - begin
            rows.append(row)
            print_row(row)
            save(args, meta, rows)

        if not args.skip_demucs:
            row = base_row("htdemucs", "fp32", 1)
            missing = demucs_missing()
            if missing:
                row["status"] = (
                    f"skipped: demucs not importable ({missing}); pip install demucs, or --skip-demucs"
                )
                print(f"HTDemucs {row['status']}", file=sys.stderr)
            else:
                try:
                    row = run_demucs(args, song, info, work, device)
                except (RuntimeError, ValueError) as exc:
                    row["status"] = f"error: {type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print_row(row)
            if row.get("status") == "ok":
                print("stemsplit's time over HTDemucs's, same file, same run:")
                for other in rows[:-1]:
                    if other.get("status") == "ok":
                        other["vs_htdemucs"] = other["wall_s"] / row["wall_s"]
                        print(aligned(cells(other)))
            save(args, meta, rows)

    targets = targets_line(rows)
    if targets and device.type == "cuda":
        print(f"targets: {targets}")
    if meta.get("stopped"):
        print(f"stopped early: {meta['stopped']}")
    print(f"total {time.perf_counter() - started:.0f} s")
    failed = [r for r in rows if str(r.get("status", "")).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
