"""Any name, any value: one clear line (issue 33, part 6): choices in any case, `stemsplit help`, standard
input, and templates with "." parts or stray spaces."""

from __future__ import annotations

import soundfile as sf
from helpers import RATE, music, run_cli


def test_choices_are_taken_in_any_case(tmp_path, capsys, stub_checkpoint):
    sf.write(tmp_path / "song.wav", music(0.3), RATE)
    flags = ["--format", "FLAC", "--precision", "FP32", "--clip-mode", "Clamp", "-q"]
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", stub_checkpoint, *flags, "-o", tmp_path / "o"
    )
    assert status == 0, err
    assert sorted(p.suffix for p in (tmp_path / "o" / "song").iterdir()) == [".flac"] * 4
    status, _, err = run_cli(capsys, tmp_path / "song.wav", "--format", "ogg", "-o", tmp_path / "x")
    assert status == 2
    assert err.strip() == "stemsplit: error: --format: 'ogg' is not one of 'wav', 'flac', 'mp3'."


def test_help_as_a_word_is_the_help(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = run_cli(capsys, "help")
    assert status == 0 and "Usage: stemsplit [OPTIONS] COMMAND" in out
    status, out, _ = run_cli(capsys, "help", "batch")
    assert status == 0 and "Usage: stemsplit batch [OPTIONS]" in out
    sf.write(tmp_path / "help", music(0.1), RATE, format="WAV")  # a song called help is a song
    status, _, err = run_cli(capsys, "help", "--stems", "nope", "-o", tmp_path / "o")
    assert status == 2 and "--stems" in err


def test_standard_input_is_named_not_taken_for_a_missing_file(tmp_path, capsys):
    status, _, err = run_cli(capsys, "-", "-o", tmp_path / "o")
    assert status == 2 and not (tmp_path / "o").exists()
    assert err.strip() == (
        "stemsplit: error: -: stemsplit reads audio files, not standard input; save the stream to a file"
    )


def test_dot_parts_of_a_template_are_the_same_folder_and_spaces_are_refused(
    tmp_path, capsys, stub_checkpoint
):
    sf.write(tmp_path / "song.wav", music(0.3), RATE)
    run = [tmp_path / "song.wav", "--model", stub_checkpoint, "-q"]
    status, _, err = run_cli(capsys, *run, "--filename", "./{track}/./{stem}.{ext}", "-o", tmp_path / "o")
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "o" / "song").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"
    ]  # fmt: skip
    status, _, err = run_cli(capsys, *run, "--filename", "{track}/{stem}.{ext} ", "-o", tmp_path / "s")
    assert status == 2 and not (tmp_path / "s").exists()
    assert err.strip().endswith(
        "--filename: '{track}/{stem}.{ext} ': '{stem}.{ext} ' starts or ends with a space"
    )
