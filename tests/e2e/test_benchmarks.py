"""The benchmark scripts run end to end on small real inputs and report what they measure."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, cli, python, write_track
from safetensors import safe_open
from safetensors.torch import save_file

from stemsplit.card import MUSIC_STEMS as STEMS


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


def test_bench_songs_per_batch_smoke(tiny_checkpoint):
    """Cross-song batching's benchmark: K songs' windows share calls, and the stems are K = 1's."""
    result = python(
        ROOT / "benchmarks" / "bench_songs_per_batch.py",
        *("--model", tiny_checkpoint, "--songs", "3", "--seconds", "1.5", "--window", "1", "--hop", "0.5"),
        *("--batch-size", "2", "--songs-per-batch", "1", "3"),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row[0].strip() for row in rows] == ["1", "3"]
    per_call = [float(row[4]) for row in rows]
    assert per_call[0] <= 2.0 and per_call[1] > per_call[0]  # one song's batches hold 2 at most
    assert all(float(row[5]) < 1e-4 for row in rows)
    assert result.stdout.startswith("machine: ")  # the figures name the machine they were measured on


def test_teacher_labels_counts_the_crops_where_a_stem_is_truly_absent(tmp_path):
    """A 12 s song whose vocals stop after 6 s: crops (1.5 s, inside 6 s salient segments every 3 s)
    lie wholly in the silent half about 4 times in 9 (5 of the 12 drawn); the other stems never stop, and
    none plays alone. 12 crops, not 36: the demo labels each crop through three 3 s windows below, and 36
    took 50 s of CI's time."""
    crops = 12
    rate = 44100
    t = np.arange(12 * rate) / rate
    rng = np.random.default_rng(0)
    tone = lambda f: 0.1 * np.sin(2 * np.pi * f * t)  # noqa: E731
    stems = {
        "drums": 0.05 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 2 * t) > 0),
        "bass": tone(55.0),
        "other": tone(330.0),
        "vocals": tone(440.0) * (t < 6),
    }
    stereo = {name: np.stack([mono, mono], 1) for name, mono in stems.items()}
    write_track(tmp_path / "songs" / "train" / "song", stereo, rate)
    result = python(
        ROOT / "benchmarks" / "teacher_labels.py",
        *("--musdb", tmp_path / "songs", "--model", "demo", "--crops-per-song", crops),
        *("--clean-db", "30", "20", "--json", tmp_path / "clean.json"),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("machine: ")
    figures = json.loads((tmp_path / "clean.json").read_text())
    assert figures["crops"] == crops and figures["songs"] == 1
    truly = {(r["clean_db"], r["case"], r["stem"]): r["truly"] for r in figures["rows"]}
    for db in (30.0, 20.0):
        assert 0.2 < truly[db, "absent", "vocals"] < 0.7, truly
        assert all(truly[db, "absent", stem] == 0 for stem in ("drums", "bass", "other"))
        assert all(truly[db, "alone", stem] == 0 for stem in stems)
    for row in figures["rows"]:
        assert 0 <= row["called"] <= crops and (row["recall"] is None) == (row["truly"] == 0)
    # The labels as finetune makes them by default: the teacher hears the crop alone.
    assert (figures["teacher_window"], figures["teacher_views"]) == (1.5, 1)
    assert set(figures["label_usdr"]) == {*stems, "mean"} and "label uSDR (dB): drums" in result.stdout

    # Three views of the demo's 3 s window around each crop: the same crops, labelled otherwise.
    views = python(
        ROOT / "benchmarks" / "teacher_labels.py",
        *("--musdb", tmp_path / "songs", "--model", "demo", "--crops-per-song", crops, "--clean-db", "30"),
        *("--teacher-window", "3", "--teacher-views", "3", "--json", tmp_path / "views.json"),
        timeout=300,
    )
    assert views.returncode == 0, views.stdout + views.stderr
    averaged = json.loads((tmp_path / "views.json").read_text())
    assert averaged["teacher_views"] == 3 and averaged["label_usdr"] != figures["label_usdr"]
    assert [r["truly"] for r in averaged["rows"]] == [
        r["truly"] for r in figures["rows"] if r["clean_db"] == 30
    ]


def test_teacher_labels_refuses_songs_the_teacher_cannot_hear(tmp_path):
    """Songs at another rate than the model's would be classified wrongly without a word; too short
    ones gave no crops and a traceback."""
    t = np.arange(8 * 22050) / 22050
    stems = {
        name: np.stack([np.sin(2 * np.pi * f * t)] * 2, 1)
        for name, f in zip(STEMS, (60, 120, 240, 480), strict=True)
    }
    write_track(tmp_path / "slow" / "train" / "song", stems, 22050)
    short = {name: audio[: 2 * 44100] for name, audio in stems.items()}  # 2 s at 44.1 kHz: under 6 s
    write_track(tmp_path / "short" / "train" / "song", short, 44100)
    for folder, message in (
        ("slow", "songs at 22050 Hz, the model at 44100 Hz"),
        ("short", "no song is longer"),
    ):
        result = python(ROOT / "benchmarks" / "teacher_labels.py", "--musdb", tmp_path / folder, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_compare_evals_pairs_two_models_song_by_song(tmp_path):
    """Two real eval reports (the demo, and the demo with its weights nudged) of the same two synth songs:
    the paired difference is the mean over songs of each song's stem mean, recomputed here from the
    reports; a model against itself is 0 on every song; another hop or a file that is no report is refused."""
    songs = tmp_path / "songs"
    cli("synth", songs, *("--songs", "1", "--valid", "0", "--test", "2", "--seconds", "5"), check=0)
    nudged = tmp_path / "nudged.safetensors"
    generator = torch.Generator().manual_seed(0)
    with safe_open(ROOT / "src" / "stemsplit" / "checkpoints" / "demo.safetensors", "pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        noise = {k: 0.05 * w.std() * torch.randn(w.shape, generator=generator) for k, w in weights.items()}
        save_file({k: w + noise[k] if w.numel() > 1 else w for k, w in weights.items()}, nudged, f.metadata())
    reports = {}
    for name, model, hop in (("demo", "demo", "1.5"), ("nudged", nudged, "1.5"), ("hop1", "demo", "1")):
        reports[name] = tmp_path / f"{name}.json"
        protocol = ("--no-csdr", "--window", "3", "--hop", hop, "--device", "cpu")
        cli("eval", "--musdb", songs, "-m", model, *protocol, "--json", reports[name], check=0)

    script = ROOT / "benchmarks" / "compare_evals.py"
    out = tmp_path / "compare.json"
    result = python(script, reports["demo"], reports["nudged"], reports["demo"], "--json", out, check=0)
    rows = json.loads(out.read_text())["rows"]
    base, new = (json.loads(reports[n].read_text()) for n in ("demo", "nudged"))
    mean_of = lambda report, song: np.mean(list(report["tracks"][song]["usdr"].values()))  # noqa: E731
    diffs = [mean_of(new, k) - mean_of(base, k) for k in range(2)]
    assert rows[1]["paired"]["difference"] == pytest.approx(np.mean(diffs))
    assert rows[1]["paired"]["standard_error"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(2))
    assert rows[1]["paired"]["better"] == sum(d > 0 for d in diffs) and abs(np.mean(diffs)) > 1e-3
    assert rows[0]["mean"] == pytest.approx(base["usdr"]["avg"])
    itself = {"difference": 0.0, "standard_error": 0.0, "better": 0, "worse": 0, "songs": 2}
    assert rows[2]["paired"] == itself
    assert f"better on {rows[1]['paired']['better']} of 2 songs" in result.stdout

    refused = python(script, reports["demo"], reports["hop1"], check=2)
    assert refused.stderr.count("\n") == 1 and "hop 1.0 differs from 1.5" in refused.stderr
    (tmp_path / "notes.json").write_text('{"stems": ["drums"]}')
    refused = python(script, reports["demo"], tmp_path / "notes.json", check=2)
    assert f"{tmp_path / 'notes.json'}: not a stemsplit eval report" in refused.stderr
    other_set = json.loads(reports["demo"].read_text())
    other_set["settings"]["musdb"] = str(tmp_path / "other-songs")  # the same song names, another set
    (tmp_path / "other-set.json").write_text(json.dumps(other_set))
    refused = python(script, reports["demo"], tmp_path / "other-set.json", check=2)
    assert "test set ('other-songs', 'test') differs from ('songs', 'test')" in refused.stderr
    refused = python(script, reports["demo"], reports["nudged"], "--json", reports["nudged"], check=2)
    assert "is one of the reports compared" in refused.stderr
    assert json.loads(reports["nudged"].read_text()) == new

    # A stem eval could not score (null: an all-silent reference) is left out of that song's mean.
    new["tracks"][0]["usdr"]["vocals"] = None
    (tmp_path / "silent.json").write_text(json.dumps(new))
    python(script, reports["demo"], tmp_path / "silent.json", "--json", out, check=0)
    first = np.mean([v for v in new["tracks"][0]["usdr"].values() if v is not None]) - mean_of(base, 0)
    paired = json.loads(out.read_text())["rows"][1]["paired"]
    assert paired["difference"] == pytest.approx(np.mean([first, diffs[1]])) and paired["songs"] == 2


def test_bench_ensemble_reports_peak_memory(tmp_path):
    bench = ROOT / "benchmarks" / "bench_ensemble.py"
    result = python(bench, "--minutes", "0.05", "--modes", "ensemble", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    rows = [line.split() for line in lines[2:]]
    assert [row[2] for row in rows] == ["ensemble"]
    assert all(float(row[3]) > 0 for row in rows)  # peak RSS, MB


def test_bench_model_has_a_u_mamba_net_row():
    bench = ROOT / "benchmarks" / "bench_model.py"
    command = [sys.executable, str(bench), "--arch", "u-mamba-net", "--seconds", "0.1", "--repeats", "1"]
    command += ["--threads", "1", "--precisions", "fp32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "window 0.1 s mono 8 kHz" in result.stdout
    row = result.stdout.strip().splitlines()[-1].split()
    assert row[:2] == ["u-mamba-net:paper", "4.4M"] and float(row[3]) > 0  # params, s/window


def test_compare_evals_refuses_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    done = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "compare_evals.py", "a.json", "b.json",
         "--json", tmp_path / "fifo"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "fifo: is a FIFO (named pipe); the figures are written as a regular file"
    )
