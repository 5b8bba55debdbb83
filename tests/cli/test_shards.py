"""Static shards for job arrays (``batch --shard I/N``), the run report (``--report``), and the Slurm
array script and Kubernetes Indexed Job manifest of docs/scale-out.md, run as far as they can be here.

Everything runs the stand-in network (``stub_checkpoint``) in this process (``cli``): which songs run
where is the point, not the network (a run of the demo model costs seconds of warm-up each).
"""

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from helpers import (
    FAST,
    FOUR_STEMS,
    ROOT,
    cli,
    files_under,
    json_events,
    read_report,
    song,
    stemsplit_without_torch,
)

from stemsplit.batch import STATE_FOLDER, shard_of
from stemsplit.files import host_tag

SONGS = ["a.wav", "b.wav", "c.wav", "d.wav", "album/e.wav", "album/f.wav", "album/disc 2/g.wav"]


def catalogue(folder: Path, names=SONGS, seconds: float = 0.3) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        song(folder / name, seconds=seconds)
    return folder


def stems_of(key: str) -> list[str]:
    """The stems batch writes for the song at ``key`` under the music folder."""
    return [f"{key.rsplit('.', 1)[0]}/{stem}" for stem in FOUR_STEMS]


# --- which songs a shard takes ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0/4", "5/4", "a/b", "1/0", "-1/4", "3", "1/4/2", ""])
def test_bad_shards_are_usage_errors(tmp_path, text):
    catalogue(tmp_path / "music", ["a.wav"])
    result = cli("batch", tmp_path / "music", "-o", tmp_path / "out", "--shard", text)
    assert result.returncode == 2 and "--shard" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_shard_on_files_is_refused_before_torch(tmp_path):
    """separate has no claims nor manifests: a resized array would separate its files twice."""
    catalogue(tmp_path, ["a.wav"])
    result = stemsplit_without_torch(tmp_path / "a.wav", "-o", tmp_path / "out", "--shard", "1/2")
    assert result.stdout.split() == ["2", "False"] and "use stemsplit batch FOLDER" in result.stderr
    result = stemsplit_without_torch("batch", tmp_path, "-o", tmp_path / "out", "--shard", "9/8")
    assert result.stdout.split() == ["2", "False"] and "--shard: 9/8: I must be 1 to 8" in result.stderr


def test_shards_separate_every_song_once_and_overlapping_shards_never_twice(tmp_path, stub_checkpoint):
    music, out = catalogue(tmp_path / "music"), tmp_path / "out"
    m = ["--model", stub_checkpoint, *FAST]
    done: list[str] = []
    for i in range(1, 5):
        result = cli(
            "batch", music, "-o", out, *m, "--shard", f"{i}/4", "--report", tmp_path / f"4-{i}.jsonl"
        )
        assert result.returncode == 0, result.stderr
        lines, (summary,) = read_report(tmp_path / f"4-{i}.jsonl")
        assert all(line["status"] == "done" and line["shard"] == f"{i}/4" for line in lines)
        assert f"shard {i}/4: {len(lines)} of {len(SONGS)} songs" in result.stderr
        assert summary["done"] == len(lines)
        done += [line["key"] for line in lines]
    assert sorted(done) == sorted(SONGS)
    assert files_under(out, state=False) == sorted(stem for key in SONGS for stem in stems_of(key))

    # The array resized to 5: every share overlaps the old ones, and nothing is separated again...
    for i in range(1, 6):
        cli("batch", music, "-o", out, *m, "--shard", f"{i}/5", "--report", tmp_path / "5.jsonl", check=0)
    lines, summaries = read_report(tmp_path / "5.jsonl")
    assert sorted(line["key"] for line in lines) == sorted(SONGS) and len(summaries) == 5
    assert {line["status"] for line in lines} == {"skipped"}

    # ... and a song another live process is separating (its claim, with the settings of this run) is
    # left to it: claims, not shards, decide who does a song. The run waits for it (exit 0 means every
    # song is done), and ends when that process has committed it.
    manifest = next((out / STATE_FOLDER / "done").iterdir())
    record, committed = json.loads(manifest.read_text()), manifest.read_bytes()
    held = Path(record["source"]).relative_to(music.resolve()).as_posix()
    stems = {out / stem: (out / stem).read_bytes() for stem in record["outputs"].values()}
    for stem in stems:  # as if that process had not got to commit it yet
        stem.unlink()
    manifest.unlink()
    claim = hold_claim(out, music / held, held, record["settings"], pid=os.getppid())

    def other_process_commits():
        for stem, data in stems.items():
            stem.write_bytes(data)
        manifest.write_bytes(committed)  # (its identity: these very stems, rewritten, as the bytes say)
        claim.unlink()

    threading.Timer(1.0, other_process_commits).start()
    share = f"{shard_for(held, 5)}/5"
    result = cli(
        "batch",
        music,
        "-o",
        out,
        *m,
        "--shard",
        share,
        "--report",
        tmp_path / "held.jsonl",
        "--json",
        check=0,
    )
    (waiting,) = [e for e in json_events(result) if e["event"] == "waiting"]
    assert f"process {os.getppid()}" in waiting["holder"] and waiting["source"].endswith(held)
    lines, _ = read_report(tmp_path / "held.jsonl")
    (line,) = [line for line in lines if line["key"] == held]
    assert line["status"] == "skipped" and "done" in line["reason"]
    assert not [e for e in json_events(result) if e["event"] == "result"]


