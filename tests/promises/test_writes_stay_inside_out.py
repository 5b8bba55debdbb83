"""Nothing is written outside ``-o``: dotted names, links in the output folder (found or raced in), the
longest legal names, the input songs themselves (docs/guarantees.md, "Nothing outside the output
folder")."""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    FAST,
    FOUR_STEMS,
    RATE,
    cli,
    files_under,
    song,
)


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
