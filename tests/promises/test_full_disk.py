"""A full disk is one line, in the same words whichever writer meets it, and the same command run again
once there is room finishes the work (issue 33, part 6). On a real 3 MB tmpfs (``small_disk``).

(Training's full disk: tests/cli/test_train_checks.py; the stems' temporaries:
tests/unit/audio/test_audio_truth.py.)"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from helpers import FAST, RATE, cli, files_under, fill_disk

from stemsplit.files import DISK_FULL

# Four 0.5 s songs of five 16-bit stereo files each: about 1.8 MB in all.
SYNTH = ["--songs", "3", "--valid", "1", "--test", "0", "--seconds", "0.5", "--seed", "4"]


def digest(folder) -> dict[str, str]:
    """Every file under ``folder`` (the request record aside) by its sha256."""
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in files_under(folder)
        if name != "synth-request.json"
    }


def test_synth_on_a_full_disk_is_one_line_and_the_rerun_finishes_it(small_disk, tmp_path):
    """Before: an internal error (LibsndfileError: System error.), exit 70, and a skeleton (train/,
    valid.txt) that the same command then refused as "not an empty folder"."""
    fill_disk(small_disk, 1_000_000)  # room for two songs
    out = small_disk / "synth"
    result = cli("synth", out, *SYNTH)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"stemsplit: error: {out / 'train'}/song-0000")
    assert line.endswith(
        f": writing the song failed: {DISK_FULL}; the finished songs stay in {out}: make room and run "
        "the same command again to finish it"
    )
    made = sorted(p.name for p in (out / "train").iterdir())
    assert made and len(made) < 4 and not [n for n in made if n.startswith(".")]  # whole songs only
    (small_disk / "filler").unlink()
    result = cli("synth", out, *SYNTH)
    assert result.returncode == 0, result.stderr
    # The dataset is the one a single run makes.
    cli("synth", tmp_path / "whole", *SYNTH, check=0)
    assert digest(out) == digest(tmp_path / "whole")
    assert json.loads((out / "synth-request.json").read_text())["seed"] == 4


def test_synth_speech_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk):
    """synth-speech writes all or nothing: on a full disk, one line in the words of every failed write
    (before: an internal error), no folder left behind, so the same command runs again once there is room."""
    if not (shutil.which("espeak-ng") and importlib.util.find_spec("pyroomacoustics")):
        pytest.skip("needs espeak-ng and pyroomacoustics")
    fill_disk(small_disk, 64 * 1024)
    out = small_disk / "speech"
    args = ["synth-speech", out, "--train", "2", "--dev", "1", "--test", "0", "--seconds", "2"]
    result = cli(*args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"stemsplit: error: {out}: writing the dataset failed: {DISK_FULL}; nothing was written"
    ]
    assert not out.exists()
    (small_disk / "filler").unlink()
    assert cli(*args).returncode == 0


def test_synth_again_with_other_settings_names_them(tmp_path):
    out = tmp_path / "synth"
    cli("synth", out, *SYNTH, check=0)
    before = digest(out)
    changed = [*SYNTH[:-1], "5"]  # another seed
    result = cli("synth", out, *changed)
    assert result.returncode == 2
    assert result.stderr == (
        f"stemsplit: error: {out}: an unfinished synth dataset made with other settings (--seed 5 (was 4)); "
        "run its own command again to finish it, or choose a new folder\n"
    )
    assert digest(out) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text(
        ""
    )  # a folder that is not a synth dataset: refused as before
    assert cli("synth", tmp_path / "mine", *SYNTH).returncode == 2


def test_the_stems_on_a_full_disk_say_it_in_the_same_words(small_disk, tmp_path, stub_checkpoint):
    """The stems' writer (libsndfile says only "System error.") and batch's records (an OSError) say
    what synth and training say."""
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (RATE, 2)).astype(np.float32)
    (tmp_path / "music").mkdir()
    sf.write(tmp_path / "music" / "s.wav", noise, RATE, subtype="FLOAT")
    fill_disk(small_disk, 64 * 1024)
    for command in (["separate"], ["batch"]):
        source = tmp_path / "music" / ("s.wav" if command == ["separate"] else "")
        result = cli(*command, source, "-o", small_disk / "out", "--model", stub_checkpoint, *FAST)
        errors = [line for line in result.stderr.splitlines() if line.startswith("stemsplit: error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr
        assert (
            f": {DISK_FULL}" in errors[0] and "No space" not in errors[0] and "System error" not in errors[0]
        )
