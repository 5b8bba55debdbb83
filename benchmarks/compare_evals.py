"""Compare ``stemsplit eval`` reports song by song: is a model really better than another?

    python benchmarks/compare_evals.py eval-demo-test.json eval-ft-test.json eval-control-test.json
    python benchmarks/compare_evals.py base.json new.json --metric csdr --json compare.json

The first report is the base. For each other report, on the same test set and
protocol, it prints the per-stem figures (the report's own: uSDR means, cSDR
medians over songs) and the paired difference to the base: each song's mean
over the stems minus the base's for the same song, then the mean of those
differences, its standard error and on how many songs the model is better.
Ten songs move a mean by a few tenths of a dB from one model to another; the
paired difference says whether a gain that size holds song by song (the
fine-tuning trials of ``docs/demo-model.md`` are read this way).

Reports of different stems, songs, windows, hops or test sets (the dataset
folder's name and the subset) are refused: their figures do not compare. A
stem not scorable for a song (null in the report: an all-silent reference) is
left out of that song's mean, as ``stemsplit eval`` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from stemsplit.evaluate.scoring import EvalReport
from stemsplit.files import special_file, write_atomically

# The report settings that must agree for two reports' figures to compare.
PROTOCOL = ("window", "hop", "stage", "subset")


class CompareError(Exception):
    """A report that cannot be read or compared; one line naming the file."""


def read_report(path: Path, metric: str) -> EvalReport:
    """A ``stemsplit eval`` report with ``metric`` figures for every track; CompareError if not one."""
    try:
        report = EvalReport.from_json(json.loads(path.read_text()))
    except OSError as exc:
        raise CompareError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CompareError(f"{path}: not a stemsplit eval report of a music model") from None
    if not report.tracks or any(set(report.stems) - set(getattr(t, metric)) for t in report.tracks):
        raise CompareError(f"{path}: has no {metric} figures (was it made with --no-csdr?)")
    return report


def test_set(report: EvalReport) -> tuple[str, Any]:
    """The dataset folder's name (as given on two command lines the same folder may be spelt two
    ways) and the subset."""
    return Path(str(report.settings.get("musdb", ""))).name, report.settings.get("subset")


def check_comparable(base: EvalReport, other: EvalReport, where: str) -> None:
    """CompareError unless ``other`` scores the same stems and songs as ``base`` by the same protocol;
    ``where`` names the two files."""
    if other.stems != base.stems:
        raise CompareError(f"{where}: stems {list(other.stems)} differ from {list(base.stems)}")
    names, base_names = {t.name for t in other.tracks}, {t.name for t in base.tracks}
    if names != base_names:
        missing = sorted(names ^ base_names)
        raise CompareError(f"{where}: not the same songs ({', '.join(missing[:3])} in only one)")
    if test_set(other) != test_set(base):
        raise CompareError(f"{where}: test set {test_set(other)} differs from {test_set(base)}")
    for key in PROTOCOL:
        if other.settings.get(key) != base.settings.get(key):
            mine, theirs = other.settings.get(key), base.settings.get(key)
            raise CompareError(f"{where}: {key} {mine} differs from {theirs}: the figures do not compare")


def paired(base: EvalReport, other: EvalReport, metric: str) -> dict[str, Any]:
    """The song-by-song difference of ``other`` to ``base``: mean, standard error, songs better."""
    mine, theirs = other.track_averages(metric), base.track_averages(metric)
    diffs = [mine[name] - theirs[name] for name in sorted(theirs)]
    diffs = [d for d in diffs if not math.isnan(d)]
    mean = sum(diffs) / len(diffs) if diffs else math.nan
    spread = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) if len(diffs) > 1 else math.nan
    return {
        "difference": mean,
        "standard_error": math.sqrt(spread / len(diffs)) if len(diffs) > 1 else math.nan,
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
        "songs": len(diffs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", type=Path, help="the report the others are compared with")
    parser.add_argument("others", type=Path, nargs="+", help="reports of other models, same test set")
    parser.add_argument("--metric", choices=("usdr", "csdr"), default="usdr")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    paths = [args.base, *args.others]
    try:
        if args.json and any(args.json.resolve() == path.resolve() for path in paths):
            raise CompareError(f"--json {args.json}: is one of the reports compared")
        if args.json and (kind := special_file(args.json)):
            raise CompareError(f"--json {args.json}: is {kind}; the figures are written as a regular file")
        reports = [read_report(path, args.metric) for path in paths]
        for path, report in zip(paths[1:], reports[1:], strict=True):
            check_comparable(reports[0], report, f"{path} against {args.base}")
    except CompareError as exc:
        print(f"compare_evals.py: error: {exc}", file=sys.stderr)
        return 2
    base, stems = reports[0], reports[0].stems
    print(f"{args.metric} in dB, {len(base.tracks)} songs; " + " / ".join(stems) + ": mean")
    rows = []
    for path, report in zip(paths, reports, strict=True):
        figures = getattr(report, args.metric)()  # per stem, and their mean as "avg"
        row = {"report": str(path), "model": report.settings.get("model")}
        row |= {stem: figures[stem] for stem in stems} | {"mean": figures["avg"]}
        line = f"{path}: " + " / ".join(f"{figures[s]:.2f}" for s in stems) + f": {figures['avg']:.2f}"
        if report is not base:
            row["paired"] = versus = paired(base, report, args.metric)
            line += (
                f"  {versus['difference']:+.2f} (±{versus['standard_error']:.2f}), "
                f"better on {versus['better']} of {versus['songs']} songs"
            )
        print(line)
        rows.append(row)
    if args.json:
        text = json.dumps({"metric": args.metric, "base": str(args.base), "rows": rows})
        try:
            write_atomically(args.json, lambda temp: temp.write_text(text))
        except OSError as exc:
            print(f"compare_evals.py: error: --json {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
