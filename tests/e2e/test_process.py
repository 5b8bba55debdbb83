"""The real ``stemsplit`` command in a fresh process, where a fresh process is the point: the installed
console script and ``python -m stemsplit``, a umask and an rlimit set before it starts, SIGINT (and
SIGTERM to ``stemsplit synth``), and a usage error found before torch is imported. Every other command
test runs in this process (tests/cli/).

Moved here from test_cli.py and test_cli_separate.py (and test_synth.py), unchanged.
"""

import os
import resource
import shutil
import signal
import subprocess
import time

import pytest
from helpers import (
    FAST,
    files_under,
    python,
    run_until_windows,
    song,
    stemsplit,
    stemsplit_without_torch,
)

from stemsplit import __version__
from stemsplit.card import MUSIC_STEMS


def test_console_script_is_installed():
    assert shutil.which("stemsplit"), "pip install . should put a stemsplit command on PATH"


def test_version():
    result = stemsplit("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"stemsplit {__version__}"


def test_module_entry_point(tmp_path):
    result = python("-m", "stemsplit", "--version")
    assert result.returncode == 0 and result.stdout.startswith("stemsplit ")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_stems_get_the_permissions_of_ordinary_files(tmp_path, tiny_checkpoint, umask, mode):
    """Temporary files are renamed into place: the stems must still get 0666 minus the umask."""
    song(tmp_path / "song.wav")
    out = tmp_path / "stems"
    for fmt in ("wav", "flac"):  # float wav is streamed in place; flac goes through a transcode
        stemsplit(
            tmp_path / "song.wav", "-o", out / fmt, "--model", tiny_checkpoint, "--format", fmt, *FAST,
            check=0, preexec_fn=lambda: os.umask(umask),
        )  # fmt: skip
        for path in (out / fmt / "song").iterdir():
            assert path.stat().st_mode & 0o777 == mode, path


def test_disk_full_while_writing(tmp_path, tiny_checkpoint):
    """RLIMIT_FSIZE makes writes past 200 kB fail like a full disk does."""
    song(tmp_path / "s.wav", seconds=3.0)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = stemsplit(
        tmp_path / "s.wav",
        "-o",
        tmp_path / "out",
        "--model",
        tiny_checkpoint,
        *FAST,
        preexec_fn=limit_file_size,
    )
    assert result.returncode == 1, result.stderr
    assert "writing stems into" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # no stems, no temporaries, no empty folders


def test_ctrl_c_mid_song_leaves_nothing(tmp_path, tiny_checkpoint):
    song(tmp_path / "long.wav", seconds=30.0)
    proc = run_until_windows(
        [tmp_path / "long.wav", "-o", tmp_path / "out", "--model", tiny_checkpoint, *FAST]
    )
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert files_under(tmp_path / "out") == []


def test_stems_of_a_checkpoint_file_are_checked_before_torch(tmp_path):
    """A safetensors file that names its stems: '--stems guitar' is a usage error before torch is imported."""
    from stemsplit.model import TSBSMamba2
    from stemsplit.weights.checkpoint import save_checkpoint

    model = TSBSMamba2(feature_dim=16, num_repeat_mask=1, num_repeat_map=1)
    save_checkpoint(model, tmp_path / "named.safetensors")
    song(tmp_path / "s.wav")
    argv = [tmp_path / "s.wav", "-o", tmp_path / "out", "--model", tmp_path / "named.safetensors"]
    result = stemsplit_without_torch(*argv, "--stems", "guitar")
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert "--stems: 'guitar' is not a stem of this model" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_terminated_synth_says_so_and_leaves_only_finished_songs(tmp_path):
    """Before: SIGTERM (a closed terminal sends SIGHUP) killed synth where it stood: no message, and the
    song being made left its hidden temporary folder in the dataset."""
    out = tmp_path / "synth"
    process = subprocess.Popen(
        [shutil.which("stemsplit"), "synth", str(out), "--songs", "40", "--valid", "0", "--test", "0",
         "--seconds", "8"],
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((out / "train").glob("song-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert (
        stderr
        == f"stemsplit: error: interrupted; the finished songs are in {out}: run the same command again to "
        "finish it\n"
    )
    made = sorted(p.name for p in (out / "train").iterdir())
    assert made and len(made) < 40 and all(name.startswith("song-") for name in made)  # no hidden leftovers
    for name in made:
        assert {p.name for p in (out / "train" / name).iterdir()} == {
            *(f"{s}.wav" for s in MUSIC_STEMS),
            "mixture.wav",
        }
