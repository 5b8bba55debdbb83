"""benchmarks/bench_separate.py runs end to end (CPU, tiny model, a 4 s song) and writes its tables."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_separate_smoke(tmp_path):
    out_json, out_md = tmp_path / "separate.json", tmp_path / "RESULTS.md"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_separate.py"),
        *("--device", "cpu", "--tiny", "--seconds", "4", "--presets", "l-ts"),
        *("--precisions", "fp32", "--batch-sizes", "2", "--skip-demucs"),
        *("--json", str(out_json), "--markdown", str(out_md)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["model"], r["status"], r["windows"]) for r in rows] == [("L-TS", "ok", 13)]
    assert rows[0]["wall_s"] > 0
    assert "| L-TS | fp32 | 2 | portable |" in out_md.read_text()
    assert "Mamba-2 backend: portable" in result.stdout
