"""A song that changes or goes during a run is named as such, never blamed on batch's records; records
that cannot be written still are. In this process (``cli``), the change made when the first song begins.
"""

import os

import pytest
import soundfile as sf
from helpers import FAST, FOUR_STEMS, cli, files_under, json_events, song

from stemsplit.cli import separate as cli_separate


@pytest.fixture
def during_first_song(monkeypatch):
    """Run ``change()`` once, when the run's first song begins (the others wait their turn)."""

    def install(change):
        begin = cli_separate.Reporter.begin_song
        done = []

        def begin_song(self, path):
            if not done:
                done.append(change())
            return begin(self, path)

        monkeypatch.setattr(cli_separate.Reporter, "begin_song", begin_song)

    return install


@pytest.mark.parametrize("how", ["removed", "renamed"])
@pytest.mark.parametrize("command", ["batch", "separate"])
def test_a_song_that_goes_before_its_turn_is_named_not_blamed_on_records(
    tmp_path, stub_checkpoint, during_first_song, how, command
):
    """Before: 'b.wav: No such file or directory (batch's records)' (and for separate, a decoding error)."""
    music = tmp_path / "music"
    music.mkdir()
    song(music / "a.wav")
    song(music / "b.wav")
    gone = music / "b.wav"
    during_first_song(lambda: os.unlink(gone) if how == "removed" else os.rename(gone, tmp_path / "b.wav"))
    inputs = [music] if command == "batch" else [music / "a.wav", gone]
    result = cli(command, *inputs, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, "--json")
    assert result.returncode == 1
    (error,) = [e for e in json_events(result) if e["event"] == "error"]
    assert error["message"].startswith(f"{gone}: changed or went while it was read (it is gone")
    assert "records" not in error["message"]
    assert files_under(tmp_path / "out" / "a") == FOUR_STEMS and not (tmp_path / "out" / "b").exists()


def test_a_song_replaced_before_its_turn_is_read_as_it_is_now(tmp_path, stub_checkpoint, during_first_song):
    """Replaced by a mono file at another rate between the run's start (when it was probed) and its turn:
    separated as the new file, not read with the old file's length, rate and channels."""
    song(tmp_path / "a.wav")
    song(tmp_path / "b.wav", seconds=1.3)
    during_first_song(lambda: song(tmp_path / "b.wav", seconds=2.0, rate=22050, channels=1))
    args = [tmp_path / "a.wav", tmp_path / "b.wav", "-o", tmp_path / "out", "--model", stub_checkpoint]
    cli(*args, *FAST, check=0)
    info = sf.info(str(tmp_path / "out" / "b" / "vocals.wav"))
    assert (info.channels, info.samplerate, info.frames) == (1, 22050, 44100)


def test_records_that_cannot_be_written_are_still_named_batchs_records(tmp_path, stub_checkpoint):
    """The label stays where it is true: OUT/.stemsplit/done taken by a file."""
    (tmp_path / "music").mkdir()
    song(tmp_path / "music" / "a.wav")
    (tmp_path / "out" / ".stemsplit").mkdir(parents=True)
    (tmp_path / "out" / ".stemsplit" / "done").write_text("in the way")
    result = cli("batch", tmp_path / "music", "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1
    assert "(batch's records)" in result.stderr and str(tmp_path / "out" / ".stemsplit") in result.stderr
