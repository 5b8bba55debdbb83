"""Atomic writes: whole files or nothing, with ordinary permissions."""

import os
import time
from pathlib import Path

import pytest
from helpers import dead_pid, tiny_model

from stemsplit.files import (
    host_tag,
    is_temporary,
    sweep_stale_temporaries,
    temporary_sibling,
    write_atomically,
    write_problem,
)
from stemsplit.weights import save_checkpoint


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_write_atomically_replaces_whole_and_keeps_permissions(tmp_path, umask_022):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_atomically(target, lambda temp: temp.write_text("new"))
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["report.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail_half_way(temp):
        temp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(target, fail_half_way)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


def test_temporary_siblings_are_hidden_distinct_and_in_the_same_folder(tmp_path, umask_022):
    a, b = (
        temporary_sibling(tmp_path / "x.wav", ".partial"),
        temporary_sibling(tmp_path / "x.wav", ".partial"),
    )
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(".stemsplit-") and a.name.endswith(".partial") and is_temporary(a)
    assert a.stat().st_mode & 0o777 == 0o644 and a.stat().st_size == 0


def test_temporary_names_stay_short_for_the_longest_legal_name(tmp_path):
    """A 255-byte file name is legal; its temporary must be too (`.name.hex.partial` was not)."""
    longest = tmp_path / ("a" * 251 + ".wav")
    temp = temporary_sibling(longest, ".partial")
    assert len(temp.name) < 64
    longest.write_bytes(b"x")  # the final name itself is fine
    os.replace(temp, longest)


def test_temporaries_of_dead_processes_are_swept(tmp_path):
    """SIGKILL or a power cut leaves temporaries; the next writer in that folder removes them."""
    mine = temporary_sibling(tmp_path / "x.wav", ".partial")  # this process: alive
    pid = dead_pid()
    dead = tmp_path / f".stemsplit-{host_tag()}-{pid}-0123abcd.partial"
    dead.write_bytes(b"half a stem")
    backup = tmp_path / f".stemsplit-{host_tag()}-{pid}-4567abcd.backup"  # a commit cut short by a power cut
    backup.write_bytes(b"the user's old stem")
    journal = tmp_path / f".stemsplit-{host_tag()}-{pid}-89abcdef.journal"  # says where the backup goes back
    journal.write_text("{}")
    foreign_fresh = tmp_path / ".stemsplit-0badc0de-1-0123abcd.partial"
    foreign_old = tmp_path / ".stemsplit-0badc0de-2-0123abcd.partial"
    for path in (foreign_fresh, foreign_old):
        path.write_bytes(b"another host's")
    day_ago = time.time() - 25 * 3600
    os.utime(foreign_old, (day_ago, day_ago))
    users = [tmp_path / ".stemsplit-notes.txt", tmp_path / ".x.wav.1234.partial", tmp_path / "song.wav"]
    for path in users:  # names stemsplit never makes: never touched
        path.write_bytes(b"the user's")
    removed = sweep_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead, foreign_old])
    assert mine.exists() and foreign_fresh.exists() and all(p.exists() for p in users)
    assert backup.read_bytes() == b"the user's old stem"  # never swept: it is the user's file
    assert journal.exists()  # never swept: output.recover_unfinished_commits reads and removes it


def test_exported_checkpoints_are_readable_by_others(tmp_path, umask_022):
    """safetensors alone would create 0600 files; an exported model is meant to be shared."""
    save_checkpoint(tiny_model(), tmp_path / "best.safetensors")
    assert (tmp_path / "best.safetensors").stat().st_mode & 0o777 == 0o644


def test_write_problem_asks_the_folder_and_leaves_nothing(tmp_path):
    (tmp_path / "kept").write_text("the user's")
    assert write_problem(tmp_path) is None
    assert os.listdir(tmp_path) == ["kept"]
    if os.path.isdir("/proc/self"):  # os.access says yes to root here; creating a file says no
        assert write_problem(Path("/proc")) == "it takes no new files"
    assert write_problem(tmp_path / "kept") is not None  # a file is no folder: "not a directory"
