"""Golden outputs on the GPU: relative error of each Mamba-2 backend and precision against the reference.

    python benchmarks/gpu/check_golden.py            # CUDA (what run.sh runs)
    python benchmarks/gpu/check_golden.py --device cpu

The small reference model (tests/fixtures/golden_small_*) runs on the device with
the portable and (where mamba_ssm imports) cuda backends, in fp32 (TF32 off) and
under bf16 autocast, and each stage's ||out - golden|| / ||golden|| is printed
against the fp32 reference outputs. Then TS with random weights on one 3 s
window: bf16 against fp32 on the same backend. bf16 should land between 1e-3
and 1e-2 (METHOD.md); "ok" means under --bf16-tol (fp32: under --fp32-tol).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from stemsplit.model import TSBSMamba2
from stemsplit.model.layers.mamba2 import cuda_kernels

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def run(model, x, precision):
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        return [y.float() for y in model(x)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp32-tol", type=float, default=1e-3)
    parser.add_argument("--bf16-tol", type=float, default=2e-2)
    parser.add_argument("--skip-ts", action="store_true", help="only the small golden model")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backends = ["portable"] + (["cuda"] if device.type == "cuda" and cuda_kernels() is not None else [])
    tol = {"fp32": args.fp32_tol, "bf16": args.bf16_tol}
    weights = load_file(FIXTURES / "golden_small_weights.safetensors")
    io = load_file(FIXTURES / "golden_small_io.safetensors")
    config = json.loads((FIXTURES / "golden_small_config.json").read_text())
    print(f"device {device}; golden model {config}; backends {backends}")
    failed = 0
    print(f"{'model':8} {'backend':9} {'precision':9} {'stage1':>10} {'stage2':>10}  verdict")
    for backend in backends:
        model = TSBSMamba2.from_state_dict(weights, mamba_backend=backend).to(device).eval()
        for precision in ("fp32", "bf16"):
            s1, s2 = run(model, io["mixture"].to(device), precision)
            e1, e2 = rel(s1, io["stage1"]), rel(s2, io["stage2"])
            ok = max(e1, e2) < tol[precision]  # NaN compares False: fails
            failed += not ok
            print(f"{'golden':8} {backend:9} {precision:9} {e1:10.2e} {e2:10.2e}  {'ok' if ok else 'FAIL'}")
    if not args.skip_ts:
        torch.manual_seed(0)
        x = torch.randn(2, 2, 3 * 44100, device=device) * 0.1
        for backend in backends:
            torch.manual_seed(0)
            model = TSBSMamba2.from_preset("ts", mamba_backend=backend).to(device).eval()
            ref = run(model, x, "fp32")
            out = run(model, x, "bf16")
            e1, e2 = rel(out[0], ref[0]), rel(out[1], ref[1])
            ok = max(e1, e2) < args.bf16_tol
            failed += not ok
            print(f"{'TS 3 s':8} {backend:9} {'bf16/fp32':9} {e1:10.2e} {e2:10.2e}  {'ok' if ok else 'FAIL'}")
            if backend == "cuda":
                portable = TSBSMamba2.from_preset("ts", mamba_backend="portable").to(device).eval()
                portable.load_state_dict(model.state_dict())
                ref_p = run(portable, x, "fp32")
                e1, e2 = rel(ref[0], ref_p[0]), rel(ref[1], ref_p[1])
                ok = max(e1, e2) < args.fp32_tol
                failed += not ok
                print(
                    f"{'TS 3 s':8} {'cuda/port':9} {'fp32':9} {e1:10.2e} {e2:10.2e}  {'ok' if ok else 'FAIL'}"
                )
    print("all within tolerance" if not failed else f"{failed} check(s) over tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
