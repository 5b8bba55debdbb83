"""Compare ``stemsplit eval`` reports song by song: is a model really better than another?

    python benchmarks/compare_evals.py eval-demo-test.json eval-ft-test.json eval-control-test.json
    python benchmarks/compare_evals.py base.json new.json --metric csdr --json compare.json

The first report is the base. For each other report, on the same test set and
protocol, it prints the per-stem means (the report's own figures) and the
paired difference to the base: each song's mean over the stems minus the
base's for the same song, then the mean of those differences, its standard
error and on how many songs the model is better. Ten songs move a mean by a
few tenths of a dB from one model to another; the paired difference says
whether a gain that size holds song by song (the fine-tuning trials of
``src/stemsplit/checkpoints/demo.md`` are read this way).

Reports of different stems, songs, windows, hops, test sets or metrics are
refused: their figures do not compare. A stem scored NaN for a song (an
all-silent reference, for cSDR) is left out of that song's mean in both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

# The report fields that must agree for two reports' figures to compare.
PROTOCOL = ("window", "hop", "stage", "subset")


class CompareError(Exception):
    """A report that cannot be read or compared; one line naming the file."""


def read_report(path: Path, metric: str) -> dict[str, Any]:
    """A ``stemsplit eval`` report with ``metric`` figures for every track; CompareError if not one."""
    try:
        report = json.loads(path.read_text())
        stems, settings, tracks = report["stems"], report["settings"], report["tracks"]
        scores = {track["name"]: track[metric] for track in tracks}
    except OSError as exc:
        raise CompareError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError):
        raise CompareError(f"{path}: not a stemsplit eval report of a music model") from None
    if not scores or any(set(stems) - set(score) for score in scores.values()):
        raise CompareError(f"{path}: has no {metric} figures (was it made with --no-csdr?)")
    return {"path": path, "stems": list(stems), "settings": settings, "scores": scores}


def check_comparable(base: dict[str, Any], other: dict[str, Any]) -> None:
    """CompareError unless ``other`` scores the same stems and songs as ``base`` by the same protocol."""
    where = f"{other['path']} against {base['path']}"
    if other["stems"] != base["stems"]:
        raise CompareError(f"{where}: stems {other['stems']} differ from {base['stems']}")
    if set(other["scores"]) != set(base["scores"]):
        missing = sorted(set(base["scores"]) ^ set(other["scores"]))
        raise CompareError(f"{where}: not the same songs ({', '.join(missing[:3])} in only one)")
    for key in PROTOCOL:
        if other["settings"].get(key) != base["settings"].get(key):
            mine, theirs = other["settings"].get(key), base["settings"].get(key)
            raise CompareError(f"{where}: {key} {mine} differs from {theirs}: the figures do not compare")


def song_means(report: dict[str, Any], names: list[str]) -> list[float]:
    """Each song's mean over its stems (NaN stems left out)."""
    means = []
    for name in names:
        values = [float(v) for v in report["scores"][name].values() if not math.isnan(float(v))]
        means.append(sum(values) / len(values) if values else math.nan)
    return means


def stem_means(report: dict[str, Any]) -> dict[str, float]:
    """Each stem's mean over songs (NaN songs left out), and their mean as "mean"."""
    means = {}
    for stem in report["stems"]:
        values = [float(s[stem]) for s in report["scores"].values() if not math.isnan(float(s[stem]))]
        means[stem] = sum(values) / len(values) if values else math.nan
    means["mean"] = sum(means.values()) / len(report["stems"])
    return means


def paired(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """The song-by-song difference of ``other`` to ``base``: mean, standard error, songs better."""
    names = sorted(base["scores"])
    pairs = zip(song_means(other, names), song_means(base, names), strict=True)
    diffs = [a - b for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
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
    try:
        base = read_report(args.base, args.metric)
        others = [read_report(path, args.metric) for path in args.others]
        for other in others:
            check_comparable(base, other)
    except CompareError as exc:
        print(f"compare_evals.py: error: {exc}", file=sys.stderr)
        return 2
    stems = base["stems"]
    print(f"{args.metric} in dB, {len(base['scores'])} songs; " + " / ".join(stems) + ": mean")
    rows = []
    for report in (base, *others):
        means = stem_means(report)
        row = {"report": str(report["path"]), "model": report["settings"].get("model"), **means}
        line = f"{report['path']}: " + " / ".join(f"{means[s]:.2f}" for s in stems) + f": {means['mean']:.2f}"
        if report is not base:
            row["paired"] = versus = paired(base, report)
            line += (
                f"  {versus['difference']:+.2f} (±{versus['standard_error']:.2f}), "
                f"better on {versus['better']} of {versus['songs']} songs"
            )
        print(line)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"metric": args.metric, "base": str(args.base), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
