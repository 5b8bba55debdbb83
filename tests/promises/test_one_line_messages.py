"""Errors a user can cause are one line, never a traceback, never read as markup: file names with
markup, control characters or bytes that are not UTF-8, tiny terminals, C libraries' chatter, unexpected
exceptions, NaN (docs/guarantees.md, "Errors are one line")."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    FAST,
    FOUR_STEMS,
    RATE,
    cli,
    files_under,
    json_events,
    song,
    stemsplit,
)


def test_file_names_are_never_read_as_markup(tmp_path, stub_checkpoint):
    """Before: a file named `a[/b].wav` crashed rich."""
    (tmp_path / "a[").mkdir()
    bad = tmp_path / "a[" / "b] [bold]x.wav"  # the path holds "a[/b]": a closing tag to rich
    bad.write_text("not audio")
    result = cli(bad, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "a[/b] [bold]x.wav" in result.stderr


@pytest.mark.parametrize("columns", ["0", "1"])
def test_a_tiny_terminal_width_still_shows_every_message(tmp_path, tiny_checkpoint, columns):
    """Before: COLUMNS=0 (a misconfigured shell) silenced every message, errors included: rich printed
    nothing at width 0."""
    env = {**os.environ, "COLUMNS": columns}
    result = stemsplit(tmp_path / "typo.wav", "-o", tmp_path / "out", "--model", tiny_checkpoint, env=env)
    assert result.returncode == 1
    assert result.stderr == f"stemsplit: error: {tmp_path / 'typo.wav'}: no such file\n"
    listing = stemsplit("models", env=env)
    assert listing.returncode == 0 and "demo" in listing.stdout


def test_control_characters_in_names_are_escaped_not_printed(tmp_path, stub_checkpoint):
    """A newline or an ESC sequence in a file name must not split the error line or reach the terminal."""
    bad = tmp_path / "a\nb \x1b[2J.wav"
    bad.write_text("not audio")
    result = cli(bad, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "\x1b" not in result.stderr
    assert "a\\nb \\x1b[2J.wav" in result.stderr


def test_a_file_name_that_is_not_utf8_is_separated_and_named(tmp_path, stub_checkpoint):
    """Before: 'internal error: UnicodeEncodeError' (soundfile encodes names strictly), and batch stopped
    there, leaving the folder's other songs undone."""
    music = tmp_path / "music"
    music.mkdir()
    odd = os.fsdecode(b"Caf\xe9 (latin-1).wav")  # Python holds the byte 0xe9 as the surrogate \udce9
    song(music / "ok.wav")
    shutil.copy(music / "ok.wav", music / odd)
    result = cli(music / odd, "-o", tmp_path / "one", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "one") == [f"{Path(odd).stem}/{s}" for s in FOUR_STEMS]
    assert "Caf\\udce9 (latin-1).wav: done" in result.stderr  # escaped, as other unprintable names
    result = cli("batch", music, "-o", tmp_path / "all", "--model", stub_checkpoint, *FAST, "--json")
    assert result.returncode == 0, result.stderr
    done = sorted(e["source"] for e in json_events(result) if e["event"] == "result")
    assert done == sorted(str(music / name) for name in (odd, "ok.wav"))
    for name in (Path(odd).stem, "ok"):
        assert sorted(p.name for p in (tmp_path / "all" / name).iterdir()) == FOUR_STEMS


def test_messages_with_brackets_print_as_they_are(capsys):
    """Before: pip install 'stemsplit[train]' printed as pip install 'stemsplit' (rich ate the tag)."""
    from stemsplit.cli.common import error_line

    error_line("the musdb package is missing: pip install 'stemsplit[train]' [bold]x[/bold]")
    assert capsys.readouterr().err == (
        "stemsplit: error: the musdb package is missing: pip install 'stemsplit[train]' [bold]x[/bold]\n"
    )


