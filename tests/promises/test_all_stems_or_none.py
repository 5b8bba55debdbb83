"""A song's stems appear all together or not at all, and nothing is left behind: a full disk, a folder
or link raced in, a failed rename, a power cut mid-commit, signals, SIGKILL (docs/guarantees.md, "All
stems or none")."""

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    FAST,
    FOUR_STEMS,
    RATE,
    cli,
    files_under,
    python,
    run_until_windows,
    song,
)


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
