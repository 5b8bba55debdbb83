"""Never replace what is not a regular file (issue 33, part 4): a device, FIFO or socket, or a symbolic link
to one, at any path stemsplit writes is refused in one line saying what it is, with or without --overwrite,
and is left as it was. A symbolic link to a regular file is replaced by the new file; the file it led to
stays."""

from __future__ import annotations

import os
import socket
import stat

import pytest
import soundfile as sf
from helpers import RATE, music, run_cli

from stemsplit.files import special_file, write_atomically


@pytest.fixture
def specials(tmp_path):
    """A FIFO, a listening Unix socket, a link to /dev/null and a link to a regular file."""
    os.mkfifo(tmp_path / "fifo")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    (tmp_path / "null").symlink_to(os.devnull)
    (tmp_path / "real.txt").write_text("mine")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    yield tmp_path
    server.close()


def test_what_each_special_file_is_called(specials):
    assert special_file(specials / "fifo") == "a FIFO (named pipe)"
    assert special_file(specials / "sock") == "a socket"
    assert special_file(specials / "null") == f"a symbolic link to {os.devnull}, a character device"
    assert special_file(os.devnull) == "a character device"
    for plain in ("real.txt", "link.txt", "missing", "."):
        assert special_file(specials / plain) is None


def test_the_last_guard_refuses_and_a_link_to_a_file_is_replaced_not_followed(specials):
    for name in ("fifo", "sock", "null"):
        with pytest.raises(FileExistsError, match="replaces regular files only"):
            write_atomically(specials / name, lambda temp: temp.write_text("x"))
    assert stat.S_ISFIFO(os.stat(specials / "fifo").st_mode) and os.path.islink(specials / "null")
    write_atomically(specials / "link.txt", lambda temp: temp.write_text("new"))
    assert not os.path.islink(specials / "link.txt") and (specials / "link.txt").read_text() == "new"
    assert (specials / "real.txt").read_text() == "mine"
    assert sorted(p.name for p in specials.iterdir()) == ["fifo", "link.txt", "null", "real.txt", "sock"]


@pytest.mark.parametrize("name", ["fifo", "sock", "null"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_stem_on_a_special_file_is_a_usage_error_before_any_work(
    specials, capsys, stub_checkpoint, name, overwrite
):
    sf.write(specials / "song.wav", music(0.3), RATE)
    (specials / "out" / "song").mkdir(parents=True)
    os.replace(specials / name, specials / "out" / "song" / "vocals.wav")
    status, _, err = run_cli(
        capsys, specials / "song.wav", "--model", stub_checkpoint, "-o", specials / "out", *overwrite
    )
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "vocals.wav is a" in err and "stems are written as regular files only" in err
    assert sorted(p.name for p in (specials / "out" / "song").iterdir()) == [
        "vocals.wav"
    ]  # nothing else written
    assert special_file(specials / "out" / "song" / "vocals.wav") is not None


def test_eval_never_writes_its_report_over_dev_null(tmp_path, capsys):
    for overwrite in ([], ["--overwrite"]):
        status, _, err = run_cli(
            capsys, "eval", "--musdb", tmp_path, "-m", "demo", "--json", os.devnull, "--no-csdr", *overwrite
        )
        assert status == 2
        what = f"--json: {os.devnull} is a character device; the report is written as a regular file"
        assert err.strip() == f"stemsplit: error: {what}"
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