def claim_data(claim) -> dict:
    """What ``claim`` writes into its file (its host, process space, pid, token, settings)."""
    from stemsplit.batch import process_space

    return {"host": host_tag(), "space": process_space(), "pid": os.getpid(), "token": claim.token,
            "settings": claim.settings}  # fmt: skip


def hold_claim(out: Path, path: Path, key: str, settings: dict, pid: int) -> Path:
    """Claim the song at ``path`` (``key`` under the music folder) as process ``pid`` of this host."""
    from stemsplit.batch import Claim
    from stemsplit.output.plan import SongOutputs, SongSource, track_name

    folder = key.rpartition("/")[0]
    claim = Claim(out, SongOutputs(SongSource(path, folder), track_name(path), out), settings=settings)
    assert claim.acquire()
    claim.release()  # (its heartbeat: the claim is now pid's)
    claim.path.write_text(json.dumps({**claim_data(claim), "pid": pid, "host": host_tag()}))
    return claim.path


def shard_for(key: str, count: int) -> int:
    """The share of ``count`` the song at ``key`` (under the music folder) belongs to."""
    from stemsplit.output import SongSource

    folder, _, name = key.rpartition("/")
    return shard_of(SongSource(Path(name), folder), count)


def test_torchrun_ranks_divide_the_share(tmp_path, stub_checkpoint):
    music = catalogue(tmp_path / "music")
    share = [key for key in SONGS if shard_for(key, 2) == 1]  # in the walk's order
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0"}
    m = ["--model", stub_checkpoint, *FAST]
    result = cli("batch", music, "-o", tmp_path / "out", *m, "--shard", "1/2", "--json", env=env, check=0)
    (event,) = [e for e in json_events(result) if e["event"] == "shard"]
    assert event == {"event": "shard", "shard": 1, "of": 2, "songs": len(share[1::2]), "found": len(SONGS)}
    assert files_under(tmp_path / "out", state=False) == sorted(
        s for key in share[1::2] for s in stems_of(key)
    )


def test_an_empty_share_is_no_failure(tmp_path, stub_checkpoint):
    music = catalogue(tmp_path / "music", ["a.wav"])
    empty = 3 - shard_for("a.wav", 2)
    report = tmp_path / "run.jsonl"
    result = cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST,
                 "--shard", f"{empty}/2", "--report", report)  # fmt: skip
    assert result.returncode == 0 and f"shard {empty}/2: 0 of 1 songs" in result.stderr
    lines, (summary,) = read_report(report)
    assert lines == [] and summary["songs"] == 0 and summary["shard"] == f"{empty}/2"


# --- the run report -----------------------------------------------------------------------------


