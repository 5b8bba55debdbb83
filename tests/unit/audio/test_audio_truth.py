"""The audio decides a song's length, not its header (issue 33, part 1), and nothing stops at 4 GiB on the
input side (part 2; the output side, the stem writer, is tests/unit/output/test_writer.py).

Every file is made here: WAVs by hand (their headers patched byte by byte, as
crashed recorders, pipes and streaming writers leave them), MP3 and Ogg with
libsndfile, MP4 with PyAV. Files over 4 GiB are sparse: their size is real,
their disk use is a few kilobytes.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import FAST, RATE, cli, json_events, music, tone

from stemsplit.audio import AudioError, probe, read_blocks
from stemsplit.audio.spliced import SplicedFile

STEMS = ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def read_all(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode through probe + read_blocks: (the audio, probe's notes)."""
    info = probe(path)
    return np.concatenate(list(read_blocks(info, 1 << 16))), info.notes


def pcm16(audio: np.ndarray, subtype: str = "PCM_16") -> np.ndarray:
    """``audio`` as libsndfile reads it back from a plain WAV (16-bit unless ``subtype`` says)."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, RATE, subtype=subtype, format="WAV")
    buffer.seek(0)
    return sf.read(buffer, dtype="float32", always_2d=True)[0]


def wav_parts(audio: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> tuple[bytearray, bytes]:
    """A WAV of ``audio`` split into (its header up to and including the data chunk's header, the audio)."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, subtype=subtype, format="WAV")
    data = buffer.getvalue()
    at = data.index(b"data")
    return bytearray(data[: at + 8]), data[at + 8 :]


def with_sizes(header: bytearray, riff: int, data: int) -> bytes:
    header[4:8] = struct.pack("<I", riff)
    header[-4:] = struct.pack("<I", data)
    return bytes(header)


# --- WAV: what the header says is not what is there -----------------------------------------------


@pytest.mark.parametrize(
    ("riff_size", "subtype", "channels"),
    [
        (0, "PCM_16", 2),
        (36, "PCM_16", 2),
        (0xFFFFFFFF, "PCM_16", 2),
        (0, "PCM_24", 1),
        (0, "FLOAT", 2),
        (0, "PCM_16", 6),  # WAVE_FORMAT_EXTENSIBLE
    ],
)
def test_wav_with_data_size_zero_is_read_to_its_end(riff_size, subtype, channels, tmp_path):
    """A recorder that crashed before finishing its header leaves data size 0 over all of its audio."""
    source = music(2.0, channels=channels)
    header, audio = wav_parts(source, subtype=subtype)
    path = tmp_path / "crashed.wav"
    path.write_bytes(with_sizes(header, riff_size, 0) + audio + b"\x01")  # and part of a frame: dropped
    decoded, notes = read_all(path)
    np.testing.assert_allclose(decoded, pcm16(source, subtype), atol=1e-6)
    assert any("says it holds no audio" in note for note in notes), notes


def test_wav_with_an_empty_data_chunk_then_other_chunks_has_no_audio(tmp_path):
    """Size 0 followed by a real chunk is an empty data chunk, not audio to the end."""
    header, _ = wav_parts(music(0.1))
    path = tmp_path / "empty.wav"
    listing = b"LIST" + struct.pack("<I", 12) + b"INFOISFT\0\0\0\0"
    path.write_bytes(with_sizes(header, len(header) - 8 + len(listing), 0) + listing)
    with pytest.raises(AudioError, match=r"contains no audio|not an audio file|damaged"):
        list(read_blocks(probe(path), 4096))


@pytest.mark.parametrize(
    "between", [b"", b"LIST\x04\x00\x00\x00INFO", b"note\x03\x00\x00\x00abc\x00"]
)  # odd: padded
def test_wav_with_two_data_chunks_keeps_both(between, tmp_path):
    first, second = music(1.0), music(0.7)[::-1].copy()
    header, audio_one = wav_parts(first)
    _, audio_two = wav_parts(second)
    body = (
        audio_one + between + b"data" + struct.pack("<I", len(audio_two)) + audio_two
    )  # header's own data chunk holds the first part
    path = tmp_path / "two.wav"
    path.write_bytes(with_sizes(header, len(header) - 8 + len(body), len(audio_one)) + body)
    decoded, notes = read_all(path)
    np.testing.assert_allclose(decoded, pcm16(np.concatenate([first, second])), atol=1e-6)
    assert any("2 data chunks" in note for note in notes), notes


def rf64(audio: np.ndarray, declared_bytes: int | None = None) -> bytes:
    """An RF64 WAV of ``audio`` (16-bit), its ds64 data size replaced by ``declared_bytes`` if given."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, RATE, subtype="PCM_16", format="RF64")
    data = bytearray(buffer.getvalue())
    assert data[:4] == b"RF64" and data[12:16] == b"ds64"
    if declared_bytes is not None:
        data[28:36] = struct.pack("<Q", declared_bytes)  # ds64: riff size (8 bytes), then data size
    return bytes(data)


def test_truncated_rf64_is_reported_as_truncated(tmp_path):
    """ds64 declares 8 GB, 3 s are there: truncated, before any separating."""
    path = tmp_path / "cut.wav"
    path.write_bytes(rf64(music(3.0), declared_bytes=8_000_000_000))
    with pytest.raises(AudioError) as error:
        probe(path)
    assert str(error.value) == f"{path}: truncated at 3.00 s (the file says {8e9 / 4 / RATE:.2f} s)"


def test_rf64_whole_reads_whole(tmp_path):
    source = music(1.5)
    path = tmp_path / "whole.wav"
    path.write_bytes(rf64(source))
    decoded, notes = read_all(path)
    np.testing.assert_allclose(decoded, pcm16(source), atol=1e-6)
    assert notes == ()


def test_wav_over_4_gib_with_unknown_sizes_is_read_to_its_real_end(tmp_path):
    """0xFFFFFFFF sizes (libsndfile, and ffmpeg writing to a pipe) over 4 GiB + 1 s of float audio (a
    sparse file): probe counts every frame, and the stretch read_blocks decodes reaches the last
    samples (read there, not all 4 GiB of silence: that takes a minute on a busy 2-core machine)."""
    rate = 8000
    header, _ = wav_parts(np.zeros((1, 2), np.float32), rate, subtype="FLOAT")
    header_bytes = with_sizes(header, 0xFFFFFFFF, 0xFFFFFFFF)
    frames = (1 << 32) // 8 + rate  # 8 bytes a frame
    end = np.full((rate, 2), 0.25, np.float32)
    end[-1] = [-0.5, 0.5]
    path = tmp_path / "long.wav"
    with open(path, "wb") as f:
        f.write(header_bytes)
        f.truncate(len(header_bytes) + frames * 8)
        f.seek(len(header_bytes) + (frames - rate) * 8)
        f.write(end.tobytes())
    with sf.SoundFile(path) as plain:
        assert plain.frames < (1 << 32) // 8  # libsndfile alone stops at 4 GiB
    info = probe(path)
    assert (info.frames, info.frames_exact) == (frames, True)
    assert any("0xFFFFFFFF" in note for note in info.notes), info.notes
    [segment] = info.segments
    with sf.SoundFile(SplicedFile(path, segment.parts)) as f:
        assert f.frames == frames
        f.seek(frames - 2 * rate)
        tail = f.read(dtype="float32", always_2d=True)
    np.testing.assert_array_equal(tail, np.concatenate([np.zeros((rate, 2), np.float32), end]))


def test_the_cli_separates_all_of_a_crashed_recording_and_says_so(tmp_path, stub_checkpoint):
    source = music(2.0)
    header, audio = wav_parts(source)
    path = tmp_path / "take.wav"
    path.write_bytes(with_sizes(header, 0, 0) + audio)
    result = cli(path, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    assert "says it holds no audio" in result.stdout + result.stderr
    for stem in STEMS:
        assert sf.info(str(tmp_path / "out" / "take" / stem)).frames == len(source)


# --- MP3: files joined end to end -----------------------------------------------------------------


def mp3(audio: np.ndarray, rate: int, id3: bool = False) -> bytes:
    """``audio`` as an MP3 (libsndfile's LAME: a Xing/Info tag with frame and byte counts); with ``id3``
    an ID3v2 tag before it (1 kB of padding) and an ID3v1 tag after it, as taggers leave them."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="MP3")
    data = buffer.getvalue()
    assert b"Xing" in data[:4096] or b"Info" in data[:4096]
    if id3:
        size = 1024
        syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
        data = b"ID3\x03\x00\x00" + syncsafe + b"\0" * size + data + b"TAG" + b"\0" * 125
    return data


def pitch(audio: np.ndarray, rate: int) -> float:
    """The strongest frequency of ``audio``'s first channel (Hz)."""
    spectrum = np.abs(np.fft.rfft(audio[:, 0] * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


@pytest.mark.parametrize("id3", [False, True])
@pytest.mark.parametrize("second_rate", [RATE, 22050])  # 22050: the rate changes midway
def test_joined_mp3s_are_read_to_the_end(second_rate, id3, tmp_path):
    """``cat a.mp3 b.mp3``: the first file's tag counts only its own frames; all of b is read, at the
    first file's rate (b at another rate is converted, its pitch kept)."""
    path = tmp_path / "chapters.mp3"
    path.write_bytes(
        mp3(tone(2.0, RATE, 440), RATE, id3) + mp3(tone(3.0, second_rate, 660), second_rate, id3)
    )
    decoded, notes = read_all(path)
    info = probe(path)
    assert info.sample_rate == RATE
    assert abs(len(decoded) / RATE - 5.0) < 0.15  # each file's encoder delay and padding are kept
    assert abs(pitch(decoded[RATE // 2 : 3 * RATE // 2], RATE) - 440) < 2
    assert abs(pitch(decoded[-2 * RATE : -RATE // 2], RATE) - 660) < 2
    assert any("goes on" in note for note in notes), notes
    if second_rate == RATE:  # the estimate (for the ETA) is near: bytes per second alike in both files
        assert abs(info.frames / len(decoded) - 1) < 0.2


def untagged_mp3(audio: np.ndarray, rate: int) -> bytes:
    """``audio`` as an MP3 without a Xing/Info tag (LAME through PyAV), as stream rips are."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3", options={"write_xing": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="stereo")
        stream.format = stream.codec_context.codec.audio_formats[0].name
        for at in range(0, len(audio), 1152):
            packed = np.ascontiguousarray(audio[at : at + 1152]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(packed, format="flt", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, at, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = buffer.getvalue()
    assert b"Xing" not in data[:4096] and b"Info" not in data[:4096]
    return data


@pytest.mark.parametrize("second_rate", [RATE, 22050])
def test_an_untagged_mp3_whose_rate_changes_is_read_to_the_end(second_rate, tmp_path):
    """No tag to trust, but mpg123 stopped where the rate changes, and FFmpeg at the one packet that
    straddles the junction: every frame after it is read, converted to the first rate."""
    path = tmp_path / "rip.mp3"
    first, second = tone(2.0, RATE, 440), tone(3.0, second_rate, 660)
    path.write_bytes(untagged_mp3(first, RATE) + untagged_mp3(second, second_rate))
    decoded, _ = read_all(path)
    assert abs(len(decoded) / RATE - 5.0) < 0.15
    assert abs(pitch(decoded[RATE // 2 : 3 * RATE // 2], RATE) - 440) < 2
    assert abs(pitch(decoded[-2 * RATE : -RATE // 2], RATE) - 660) < 2


def test_one_tagged_mp3_keeps_its_exact_length(tmp_path):
    path = tmp_path / "one.mp3"
    path.write_bytes(mp3(tone(2.0, RATE, 440), RATE, id3=True))
    info = probe(path)
    assert (info.decoder, info.frames_exact, info.frames, info.notes) == ("libsndfile", True, 2 * RATE, ())


def test_the_cli_separates_all_of_joined_mp3s(tmp_path, stub_checkpoint):
    path = tmp_path / "book.mp3"
    path.write_bytes(mp3(tone(1.0, RATE, 440), RATE) + mp3(tone(2.0, RATE, 660), RATE))
    result = cli(path, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, "--json", check=0)
    [event] = [e for e in json_events(result) if e["event"] == "result"]
    assert len(event["notes"]) == 1 and "goes on" in event["notes"][0]
    for stem in STEMS:
        assert abs(sf.info(str(tmp_path / "out" / "book" / stem)).duration - 3.0) < 0.15


# --- Ogg: chained links ---------------------------------------------------------------------------


def ogg(audio: np.ndarray, rate: int, subtype: str = "VORBIS") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="OGG", subtype=subtype)
    return buffer.getvalue()


def test_chained_ogg_mono_then_stereo_keeps_both_links(tmp_path):
    """A mono 22.05 kHz link then a stereo 44.1 kHz one: one stereo 44.1 kHz song, the mono link on both
    sides at its own pitch."""
    path = tmp_path / "radio.ogg"
    first, second = tone(2.0, 22050, 440)[:, :1], tone(3.0, RATE, 660)
    second[:, 1] *= 0.5  # the stereo link's sides differ
    path.write_bytes(ogg(first, 22050) + ogg(second, RATE))
    info = probe(path)
    decoded, notes = read_all(path)
    assert (info.sample_rate, info.channels) == (RATE, 2)
    assert abs(len(decoded) - 5 * RATE) < 64 and abs(info.frames - len(decoded)) < 64
    head, tail = decoded[RATE // 2 : 3 * RATE // 2], decoded[-2 * RATE : -RATE // 2]
    assert abs(pitch(head, RATE) - 440) < 2 and abs(pitch(tail, RATE) - 660) < 2
    np.testing.assert_array_equal(head[:, 0], head[:, 1])  # mono: the same on both sides
    assert 0.4 < np.std(tail[:, 1]) / np.std(tail[:, 0]) < 0.6
    assert notes == (
        "a chained Ogg of 2 links (22050 Hz mono, then 44100 Hz stereo): all read, as 44100 Hz stereo",
    )


@pytest.mark.parametrize(
    "links",
    [
        [(RATE, 2, 1.0), (RATE, 2, 1.5)],  # same format: the exact length
        [(RATE, 2, 1.0), (RATE, 1, 0.5), (48000, 2, 1.0)],  # three links, stereo - mono - another rate
        [(48000, 2, 1.0, "OPUS"), (48000, 1, 1.0, "OPUS")],  # Opus links
    ],
)
def test_chained_ogg_variants_read_every_link(links, tmp_path):
    path = tmp_path / "chain.ogg"
    path.write_bytes(b"".join(ogg(tone(s, r, 500)[:, :c], r, *codec) for r, c, s, *codec in links))
    links = [link[:3] for link in links]
    info = probe(path)
    decoded, _ = read_all(path)
    rate = max(r for r, _, _ in links)
    assert (info.sample_rate, info.channels) == (rate, 2)
    expected = sum(round(s * r) * rate // r for r, _, s in links)
    assert abs(len(decoded) - expected) < 64
    if len({r for r, _, _ in links}) == 1:
        assert info.frames_exact and info.frames == len(decoded) == expected


def test_chained_ogg_of_surround_and_stereo_is_refused_in_one_line(tmp_path):
    path = tmp_path / "mixed.ogg"
    path.write_bytes(ogg(music(0.5, channels=6), RATE) + ogg(music(0.5), RATE))
    with pytest.raises(AudioError) as error:
        probe(path)
    assert str(error.value) == (
        f"{path}: a chained Ogg whose links have 2, 6 channels; stemsplit joins mono and stereo links only"
    )


def test_the_cli_separates_every_link_of_a_chained_ogg(tmp_path, stub_checkpoint):
    path = tmp_path / "stream.ogg"
    path.write_bytes(ogg(tone(1.0, 22050, 440)[:, :1], 22050) + ogg(tone(1.5, RATE, 660), RATE))
    result = cli(path, "-o", tmp_path / "out", "--model", stub_checkpoint, *FAST, check=0)
    assert "chained Ogg of 2 links" in result.stdout + result.stderr
    for stem in STEMS:
        info = sf.info(str(tmp_path / "out" / "stream" / stem))
        assert (info.samplerate, info.channels) == (RATE, 2) and abs(info.duration - 2.5) < 0.01


# --- MP4/MOV: several audio streams ---------------------------------------------------------------


def multi_stream(path: Path, tracks: list[tuple[float, str, str]], default: int | None) -> Path:
    """An MP4/MOV with one AAC stream per (pitch, title, language) of ``tracks``, 2 s each; stream
    ``default`` (from 0) marked default, or none."""
    with av.open(str(path), "w") as out:
        streams = []
        for hz, title, language in tracks:
            stream = out.add_stream("aac", rate=RATE, layout="stereo")
            stream.metadata["title"], stream.metadata["language"] = title, language
            streams.append((stream, tone(2.0, RATE, hz)))
        for number, (stream, _) in enumerate(streams):
            stream.disposition = (
                av.stream.Disposition.default if number == default else av.stream.Disposition(0)
            )
        for stream, audio in streams:
            for at in range(0, len(audio), 4096):
                packed = np.ascontiguousarray(audio[at : at + 4096]).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(packed, format="flt", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = RATE, at, Fraction(1, RATE)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    return path


TRACKS = [(440.0, "Commentary", "eng"), (660.0, "Main", "eng"), (880.0, "Music only", "fra")]


@pytest.mark.parametrize("suffix", ["mp4", "mov"])
def test_several_audio_streams_take_the_default_and_say_so(suffix, tmp_path):
    path = multi_stream(tmp_path / f"film.{suffix}", TRACKS, default=1)
    decoded, notes = read_all(path)
    assert abs(pitch(decoded[RATE // 2 : 3 * RATE // 2], RATE) - 660) < 2  # "Main", not the first
    assert notes == (
        "audio stream 2 of 3 (the default): 'Main' 'eng' aac 2 ch; the others: "
        "1 'Commentary' 'eng' aac 2 ch; 3 'Music only' 'fra' aac 2 ch; choose one with --stream N",
    )


def test_the_default_stream_of_a_matroska_file(tmp_path):
    """The same in MKV, the last stream the default (a muxer marks the first where none is)."""
    path = multi_stream(tmp_path / "film.mkv", TRACKS, default=2)
    decoded, notes = read_all(path)
    assert abs(pitch(decoded[RATE // 2 : 3 * RATE // 2], RATE) - 880) < 2
    assert notes[0].startswith("audio stream 3 of 3 (the default): 'Music only'"), notes


@pytest.mark.parametrize("wanted", [1, 3])
def test_a_stream_can_be_chosen(wanted, tmp_path):
    path = multi_stream(tmp_path / "film.mp4", TRACKS, default=1)
    info = probe(path, wanted)
    decoded = np.concatenate(list(read_blocks(info, 1 << 16)))
    assert abs(pitch(decoded[RATE // 2 : 3 * RATE // 2], RATE) - TRACKS[wanted - 1][0]) < 2
    assert info.notes[0].startswith(f"audio stream {wanted} of 3 (as asked)")


def test_a_stream_that_is_not_there_is_one_line(tmp_path):
    path = multi_stream(tmp_path / "film.mp4", TRACKS[:2], default=0)
    with pytest.raises(AudioError) as error:
        probe(path, 3)
    assert str(error.value) == f"{path}: has 2 audio streams; there is no stream 3"
    wav = tmp_path / "one.wav"
    sf.write(wav, music(0.2), RATE)
    with pytest.raises(AudioError) as error:
        probe(wav, 2)
    assert str(error.value) == f"{wav}: has one audio stream; there is no stream 2"
    assert probe(wav, 1).notes == ()


def test_the_cli_says_which_stream_and_takes_stream(tmp_path, stub_checkpoint):
    path = multi_stream(tmp_path / "film.mp4", TRACKS, default=1)
    m = ["--model", stub_checkpoint, *FAST]
    result = cli(path, "-o", tmp_path / "a", *m, check=0)
    assert "audio stream 2 of 3 (the default)" in result.stdout + result.stderr
    result = cli(path, "-o", tmp_path / "b", *m, "--stream", "3", "--stems", "vocals", check=0)
    assert "audio stream 3 of 3 (as asked)" in result.stdout + result.stderr
    result = cli(path, "-o", tmp_path / "c", *m, "--stream", "0", check=2)
    assert "--stream" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists()


def test_separate_file_takes_a_stream(tmp_path, stub_checkpoint):
    from stemsplit.separate import Separator

    path = multi_stream(tmp_path / "film.mp4", TRACKS, default=1)
    separator = Separator(stub_checkpoint, device="cpu", window=1.0, hop=0.5)
    result = separator.separate_file(path, tmp_path / "out", stems=["vocals"], stream=3)
    vocals, rate = sf.read(result.outputs["vocals"], dtype="float32", always_2d=True)
    assert abs(pitch(vocals[rate // 2 : 3 * rate // 2], rate) - 880) < 2  # "Music only", not the default


@pytest.mark.parametrize("declared", [0.5, 1.0])
def test_wav_whose_header_counts_less_than_is_there_is_read_to_its_end(declared, tmp_path):
    """Recorders that update the header every few seconds and then stop: the audio after the counted
    part is read too, and the song's line says so."""
    source = music(3.0)
    header, audio = wav_parts(source)
    counted = round(declared * RATE) * 4
    path = tmp_path / "take.wav"
    path.write_bytes(with_sizes(header, len(header) - 8 + counted, counted) + audio)
    decoded, notes = read_all(path)
    np.testing.assert_allclose(decoded, pcm16(source), atol=1e-6)
    assert notes == (
        f"its header counts {declared:.2f} s of audio, more follows (a recording that stopped before "
        "updating its header?): read to the end of the file",
    )


@pytest.mark.parametrize(
    "tail",
    [
        b"TAG" + b"title" * 25,  # ID3v1, appended raw
        b"LIST" + struct.pack("<I", 8000) + b"INFO" + b"\0" * 7996,  # a chunk
        b"\0\0\0\0",  # a few stray bytes
    ],
)
def test_what_follows_a_wavs_data_chunk_and_is_not_audio_is_left_alone(tail, tmp_path):
    source = music(1.0)
    header, audio = wav_parts(source)
    path = tmp_path / "tagged.wav"
    path.write_bytes(with_sizes(header, len(header) - 8 + len(audio) + len(tail), len(audio)) + audio + tail)
    decoded, notes = read_all(path)
    np.testing.assert_allclose(decoded, pcm16(source), atol=1e-6)
    assert notes == ()
