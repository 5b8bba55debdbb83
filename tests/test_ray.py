"""``stemsplit batch --ray``: a batch on a Ray cluster keeps a plain batch's promises.

One local Ray cluster (2 CPUs, its files in a temporary folder of its own) serves the module; the
command joins it (``--ray-address auto`` finds it initialised in this process) and leaves it running.
One test starts and stops a cluster of its own, as ``--ray`` with no address does. The workers are
separate processes, so they run the bundled demo model (the stand-in network is registered in this
process only), on tiny songs with 1 s windows. FLAC, because a float WAV's PEAK chunk carries the time
it was written: two plain runs differ there too.
"""

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers import cli, files_under, python, song

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from stemsplit.batch import STATE_FOLDER, song_slot  # noqa: E402
from stemsplit.output import OutputOptions, SongSource, plan_outputs  # noqa: E402

SONGS = {"a.wav": 0.6, "b.wav": 0.8, "album/c.wav": 0.6, "album/d.wav": 2.5}
DEMO = ["--model", "demo", "--device", "cpu", "--window", "1", "--hop", "0.5", "--format", "flac", "-q"]
STEMS = ["bass.flac", "drums.flac", "other.flac", "vocals.flac"]


@pytest.fixture(scope="module")
def cluster():
    # A short path: Ray's sockets live under it, and a Unix socket's path is at most 107 bytes.
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = saved
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    folder = tmp_path_factory.mktemp("music")
    for name, seconds in SONGS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        song(folder / name, seconds=seconds)
    return folder


@pytest.fixture(scope="module")
def plain(music, tmp_path_factory):
    """The same batch, run plainly: what every --ray run must give byte for byte."""
    out = tmp_path_factory.mktemp("plain") / "stems"
    cli("batch", music, "-o", out, *DEMO, check=0)
    return out


def stems(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in files_under(out, state=False)}


def expected_files() -> list[str]:
    return sorted(f"{name.rsplit('.', 1)[0]}/{stem}" for name in SONGS for stem in STEMS)


def song_lines(report: Path) -> list[dict]:
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert lines[-1]["record"] == "summary"
    return [line for line in lines if line["record"] == "song"]


def test_ray_batch_is_a_plain_batch_and_reruns_skip_every_song(cluster, music, plain, tmp_path):
    out, report = tmp_path / "stems", tmp_path / "run.jsonl"
    cli("batch", music, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report, check=0)
    assert sorted(stems(out)) == expected_files()
    assert stems(out) == stems(plain)  # byte for byte
    lines = song_lines(report)
    assert sorted(line["key"] for line in lines) == sorted(SONGS)  # each song once
    assert {line["status"] for line in lines} == {"done"}
    assert all(line["worker"].startswith("SongWorker-") and line["host"] for line in lines)
    assert all(line["pid"] != os.getpid() and line["attempts"] == 1 for line in lines)
    summary = json.loads(report.read_text().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["pid"]) == (4, 0, os.getpid())

    # Rerun, on Ray and plainly: every song is done, with the manifests a plain batch writes.
    before = {name: os.stat(out / name).st_mtime_ns for name in files_under(out, state=False)}
    cli("batch", music, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report, check=0)
    cli("batch", music, "-o", out, *DEMO, "--report", report, check=0)
    lines = song_lines(report)[len(SONGS) :]
    assert [line["status"] for line in lines] == ["skipped"] * 2 * len(SONGS)
    assert {name: os.stat(out / name).st_mtime_ns for name in files_under(out, state=False)} == before
    assert not (out / STATE_FOLDER / "claims").exists() or not list((out / STATE_FOLDER / "claims").iterdir())


def kill_worker_of(music: Path, out: Path, song_name: str, killed: list) -> None:
    """Kill (SIGKILL) the worker that claims ``song_name`` once it has: its pid is in the song's claim."""
    folder = song_name.rpartition("/")[0]
    [outputs] = plan_outputs(
        [SongSource(music / song_name, folder)], out, ["{stem}"], OutputOptions(fmt="flac")
    )
    claim = out / STATE_FOLDER / "claims" / f"{song_slot(outputs)}.claim"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            pid = json.loads(claim.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.01)
            continue
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        return


