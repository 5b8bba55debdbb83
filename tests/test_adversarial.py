"""stemsplit's promises, each tried the way a careless or hostile user would, through the real CLI or API.

1. Usage errors: exit 2, one line, nothing created on disk, before anything heavy is loaded.
2. Nothing is written outside ``-o``.
3. A song's stems appear all together or not at all; nothing is left behind (disk full, signals, crashes).
4. ``batch`` separates every song into its own place, exactly once, and never skips a changed song.
5. Errors a user can cause are one line, never a traceback, never read as markup.
6. The Python API refuses what it cannot take, with a hint.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    FAST,
    FOUR_STEMS,
    RATE,
    StubConfig,
    StubNet,
    cli,
    dead_pid,
    files_under,
    json_events,
    python,
    run_until_windows,
    song,
    stemsplit,
)

# --- 1. usage errors ------------------------------------------------------------------------------

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


@pytest.fixture(scope="module")
def a_song(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    song(folder / "song.wav")
    return folder / "song.wav"


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


# --- 2. nothing outside -o ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["....wav", "...wav", "..wav"])
def test_dotted_file_names_stay_inside_the_output_folder(name, tmp_path, stub_checkpoint):
    """`...wav` has the track name `..`: its stems must not land beside -o."""
    (tmp_path / "in").mkdir()
    song(tmp_path / "in" / name, fmt="WAV")
    out = tmp_path / "box" / "out"
    cli(tmp_path / "in" / name, "-o", out, "--model", stub_checkpoint, *FAST, check=0)
    assert sorted(os.listdir(tmp_path / "box")) == ["out"]
    stems = files_under(out)
    assert len(stems) == 4 and all(s.endswith(tuple(FOUR_STEMS)) for s in stems), stems


def test_a_link_inside_the_output_folder_does_not_carry_stems_out(tmp_path, stub_checkpoint):
    song(tmp_path / "song.wav")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "song").symlink_to(tmp_path / "elsewhere")
    result = cli(tmp_path / "song.wav", "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 2 and "outside the output folder" in result.stderr
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_link_put_into_the_output_folder_while_separating_does_not_carry_stems_out(tmp_path):
    """The plan found no link; one swapped in before the commit (a race) must not lead the renames out."""
    from stemsplit.output import OutputError, OutputOptions, SongSource, StemWriter, plan_outputs

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    [planned] = plan_outputs([SongSource(tmp_path / "s.wav")], out, ["a", "b"], OutputOptions())
    with StemWriter(planned, OutputOptions(), RATE, 2) as writer:
        writer.write({s: np.full((1000, 2), 0.1, np.float32) for s in "ab"})
        check = writer._check_destinations

        def check_then_swap() -> None:  # the race: out/s becomes a link to a folder outside
            check()
            os.rename(out / "s", elsewhere / "s")
            (out / "s").symlink_to(elsewhere / "s")

        writer._check_destinations = check_then_swap
        with pytest.raises(OutputError, match="outside the output folder"):
            writer.commit()
    assert [p for p in os.listdir(elsewhere / "s") if not p.startswith(".stemsplit-")] == []
    assert files_under(out) == []  # no journal either


def test_the_longest_legal_stem_file_name(tmp_path, stub_checkpoint):
    """A 251-byte name is legal; the temporary beside it used to pass 255 bytes."""
    track = "t" * 240
    song(tmp_path / f"{track}.wav")
    out = tmp_path / "out"
    args = ["--filename", "{track}-{stem}.{ext}", "--model", stub_checkpoint, *FAST]
    cli(tmp_path / f"{track}.wav", "-o", out, *args, check=0)
    assert sorted(files_under(out)) == sorted(f"{track}-{s}" for s in FOUR_STEMS)  # e.g. 251 bytes: vocals


def test_mp3_output_of_a_96_khz_song_is_written_at_48_khz(tmp_path, stub_checkpoint):
    """MP3 cannot carry 96 kHz: stems are resampled to 48 kHz while encoding, and the summary says so."""
    song(tmp_path / "hi.wav", seconds=1.2, rate=96000)
    result = cli(
        tmp_path / "hi.wav", "-o", tmp_path / "out", "--format", "mp3", "--stems", "vocals",
        "--model", stub_checkpoint, *FAST, check=0,
    )  # fmt: skip
    info = sf.info(str(tmp_path / "out" / "hi" / "vocals.mp3"))
    assert info.samplerate == 48000 and abs(info.duration - 1.2) < 0.1
    assert "written at 48000 Hz" in result.stderr


def test_a_stem_is_never_written_over_an_input_song(tmp_path, a_song):
    """Before: `speakers x/speaker1.wav -o . --filename 'x/{stem}.{ext}' --overwrite` replaced the song it
    was reading with its own speaker1 stem (the song was lost, and the stem was made of a half-read file);
    a hard link to the song is the song too."""
    (tmp_path / "x").mkdir()
    shutil.copy(a_song, tmp_path / "x" / "speaker1.wav")
    os.link(tmp_path / "x" / "speaker1.wav", tmp_path / "x" / "drums.wav")
    before = (tmp_path / "x" / "speaker1.wav").read_bytes()
    for command in (["speakers", "x/speaker1.wav"], ["x/drums.wav"]):
        result = cli(*command, "-o", ".", "--filename", "x/{stem}.{ext}", "--overwrite", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("stemsplit: error: --filename: x/") and result.stderr.count("\n") == 1
        assert f"is the input {command[-1]}: its " in result.stderr
    assert sorted(os.listdir(tmp_path / "x")) == ["drums.wav", "speaker1.wav"]
    assert (tmp_path / "x" / "speaker1.wav").read_bytes() == before


# --- 3. all stems or none -------------------------------------------------------------------------


def test_disk_full_at_commit_leaves_nothing(small_disk, tmp_path, stub_checkpoint):
    """The float temporaries fit; converting them to flac does not. Before: the first flac stems stayed.

    The song is white noise: its stems are what flac cannot squeeze into 48 kB, whatever the network."""
    seconds = 1.5
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (int(seconds * RATE), 2)).astype(np.float32)
    sf.write(tmp_path / "s.wav", noise, RATE, subtype="FLOAT")
    temporaries = 4 * (-(-int(seconds * RATE * 2 * 4 + 4096) // 4096) * 4096)  # 4 float32 stems, in pages
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - temporaries - 48 * 1024))  # 48 kB left: no flac fits
    out = small_disk / "out"
    result = cli(tmp_path / "s.wav", "-o", out, "--format", "flac", "--model", stub_checkpoint, *FAST)
    errors = [line for line in result.stderr.splitlines() if line.startswith("stemsplit: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "no space left on device" in errors[0].lower() and "nothing was written" in errors[0]
    assert not out.exists()  # no stems, no temporaries, no empty folders
    # Room made: the same command now succeeds (nothing was left to block it).
    (small_disk / "filler").unlink()
    cli(tmp_path / "s.wav", "-o", out, "--format", "flac", "--model", stub_checkpoint, *FAST, check=0)
    assert files_under(out) == [f"s/{s.replace('.wav', '.flac')}" for s in FOUR_STEMS]


def test_a_folder_appearing_at_a_stems_path_fails_the_song_cleanly(tmp_path):
    from stemsplit.output import OutputError, OutputOptions, SongSource, StemWriter, plan_outputs

    out = tmp_path / "out"
    [planned] = plan_outputs([SongSource(tmp_path / "s.wav")], out, ["a", "b"], OutputOptions())
    with StemWriter(planned, OutputOptions(), RATE, 2) as writer:
        writer.write({s: np.full((1000, 2), 0.1, np.float32) for s in "ab"})
        (out / "s" / "b.wav").mkdir()  # appears while separating
        with pytest.raises(OutputError, match="is a folder"):
            writer.commit()
    assert os.listdir(out / "s") == ["b.wav"]  # no a.wav, no temporaries


def test_a_rename_failing_midway_is_rolled_back_and_replaced_files_come_back(tmp_path):
    """Overwriting a, b, c, d: the rename of d fails for real (a non-empty folder took its name after the
    last check); a, b and c are undone and the user's old a and b are back."""
    from stemsplit.output import OutputError, OutputOptions, SongSource, StemWriter, plan_outputs

    out = tmp_path / "out"
    [planned] = plan_outputs([SongSource(tmp_path / "s.wav")], out, list("abcd"), OutputOptions())
    (out / "s").mkdir(parents=True)
    for stem in "ab":
        (out / "s" / f"{stem}.wav").write_bytes(b"the user's " + stem.encode())
    writer = StemWriter(planned, OutputOptions(overwrite=True), RATE, 1)
    with writer:
        writer.write({s: np.full((10, 1), 0.1, np.float32) for s in "abcd"})
        check = writer._check_destinations

        def check_then_race() -> None:  # the race: the name is taken between the check and the renames
            check()
            (out / "s" / "d.wav").mkdir()
            (out / "s" / "d.wav" / "x").write_text("x")

        writer._check_destinations = check_then_race
        with pytest.raises(OutputError, match="nothing was written for this song"):
            writer.commit()
    assert (out / "s" / "a.wav").read_bytes() == b"the user's a"
    assert (out / "s" / "b.wav").read_bytes() == b"the user's b"
    assert sorted(os.listdir(out / "s")) == ["a.wav", "b.wav", "d.wav"]  # no c, no backups or temporaries


