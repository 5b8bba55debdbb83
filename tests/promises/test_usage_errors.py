"""Usage errors exit 2 with one line naming the flag or file, create nothing on disk, and come before
anything heavy is loaded (docs/guarantees.md, "Checked before anything runs"), tried as a careless or
hostile user would."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import (
    FAST,
    FOUR_STEMS,
    cli,
    files_under,
    json_events,
    song,
    stemsplit,
)

USAGE_ERRORS = {
    # template fields: only {folder} {track} {stem} {ext}, plain
    "attribute access": (["--filename", "{track.__class__}/{stem}.{ext}"], "--filename"),
    "index access": (["--filename", "{stem[0]}/{track}.{ext}"], "--filename"),
    "conversion": (["--filename", "{track!r}/{stem}.{ext}"], "--filename"),
    "unknown field": (["--filename", "{artist}/{stem}.{ext}"], "--filename"),
    "broken template": (["--filename", "{track/{stem}.{ext}"], "--filename"),
    # paths leaving -o
    "parent folders": (["--filename", "../../x/{stem}.{ext}"], "outside the output folder"),
    "absolute template": (["--filename", "/tmp/evil/{stem}.{ext}"], "relative path"),
    "home template": (["--filename", "~/{stem}.{ext}"], "relative path"),
    "one file for all stems": (["--filename", "{track}.{ext}"], "one file for several stems"),
    "name too long": (["--filename", "{track}/" + "x" * 300 + "{stem}.{ext}"], "longer than 255 bytes"),
    # format x bit depth
    "mp3 bit depth": (["--format", "mp3", "--bit-depth", "24"], "--bit-depth: mp3 has no bit depth"),
    "flac 32 bit": (["--format", "flac", "--bit-depth", "32"], "--bit-depth: flac takes 16 or 24"),
    "8 bit": (["--bit-depth", "8"], "--bit-depth"),
    "unknown format": (["--format", "ogg"], "--format"),
    # stems
    "unknown stem": (["--stems", "vocals,guitar"], "--stems: 'guitar' is not a stem"),
    "unknown two-stems": (["--two-stems", "guitar"], "--two-stems: 'guitar' is not a stem"),
    "empty stems": (["--stems", ",,"], "--stems"),
    "stem twice": (["--stems", "vocals,vocals"], "--stems"),
    "stems and two-stems": (["--stems", "vocals", "--two-stems", "drums"], "cannot be used together"),
    # ranges
    "huge window": (["--window", "1e9"], "--window"),
    "zero window": (["--window", "0"], "--window"),
    "nan window": (["--window", "nan"], "--window"),
    "zero hop": (["--hop", "0"], "--hop"),
    "negative hop": (["--hop", "-1"], "--hop"),
    "hop above window": (["--hop", "5"], "--hop"),
    "zero batch": (["--batch-size", "0"], "--batch-size"),
    "negative batch": (["--batch-size", "-1"], "--batch-size"),
    "stage 3": (["--stage", "3"], "--stage"),
    # devices
    "tpu": (["--device", "tpu"], "--device: must be auto, cpu, cuda or cuda:N"),
    "cuda:x": (["--device", "cuda:x"], "--device"),
    "meta": (["--device", "meta"], "--device"),
    "cpu:1": (["--device", "cpu:1"], "--device"),
    # -o "": was the current folder
    "empty out": (["-o", ""], "--out: the folder name is empty"),
    # options that do not exist
    "unknown option": (["--colour", "red"], "No such option"),
}
if not shutil.which("nvidia-smi"):
    USAGE_ERRORS["cuda without a GPU"] = (["--device", "cuda"], "--device: CUDA is not available")


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_are_one_line_exit_2_and_touch_nothing(case, a_song, tmp_path):
    flags, expected = USAGE_ERRORS[case]
    out = tmp_path / "out"
    started = time.monotonic()
    result = cli(a_song, "-o", out, *flags)
    elapsed = time.monotonic() - started
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("stemsplit: error: ") and expected in lines[0], lines
    assert os.listdir(tmp_path) == []  # not even the output folder
    print(f"{case}: {elapsed:.2f} s")  # in this process; see the benchmark for timings


MODEL_ERRORS = {
    "folder": ("models/", "--model: models/ is a folder, not a checkpoint file"),
    "bare folder name": ("models", "--model: models is a folder, not a checkpoint file"),
    "missing": ("nothere.safetensors", "--model: nothere.safetensors does not exist"),
    "missing path": ("./nothere", "--model: ./nothere does not exist"),
    "missing file URL": (
        "file:///nonexistent/m.safetensors",
        "--model: /nonexistent/m.safetensors does not exist",
    ),
    "file URL with a host": (
        "file://m.safetensors",
        "names the host 'm.safetensors'; write file:///absolute/path",
    ),
    "other scheme": ("s3://bucket/m.safetensors", "--model: s3:// URLs are not supported"),
    "fifo": ("pipe.pt", "--model: pipe.pt is not a regular file"),
    "unreadable": ("locked.safetensors", "--model: locked.safetensors cannot be read: permission denied"),
}


@pytest.mark.parametrize("case", list(MODEL_ERRORS))
def test_a_bad_model_path_is_a_usage_error_before_anything_loads(case, tmp_path):
    """Before: a folder was 'no model named ... in weights.toml', a missing file exit 1 after torch loaded,
    file:///x became file:/x."""
    spec, expected = MODEL_ERRORS[case]
    work = tmp_path / "work"
    work.mkdir()
    song(work / "s.wav")
    (work / "models").mkdir()
    os.mkfifo(work / "pipe.pt")
    (work / "locked.safetensors").write_bytes(b"x")
    (work / "locked.safetensors").chmod(0)
    if case == "unreadable" and os.access(work / "locked.safetensors", os.R_OK):
        pytest.skip("running as root: every file is readable")
    result = cli("s.wav", "-o", "out", "--model", spec, cwd=work)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not (work / "out").exists()


