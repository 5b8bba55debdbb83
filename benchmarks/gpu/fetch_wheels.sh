#!/usr/bin/env bash
# Run HERE (not on the GPU machine): put into .whl/ the wheels the GPU machine lacks for the project and
# its benchmarks, for its Python 3.12 / x86-64 (see /work/.library/device/KINDS.md for what it has:
# torch 2.11 + CUDA 13, triton, numpy, scipy, safetensors, einops, typer, rich, tqdm, pytest, torchaudio).
#   bash benchmarks/gpu/fetch_wheels.sh      # then: benchmarks/gpu/README.md
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=.whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >>.git/info/exclude; }
rm -rf "$DEST" && mkdir -p "$DEST"
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT

binary() {  # pip download of binary wheels for the GPU machine's CPython 3.12 on manylinux x86-64
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$@"
}

# Audio I/O of stemsplit (audio/ imports soundfile and soxr; librosa is declared but never imported).
binary soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 pycparser==3.12
# HTDemucs for the comparison: demucs 4.1's htdemucs/apply modules import only torch, numpy, einops,
# julius and tqdm (no torchaudio, no openunmix, no dora), so no other dependency travels.
binary demucs==4.1.0 julius==0.2.8

# mamba-ssm: PyPI has only an sdist (prebuilt CUDA wheels are on GitHub releases, not reachable here), and
# causal-conv1d likewise. Build mamba-ssm without its CUDA extension (MAMBA_SKIP_CUDA_BUILD): the Mamba-2
# SSD kernels stemsplit calls are Triton and need none. Its package __init__ imports the Mamba-1 CUDA
# extension (selective_scan_cuda) and Mamba-3 unconditionally, so it is replaced by a version line; the
# Triton modules (mamba_ssm.ops.triton.*) import directly. causal_conv1d stays absent: stemsplit then
# takes mamba_ssm's unfused path (PyTorch conv + Triton chunk scan + Triton gated RMSNorm) and says so.
MAMBA=2.3.2.post1
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
    "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$tmp" "mamba-ssm==$MAMBA"
tar -xzf "$tmp/mamba_ssm-$MAMBA.tar.gz" -C "$tmp"
src="$tmp/mamba_ssm-$MAMBA"
cat >"$src/mamba_ssm/__init__.py" <<PYEOF
__version__ = "$MAMBA"
# Built for stemsplit's GPU benchmark with MAMBA_SKIP_CUDA_BUILD=TRUE: no selective_scan_cuda extension, so
# the package-level imports (Mamba-1, Mamba-3, the LM head) are left out; mamba_ssm.ops.triton.* import as usual.
PYEOF
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$src"

# stemsplit itself (run.sh puts the working tree's src/ first on PYTHONPATH, so later edits still count).
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" .

ls -la "$DEST"
du -sh "$DEST"
total=$(du -sk "$DEST" | cut -f1)
if [ "$total" -gt $((50 * 1024)) ]; then
    echo "error: $DEST is ${total} KiB, over the 50 MiB budget (64 MiB per device call, tree included)" >&2
    exit 1
fi
