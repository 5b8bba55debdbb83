"""``stemsplit batch --ray``: a batch on a Ray cluster keeps a plain batch's promises.

One local Ray cluster (2 CPUs, its files in a temporary folder of its own) serves the module; the
command joins it (``--ray-address auto`` finds it initialised in this process) and leaves it running.
One test starts and stops a cluster of its own, as ``--ray`` with no address does. The workers are
separate processes, so they run the bundled demo model (the stand-in network is registered in this
process only), on songs of a window each. FLAC, because a float WAV's PEAK chunk carries the time
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
from helpers import ROOT, cli, files_under, python, song

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from stemsplit.batch import STATE_FOLDER, song_slot  # noqa: E402
from stemsplit.output import OutputOptions, SongSource, plan_outputs  # noqa: E402

SONGS = {"a.wav": 0.6, "album/c.wav": 0.8, "album/d.wav": 2.5}
DAMAGED = "damaged.flac"
# One 3 s window a song (the demo network's time goes to its calls more than to their length)
DEMO = ["--model", "demo", "--device", "cpu", "--window", "3", "--hop", "3", "--format", "flac", "-q"]
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
    """The songs, and a FLAC damaged in its middle: it probes well, and fails in the worker decoding it."""
    folder = tmp_path_factory.mktemp("music")
    for name, seconds in SONGS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        song(folder / name, seconds=seconds)
    song(folder / DAMAGED, seconds=2.0, fmt="FLAC", subtype="PCM_16")
    data = bytearray((folder / DAMAGED).read_bytes())
    data[len(data) // 3 : len(data) // 3 + 2000] = bytes(range(256)) * 7 + bytes(208)
    (folder / DAMAGED).write_bytes(bytes(data))
    return folder


@pytest.fixture(scope="module")
def plain(music, tmp_path_factory):
    """The same batch, run plainly: what every --ray run must give byte for byte."""
    out = tmp_path_factory.mktemp("plain") / "stems"
    cli("batch", music, "-o", out, *DEMO, check=1)  # 1: the damaged song
    return out


def subset(music: Path, folder: Path, names: list[str]) -> Path:
    """Some of the songs, at the same places under ``folder``."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(music / name, folder / name)
    return folder


def stems(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in files_under(out, state=False)}


def expected_files() -> list[str]:
    return sorted(f"{name.rsplit('.', 1)[0]}/{stem}" for name in SONGS for stem in STEMS)


def song_lines(report: Path) -> list[dict]:
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert lines[-1]["record"] == "summary"
    return [line for line in lines if line["record"] == "song"]


@pytest.mark.slow
def test_ray_without_an_address_starts_and_stops_a_local_cluster(music, plain, tmp_path):
    # First in the module: the module's cluster starts with the first test that uses it.
    assert not ray.is_initialized()
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
    out = tmp_path / "stems"
    result = cli("batch", music, "-o", out, *DEMO, "--ray", "--workers", "2", env=env)
    assert result.returncode == 1, result.stderr  # the damaged song
    assert result.stderr.count("\n") == 1 and DAMAGED in result.stderr  # its error, and nothing of Ray's
    assert stems(out) == stems(plain)
    assert not ray.is_initialized()
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_ray_batch_is_a_plain_batch_and_reruns_skip_every_song(cluster, music, plain, tmp_path):
    out, report = tmp_path / "stems", tmp_path / "run.jsonl"
    result = cli("batch", music, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report)
    assert result.returncode == 1  # the damaged song
    assert sorted(stems(out)) == expected_files()
    assert stems(out) == stems(plain)  # byte for byte
    lines = {line["key"]: line for line in song_lines(report)}
    assert sorted(lines) == sorted([*SONGS, DAMAGED])  # each song once
    assert [lines[name]["status"] for name in SONGS] == ["done"] * len(SONGS)
    assert all(line["worker"].startswith("SongWorker-") and line["host"] for line in lines.values())
    assert all(line["pid"] != os.getpid() and line["attempts"] == 1 for line in lines.values())
    # the damaged song: failed in a worker, for its own reason: reported once, never retried
    assert lines[DAMAGED]["status"] == "failed" and "damaged at" in lines[DAMAGED]["error"]
    assert result.stderr.count(DAMAGED) == 1, result.stderr
    summary = json.loads(report.read_text().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["pid"]) == (len(SONGS), 1, os.getpid())

    # Rerun, on Ray and plainly: every song is done, with the manifests a plain batch writes.
    before = {name: os.stat(out / name).st_mtime_ns for name in files_under(out, state=False)}
    cli("batch", music, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report, check=1)
    cli("batch", music, "-o", out, *DEMO, "--report", report, check=1)
    lines = [line for line in song_lines(report)[len(SONGS) + 1 :] if line["key"] != DAMAGED]
    assert [line["status"] for line in lines] == ["skipped"] * 2 * len(SONGS)
    assert {name: os.stat(out / name).st_mtime_ns for name in files_under(out, state=False)} == before
    assert not list((out / STATE_FOLDER / "claims").glob("*.claim"))