def test_a_file_url_names_the_checkpoint_path(tmp_path, stub_checkpoint):
    song(tmp_path / "s.wav")
    url = "file://" + str(Path(stub_checkpoint).resolve())
    cli(tmp_path / "s.wav", "-o", tmp_path / "out", "--model", url, *FAST, check=0)
    assert files_under(tmp_path / "out") == [f"s/{s}" for s in FOUR_STEMS]


def test_the_cli_knows_the_checkpoint_suffixes_the_loader_knows():
    from stemsplit import weights
    from stemsplit.cli import model_args

    assert model_args.CHECKPOINT_SUFFIXES == weights.CHECKPOINT_SUFFIXES


def test_two_songs_on_one_file_is_a_usage_error(tmp_path):
    """Before: the second song spun forever looking for a free name."""
    song(tmp_path / "a.wav")
    song(tmp_path / "b.wav")
    result = cli(tmp_path / "a.wav", tmp_path / "b.wav", "-o", tmp_path / "out", "--filename", "{stem}.{ext}")
    assert result.returncode == 2 and "would both write" in result.stderr and "a.wav" in result.stderr
    assert f"would both write {tmp_path / 'out' / '{stem}.wav'}" in result.stderr  # not a stand-in's name
    assert "stem-a" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_usage_errors_as_json(a_song, tmp_path):
    result = cli(a_song, "-o", tmp_path / "out", "--window", "0", "--json")
    event = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 2 and event["event"] == "error" and "--window" in event["message"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--format", "ogg"], "--format: 'ogg'"),
        (["--bit-depth", "abc"], "--bit-depth: 'abc'"),
        (["--colour", "red"], "No such option: --colour"),
    ],
)
def test_parser_errors_are_json_events_too(a_song, tmp_path, flags, expected):
    """Before: with --json, an error click finds (an unknown flag, a value of the wrong kind) printed no
    event: a program reading stdout saw nothing at all, only the exit status."""
    for command in ([a_song], ["batch", a_song.parent], ["speakers", a_song]):
        result = cli(*command, "--json", "-o", tmp_path / "out", *flags)
        assert result.returncode == 2, result.stderr
        (event,) = json_events(result)
        assert event == {"event": "error", "message": event["message"], "exit_code": 2}
        assert expected in event["message"] and result.stderr == f"stemsplit: error: {event['message']}\n"
    assert os.listdir(tmp_path) == []


def test_output_folder_that_is_a_file(a_song, tmp_path):
    (tmp_path / "out").write_text("a file, not a folder")
    result = cli(a_song, "-o", tmp_path / "out")
    assert result.returncode == 2 and "not a folder" in result.stderr
    assert (tmp_path / "out").read_text() == "a file, not a folder"