# A process that dies (os._exit: no cleanup, as in a power cut) at its Nth call of os.replace (or
# os.unlink) during a commit of stems a, b, c, d over the user's old files in OUT/s.
_DIE_MID_COMMIT = """
import os, sys
import numpy as np
from pathlib import Path
from stemsplit.output import OutputOptions, SongSource, StemWriter, plan_outputs

out, die_at, name = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
[planned] = plan_outputs([SongSource(Path("s.wav"))], out, list("abcd"), OutputOptions())
writer = StemWriter(planned, OutputOptions(overwrite=True), 44100, 1)
with writer:
    writer.write({s: np.full((10, 1), 0.5, np.float32) for s in "abcd"})
    calls, real = [0], getattr(os, name)

    def dying(*args):
        calls[0] += 1
        if calls[0] == die_at:
            os._exit(9)
        real(*args)

    setattr(os, name, dying)
    writer.commit()
"""


def _die_mid_commit(out, die_at, name="replace"):
    (out / "s").mkdir(parents=True)
    for stem in "abcd":
        (out / "s" / f"{stem}.wav").write_bytes(b"the user's " + stem.encode())
    child = python("-c", _DIE_MID_COMMIT, out, die_at, name)
    assert child.returncode == 9, child.stderr


def test_a_commit_cut_short_by_a_power_cut_is_rolled_back_by_the_next_run(tmp_path, stub_checkpoint):
    """Before: the user's old b.wav stayed in a hidden .backup for ever, and a.wav held a new stem."""
    out = tmp_path / "out"
    # os.replace calls: 1 the journal, 2 a -> backup, 3 new a in, 4 b -> backup, 5 new b in: dies there.
    _die_mid_commit(out, die_at=5)
    left = sorted(os.listdir(out / "s"))
    assert "b.wav" not in left and any(n.endswith(".backup") for n in left), left  # it did die midway
    assert any(n.endswith(".journal") for n in os.listdir(out))
    song(tmp_path / "other.wav")  # the next run writes another song into the same output folder
    cli(tmp_path / "other.wav", "-o", out, "--model", stub_checkpoint, *FAST, check=0)
    for stem in "abcd":
        assert (out / "s" / f"{stem}.wav").read_bytes() == b"the user's " + stem.encode()
    assert sorted(files_under(out)) == sorted(
        [f"s/{x}.wav" for x in "abcd"] + [f"other/{x}" for x in FOUR_STEMS]
    )


