"""Any value, one plain line (issue 33, part 6): a value of the wrong kind names its flag in plain words,
a file that is no checkpoint says what it is, a flag that would be ignored is refused, doctor warns
of a cache that cannot be used, the progress bar never shows "None"."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import soundfile as sf
import torch
from helpers import FAST, RATE, cli, music, stemsplit


def one_error_line(result, status: int) -> str:
    assert result.returncode == status, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemsplit: error: "), result.stderr
    return lines[0].removeprefix("stemsplit: error: ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["song.wav", "--shifts", "abc"], "--shifts: 'abc' is not a whole number"),
        (["song.wav", "--shifts", "1e3"], "--shifts: '1e3' is not a whole number"),
        (["song.wav", "--window", "x"], "--window: 'x' is not a number"),
        (["song.wav", "--stream", "0"], "--stream: must be at least 1, not 0"),
        (["song.wav", "--bit-depth", "16bit"], "--bit-depth: '16bit' is not a whole number"),
        (["song.wav", "--format", "ogg"], "--format: 'ogg' is not one of 'wav', 'flac', 'mp3'."),
        (["train", "--musdb", "m", "--epochs", "1.5"], "--epochs: '1.5' is not a whole number"),
        (["train", "--musdb", "m", "--epochs", "0"], "--epochs: must be at least 1, not 0"),
        (["synth", "data", "--songs", "some"], "--songs: 'some' is not a whole number"),
    ],
)
def test_a_value_of_the_wrong_kind_is_one_plain_line(args, message, tmp_path):
    """Before: "Invalid value for '--shifts': Input should be a valid integer, unable to parse string as
    an integer" (pydantic's words, through Typer)."""
    out = ["-o", "out"] if args[0] == "song.wav" else []
    assert one_error_line(cli(*args, *out, cwd=tmp_path), 2) == message
    assert os.listdir(tmp_path) == []


def torch_file(path, cut: float | None = None):
    torch.save({"weight": torch.zeros(64)}, path)
    if cut is not None:
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * cut)])


@pytest.mark.parametrize(
    "content, says",
    [
        (bytes(range(256)) * 4, "not a readable checkpoint: unknown bytes: neither a ZIP archive (PyTorch's "
         "format) nor a pickle"),
        (b"weights go here\n", "not a readable checkpoint: a text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n",
         "not a readable checkpoint: a Git LFS pointer, not the weights (run git lfs pull)"),
        (b"<!DOCTYPE html>\n<html><body>Not found</body></html>",
         "not a readable checkpoint: an HTML page (a download that got a web page instead of the file?)"),
        (b"", "not a readable checkpoint: the file is empty"),
        ("cut", "not a readable checkpoint (damaged or cut short: PytorchStreamReader failed reading zip "
         "archive: failed finding central directory)"),
        (pickle.dumps({"a": 1}, protocol=2)[:-4], "not a readable checkpoint (damaged or cut short: the "
         "data ends early)"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("suffix", [".th", ".ckpt"])
def test_a_file_that_is_no_checkpoint_says_what_it_is(content, says, suffix, tmp_path):
    """Before: "not a readable checkpoint (174812789)", or "(Unsupported operand 254)"."""
    sf.write(tmp_path / "song.wav", music(0.3), RATE)
    model = tmp_path / f"model{suffix}"
    if content == "cut":
        torch_file(model, cut=0.5)
    else:
        model.write_bytes(content)
    message = one_error_line(cli(tmp_path / "song.wav", "--model", model, "-o", tmp_path / "out"), 1)
    assert message.startswith(f"{model}: {says}")
    assert not (tmp_path / "out").exists()


def test_clamp_is_refused_where_nothing_clips(tmp_path, stub_checkpoint):
    """Before: --clip-mode clamp with float wav (the default format) was silently ignored: samples beyond
    ±1 stayed."""
    sf.write(tmp_path / "song.wav", 3 * music(0.4), RATE, subtype="FLOAT")  # peaks at 2.1
    song = tmp_path / "song.wav"
    result = cli(song, "-o", tmp_path / "out", "--clip-mode", "clamp", "--model", stub_checkpoint, *FAST)
    assert one_error_line(result, 2) == (
        "--clip-mode: clamp is for integer formats: float wav keeps samples beyond ±1 (nothing clips); to "
        "clamp, choose a bit depth (16, 24 or 32) or flac or mp3"
    )
    assert not (tmp_path / "out").exists()
    # Where it means something, it is done.
    flags = ["--clip-mode", "clamp", "--bit-depth", "16", "--model", stub_checkpoint, *FAST, "-q"]
    cli(song, "-o", tmp_path / "pcm", *flags, check=0)
    loudest = max(abs(sf.read(p)[0]).max() for p in (tmp_path / "pcm" / "song").iterdir())
    assert loudest == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("cache", ["device", "file", "under a file"])
def test_doctor_warns_of_a_cache_that_cannot_be_used(cache, tmp_path):
    """Before: doctor listed STEMSPLIT_CACHE=/dev/null as the model cache without a word; the first
    download failed later."""
    (tmp_path / "file").write_text("")
    path = {"device": "/dev/null", "file": tmp_path / "file", "under a file": tmp_path / "file" / "cache"}[
        cache
    ]
    result = cli("doctor", env={**os.environ, "STEMSPLIT_CACHE": str(path)})
    assert result.returncode == 0
    kind = {
        "device": "is a character device, not a folder",
        "file": "is a file, not a folder",
        "under a file": f"cannot create {path}: {tmp_path / 'file'} is not a folder",
    }[cache]
    assert result.stderr.splitlines() == [
        f"stemsplit: warning: STEMSPLIT_CACHE={path}: {kind}; set STEMSPLIT_CACHE to a writable folder"
    ]
    assert "(unusable: see the warning)" in " ".join(result.stdout.split())  # (a long path is cut short)
    fine = cli("doctor", env={**os.environ, "STEMSPLIT_CACHE": str(tmp_path / "new")})
    assert fine.returncode == 0 and "warning" not in fine.stderr + fine.stdout


def test_the_progress_bar_never_shows_none(tmp_path, tiny_checkpoint):
    """On a terminal, a song's bar shows "0/?" until its windows are counted (before: "0/None"). A fresh
    process: whether stderr is a terminal is settled when stemsplit starts."""
    sf.write(tmp_path / "song.wav", music(0.4), RATE)
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TERM": "xterm", "COLUMNS": "120"}  # rich draws as on a tty
    result = stemsplit(
        tmp_path / "song.wav", "-o", tmp_path / "out", "--model", tiny_checkpoint, *FAST, env=env
    )
    assert result.returncode == 0, result.stderr
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)  # the bar without its colours
    assert "song.wav" in drawn and "0/? windows" in drawn and "None" not in drawn