def test_c_library_chatter_does_not_reach_the_user(tmp_path, tiny_checkpoint):
    """libmpg123 prints 'Illegal Audio-MPEG-Header' and the like straight to fd 2."""
    mp3 = tmp_path / "noise.mp3"
    sf.write(mp3, np.random.default_rng(0).uniform(-0.5, 0.5, (RATE * 2, 2)), RATE, format="MP3")
    data = bytearray(mp3.read_bytes())
    data[4000:9000] = os.urandom(5000)  # garbage frames in the middle
    mp3.write_bytes(bytes(data))
    result = stemsplit(mp3, "-o", tmp_path / "out", "--model", tiny_checkpoint, *FAST, "--quiet")
    assert "MPEG" not in result.stderr and "Duh" not in result.stderr, result.stderr


def test_an_unexpected_exception_is_one_line_and_exit_70(tmp_path, monkeypatch, capsys):
    """A bug (here: one planted in the engine) is one line asking for a report, not a traceback."""
    from stemsplit import cli
    from stemsplit.cli import separate as cli_separate

    def bug(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(cli_separate, "run_separation", bug)
    monkeypatch.setattr(cli.audio, "redirect_native_stderr", lambda: None)  # keep pytest's stderr
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 70
    assert err.strip() == (
        "stemsplit: error: internal error: ZeroDivisionError: planted (run again with --debug and report it)"
    )
    with pytest.raises(ZeroDivisionError):
        cli.main([str(tmp_path / "x.wav"), "--debug"])


def test_a_float_file_of_huge_samples_is_refused_not_separated_into_nan(tmp_path, stub_checkpoint):
    """Before: samples of ±3e38 (finite) gave NaN stems in a float wav, and exit 70 with --format flac."""
    huge = np.full((RATE, 2), 3e38, np.float32)
    huge[::2] *= -1
    sf.write(tmp_path / "huge.wav", huge, RATE, subtype="FLOAT")
    for fmt in ("wav", "flac"):
        result = cli(
            tmp_path / "huge.wav", "-o", tmp_path / fmt, "--format", fmt, "--model", stub_checkpoint, *FAST
        )
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert result.returncode == 1 and len(errors) == 1, result.stderr
        assert "huge.wav: sample 0 (0.00 s) is -3e+38, beyond ±1e+06: not audio" in errors[0]
        assert files_under(tmp_path / fmt) == []


def test_stems_that_come_out_nan_are_never_written(tmp_path):
    from stemsplit.output import OutputError, OutputOptions, SongSource, StemWriter, plan_outputs

    [planned] = plan_outputs([SongSource(tmp_path / "s.wav")], tmp_path / "out", ["a", "b"], OutputOptions())
    with StemWriter(planned, OutputOptions(), RATE, 1) as writer:
        writer.write({"a": np.zeros((10, 1), np.float32), "b": np.zeros((10, 1), np.float32)})
        with pytest.raises(OutputError, match=r"s\.wav: the b stem came out NaN or infinite"):
            writer.write({"a": np.zeros((10, 1), np.float32), "b": np.full((10, 1), np.nan, np.float32)})
    assert files_under(tmp_path / "out") == []


def test_json_has_one_result_per_song_and_an_error_event(tmp_path, stub_checkpoint):
    song(tmp_path / "good.wav")
    (tmp_path / "bad.wav").write_text("not audio")
    result = cli(
        tmp_path / "good.wav", tmp_path / "bad.wav", "-o", tmp_path / "out", "--model", stub_checkpoint,
        *FAST, "--json",
    )  # fmt: skip
    events = json_events(result)
    kinds = [e["event"] for e in events]
    assert result.returncode == 1
    assert kinds.count("result") == 1 and "done" not in kinds
    assert [e["source"] for e in events if e["event"] == "error"] == [str(tmp_path / "bad.wav")]


def test_logs_get_one_unwrapped_line_per_song(tmp_path, tiny_checkpoint):
    long_name = "a very long song title that would wrap at eighty columns in a log file " * 2
    song(tmp_path / f"{long_name}.wav")
    song(tmp_path / "b.wav")
    result = stemsplit(
        tmp_path / f"{long_name}.wav", tmp_path / "b.wav", "-o", tmp_path / "out",
        "--model", tiny_checkpoint, *FAST, check=0, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    summary = [line for line in result.stderr.splitlines() if ": done: " in line]
    assert len(summary) == 2 and long_name in summary[0]
