"""Printing can fail; separating must not (docs/guarantees.md, "Printing can fail, separating does not").

A reader that stops early (``| head -1``), a descriptor closed before the start (``>&-``) or a full disk
behind ``>`` (``/dev/full``) cost no stems and leave the exit status the work's. Real pipes and fresh
processes where they are the point; the rest in this process. (A song that changes or goes during a run:
tests/cli/test_songs_that_change.py.)
"""

import json
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import soundfile as sf
from helpers import FAST, FOUR_STEMS, ROOT, cli, files_under, json_events, song

# A fresh process running the console entry point with the stand-in network registered (helpers.StubNet:
# its windows cost nothing, so the process's start-up is the whole cost of a test).
STUB_MAIN = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from helpers import STUB_ARCH, stub_family
from stemsplit.model import families
families.FAMILIES[STUB_ARCH] = stub_family()
from stemsplit.cli import main
main(sys.argv[1:])
"""


def start(args, close=(), **kwargs) -> subprocess.Popen:
    """``stemsplit ARGS`` (see STUB_MAIN) in a fresh process, with the descriptors ``close`` closed and
    SIGPIPE ignored (as Python starts every program: a write to a closed pipe fails with EPIPE)."""

    def prepare():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for fd in close:
            os.close(fd)

    return subprocess.Popen([sys.executable, "-c", STUB_MAIN, *map(str, args)], preexec_fn=prepare, **kwargs)


def stems_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_json_reader_that_stops_after_one_line_costs_no_stems(tmp_path, stub_checkpoint):
    """Before: ``stemsplit batch music --json | head -1`` lost the song's stems ('Broken pipe (batch's
    records)', exit 1). Here stderr is a full disk as well: neither stream may stop the work."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    song(music / "b.wav")
    args = ["batch", music, "-o", out, "--model", stub_checkpoint, *FAST, "--json"]
    with open("/dev/full", "w") as full:
        proc = start(args, stdout=subprocess.PIPE, stderr=full)
        first = proc.stdout.readline()
        proc.stdout.close()  # `head -1`: one line read, then the reader is gone
        assert proc.wait(timeout=300) == 0
    assert json.loads(first)["event"] in ("song", "ensemble", "shard")
    assert stems_of(out / "a") == FOUR_STEMS and stems_of(out / "b") == FOUR_STEMS
    again = cli(*args, check=0)  # both were recorded as done: the manifests were written too
    assert [e["event"] for e in json_events(again)].count("skipped") == 2


def test_stderr_and_stdout_on_one_pipe_read_for_one_line(tmp_path, stub_file):
    """Before: ``stemsplit a.wav b.wav 2>&1 | head -1`` lost the stems and exited 120 (the interpreter's
    last flush failing), a status documented nowhere."""
    song(tmp_path / "a.wav")
    song(tmp_path / "b.wav")
    args = [tmp_path / "a.wav", tmp_path / "b.wav", "-o", tmp_path / "out", "--model", stub_file, *FAST]
    proc = start(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    assert stems_of(tmp_path / "out" / "a") == FOUR_STEMS and stems_of(tmp_path / "out" / "b") == FOUR_STEMS


def test_closed_descriptors_are_no_outputs_and_a_failure_still_says_1(tmp_path, stub_file):
    """``>&- 2>&-``: stdout and stderr closed before the start. The run separates what it can, its status
    says a song failed (1), and nothing printed lands in a stem. (A guard: Python already leaves a stream
    closed at start-up None; the /dev/null put on descriptors 1 and 2 keeps what C libraries write to
    them out of the files that would otherwise take those numbers.)"""
    song(tmp_path / "a.wav", seconds=2.0)
    args = [tmp_path / "a.wav", tmp_path / "missing.wav", "-o", tmp_path / "out", "--model", stub_file]
    proc = start([*args, *FAST, "--json"], close=(1, 2))
    assert proc.wait(timeout=300) == 1
    assert stems_of(tmp_path / "out" / "a") == FOUR_STEMS
    for stem in FOUR_STEMS:  # every stem is whole audio: nothing printed into it
        assert sf.info(str(tmp_path / "out" / "a" / stem)).frames == 2 * 44100
        assert b'"event"' not in (tmp_path / "out" / "a" / stem).read_bytes()


class BrokenPipe:
    """A stream whose reader has gone: every write and flush fails as a closed pipe's does."""

    encoding, errors = "utf-8", "strict"

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False

    def fileno(self):
        raise OSError("no descriptor")


@pytest.mark.parametrize("gone", ["stdout", "stderr", "both"])
def test_streams_that_fail_from_the_start_stop_printing_not_the_run(tmp_path, stub_checkpoint, gone):
    """In this process: stdout, stderr or both fail at every write (no descriptor to point at /dev/null);
    the run is the same, exit 0, and the error of a failing song still gives exit 1."""
    from stemsplit.cli import main

    song(tmp_path / "a.wav")
    args = ["batch", tmp_path, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, "--json"]
    out = BrokenPipe() if gone in ("stdout", "both") else open(os.devnull, "w")  # noqa: SIM115
    err = BrokenPipe() if gone in ("stderr", "both") else open(os.devnull, "w")  # noqa: SIM115
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    assert exit_.value.code == 0
    assert files_under(tmp_path / "out", state=False) == [f"a/{s}" for s in FOUR_STEMS]
    (tmp_path / "b.wav").write_bytes(b"not audio")
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    assert exit_.value.code == 1