def claim_of(music: Path, out: Path, song_name: str) -> Path:
    """The claim file of the song at ``song_name`` under ``music``, while it is being separated."""
    folder = song_name.rpartition("/")[0]
    source = SongSource(music / song_name, folder)
    [outputs] = plan_outputs([source], out, ["{stem}"], OutputOptions(fmt="flac"))
    return out / STATE_FOLDER / "claims" / f"{song_slot(outputs)}.claim"


def kill_worker_of(music: Path, out: Path, song_name: str, killed: list) -> None:
    """Kill (SIGKILL) the worker that claims ``song_name`` once it has: its pid is in the song's claim."""
    claim = claim_of(music, out, song_name)
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
    folder = subset(music, tmp_path / "music", ["a.wav", "album/d.wav"])
    out, report = tmp_path / "stems", tmp_path / "run.jsonl"
    killed: list = []
    killer = threading.Thread(target=kill_worker_of, args=(folder, out, "album/d.wav", killed), daemon=True)
    killer.start()
    cli("batch", folder, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report, check=0)
    killer.join()
    assert killed, "no worker was killed"
    expected = {name: data for name, data in stems(plain).items() if name.startswith(("a/", "album/d/"))}
    assert stems(out) == expected  # every song, whole, as a plain run makes it
    assert [f for f in files_under(out) if Path(f).name.startswith(".stemsplit-")] == []  # swept
    lines = {line["key"]: line for line in song_lines(report)}
    assert sorted(lines) == ["a.wav", "album/d.wav"] and {line["status"] for line in lines.values()} == {
        "done"
    }
    assert lines["album/d.wav"]["attempts"] == 2 and lines["album/d.wav"]["pid"] != killed[0]


