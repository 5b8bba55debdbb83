#!/usr/bin/env bash
# The whole GPU measurement of issue 8 in one unattended command (see benchmarks/gpu/README.md):
#   device run, carry [".whl"], timeout_s 600, command: bash benchmarks/gpu/run.sh
# Steps, each with its own timeout, all output tee'd to $OUT/*.log (8 files at most come back):
#   (a) CUDA tests  (b) golden errors fp32/bf16  (c) bench_model (TS, then U-Mamba-Net)  (d) bench_train
#   (e) bench_separate
# STEMSPLIT_GPU_DRYRUN=1 runs the same steps on the CPU with tiny settings (a check of this script here).
# RUN_TOTAL_S (default 540) is the time the whole script aims to end within.
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
TOTAL=${RUN_TOTAL_S:-540}
DRY=${STEMSPLIT_GPU_DRYRUN:-0}
if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d); echo "OUT not set; writing to $OUT"; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

left() { echo $((TOTAL - ($(date +%s) - START))); }
step() {  # step NAME TIMEOUT_S COMMAND...: run, tee to $OUT/NAME.log, never stop the script
    local name=$1 limit=$2; shift 2
    local remaining; remaining=$(left)
    if [ "$remaining" -lt 15 ]; then
        echo "=== $name: SKIPPED (only ${remaining} s left of ${TOTAL} s)" | tee -a "$OUT/summary.log"
        return
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "=== $name (timeout ${limit} s): $*"
    local t0; t0=$(date +%s)
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    local verdict="exit $rc"; [ "$rc" -eq 124 ] && verdict="TIMED OUT after ${limit} s"
    echo "=== $name: $verdict in $(($(date +%s) - t0)) s" | tee -a "$OUT/summary.log"
}

# --- install the carried wheels (README of the device tool: wheel note) -----------------------------------
if [ "$DRY" != 1 ]; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl 2>&1 | tail -5
    else
        echo "warning: no .whl/ carried; did the call name carry: [\".whl\"]? (bash benchmarks/gpu/fetch_wheels.sh)"
    fi
fi
# The working tree's code runs (src/ first); /tmp/site brings the missing packages.
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  dry run: $DRY"
    git log -1 --format='commit: %H %s' 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu --format=csv 2>&1 || true
    $PY - <<'PYEOF'
import importlib, importlib.metadata as md, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for d in ("triton", "mamba-ssm", "causal-conv1d", "demucs", "julius", "einops", "soundfile", "soxr", "numpy"):
    try:
        print(f"  {d} {md.version(d)}")
    except md.PackageNotFoundError:
        print(f"  {d} not installed")
import stemsplit
print("stemsplit from", stemsplit.__file__)
from stemsplit.model.layers.mamba2 import cuda_kernels
k = cuda_kernels()
print("mamba_ssm kernels:", "none (portable backend)" if k is None else f"ok, fused={k.fused}")
try:
    import demucs.apply, demucs.htdemucs  # noqa
    print("demucs model code imports")
except Exception as exc:
    print("demucs NOT importable:", type(exc).__name__, exc)
PYEOF
} 2>&1 | tee "$OUT/summary.log"

if [ "$DRY" = 1 ]; then
    step a_tests 60 $PY -m pytest tests/unit/model/test_mamba2.py -q -k "backend or layout" -p no:cacheprovider
    step b_golden 60 $PY benchmarks/gpu/check_golden.py --device cpu --skip-ts
    step c_bench_model 60 bash -c "$PY benchmarks/bench_model.py --device cpu --presets l-ts --seconds 0.05 \
        --repeats 1 && $PY benchmarks/bench_model.py --device cpu --arch u-mamba-net --seconds 0.05 --repeats 1"
    step d_bench_train 60 $PY benchmarks/bench_train.py --device cpu --presets l-ts --seconds 0.05 --steps 1
    step e_bench_separate 90 $PY benchmarks/bench_separate.py --device cpu --tiny --seconds 4 --presets l-ts \
        --precisions fp32 --batch-sizes 2 --time-budget 60 --json "$OUT/separate.json" --markdown "$OUT/RESULTS.md"
else
    # The golden fixtures of the RoFormers, HTDemucs and BSMamba2 on the GPU too (their `cuda` tests).
    step a_tests 130 bash -c "$PY -m pytest tests/unit/model/test_ts_bsmamba2.py tests/unit/model/test_mamba2.py -q -ra -p no:cacheprovider; \
        $PY -m pytest tests/unit/model/test_roformer.py tests/unit/model/test_htdemucs.py tests/unit/model/test_bs_mamba2.py -m cuda -q -ra \
        -p no:cacheprovider"
    step b_golden 60 $PY benchmarks/gpu/check_golden.py
    # U-Mamba-Net (speakers) after TS, in the same log: the 8 files that come back are all spoken for.
    step c_bench_model 75 bash -c "$PY benchmarks/bench_model.py --device cuda --batch 16 --precision bf16 \
        --repeats 3; $PY benchmarks/bench_model.py --device cuda --arch u-mamba-net --batch 16 --repeats 3"
    # Target: TS at batch 4 x 3 s in bf16 <= 0.6 s per step; batch 16 for the memory check.
    step d_bench_train 90 bash -c "$PY benchmarks/bench_train.py --device cuda --presets ts --batch 4 \
        --precision bf16 --steps 3; $PY benchmarks/bench_train.py --device cuda --presets ts --batch 16 \
        --precision bf16"
    # bench_separate gets what is left, less a margin; it stops starting configurations on its own.
    budget=$(($(left) - 25))
    step e_bench_separate $((budget + 20)) $PY benchmarks/bench_separate.py --precisions bf16 fp32 \
        --time-budget "$budget" --json "$OUT/separate.json" --markdown "$OUT/RESULTS.md"
fi

echo "=== done in $(($(date +%s) - START)) s; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
cat "$OUT/summary.log"
