"""train and finetune check what they are asked before any work, in one line naming the flag (issue 33,
part 6): a mixture or a stem named twice in --stems, a run folder inside the dataset, the option errors
before "last.pt exists"; tracks shorter than the crop are said in one line; a full disk is one line."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from helpers import RATE, cli, files_under, fill_disk, run_train, tiny_toml, train_args, write_track

# One training step and no validation: what a test of the run's checks and files needs.
ONE_STEP = ["--epochs", "1", "--epoch-size", "2", "--valid-tracks", "0"]


def one_error_line(result, status: int = 2) -> str:
    """The command failed with ``status`` in one line without a traceback; that line."""
    assert result.returncode == status, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemsplit: error: "), result.stderr
    return lines[0].removeprefix("stemsplit: error: ")


@pytest.mark.parametrize("stems", ["mixture", "drums,bass,other,vocals,mixture", "vocals, mixture"])
def test_the_mixture_is_no_stem(stems, tiny_musdb, tmp_path):
    """Before: --stems mixture trained the identity (each example's input is the sum of its stems) and
    reported it as a 40 dB separation."""
    out = tmp_path / "run"
    message = one_error_line(run_train(train_args(tiny_musdb, out, "--stems", stems, *ONE_STEP)))
    assert message == (
        "--stems: mixture is the input, not a stem (each training mixture is the sum of the stems); "
        "name only the stems"
    )
    assert not out.exists()


def test_a_stem_named_twice_is_blamed_on_stems(tiny_musdb, tmp_path):
    """Before: "tiny.toml: the network cannot be built ... (stems must be distinct names ...)"."""
    out = tmp_path / "run"
    message = one_error_line(
        run_train(train_args(tiny_musdb, out, "--stems", "vocals,drums,vocals", *ONE_STEP))
    )
    assert message == "--stems: vocals is named twice (vocals, drums, vocals); name each stem once"
    assert not out.exists()


@pytest.mark.parametrize("where", ["inside", "itself", "dotdot", "link"])
def test_the_run_folder_is_never_inside_the_dataset(where, tiny_musdb, tmp_path):
    """Before: `train -o MUSDB/run` wrote checkpoints and logs among the tracks."""
    before = files_under(tiny_musdb)
    out = {
        "inside": tiny_musdb / "train" / "runs",
        "itself": tiny_musdb,
        "dotdot": tiny_musdb / "train" / ".." / "run",
        "link": tmp_path / "musdb-link" / "run",
    }[where]
    (tmp_path / "musdb-link").symlink_to(tiny_musdb)  # a link to the dataset is the dataset
    message = one_error_line(run_train(train_args(tiny_musdb, out)))
    assert (
        message
        == f"--out: {out} is inside the --musdb folder {tiny_musdb}; write the run outside the dataset"
    )
    assert files_under(tiny_musdb) == before


def test_finetune_writes_outside_its_datasets_too(tiny_musdb, tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    sf.write(songs / "a.wav", np.zeros((RATE, 2), np.float32), RATE)
    common = ["finetune", "--model", "demo", "--musdb", tiny_musdb, "--unlabeled", songs, "--device", "cpu",
              "--batch-size", "2", "--workers", "0", *ONE_STEP]  # fmt: skip
    for out, flag, folder in (
        (songs / "ft", "--unlabeled", songs),
        (tiny_musdb / "ft", "--musdb", tiny_musdb),
    ):
        message = one_error_line(cli(*common, "-o", out))
        assert (
            message == f"--out: {out} is inside the {flag} folder {folder}; write the run outside the dataset"
        )
        assert not out.exists()


def test_option_errors_come_before_the_run_folder(tiny_musdb, tmp_path):
    """A run folder with last.pt: "add --resume" is said only of a command that would otherwise run, so
    the user is never sent to --resume with a command that then fails on its flags."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"")
    cases = {
        ("--stems", "vocals,vocals"): "--stems: vocals is named twice",
        ("--lr", "0"): "--lr must be a finite number above 0",
        (
            "--model-config",
            tmp_path / "missing.toml",
        ): f"{tmp_path / 'missing.toml'}: cannot read model config",
        ("--device", "cuda:7"): "--device:",
    }
    for flags, start in cases.items():  # (a flag train_args gives too is given again: the last one counts)
        assert one_error_line(run_train(train_args(tiny_musdb, out, *flags))).startswith(start), flags
    bad_dataset = tmp_path / "empty"
    bad_dataset.mkdir()
    (bad_dataset / "tiny.toml").write_text(tiny_toml())
    assert one_error_line(run_train(train_args(bad_dataset, out))).startswith("--musdb: ")
    # All flags fine: now the folder is the problem.
    assert one_error_line(run_train(train_args(tiny_musdb, out))) == (
        f"{out / 'last.pt'} exists: add --resume to continue that run, or choose another --out"
    )


@pytest.fixture(scope="module")
def musdb_with_a_short_track(tmp_path_factory):
    """Three 4 s training tracks and one of 0.4 s, and a validation track."""
    root = tmp_path_factory.mktemp("short-musdb")
    t = np.arange(4 * RATE) / RATE
    for k, (name, seconds) in enumerate(
        [("Long A", 4), ("Long B", 4), ("Cut Short", 0.4), ("Actions - One Minute Smile", 4)]
    ):
        frames = int(seconds * RATE)
        stems = {
            stem: np.sin(2 * np.pi * (110 * (i + 1) + 10 * k) * t[:frames])[:, None] * 0.2
            for i, stem in enumerate(("drums", "bass", "other", "vocals"))
        }
        write_track(root / "train" / name, {s: np.repeat(m, 2, axis=1) for s, m in stems.items()}, RATE)
    (root / "tiny.toml").write_text(tiny_toml())
    return root


def test_tracks_shorter_than_the_crop_are_said_before_the_first_step(musdb_with_a_short_track, tmp_path):
    """Before: their crops were padded with silence without a word. Kept (a short track still teaches,
    and Libri2Mix has short mixtures), said once, before the first epoch."""
    args = train_args(musdb_with_a_short_track, tmp_path / "run", *ONE_STEP)
    result = run_train(args)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    said = [n for n, line in enumerate(lines) if line.startswith("--crop-seconds")]
    assert lines[said[0]] == (
        "--crop-seconds 1: 1 of 3 training tracks is shorter (Cut Short 0.4 s); their examples are padded "
        "with silence after their end"
    )
    assert len(said) == 1 and said[0] < next(n for n, line in enumerate(lines) if line.startswith("epoch 1/"))


def test_training_on_a_full_disk_is_one_line(tiny_musdb, small_disk):
    """Before: torch.save's RuntimeError on a full disk was an internal error (exit 70) in its words."""
    fill_disk(small_disk, 20_000)
    out = small_disk / "run"
    result = run_train(train_args(tiny_musdb, out, *ONE_STEP))
    errors = [line for line in result.stderr.splitlines() if line.startswith("stemsplit: error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors == [
        f"stemsplit: error: {out}: writing the run's files failed: no space left on device; "
        "make room and run the same command again"
    ]
    assert not [name for name in files_under(out) if name.endswith(".tmp")]  # no half-written file left