def test_a_commit_cut_short_after_its_last_rename_is_rolled_forward(tmp_path):
    """Every stem was in place, only the backups were not removed yet: the new stems stay."""
    from stemsplit.output import recover_unfinished_commits

    out = tmp_path / "out"
    _die_mid_commit(out, die_at=3, name="unlink")  # 1: the journal's temporary, 2: a's backup, 3: b's
    assert len([n for n in os.listdir(out / "s") if n.endswith(".backup")]) == 3
    recover_unfinished_commits(out)
    assert sorted(files_under(out)) == [f"s/{x}.wav" for x in "abcd"]
    assert all(sf.info(str(out / "s" / f"{x}.wav")).frames == 10 for x in "abcd")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_leave_nothing(signum, code, tmp_path, tiny_checkpoint):
    """Before: SIGTERM left four full-length hidden .partial files."""
    song(tmp_path / "long.wav", seconds=20.0)
    out = tmp_path / "out"
    proc = run_until_windows([tmp_path / "long.wav", "-o", out, "--model", tiny_checkpoint, *FAST])
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("after", "delay"), [("typer", 0), ("stemsplit.cli.train", 0), ("stemsplit.cli", 0.4)]
)
def test_ctrl_c_while_starting_is_one_line_not_a_traceback(after, delay, tmp_path, tiny_checkpoint):
    """Before: Ctrl-C while the CLI imported its modules printed a KeyboardInterrupt traceback.

    The child reports each module it finished importing (PYTHONPROFILEIMPORTTIME); SIGINT is sent
    ``delay`` seconds after ``after`` is in: typer (early in stemsplit.cli), stemsplit.cli.train (its
    last import), stemsplit.cli itself and 0.4 s more (importing torch, or loading the model).
    """
    song(tmp_path / "s.wav")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [shutil.which("stemsplit"), tmp_path / "s.wav", "-o", out, "--model", tiny_checkpoint, *FAST],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen, sent = [], False
    for line in proc.stderr:  # "import time: self [us] | cumulative | module"
        seen.append(line)
        if line.rstrip().endswith(" " + after):
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            sent = True
            break
    assert sent, "".join(seen)[-2000:]
    rest = proc.communicate(timeout=120)[1]
    stderr = "".join(seen) + rest
    messages = [line for line in stderr.splitlines() if not line.startswith("import time:") and line.strip()]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, messages
    assert proc.returncode in (130, 0), messages  # 0: it finished before the signal landed
    if proc.returncode == 130:  # progress lines may come first, if the run got that far; one error line
        errors = [line for line in messages if line.startswith("stemsplit: error:")]
        assert errors == [messages[-1]] and errors[0].startswith("stemsplit: error: interrupted"), messages
        assert files_under(out) == []


def test_temporaries_of_a_killed_run_are_swept_by_the_next(tmp_path, tiny_checkpoint):
    song(tmp_path / "long.wav", seconds=20.0)
    out = tmp_path / "out"
    args = [tmp_path / "long.wav", "-o", out, "--model", tiny_checkpoint, *FAST]
    proc = run_until_windows(args)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=60)
    left = files_under(out)
    assert left and all(os.path.basename(p).startswith(".stemsplit-") for p in left)  # it did leave some
    cli(*args, check=0)
    assert files_under(out) == [f"long/{s}" for s in FOUR_STEMS]


# --- 4. batch -------------------------------------------------------------------------------------