# /proc takes no new files, yet os.access says root may write there: eval's report failed at the end,
# after every track was separated, naming a temporary file. Every command asks the folder itself now.
NO_NEW_FILES = {
    "separate": ["{song}", "-o", "/proc/stemsplit-test/stems"],
    "eval": ["eval", "--musdb", "{tmp}", "--no-csdr", "--json", "/proc/stemsplit-test.json"],
    "train": ["train", "--musdb", "{tmp}", "-o", "/proc/stemsplit-test-run"],
    "synth": ["synth", "/proc/stemsplit-test-songs", "--songs", "1"],
}


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", list(NO_NEW_FILES))
def test_a_folder_that_takes_no_files_is_a_usage_error_before_any_work(command, a_song, tmp_path):
    args = [a.format(song=a_song, tmp=tmp_path) for a in NO_NEW_FILES[command]]
    result = cli(*args, timeout=60)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("stemsplit: error: "), lines
    assert "cannot write into /proc (it takes no new files)" in lines[0], lines
    assert os.listdir(tmp_path) == []


BACKENDS_REFUSED = {"bogus": "unknown Mamba backend 'bogus' (expected auto, portable or cuda)"}
if not shutil.which("nvidia-smi"):
    BACKENDS_REFUSED["cuda"] = "Mamba backend 'cuda' was requested, but this runs on cpu, not a CUDA device"


@pytest.mark.parametrize("backend", list(BACKENDS_REFUSED))
def test_a_mamba_backend_that_cannot_run_is_refused_before_any_work(backend, a_song, tmp_path):
    """Before: STEMSPLIT_MAMBA_BACKEND=bogus (or cuda on a CPU) was an internal error (exit 70) once the
    first windows ran, in every command, doctor included; train said '--device: device: ...' for a GPU
    it did not have."""
    env = {**os.environ, "STEMSPLIT_MAMBA_BACKEND": backend}
    out = tmp_path / "out"
    (tmp_path / "set").mkdir()
    shutil.copy(a_song, tmp_path / "set" / "song.wav")
    for subset in ("train", "test"):  # the layout eval, train and finetune check by name, before this
        (tmp_path / "set" / subset / "track").mkdir(parents=True)
    shutil.copy(a_song, tmp_path / "set" / "test" / "track" / "vocals.wav")  # eval's stems, checked first
    (tmp_path / "set" / "valid.txt").write_text("track\n")
    commands = [
        [a_song, "-o", out],
        ["batch", tmp_path / "set", "-o", out],
        ["speakers", a_song, "-o", out],
        ["eval", "--musdb", tmp_path / "set", "--no-csdr", "--json", out / "r.json"],
        ["train", "--musdb", tmp_path / "set", "-o", out],
        [
            "finetune",
            "--model",
            "demo",
            "--musdb",
            tmp_path / "set",
            "--unlabeled",
            tmp_path / "set",
            "-o",
            out,
        ],
    ]
    for args in commands:
        result = cli(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert (
            result.stderr
            == f"stemsplit: error: STEMSPLIT_MAMBA_BACKEND={backend}: {BACKENDS_REFUSED[backend]}\n"
        )
        assert not out.exists()
    doctor = stemsplit("doctor", env={**env, "COLUMNS": "300"})  # a process: the width is read at start-up
    assert doctor.returncode == 0, doctor.stderr
    # (the label column is as wide as the longest model name the doctor lists)
    line = f"mamba-2 backend +STEMSPLIT_MAMBA_BACKEND={backend}: {re.escape(BACKENDS_REFUSED[backend])}"
    assert re.search(line, doctor.stdout), doctor.stdout


def test_a_missing_song_is_named_before_the_model_is_fetched(tmp_path):
    """Before: `stemsplit typo.wav` fetched the default model (a 140 MB download on first use) and only
    then said that typo.wav does not exist; offline, it failed on the model instead."""
    env = {**os.environ, "STEMSPLIT_CACHE": str(tmp_path / "cache"), "STEMSPLIT_OFFLINE": "1"}
    result = cli(tmp_path / "typo.wav", "-o", tmp_path / "out", env=env)
    assert result.returncode == 1
    assert result.stderr == f"stemsplit: error: {tmp_path / 'typo.wav'}: no such file\n"
    assert os.listdir(tmp_path) == []  # no cache, no output folder
