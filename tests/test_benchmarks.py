"""benchmarks/bench_separate.py runs end to end (CPU, tiny model, a 4 s song) and writes its tables."""

import json

from helpers import ROOT, python


def test_bench_separate_smoke(tmp_path):
    out_json, out_md = tmp_path / "separate.json", tmp_path / "RESULTS.md"
    result = python(
        ROOT / "benchmarks" / "bench_separate.py",
        *("--device", "cpu", "--tiny", "--seconds", "4", "--presets", "l-ts"),
        *("--precisions", "fp32", "--batch-sizes", "2", "--skip-demucs"),
        *("--json", out_json, "--markdown", out_md),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["model"], r["status"], r["windows"]) for r in rows] == [("L-TS", "ok", 13)]
    assert rows[0]["wall_s"] > 0
    assert "| L-TS | fp32 | 2 | 0.5 | portable |" in out_md.read_text()
    assert "Mamba-2 backend: portable" in result.stdout