def test_batch_mirrors_the_tree_so_songs_never_share_stems(tmp_path, stub_checkpoint):
    """Before: Album B/01 Intro.wav was 'skipped' with Album A's stems, exit 0."""
    music = tmp_path / "music"
    for album, channels in (("Album A", 1), ("Album B", 2)):
        (music / album).mkdir(parents=True)
        song(music / album / "01 Intro.wav", channels=channels)
    cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    for album, channels in (("Album A", 1), ("Album B", 2)):
        assert sf.info(str(tmp_path / "out" / album / "01 Intro" / "vocals.wav")).channels == channels


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_song_that_changes_while_it_is_separated_is_separated_again(tmp_path, tiny_checkpoint, change):
    """Before: a song replaced while batch read it was recorded as done with the new file's identity, so
    the next run skipped it and its stems stayed those of the old file; a removed one said 'No such file
    (batch's records)'."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "s.wav", seconds=20.0)
    song(tmp_path / "new.wav", seconds=20.0, scale=0.1)
    args = ["batch", music, "-o", out, "--model", tiny_checkpoint, *FAST]
    proc = run_until_windows(args)
    if change == "replaced":
        os.replace(tmp_path / "new.wav", music / "s.wav")
    else:
        os.unlink(music / "s.wav")
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    (error,) = [json.loads(line) for line in stdout.splitlines() if json.loads(line)["event"] == "error"]
    said = "it was written to or replaced" if change == "replaced" else "it is gone: removed or renamed"
    assert error["message"].startswith(f"{music / 's.wav'}: changed or went while it was read ({said})")
    if change == "replaced":
        again = cli(*args, "--json", check=0)  # separated again: not skipped, not refused
        assert [e["event"] for e in json_events(again)].count("result") == 1
        assert cli(*args, "--json", check=0).stdout.count('"skipped"') == 1  # now it is done


def test_batch_separates_again_what_changed_and_skips_what_did_not(tmp_path, stub_checkpoint):
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    song(music / "b.wav")
    m = ["--model", stub_checkpoint, *FAST, "--json"]

    def results(*extra):
        run = cli("batch", music, "-o", out, *m, *extra, check=0)
        events = json_events(run)
        return sorted(os.path.basename(e["source"]) for e in events if e["event"] == "result")

    assert results() == ["a.wav", "b.wav"]
    assert results() == []  # all done
    os.utime(music / "a.wav")  # touched, same bytes: still done
    assert results() == []
    song(music / "b.wav", scale=0.1)  # changed: separated again, its old stems replaced
    assert results() == ["b.wav"]
    assert results("--stage", "1") == ["a.wav", "b.wav"]  # other settings: separated again
    assert results("--stage", "1") == []


def test_batch_with_other_stems_replaces_its_own_stems_and_never_skips_on_a_stale_record(
    tmp_path, stub_checkpoint
):
    """Before: a second run with --stems needed --overwrite for stems stemsplit itself had written; and
    with it, the first run's record still said 'done' for the stems the second run had replaced, so a
    third run with the first run's settings skipped the song and kept stage-1 drums as stage-2 ones."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    m = ["--model", stub_checkpoint, *FAST, "--json"]

    def batch(*extra):
        run = cli("batch", music, "-o", out, *m, *extra, check=0)
        events = json_events(run)
        return [e["event"] for e in events if e["event"] in ("result", "skipped", "error")]

    def drums():
        return sf.read(out / "a" / "drums.wav")[0]

    assert batch() == ["result"]
    stage2 = drums()
    assert batch("--stems", "drums,vocals", "--stage", "1") == ["result"]  # no --overwrite: ours
    assert files_under(out, state=False) == [f"a/{s}" for s in FOUR_STEMS]
    stage1 = drums()
    assert not np.allclose(stage1, stage2)
    assert batch() == ["result"]  # the first run's record no longer describes drums.wav
    np.testing.assert_array_equal(drums(), stage2)
    assert batch() == ["skipped"]
    assert batch("--stems", "drums,vocals", "--stage", "1") == ["result"]
    assert batch("--stems", "drums,vocals", "--stage", "1") == ["skipped"]