def test_a_worker_killed_mid_song_leaves_no_partial_stems_and_another_separates_it(
    cluster, music, plain, tmp_path
):
    out, report = tmp_path / "stems", tmp_path / "run.jsonl"
    killed: list = []
    killer = threading.Thread(target=kill_worker_of, args=(music, out, "album/d.wav", killed), daemon=True)
    killer.start()
    cli("batch", music, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report, check=0)
    killer.join()
    assert killed, "no worker was killed"
    assert stems(out) == stems(plain)  # every song, whole, as a plain run makes it
    assert files_under(out / "album" / "d") == ["bass.flac", "drums.flac", "other.flac", "vocals.flac"]
    lines = {line["key"]: line for line in song_lines(report)}
    assert len(lines) == len(SONGS) and {line["status"] for line in lines.values()} == {"done"}
    assert lines["album/d.wav"]["attempts"] == 2 and lines["album/d.wav"]["pid"] != killed[0]


def test_a_damaged_song_is_reported_once_and_the_others_are_done(cluster, music, tmp_path):
    folder = tmp_path / "music"
    shutil.copytree(music, folder)
    (folder / "damaged.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    out, report = tmp_path / "stems", tmp_path / "run.jsonl"
    result = cli("batch", folder, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report)
    assert result.returncode == 1
    assert result.stderr.count("damaged.wav") == 1, result.stderr
    lines = {line["key"]: line for line in song_lines(report)}
    assert lines["damaged.wav"]["status"] == "failed" and lines["damaged.wav"]["error"]
    assert sorted(k for k, v in lines.items() if v["status"] == "done") == sorted(SONGS)


def test_without_ray_the_flag_is_a_usage_error_before_any_work(tmp_path, music):
    out = tmp_path / "stems"
    code = (
        "import sys\nsys.modules['ray'] = None  # as if it were not installed\n"
        "from stemsplit.cli import main\ntry:\n"
        f"    main(['batch', {str(music)!r}, '-o', {str(out)!r}, '--ray'])\n"
        "except SystemExit as exit:\n    print(exit.code, 'torch' in sys.modules)\n"
    )
    result = python("-c", code, timeout=60)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "pip install 'stemsplit-cli[ray]'" in result.stderr and "--ray" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--workers", "2"], "--workers: goes with --ray"),
        (["--ray", "--workers", "0"], "--workers: 0"),
        (["--ray", "--cpus-per-worker", "0"], "--cpus-per-worker"),
        (["--ray", "--gpus-per-worker", "1", "--device", "cpu"], "--gpus-per-worker"),
        (["--ray", "--songs-per-batch", "0"], "--songs-per-batch"),
    ],
)
def test_bad_ray_flags_are_usage_errors(tmp_path, music, flags, problem):
    result = cli("batch", music, "-o", tmp_path / "stems", *flags)
    assert result.returncode == 2 and problem in result.stderr, result.stderr
    assert not (tmp_path / "stems").exists()


def test_stemsplit_does_not_import_ray():
    modules = "stemsplit.cli, stemsplit.cli_separate, stemsplit.cli_ray, stemsplit.separate"
    code = f"import sys\nimport {modules}\nprint('ray' in sys.modules)"
    result = python("-c", code, timeout=60)
    assert result.stdout.split() == ["False"], result.stdout + result.stderr


@pytest.mark.slow
def test_ray_without_an_address_starts_and_stops_a_local_cluster(music, plain, tmp_path):
    if ray.is_initialized():
        pytest.skip("a cluster is running in this process")
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
    out = tmp_path / "stems"
    result = cli("batch", music, "-o", out, *DEMO, "--ray", "--workers", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert stems(out) == stems(plain)
    assert not ray.is_initialized()
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
