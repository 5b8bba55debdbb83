"""The run report (``--report``, ``stemsplit.report.RunReport``): one JSON line per song and a summary,
whole even when processes append to one file at once."""

import os
import shutil
import subprocess

from helpers import ROOT, read_report


def test_report_lines_from_processes_appending_at_once_stay_whole(tmp_path):
    """Four processes, 300 lines of 6 kB each, into one file: every line whole, none lost."""
    report = tmp_path / "run.jsonl"
    code = (
        "import sys; from pathlib import Path; from stemsplit.report import RunReport\n"
        "report = RunReport(Path(sys.argv[1]), {'worker': sys.argv[2]})\n"
        "for k in range(300):\n"
        "    report.song(Path('x' * 6000), 'done', key=str(k), seconds=1.0, audio_seconds=2.0)\n"
        "assert report.summary() is None and report.problem is None\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    workers = [
        subprocess.Popen([shutil.which("python") or "python3", "-c", code, str(report), str(w)], env=env)
        for w in range(4)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0] * 4
    lines, summaries = read_report(report)
    assert len(lines) == 1200 and len(summaries) == 4
    assert sorted((line["worker"], int(line["key"])) for line in lines) == [
        (str(w), k) for w in range(4) for k in range(300)
    ]
