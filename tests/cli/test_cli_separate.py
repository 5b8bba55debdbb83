"""Through the ``stemsplit`` command line, on real audio files, in this process (``cli``); where a real
process is the point (umask, rlimits, signals, ``python -m``, torch not imported): tests/e2e/test_process.py.

The plumbing (files, names, formats, messages) runs the stand-in network (``stub_checkpoint``); the
golden model and the tiny TS-BSMamba2 (a bare state dict) run where the network is part of what is shown.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    FAST,
    FOUR_STEMS,
    GOLDEN_WEIGHTS,
    RATE,
    cli,
    files_under,
    json_events,
    song,
)

STEMS = FOUR_STEMS


# --- the main job -------------------------------------------------------------------------------


def test_separate_a_song_with_the_golden_checkpoint(tmp_path):
    mix = song(tmp_path / "song.wav", seconds=1.6)
    golden = ["--model", GOLDEN_WEIGHTS, "--stage", "1", *FAST]
    cli(tmp_path / "song.wav", "-o", tmp_path / "stems", *golden, check=0)
    assert files_under(tmp_path / "stems") == [f"song/{s}" for s in STEMS]
    stems = [sf.read(tmp_path / "stems" / "song" / s, always_2d=True) for s in STEMS]
    for audio, rate in stems:
        assert rate == RATE and audio.shape == mix.shape
    assert np.abs(sum(a for a, _ in stems) - mix).max() < 1e-5  # stage 1 sums to the mixture


def test_options_before_or_after_files_and_separate_alias(tmp_path, stub_checkpoint):
    song(tmp_path / "a.wav")
    song(tmp_path / "b b.flac", channels=1, subtype="PCM_16")
    m = ["--model", stub_checkpoint, *FAST]
    cli(*m, "--light", tmp_path / "a.wav", "-o", tmp_path / "one", check=0)
    cli(tmp_path / "a.wav", tmp_path / "b b.flac", "-o", tmp_path / "two", *m, "--light", check=0)
    cli("separate", tmp_path / "a.wav", "-o", tmp_path / "three", *m, check=0)
    assert files_under(tmp_path / "one") == [f"a/{s}" for s in STEMS]
    assert files_under(tmp_path / "two") == sorted([f"a/{s}" for s in STEMS] + [f"b b/{s}" for s in STEMS])
    assert sf.info(str(tmp_path / "two" / "b b" / "vocals.wav")).channels == 1  # mono in, mono out
    assert files_under(tmp_path / "three") == [f"a/{s}" for s in STEMS]


def test_file_named_like_a_subcommand(tmp_path, stub_checkpoint):
    song(tmp_path / "batch", fmt="WAV")  # a wav file called "batch"
    result = cli("./batch", "-o", "out", "--model", stub_checkpoint, *FAST, cwd=tmp_path, check=0)
    assert files_under(tmp_path / "out") == [f"batch/{s}" for s in STEMS], result.stderr


def test_formats_bit_depths_subsets_and_templates(tmp_path, stub_checkpoint, tiny_checkpoint):
    song(tmp_path / "s.wav", rate=48000)
    m = ["--model", stub_checkpoint, *FAST]
    cli(tmp_path / "s.wav", "-o", tmp_path / "o", *m, "--format", "flac", "--bit-depth", "16", check=0)
    info = sf.info(str(tmp_path / "o" / "s" / "drums.flac"))
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_16", 48000)
    cli(tmp_path / "s.wav", "-o", tmp_path / "p", *m, "--format", "mp3", "--stems", "vocals", check=0)
    assert files_under(tmp_path / "p") == ["s/vocals.mp3"]
    cli(
        tmp_path / "s.wav",
        "-o",
        tmp_path / "q",
        *m,
        "--two-stems",
        "vocals",
        "--filename",
        "{stem}-{track}.{ext}",
        check=0,
    )
    assert files_under(tmp_path / "q") == ["no_vocals-s.wav", "vocals-s.wav"]
    result = cli(tmp_path / "s.wav", "-o", tmp_path / "r", *m, "--stems", "guitar")
    assert result.returncode == 2 and "--stems: 'guitar' is not a stem of this model" in result.stderr
    # A bare state dict names no stems: the same check, once the network is loaded.
    result = cli(
        tmp_path / "s.wav", "-o", tmp_path / "r", "--model", tiny_checkpoint, *FAST, "--stems", "guitar"
    )
    assert result.returncode == 2 and "--stems: 'guitar' is not a stem of this model" in result.stderr


def test_same_track_name_from_two_folders_does_not_collide(tmp_path, stub_checkpoint):
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    song(tmp_path / "x" / "take.wav")
    song(tmp_path / "y" / "take.wav", channels=1)
    cli(
        tmp_path / "x" / "take.wav",
        tmp_path / "y" / "take.wav",
        "-o",
        tmp_path / "o",
        "--model",
        stub_checkpoint,
        *FAST,
        check=0,
    )
    assert files_under(tmp_path / "o") == sorted(
        [f"take/{s}" for s in STEMS] + [f"take (2)/{s}" for s in STEMS]
    )


def test_json_events(tmp_path, stub_checkpoint):
    song(tmp_path / "s.wav")
    result = cli(
        tmp_path / "s.wav", "-o", tmp_path / "o", "--model", stub_checkpoint, *FAST, "--json", check=0
    )
    events = json_events(result)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "song" and "start" in kinds and kinds[-1] == "result"
    assert events[-1]["outputs"]["vocals"].endswith("vocals.wav")
    windows = [e for e in events if e["event"] == "windows"]
    assert windows[-1]["done"] == windows[-1]["total"]


def test_help_shows_examples_and_usage_errors_exit_2():
    result = cli("--help", check=0)
    assert "stemsplit song.wav -o stems/" in result.stdout
    assert "stemsplit song.wav -o stems/" in cli("batch", "--help", check=0).stdout
    assert cli("song.wav", "--stage", "3").returncode == 2
    assert cli("song.wav", "--format", "ogg").returncode == 2


# --- batch ------------------------------------------------------------------------------------


def test_batch_walks_resumes_and_reports_failures(tmp_path, stub_checkpoint):
    music = tmp_path / "music"
    (music / "album").mkdir(parents=True)
    song(music / "one.wav")
    song(music / "album" / "two.flac", subtype="PCM_24")
    (music / "album" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (music / "notes.txt").write_text("not audio")
    m = ["--model", stub_checkpoint, *FAST]

    first = cli("batch", music, "-o", tmp_path / "out", *m)
    assert first.returncode == 1  # one file failed
    assert "broken.wav" in first.stderr and "not an audio file" in first.stderr
    assert files_under(tmp_path / "out", state=False) == sorted(
        [f"one/{s}" for s in STEMS] + [f"album/two/{s}" for s in STEMS]  # the input tree, mirrored
    )
    assert "failed" in first.stderr and "done" in first.stderr

    before = {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in files_under(tmp_path / "out")}
    second = cli("batch", music, "-o", tmp_path / "out", *m, "--json")
    events = json_events(second)
    assert sorted(e["source"].split("/")[-1] for e in events if e["event"] == "skipped") == [
        "one.wav",
        "two.flac",
    ]
    assert {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in files_under(tmp_path / "out")} == before


def test_batch_of_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("batch", tmp_path / "empty", "-o", tmp_path / "out")
    assert result.returncode == 1 and "no audio files found" in result.stderr


# --- bad input ----------------------------------------------------------------------------------


def write_bad(kind, folder):
    """Create a bad input of ``kind``; return its path and the message expected."""
    path = folder / f"{kind}.wav"
    if kind == "missing":
        return path, "no such file"
    if kind == "directory":
        path.mkdir()
        return path, "is a directory"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty file"
    if kind == "zero_length":
        sf.write(path, np.zeros((0, 2), np.float32), RATE)
        return path, "contains no audio"
    if kind == "not_audio":
        path.write_bytes(os.urandom(5000))
        return path, "not an audio file"
    if kind == "truncated":
        song(path, seconds=2.0, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        return path, "truncated at 0.67 s (the file says 2.00 s)"
    if kind == "too_short":
        sf.write(path, np.zeros((2, 2), np.float32) + 0.1, RATE)  # was "0.0 ms" (one decimal)
        return path, f"too short (2 samples, {2000 / RATE:.3g} ms; the model needs at least"
    if kind == "nan":
        audio = song(path)
        audio[30000, 1] = np.nan
        sf.write(path, audio, RATE, subtype="FLOAT")
        return path, "NaN or infinite"
    if kind == "huge":
        audio = song(path)
        audio[30000, 1] = 3e38  # finite, but no sound: the model's energies overflow
        sf.write(path, audio, RATE, subtype="FLOAT")
        return path, "sample 30000 (0.68 s) is 3e+38, beyond ±1e+06: not audio"
    if kind == "one_hz":
        sf.write(path, np.zeros((100, 2), np.float32) + 0.1, 1)  # a header saying 1 Hz: 100 s of "audio"
        return path, "the file says its sample rate is 1 Hz; stemsplit takes 1000 to 1000000 Hz"
    if kind == "six_channels":
        song(path, channels=6)
        return path, "6 channels"
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "directory",
        "empty",
        "zero_length",
        "not_audio",
        "truncated",
        "too_short",
        "nan",
        "huge",
        "one_hz",
        "six_channels",
    ],
)
def test_bad_input_is_one_clear_line(kind, tmp_path, stub_checkpoint):
    path, expected = write_bad(kind, tmp_path)
    out = tmp_path / "out"
    result = cli(path, "-o", out, "--model", stub_checkpoint, *FAST, "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stemsplit: error: ") and str(path.name) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert files_under(out) == []


def test_six_channels_with_downmix(tmp_path, stub_checkpoint):
    path, _ = write_bad("six_channels", tmp_path)
    cli(path, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, "--downmix", check=0)
    assert sf.info(str(tmp_path / "out" / "six_channels" / "drums.wav")).channels == 2


def test_silence_gives_silent_stems(tmp_path, stub_checkpoint):
    sf.write(tmp_path / "quiet.wav", np.zeros((RATE * 2, 2), np.float32), RATE)
    cli(tmp_path / "quiet.wav", "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    for stem in STEMS:
        audio, _ = sf.read(tmp_path / "out" / "quiet" / stem)
        assert np.isfinite(audio).all() and np.abs(audio).max() == 0


@pytest.mark.parametrize("rate", [8000, 192000])
def test_unusual_sample_rates(rate, tmp_path, stub_checkpoint):
    song(tmp_path / "s.wav", seconds=1.1, rate=rate)
    cli(tmp_path / "s.wav", "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    info = sf.info(str(tmp_path / "out" / "s" / "bass.wav"))
    assert info.samplerate == rate and info.frames == int(1.1 * rate)


def test_non_ascii_names(tmp_path, stub_checkpoint):
    song(tmp_path / "Björk – Jóga (live).wav")
    cli(
        tmp_path / "Björk – Jóga (live).wav",
        "-o",
        tmp_path / "öut",
        "--model",
        stub_checkpoint,
        *FAST,
        check=0,
    )
    assert files_under(tmp_path / "öut") == [f"Björk – Jóga (live)/{s}" for s in STEMS]


def test_output_folder_that_cannot_be_created(tmp_path, stub_checkpoint):
    song(tmp_path / "s.wav")
    (tmp_path / "file").write_text("I am a file")
    result = cli(tmp_path / "s.wav", "-o", tmp_path / "file" / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 2 and "cannot create" in result.stderr and "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, stub_checkpoint):
    song(tmp_path / "s.wav")
    (tmp_path / "ro").mkdir(mode=0o555)
    result = cli(tmp_path / "s.wav", "-o", tmp_path / "ro", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1 and "not writable" in result.stderr


def test_existing_stems_are_kept(tmp_path, stub_checkpoint):
    song(tmp_path / "s.wav")
    (tmp_path / "out" / "s").mkdir(parents=True)
    (tmp_path / "out" / "s" / "bass.wav").write_bytes(b"mine")
    result = cli(tmp_path / "s.wav", "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert files_under(tmp_path / "out") == ["s/bass.wav"]
    assert (tmp_path / "out" / "s" / "bass.wav").read_bytes() == b"mine"


def test_batch_shards_files_across_torchrun_ranks(tmp_path, stub_checkpoint):
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        song(tmp_path / "in" / f"{name}.wav")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0"}
    cli("batch", tmp_path / "in", "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, env=env, check=0)
    # rank 1 of 2 takes every second file
    assert files_under(tmp_path / "out", state=False) == [f"b/{s}" for s in STEMS]


def test_debug_shows_the_traceback(tmp_path, stub_checkpoint):
    result = cli(tmp_path / "missing.wav", "-o", tmp_path / "out", "--model", stub_checkpoint, "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "no such file" in result.stderr


def test_in_process_with_typers_runner(tmp_path, stub_checkpoint):
    from typer.testing import CliRunner

    from stemsplit.cli import app

    song(tmp_path / "s.wav")
    args = [
        "separate",
        str(tmp_path / "s.wav"),
        "-o",
        str(tmp_path / "out"),
        "--model",
        stub_checkpoint,
        *FAST,
    ]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["event"] == "result"
    assert files_under(tmp_path / "out") == [f"s/{s}" for s in STEMS]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_time_left_after_compiling_leaves_the_compile_time_out(capsys):
    """Before: after a 5 min torch.compile the first windows 'measured 145.6 s per window; about 7 min
    left' on a run that then ended at once: the compile time was counted as the windows'."""
    from stemsplit.cli.separate import Reporter

    reporter = Reporter(json_lines=False, quiet=False)
    reporter.cpu_seconds_per_window, reporter.song = 1.0, "song.wav"
    reporter.on_event({"event": "start", "windows": 5, "seconds": 2.0})
    reporter.started -= 300.0  # as if the first batch had run for 5 minutes, all but 0.1 s compiling
    reporter.on_event({"event": "compiled", "seconds": 299.9})
    reporter.on_event({"event": "windows", "done": 1, "total": 5})
    measured = [line for line in capsys.readouterr().err.splitlines() if "measured" in line]
    assert len(measured) == 1 and "measured 0.1 s per window; about 0 s left" in measured[0], measured


def test_json_runs_end_on_an_error_event_with_the_status(tmp_path, stub_checkpoint):
    """--json: an error that ends the run is an ``error`` event on stdout (its message and exit status,
    the flag named) beside the one line on stderr, whichever error it is: a usage error (2), a model that
    does not load (1)."""
    song(tmp_path / "s.wav")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(Path(stub_checkpoint).read_bytes()[:200])
    for args, status in [
        (["--model", stub_checkpoint, "--batch-size", "0"], 2),
        (["--model", damaged], 1),
    ]:
        result = cli(tmp_path / "s.wav", "-o", tmp_path / "o", *FAST, *args, "--json")
        assert result.returncode == status, result.stderr
        [line] = result.stderr.splitlines()
        [error] = [e for e in json_events(result) if e["event"] == "error"]
        assert error["exit_code"] == status and line == f"stemsplit: error: {error['message']}"
    assert not (tmp_path / "o").exists()
