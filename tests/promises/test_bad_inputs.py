"""One bad input never stops the others, and each is said once, in one line, before any window runs
(issue 33, part 6): names that libsndfile or FFmpeg would read as something else (``x.raw``,
``file:x.m4a``), a decoder's surprise, a rate the output format cannot carry, the songs' problems
before the model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from helpers import FAST, FOUR_STEMS, RATE, aac_file, cli, files_under, json_events, music


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("stemsplit: error:")]


def separated(out) -> list[str]:
    """The songs that got their four stems under ``out``."""
    songs = {}
    for name in files_under(out):
        track, _, stem = name.rpartition("/")
        songs.setdefault(track, []).append(stem)
    return sorted(track for track, stems in songs.items() if sorted(stems) == FOUR_STEMS)


@pytest.mark.parametrize("name", ["x.raw", "x.RAW", "x.pcm"])
def test_headerless_samples_fail_alone_in_one_line(name, tmp_path, stub_checkpoint):
    """Before: soundfile took .raw for its headerless format and asked for a rate (TypeError): an
    internal error, exit 70, and the other songs were never separated."""
    sf.write(tmp_path / "a.wav", music(0.4), RATE)
    (tmp_path / name).write_bytes(music(0.4).tobytes())  # bare float32 samples
    sf.write(tmp_path / "b.wav", music(0.4), RATE)
    songs = [tmp_path / "a.wav", tmp_path / name, tmp_path / "b.wav"]
    result = cli(*songs, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [
        f"stemsplit: error: {tmp_path / name}: headerless samples (no header says their rate, channels or "
        "encoding); give the file a header first (e.g. sox or ffmpeg to WAV)"
    ]
    assert separated(tmp_path / "out") == ["a", "b"]


def test_a_real_audio_file_named_raw_is_read_by_its_header(tmp_path, stub_checkpoint):
    """The bytes decide the format, never the name: a WAV saved as .raw is a WAV."""
    audio = music(0.4)
    sf.write(tmp_path / "take.raw", audio, RATE, format="WAV", subtype="FLOAT")
    result = cli(tmp_path / "take.raw", "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, "--json")
    assert result.returncode == 0, result.stderr
    assert separated(tmp_path / "out") == ["take"]
    (start,) = [e for e in json_events(result) if e["event"] == "start"]
    assert start["seconds"] == pytest.approx(len(audio) / RATE)


@pytest.mark.parametrize("name", ["file:x.m4a", "concat:x.m4a", "subfile:x.m4a"])
def test_names_that_look_like_ffmpeg_protocols_are_files(name, tmp_path, stub_checkpoint):
    """Before: FFmpeg read "file:x.m4a" as the file x.m4a ("a damaged MP4"), and "pipe:0.m4a" would have
    read standard input, "http:..." the network. The file named is the file read."""
    aac_file(tmp_path / name, music(0.5))
    result = cli(name, "-o", "out", "--model", stub_checkpoint, *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert separated(tmp_path / "out") == [name.removesuffix(".m4a")]


def test_a_decoder_surprise_fails_that_song_alone(tmp_path, stub_checkpoint, monkeypatch):
    """Whatever a decoder raises for one file (a bug of ours or a library's), that song fails in one line
    saying so and the others are separated; --debug still shows the traceback."""
    from stemsplit.engine import request  # the pre-flight's probe of every input

    real_probe = request.probe

    def probe(path, stream=None):
        if str(path).endswith("odd.wav"):
            raise TypeError("samplerate must be specified")
        return real_probe(path, stream)

    monkeypatch.setattr(request, "probe", probe)
    for name in ("a.wav", "odd.wav", "b.wav"):
        sf.write(tmp_path / name, music(0.4), RATE)
    songs = [tmp_path / n for n in ("a.wav", "odd.wav", "b.wav")]
    result = cli(*songs, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [
        f"stemsplit: error: {tmp_path / 'odd.wav'}: internal error reading it: TypeError: samplerate must be "
        "specified (run again with --debug and report it)"
    ]
    assert separated(tmp_path / "out") == ["a", "b"]
    debug = cli(*songs, "-o", tmp_path / "dbg", "--model", stub_checkpoint, *FAST, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "TypeError" in debug.stderr


@pytest.mark.parametrize("rate", [705_600, 655_351])
def test_a_rate_flac_cannot_carry_fails_before_any_window(rate, tmp_path, stub_checkpoint):
    """Before: a 705.6 kHz song was separated whole, then "flac does not support this sample rate"."""
    sf.write(tmp_path / "dxd.wav", music(0.05, rate=rate), rate)
    sf.write(tmp_path / "cd.wav", music(0.4), RATE)
    songs = [tmp_path / "dxd.wav", tmp_path / "cd.wav"]
    result = cli(
        *songs, "-o", tmp_path / "out", "--format", "flac", "--model", stub_checkpoint, *FAST, "--json"
    )
    assert result.returncode == 1, result.stderr
    assert error_lines(result) == [
        f"stemsplit: error: {tmp_path / 'dxd.wav'}: {rate} Hz is more than flac can carry (655350 Hz at "
        "most); write it with --format wav, or resample the song first"
    ]
    events = json_events(result)
    assert [e["source"] for e in events if e["event"] == "song"] == [str(tmp_path / "cd.wav")]  # no windows
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cd"]
    # The way out works, and flac takes the highest rate it carries.
    cli(tmp_path / "dxd.wav", "-o", tmp_path / "wav", "--model", stub_checkpoint, *FAST, check=0)
    assert sf.info(tmp_path / "wav" / "dxd" / "vocals.wav").samplerate == rate
    sf.write(tmp_path / "top.wav", music(0.05, rate=655_350), 655_350)
    cli(
        tmp_path / "top.wav",
        "-o",
        tmp_path / "f",
        "--format",
        "flac",
        "--model",
        stub_checkpoint,
        *FAST,
        check=0,
    )
    assert sf.info(tmp_path / "f" / "top" / "vocals.flac").samplerate == 655_350


def test_the_writer_refuses_the_rate_before_creating_anything(tmp_path):
    """The same check where the stems are written (a song edited between the check and its turn)."""
    from stemsplit.output import OutputError, OutputOptions, SongSource, StemWriter, plan_outputs

    options = OutputOptions(fmt="flac")
    [song] = plan_outputs([SongSource(tmp_path / "s.wav")], tmp_path / "out", ["a", "b"], options)
    with pytest.raises(OutputError, match="705600 Hz is more than flac can carry"):
        StemWriter(song, options, 705_600, 2)
    assert not (tmp_path / "out").exists()


def test_the_songs_problems_come_before_the_models(tmp_path):
    """`stemsplit -- -x.wav -o o`: everything after -- is a file. Before: the model's error alone was
    printed (here a checkpoint that is not one; a download that fails likewise) and the songs' problems
    (no files named -o and o) were never seen."""
    sf.write(tmp_path / "-x.wav", music(0.3), RATE)
    (tmp_path / "junk.th").write_bytes(b"\x00\x01junk" * 100)
    result = cli("--model", "junk.th", "--", "-x.wav", "-o", "o", cwd=tmp_path)
    assert result.returncode == 1
    assert error_lines(result) == [
        "stemsplit: error: -o: no such file (after --, every argument is a file: give the options before --)",
        "stemsplit: error: o: no such file",
        "stemsplit: error: junk.th: not a readable checkpoint: unknown bytes: neither a ZIP archive "
        "(PyTorch's format) nor a pickle",
    ]
    assert files_under(tmp_path) == ["-x.wav", "junk.th"]


def test_each_failed_song_says_its_error_once(tmp_path, stub_checkpoint):
    """Before: each failure was printed twice, as its error line and again in the summary."""
    (tmp_path / "notes.wav").write_text("not audio\n")
    sf.write(tmp_path / "ok.wav", music(0.4), RATE)
    songs = [tmp_path / "notes.wav", tmp_path / "missing.wav", tmp_path / "ok.wav"]
    result = cli(*songs, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST)
    assert result.returncode == 1
    assert result.stderr.count("not an audio file (a text file)") == 1
    assert result.stderr.count("no such file") == 1
    assert f"{tmp_path / 'notes.wav'}: failed (the error above)" in result.stderr
    assert f"{tmp_path / 'ok.wav'}: done: 4 stems" in result.stderr
    # --json: one error event for each, and nothing on stderr but the error lines.
    result = cli(*songs, "-o", tmp_path / "out2", "--model", stub_checkpoint, *FAST, "--json")
    errors = [e for e in json_events(result) if e["event"] == "error"]
    assert [e["source"] for e in errors] == [str(songs[0]), str(songs[1])]
    assert len(error_lines(result)) == 2 and len(result.stderr.splitlines()) == 2
    assert all(json.loads(line) for line in result.stdout.splitlines())


def test_every_song_failing_says_each_once(tmp_path, stub_checkpoint):
    (tmp_path / "a.wav").write_bytes(np.arange(64, dtype=np.uint8).tobytes())
    result = cli(tmp_path / "a.wav", tmp_path / "b.wav", "-o", tmp_path / "out", "--model", stub_checkpoint)
    assert result.returncode == 1 and len(error_lines(result)) == 2, result.stderr
    assert not (tmp_path / "out").exists()