def test_report_has_a_line_per_song_and_a_summary(tmp_path, stub_checkpoint):
    music = catalogue(tmp_path / "music", ["a.wav", "album/b.wav"], seconds=0.5)
    (music / "album" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    report, m = tmp_path / "logs" / "run.jsonl", ["--model", stub_checkpoint, *FAST]
    first = cli("batch", music, "-o", tmp_path / "out", *m, "--report", report)
    assert first.returncode == 1  # the broken file failed; the report's folder was made
    lines, (summary,) = read_report(report)
    by_key = {line["key"]: line for line in lines}
    assert sorted(by_key) == ["a.wav", "album/b.wav", "album/broken.wav"]
    broken = by_key["album/broken.wav"]
    assert (
        broken["status"] == "failed" and "not an audio file" in broken["error"] and broken["outputs"] is None
    )
    fingerprint = json.loads(next((tmp_path / "out" / STATE_FOLDER / "done").iterdir()).read_text())
    for key in ("a.wav", "album/b.wav"):
        line = by_key[key]
        assert line["status"] == "done" and line["error"] is None and line["source"] == str(music / key)
        assert sorted(line["outputs"]) == sorted(s.split(".")[0] for s in FOUR_STEMS)
        assert all(Path(p).is_file() for p in line["outputs"].values())
        assert line["audio_seconds"] == 0.5 and line["seconds"] > 0
        assert line["real_time_factor"] == pytest.approx(line["seconds"] / 0.5, abs=2e-3)  # (rounded)
        assert line["model"] == fingerprint["settings"]["model"]
        assert line["host"] == socket.gethostname() and line["pid"] == os.getpid() and line["shard"] is None
    assert (summary["songs"], summary["done"], summary["failed"], summary["skipped"]) == (3, 2, 1, 0)
    assert summary["audio_hours"] == pytest.approx(1.0 / 3600, rel=1e-3) and not summary["interrupted"]
    # seconds is rounded to the millisecond: a stub run of ~40 ms moves throughput by over 1%
    seconds = summary["seconds"]
    assert 1.0 / (seconds + 5e-4) - 1e-4 <= summary["throughput"] <= 1.0 / max(seconds - 5e-4, 1e-9) + 1e-4

    # An existing report is appended to; songs done earlier are skipped, with their outputs.
    cli("batch", music, "-o", tmp_path / "out", *m, "--report", report)
    lines, summaries = read_report(report)
    again = {line["key"]: line for line in lines[3:]}
    assert again["a.wav"]["status"] == "skipped" and "done earlier" in again["a.wav"]["reason"]
    assert again["a.wav"]["outputs"] == by_key["a.wav"]["outputs"]
    assert again["a.wav"]["audio_seconds"] == 0.5 and again["a.wav"]["real_time_factor"] is None
    assert [(s["done"], s["skipped"], s["failed"], s["audio_hours"]) for s in summaries][1] == (0, 2, 1, 0)


def test_report_of_plain_separate(tmp_path, stub_checkpoint):
    catalogue(tmp_path, ["one.wav"])
    report = tmp_path / "run.jsonl"
    cli(
        tmp_path / "one.wav",
        "-o",
        tmp_path / "out",
        "--model",
        stub_checkpoint,
        *FAST,
        "--report",
        report,
        check=0,
    )
    (line,), (summary,) = read_report(report)
    assert line["status"] == "done" and line["key"] is None and line["model"] == summary["model"]
    assert line["outputs"]["vocals"] == str(tmp_path / "out" / "one" / "vocals.wav")


@pytest.mark.parametrize(
    "where, problem",
    [
        ("folder", "is a folder; name the report's file"),
        ("/proc/run.jsonl", "cannot write into /proc"),
        ("file/run.jsonl", "file is not a folder"),
        ("run.wav", "is named like an audio or model file"),
        ("fifo", "is not a regular file"),
    ],
)
def test_report_path_problems_are_usage_errors(tmp_path, stub_checkpoint, where, problem):
    catalogue(tmp_path / "music", ["a.wav"])
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    os.mkfifo(tmp_path / "fifo")
    result = cli("batch", tmp_path / "music", "-o", tmp_path / "out", "--model", stub_checkpoint,
                 "--report", tmp_path / where)  # fmt: skip
    assert result.returncode == 2 and "--report:" in result.stderr and problem in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_report_that_is_an_input_or_the_model_is_refused_before_torch(tmp_path, stub_checkpoint):
    catalogue(tmp_path, ["a.wav"])
    (tmp_path / "notes").write_text("")
    for args, problem in [
        ([tmp_path / "a.wav", tmp_path / "notes", "--report", tmp_path / "notes"], "is the input"),
        ([tmp_path / "a.wav", "--model", stub_checkpoint, "--report", stub_checkpoint], "named like"),
    ]:
        result = stemsplit_without_torch(*args, "-o", tmp_path / "out")
        assert result.stdout.split() == ["2", "False"] and problem in result.stderr, result.stderr
    assert (tmp_path / "notes").read_text() == ""


def test_an_interrupted_run_still_ends_its_report(tmp_path, stub_checkpoint, monkeypatch):
    from stemsplit.separate import Separator

    music = catalogue(tmp_path / "music", ["a.wav", "b.wav"])
    separate_song, calls = Separator.separate_song, []

    def interrupted_at_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return separate_song(self, *args, **kwargs)

    monkeypatch.setattr(Separator, "separate_song", interrupted_at_the_second)
    report = tmp_path / "run.jsonl"
    result = cli(
        "batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, "--report", report
    )
    assert result.returncode == 130
    (line,), (summary,) = read_report(report)
    assert line["key"] == "a.wav" and line["status"] == "done"
    assert summary["interrupted"] and summary["done"] == 1


# --- the recipes of docs/scale-out.md -------------------------------------------------------------


def capture_commands(tmp_path: Path) -> tuple[dict, Path]:
    """A PATH whose ``stemsplit`` writes its arguments (NUL-separated) into a file named by $CAPTURE:
    a recipe's shell runs its command line as written, and the test then runs that command here."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "stemsplit").write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$CAPTURE"\n')
    (bin_ / "stemsplit").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}, tmp_path / "argv"


def run_captured(argv_file: Path, cwd: Path) -> None:
    argv = argv_file.read_bytes().decode().split("\0")[:-1]
    assert argv[0] == "batch"
    cli(*argv, cwd=cwd, check=0)


def test_slurm_array_script_separates_each_song_once(tmp_path, stub_checkpoint):
    """examples/slurm-array.sh as Slurm runs it (three array tasks, numbered from 0)."""
    catalogue(tmp_path / "music", SONGS[:4], seconds=0.3)
    env, argv_file = capture_commands(tmp_path)
    script = ROOT / "examples" / "slurm-array.sh"
    assert "#SBATCH --array=0-7" in script.read_text()
    for task in range(3):
        slurm = {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "0",
                 "SLURM_ARRAY_TASK_COUNT": "3", "CAPTURE": str(argv_file)}  # fmt: skip
        extra = ["--model", stub_checkpoint, *FAST]
        subprocess.run(
            ["bash", script, "music", "stems", *extra], env={**env, **slurm}, cwd=tmp_path, check=True
        )
        assert f"--shard\0{task + 1}/3\0" in argv_file.read_text()
        run_captured(argv_file, tmp_path)
    reports = sorted((tmp_path / "stemsplit-reports").iterdir())
    assert [p.name for p in reports] == ["77_0.jsonl", "77_1.jsonl", "77_2.jsonl"]
    keys = [line["key"] for report in reports for line in read_report(report)[0]]
    assert sorted(keys) == SONGS[:4]
    assert files_under(tmp_path / "stems", state=False) == sorted(
        s for key in SONGS[:4] for s in stems_of(key)
    )


def test_kubernetes_indexed_job_separates_each_song_once(tmp_path, stub_checkpoint):
    """examples/k8s-indexed-job.yaml's container command, run for each completion index with the
    operator's settings (its env: folders, options) pointed here."""
    manifest = yaml.safe_load((ROOT / "examples" / "k8s-indexed-job.yaml").read_text())
    spec = manifest["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    settings = {item["name"]: item["value"] for item in container["env"]}
    assert spec["completionMode"] == "Indexed" and int(settings["SHARDS"]) == spec["completions"]

    catalogue(tmp_path / "music")
    env, argv_file = capture_commands(tmp_path)
    count = 3  # the job resized to 3 pods
    settings |= {
        "SHARDS": str(count),
        "MUSIC": str(tmp_path / "music"),
        "STEMS": str(tmp_path / "stems"),
        "REPORTS": str(tmp_path / "reports"),
        "STEMSPLIT_OPTIONS": f"--model {stub_checkpoint} {' '.join(FAST)}",
    }
    for index in range(count):
        pod = {**env, **settings, "JOB_COMPLETION_INDEX": str(index), "CAPTURE": str(argv_file)}
        subprocess.run([*container["command"], *container["args"]], env=pod, cwd=tmp_path, check=True)
        run_captured(argv_file, tmp_path)
    reports = sorted((tmp_path / "reports").iterdir())
    assert [p.name for p in reports] == [f"index-{i}.jsonl" for i in range(count)]
    keys = [line["key"] for report in reports for line in read_report(report)[0]]
    assert sorted(keys) == sorted(SONGS)
    assert files_under(tmp_path / "stems", state=False) == sorted(s for key in SONGS for s in stems_of(key))