def test_ctrl_c_stops_the_workers_and_leaves_nothing_half_written(cluster, music, tmp_path):
    folder = subset(music, tmp_path / "music", ["a.wav", "album/d.wav"])
    out, report = tmp_path / "stems", tmp_path / "run.jsonl"
    stopped: list = []

    def interrupt_when_claimed() -> None:
        claim = claim_of(folder, out, "album/d.wav")
        deadline = time.monotonic() + 120
        while not claim.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped.append(claim.exists())
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    thread = threading.Thread(target=interrupt_when_claimed, daemon=True)
    thread.start()
    result = cli("batch", folder, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--report", report)
    thread.join()
    assert stopped == [True]
    assert result.returncode == 130, result.stderr
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    for name in ["a.wav", "album/d.wav"]:  # each song has all its stems or none; the one in flight
        track = out / name.rsplit(".", 1)[0]  # too: none, or all if its worker committed it before the
        assert files_under(track) in ([], STEMS), files_under(track)  # cancel reached it (under load)
    leftovers = [f for f in files_under(out) if Path(f).name.startswith(".stemsplit-")]
    assert leftovers == []  # no temporaries, no journal
    assert not list((out / STATE_FOLDER / "claims").glob("*.claim"))  # the workers let go of their songs
    assert json.loads(report.read_text().splitlines()[-1])["interrupted"] is True


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
    modules = "stemsplit.cli, stemsplit.cli.separate, stemsplit.cli.ray_batch"
    code = f"import sys\nimport {modules}\nprint('ray' in sys.modules)"
    result = python("-c", code, timeout=60)
    assert result.stdout.split() == ["False"], result.stdout + result.stderr
    # and nothing but the --ray module names it at all (the engine, weights, output: never)
    naming = [p.name for p in (ROOT / "src" / "stemsplit").rglob("*.py") if "import ray" in p.read_text()]
    assert naming == ["ray_batch.py"]


@pytest.mark.slow
def test_songs_batched_together_get_a_plain_batchs_stems(cluster, music, plain, tmp_path):
    import numpy as np
    import soundfile as sf

    out = tmp_path / "stems"
    cli("batch", music, "-o", out, *DEMO, "--ray", "--ray-address", "auto", "--songs-per-batch", "3", check=1)
    assert sorted(stems(out)) == expected_files()
    for name in expected_files():  # the same up to the rounding of batched arithmetic (and of 24 bits)
        ours, theirs = sf.read(out / name)[0], sf.read(plain / name)[0]
        assert np.abs(ours - theirs).max() < 1e-4, name


@pytest.mark.parametrize(
    "flags, cluster, device, songs, expected",
    [
        ({}, {"CPU": 16}, "auto", 100, (16, 1, 0)),  # a core each
        ({}, {"CPU": 16, "GPU": 4}, "auto", 100, (4, 1, 1)),  # a GPU each
        ({}, {"CPU": 16, "GPU": 4}, "cpu", 100, (16, 1, 0)),
        ({"gpus_per_worker": 0.5}, {"CPU": 16, "GPU": 4}, "auto", 100, (8, 1, 0.5)),
        ({"cpus_per_worker": 4}, {"CPU": 16}, "auto", 100, (4, 4, 0)),
        ({"workers": 3}, {"CPU": 16}, "auto", 100, (3, 1, 0)),
        ({}, {"CPU": 16}, "auto", 5, (5, 1, 0)),  # never more workers than songs
        ({"songs_per_batch": 4}, {"CPU": 16}, "auto", 10, (3, 1, 0)),  # ... than songs to fill them
    ],
)
def test_workers_fit_the_cluster(flags, cluster, device, songs, expected):
    from stemsplit.cli.ray_batch import RayOptions

    keys = ("workers", "cpus_per_worker", "gpus_per_worker", "songs_per_batch")
    options = RayOptions.checked(None, *(flags.get(key) for key in keys), device)
    assert options.resolved(cluster, device, songs) == expected


def test_a_worker_larger_than_the_cluster_is_a_usage_error(cluster, music, tmp_path):
    result = cli("batch", music, "-o", tmp_path / "stems", *DEMO, "--ray", "--ray-address", "auto",
                 "--gpus-per-worker", "1", "--device", "auto")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "stemsplit: error: --gpus-per-worker: 1 a worker, and the Ray cluster has 0 GPUs in all"
    )
    assert files_under(tmp_path / "stems") == []


def test_a_song_another_process_holds_is_waited_for_as_a_plain_batch_waits(cluster, music, plain, tmp_path):
    """A song another live process has claimed (a plain batch into the same folder, say) is asked for
    again until its holder lets it go, then separated: exit 0 means every song is done, as without Ray."""
    from stemsplit.batch import process_space
    from stemsplit.files import host_tag

    folder, out = subset(music, tmp_path / "music", ["a.wav"]), tmp_path / "stems"
    claim = claim_of(folder, out, "a.wav")
    claim.parent.mkdir(parents=True)
    holder = {"host": host_tag(), "space": process_space(), "hostname": "here", "pid": os.getpid()}
    claim.write_text(json.dumps({**holder, "token": "the-other-run"}))  # this live process holds it
    # ...and lets it go, undone, after a while: long after a worker has started and first looked (a
    # worker took over 8 s to start on a loaded machine, and found the song free)
    threading.Timer(30.0, claim.unlink).start()
    quiet = [flag for flag in DEMO if flag != "-q"]
    result = cli("batch", folder, "-o", out, *quiet, "--ray", "--ray-address", "auto")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("waiting for it") == 1, result.stderr  # said once, not at every look
    assert f"being separated by process {os.getpid()} on here" in result.stderr
    assert stems(out) == {name: data for name, data in stems(plain).items() if name.startswith("a/")}