def test_batch_still_refuses_files_it_did_not_write(tmp_path, stub_checkpoint):
    """A file of the user's at a stem's path, or a stem the user edited, is named and left as it was."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    m = ["--model", stub_checkpoint, *FAST]
    cli("batch", music, "-o", out, *m, check=0)
    stems = {name: (out / "a" / name).read_bytes() for name in FOUR_STEMS}
    (out / "a" / "no_vocals.wav").write_bytes(b"the user's own file")
    run = cli("batch", music, "-o", out, *m, "--two-stems", "vocals")
    assert run.returncode == 1 and "--overwrite" in run.stderr
    assert run.stderr.count("\n") == 1 and "no_vocals.wav already exists" in run.stderr
    assert (out / "a" / "no_vocals.wav").read_bytes() == b"the user's own file"
    assert "skipped: done earlier" in cli("batch", music, "-o", out, *m, check=0).stderr  # still done

    edited = out / "a" / "drums.wav"
    edited.write_bytes(stems["drums.wav"][:-4] + b"\0\0\0\1")  # the user's edit of a stem
    run = cli("batch", music, "-o", out, *m, "--stage", "1")  # other settings: separated again
    assert run.returncode == 1 and "drums.wav already exists" in run.stderr, run.stderr
    assert edited.read_bytes().endswith(b"\0\0\0\1")
    assert (out / "a" / "bass.wav").read_bytes() == stems["bass.wav"]  # nothing of the song was written

    shutil.copy2(out / "a" / "bass.wav", tmp_path / "bass.wav")  # copied away and back: the same bytes
    os.replace(tmp_path / "bass.wav", out / "a" / "bass.wav")
    edited.write_bytes(stems["drums.wav"])
    cli("batch", music, "-o", out, *m, "--stage", "1", check=0)
    assert (out / "a" / "bass.wav").read_bytes() != stems["bass.wav"]


@pytest.mark.parametrize("junk", ["fifo", "folder", "huge", "list", "state is a file"])
def test_batch_survives_junk_among_its_manifests(tmp_path, stub_checkpoint, junk):
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    m = ["--model", stub_checkpoint, *FAST]
    cli("batch", music, "-o", out, *m, check=0)
    done = out / ".stemsplit" / "done"
    if junk == "state is a file":
        shutil.rmtree(done)
        done.write_text("not a folder")
    elif junk == "fifo":
        os.mkfifo(done / "zz.json")
    elif junk == "folder":
        (done / "zz.json").mkdir()
    elif junk == "huge":
        (done / "zz.json").write_text('{"outputs": {"drums": "a/drums.wav"}, "pad": "' + "x" * 2**21 + '"}')
    else:
        (done / "zz.json").write_text('["a/drums.wav"]')
    run = cli("batch", music, "-o", out, *m, "--stems", "drums", timeout=120)
    if junk == "state is a file":  # one line naming the problem, no traceback
        assert run.returncode == 1 and "Traceback" not in run.stderr and ".stemsplit" in run.stderr
    else:  # junk vouches for nothing and hangs nothing: drums.wav is the first run's, so it is replaced
        assert run.returncode == 0, run.stderr


def test_batch_notices_swapped_files_with_the_same_size_and_mtime(tmp_path, stub_checkpoint):
    """Unpacked from an archive, two songs have the same size and mtime; swapping them must not go unseen."""
    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav", scale=0.5)
    song(music / "b.wav", scale=0.05)
    for name in ("a.wav", "b.wav"):
        os.utime(music / name, ns=(10**18, 10**18))
    m = ["--model", stub_checkpoint, *FAST, "--json"]
    cli("batch", music, "-o", out, *m, check=0)
    os.rename(music / "a.wav", music / "t.wav")
    os.rename(music / "b.wav", music / "a.wav")
    os.rename(music / "t.wav", music / "b.wav")
    run = cli("batch", music, "-o", out, *m, check=0)
    events = json_events(run)
    done = sorted(os.path.basename(e["source"]) for e in events if e["event"] == "result")
    assert done == ["a.wav", "b.wav"]
    loud, _ = sf.read(out / "b" / "vocals.wav")  # b is the loud song now
    quiet, _ = sf.read(out / "a" / "vocals.wav")
    assert np.abs(loud).max() > 3 * np.abs(quiet).max()


def test_batch_does_not_depend_on_how_the_input_folder_is_spelled(tmp_path, stub_checkpoint):
    """Before: the same folder reached through a link was taken for other songs and separated again."""
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    song(music / "sub" / "a.wav")
    (tmp_path / "link").symlink_to(music)
    m = ["-o", "out", "--model", stub_checkpoint, *FAST, "--json"]
    events = {}
    for spelling in ("music/", "./link", str(tmp_path / "music" / "sub" / ".." / ".")):
        run = cli("batch", spelling, *m, cwd=tmp_path, check=0)
        events[spelling] = [json.loads(line)["event"] for line in run.stdout.splitlines()]
    assert [e.count("result") for e in events.values()] == [1, 0, 0], events
    assert [e.count("skipped") for e in events.values()] == [0, 1, 1], events
    assert files_under(tmp_path / "out", state=False) == [f"sub/a/{s}" for s in FOUR_STEMS]


def test_batch_separates_songs_that_share_a_name_in_one_folder(tmp_path, stub_checkpoint):
    """a.wav and a.flac side by side: both are separated (a and a (2)), not a usage error for the folder."""
    music = tmp_path / "music"
    music.mkdir()
    song(music / "a.wav")
    song(music / "a.flac", subtype="PCM_16")
    song(music / "b.wav")
    cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    folders = {p.split("/")[0] for p in files_under(tmp_path / "out", state=False)}
    assert folders == {"a", "a (2)", "b"}


def test_batch_never_plans_a_stem_file_where_another_song_needs_a_folder(tmp_path, stub_checkpoint):
    """a.wav writes out/a/drums.wav; a/drums.wav.wav writes into the folder out/a/drums.wav. Before: the
    second song failed after the first was done, telling the user to add --overwrite (which failed too)."""
    music = tmp_path / "music"
    (music / "a").mkdir(parents=True)
    song(music / "a.wav")
    song(music / "a" / "drums.wav.wav")
    result = cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path / "out", state=False) == sorted(
        [*(f"a (2)/{s}" for s in FOUR_STEMS), *(f"a/drums.wav/{s}" for s in FOUR_STEMS)]
    )


def test_a_stem_file_where_another_song_needs_a_folder_is_named_when_names_cannot_change(tmp_path):
    from stemsplit.output import OutputError, OutputOptions, SongSource, plan_outputs

    songs = [SongSource(tmp_path / "a.wav"), SongSource(tmp_path / "a" / "drums.wav.wav", "a")]
    out = tmp_path / "out"
    for order in (songs, songs[::-1]):  # a file where a folder goes, and a folder where a file goes
        with pytest.raises(OutputError, match=r"would both use .*/out/a/drums\.wav; put \{track\}"):
            plan_outputs(order, out, ["drums", "bass"], OutputOptions(), rename_duplicates=False)
    renamed = plan_outputs(songs, out, ["drums", "bass"], OutputOptions())  # the later song is renamed
    assert [p.track for p in renamed] == ["a", "drums.wav (2)"]
    assert renamed[1].paths["drums"] == out / "a" / "drums.wav (2)" / "drums.wav"
    assert [p.track for p in plan_outputs(songs[::-1], out, ["drums"], OutputOptions())] == [
        "drums.wav",
        "a (2)",
    ]
    # The clash in {folder}: no new {track} helps; both songs are named (before: 'cannot find a free name')
    deep = [SongSource(tmp_path / "a.wav"), SongSource(tmp_path / "a/drums.wav/y.wav", "a/drums.wav")]
    with pytest.raises(
        OutputError, match=r"a\.wav and .*/y\.wav would both use .*/out/a/drums\.wav; rename one"
    ):
        plan_outputs(deep, out, ["drums", "bass"], OutputOptions())


def test_batch_does_not_walk_its_own_output_or_hidden_files(tmp_path, stub_checkpoint):
    """Before: -o inside the input folder was separated again on every run, and the tree grew."""
    music = tmp_path / "music"
    (music / ".hidden").mkdir(parents=True)
    song(music / "a.wav")
    song(music / ".secret.wav")
    song(music / ".hidden" / "b.wav")
    out = music / "stems"
    m = ["--model", stub_checkpoint, *FAST]
    cli("batch", music, "-o", out, *m, check=0)
    first = files_under(out, state=False)
    assert first == [f"a/{s}" for s in FOUR_STEMS]
    cli("batch", music, "-o", out, *m, check=0)
    assert files_under(out, state=False) == first


def test_batch_into_its_own_input_folder_says_so(tmp_path):
    """Before: `batch music -o music` said 'no audio files found in music' (the walk skipped -o)."""
    music = tmp_path / "music"
    music.mkdir()
    song(music / "a.wav")
    result = cli("batch", music, "-o", music)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"--out: {music} is the input folder {music}: its stems would be taken for songs" in lines[0]
    assert os.listdir(music) == ["a.wav"]


def test_batch_into_a_folder_that_holds_its_input(tmp_path, stub_checkpoint):
    """Before: `batch music -o .` found no audio files (all of music lies inside -o, which was skipped)."""
    music = tmp_path / "music"
    music.mkdir()
    song(music / "a.wav")
    cli("batch", "music", "-o", ".", "--model", stub_checkpoint, *FAST, cwd=tmp_path, check=0)
    assert files_under(tmp_path, state=False) == sorted([f"a/{s}" for s in FOUR_STEMS] + ["music/a.wav"])


def test_batch_survives_a_symlink_loop_and_separates_a_file_once(tmp_path, stub_checkpoint):
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    song(music / "sub" / "a.wav")
    (music / "sub" / "loop").symlink_to(music)  # music/sub/loop/sub/loop/...
    (music / "same.wav").symlink_to(music / "sub" / "a.wav")  # the same file under another name
    result = cli("batch", music, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(files_under(tmp_path / "out", state=False)) == 4  # one song


def test_the_same_file_named_twice_is_separated_once(tmp_path, stub_checkpoint):
    song(tmp_path / "a.wav")
    result = cli(
        tmp_path / "a.wav", tmp_path / "." / "a.wav", "-o", tmp_path / "out", "--model", stub_checkpoint,
        *FAST, "--json", check=0,
    )  # fmt: skip
    assert [json.loads(x)["event"] for x in result.stdout.splitlines()].count("result") == 1
    assert files_under(tmp_path / "out") == [f"a/{s}" for s in FOUR_STEMS]


@pytest.mark.slow  # two full batch processes; test_claims_race_each_song_once covers the claim
def test_two_batch_processes_share_the_work_each_song_exactly_once(tmp_path, tiny_checkpoint):
    music = tmp_path / "music"
    music.mkdir()
    for i in range(4):
        song(music / f"{i}.wav", seconds=1.0 + 0.1 * i)
    exe = shutil.which("stemsplit")
    args = [
        exe,
        "batch",
        str(music),
        "-o",
        str(tmp_path / "out"),
        "--model",
        tiny_checkpoint,
        *FAST,
        "--json",
    ]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    done = [
        json.loads(line)["source"]
        for stdout, _ in outputs
        for line in stdout.splitlines()
        if json.loads(line)["event"] == "result"
    ]
    assert sorted(os.path.basename(s) for s in done) == ["0.wav", "1.wav", "2.wav", "3.wav"]
    assert len(files_under(tmp_path / "out", state=False)) == 16


def test_a_dead_processs_claim_is_taken_over(tmp_path, stub_checkpoint):
    from stemsplit.batch import Claim
    from stemsplit.files import host_tag
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    [planned] = plan_outputs(
        [SongSource(music / "a.wav")], out, [s[:-4] for s in FOUR_STEMS], OutputOptions()
    )
    claim = Claim(out, planned)
    claim.path.parent.mkdir(parents=True)
    claim.path.write_text(json.dumps({"host": host_tag(), "pid": dead_pid(), "token": "x"}))
    cli("batch", music, "-o", out, "--model", stub_checkpoint, *FAST, check=0)
    assert files_under(out, state=False) == [f"a/{s}" for s in FOUR_STEMS]


def test_a_live_claim_is_respected(tmp_path):
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    [planned] = plan_outputs([SongSource(tmp_path / "a.wav")], tmp_path / "out", ["x"], OutputOptions())
    first, second = Claim(tmp_path / "out", planned), Claim(tmp_path / "out", planned)
    assert first.acquire() and not second.acquire()
    assert str(os.getpid()) in second.holder
    first.release()
    assert second.acquire()


def test_templates_that_give_the_same_paths_share_the_claim(tmp_path):
    """Before: '{folder}/{track}/...' (a song with no folder) and '{track}/...' wrote the same files under
    two claims, so two runs could write them at once."""
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    out, claims = tmp_path / "out", []
    for template in ("{folder}/{track}/{stem}.{ext}", "{track}/{stem}.{ext}"):
        options = OutputOptions(filename=template)
        [planned] = plan_outputs([SongSource(tmp_path / "a.wav")], out, ["x"], options)
        claims.append((planned, Claim(out, planned, template)))
    assert claims[0][0].paths == claims[1][0].paths
    assert claims[0][1].acquire() and not claims[1][1].acquire()
    claims[0][1].release()


def test_a_batch_with_other_settings_does_not_mix_its_stems_into_a_running_one(tmp_path, stub_checkpoint):
    """Before: a wav run skipped a song that a flac run held ('being separated'), exit 0; and a run with
    other --stems claimed another slot and wrote the same vocals file beside the other run."""
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    music, out = tmp_path / "music", tmp_path / "out"
    music.mkdir()
    song(music / "a.wav")
    cli("batch", music, "-o", out, "--format", "flac", "--model", stub_checkpoint, *FAST, check=0)
    [record] = (out / ".stemsplit" / "done").glob("*.json")
    flac_settings = json.loads(record.read_text())["settings"]
    song(music / "a.wav", scale=0.1)  # changed: the flac run below separates it again
    [planned] = plan_outputs([SongSource(music / "a.wav")], out, ["vocals"], OutputOptions(fmt="flac"))
    running = Claim(out, planned, settings={**flac_settings, "stems": ["vocals"]})  # this process holds it
    assert running.acquire()
    before = files_under(out, state=False)
    for extra in ([], ["--stems", "vocals"]):
        result = cli("batch", music, "-o", out, *extra, "--model", stub_checkpoint, *FAST)
        errors = [line for line in result.stderr.splitlines() if line.startswith("stemsplit: error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr
        assert f"a.wav: being separated by process {os.getpid()}" in errors[0]
        assert "with other settings (format" in errors[0] and "run again when it is done" in errors[0]
        assert files_under(out, state=False) == before  # no wav stem beside the flac run's
    running.release()


def test_claims_share_a_slot_across_stems_and_formats_and_say_what_differs(tmp_path):
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    def planned(stems, fmt):
        return plan_outputs(
            [SongSource(tmp_path / "a.wav")], tmp_path / "out", stems, OutputOptions(fmt=fmt)
        )[0]

    held = Claim(
        tmp_path / "out", planned(["x", "y"], "wav"), settings={"format": "wav", "stems": ["x", "y"]}
    )
    assert held.acquire()
    same = Claim(
        tmp_path / "out", planned(["x", "y"], "wav"), settings={"format": "wav", "stems": ["x", "y"]}
    )
    assert not same.acquire() and same.conflict == []  # the same run's work: skipped, as before
    other = Claim(tmp_path / "out", planned(["x"], "flac"), settings={"format": "flac", "stems": ["x"]})
    assert not other.acquire() and other.conflict == ["format", "stems"]
    elsewhere = Claim(tmp_path / "out", planned(["x"], "flac"), "{track}-{stem}.{ext}", {"format": "flac"})
    assert elsewhere.acquire()  # another template: another place, no conflict


def test_claims_race_each_song_once(tmp_path):
    """Eight threads race for one claim, many rounds: exactly one wins each time."""
    from stemsplit.batch import Claim
    from stemsplit.output import OutputOptions, SongSource, plan_outputs

    [planned] = plan_outputs([SongSource(tmp_path / "a.wav")], tmp_path / "out", ["x"], OutputOptions())
    for _ in range(20):
        claims = [Claim(tmp_path / "out", planned) for _ in range(8)]
        won: list[bool] = []
        barrier = threading.Barrier(8)

        def race(claim, won=won, barrier=barrier):
            barrier.wait()
            won.append(claim.acquire())

        threads = [threading.Thread(target=race, args=(c,)) for c in claims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert won.count(True) == 1
        next(c for c in claims if c.path.exists() and c._read()["token"] == c.token).release()


# --- 5. one line, never a traceback, never markup ----------------------------------------------------


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


# --- 6. the Python API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separator():
    """The engine around the stand-in network (stage 1 sums to the mixture, as the golden model's does)."""
    from stemsplit.separate import Separator

    return Separator(StubNet(StubConfig()).eval(), stage=1, window=1.0, hop=0.5, device="cpu")


def test_api_refuses_transposed_audio_with_a_hint(separator):
    from stemsplit.separate import SeparationError

    with pytest.raises(SeparationError, match=r"pass audio\.T"):
        separator.separate(np.zeros((RATE, 2), np.float32), RATE)


def test_api_scales_integer_pcm_by_its_type(separator):
    rng = np.random.default_rng(0)
    pcm = (rng.uniform(-0.5, 0.5, (2, RATE)) * 32768).astype(np.int16)
    stems = separator.separate(pcm, RATE)
    assert np.abs(sum(stems.values()) - pcm / 32768).max() < 1e-5  # stage 1 sums to the scaled mixture
    unsigned = (pcm.astype(np.int32) // 256 + 128).astype(np.uint8)
    stems = separator.separate(unsigned, RATE)
    assert np.abs(sum(stems.values()) - (unsigned - 128.0) / 128).max() < 1e-5


def test_api_refuses_samples_that_are_not_audio(separator):
    from stemsplit.separate import SeparationError

    audio = np.zeros((2, RATE), np.float32)
    audio[1, 100] = -1e30
    with pytest.raises(SeparationError, match=r"sample 100 is -1e\+30, beyond ±1e\+06: not audio"):
        separator.separate(audio, RATE)


@pytest.mark.parametrize(
    "rate",
    [0, 1, -44100, 44100.5, float("nan"), "fast", "44100", True, 10**7, pytest.param(10**400, id="10**400")],
)
def test_api_checks_the_sample_rate(separator, rate):
    from stemsplit.separate import SeparationError

    with pytest.raises(SeparationError, match="sample rate"):
        separator.separate(np.zeros((2, RATE), np.float32), rate)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"window": 1e9}, "window"),
        ({"hop": 0}, "hop"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_api_settings_name_the_option(golden_model, kwargs, option):
    from stemsplit.separate import SeparationError, Separator

    with pytest.raises(SeparationError) as error:
        Separator(golden_model, **kwargs)
    assert error.value.option == option and "--" not in str(error.value)  # the library names no flags


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"exact": "no"}, "exact"),
        ({"stage": True}, "stage"),
        ({"window": "3"}, "window"),
        ({"hop": "0.5"}, "hop"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"precision": ["fp32"]}, "precision"),
        ({"model": 123}, "model"),
        ({"stems": ["vocals", "vocals", "drums", "bass"]}, "stems"),
        ({"normalization": "z-score"}, "normalization"),
    ],
)
def test_api_refuses_settings_of_the_wrong_type(kwargs, option, stub_checkpoint):
    """Before: exact="no" ran as exact, stage=True as stage 1; window="3", model=123 were deep TypeErrors."""
    from stemsplit.separate import SeparationError, Separator

    with pytest.raises(SeparationError) as error:
        Separator(kwargs.pop("model", stub_checkpoint), device="cpu", **kwargs)
    assert error.value.option == option, error.value


def test_api_refuses_an_absurd_sample_rate_for_a_model(golden_model):
    from stemsplit.separate import SeparationError, Separator

    with pytest.raises(
        SeparationError, match=r"sample rate must be a whole number of Hz .*\(401 characters\)"
    ):
        Separator(golden_model, sample_rate=10**400, device="cpu")


def test_api_takes_a_bf16_tensor_and_refuses_a_meta_one(separator):
    import torch

    from stemsplit.separate import SeparationError

    audio = torch.from_numpy(np.random.default_rng(0).uniform(-0.3, 0.3, (2, RATE)).astype(np.float32))
    stems = separator.separate(audio.to(torch.bfloat16), RATE)
    assert np.abs(sum(stems.values()) - audio.to(torch.bfloat16).float().numpy()).max() < 1e-5  # stage 1
    with pytest.raises(SeparationError, match=r"audio: a torch\.float32 tensor on meta holds no samples"):
        separator.separate(torch.empty(2, RATE, device="meta"), RATE)
