"""stemsplit.audio on real files: FFmpeg formats, truncation, files that are not audio, downmix, stderr.

Every compressed file is made here with PyAV's encoders (FFmpeg inside the av
wheel), so nothing depends on the system's codecs.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import RATE, music, python, run

from stemsplit.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    describe_downmix,
    downmix_to_stereo,
    probe,
    read_blocks,
)

C = 1 / math.sqrt(2)


def encode(
    path: Path,
    codec: str,
    audio: np.ndarray | None,
    rate: int = RATE,
    layout: str = "stereo",
    *,
    container: str | None = None,
    video: bool = False,
    options: dict[str, str] | None = None,
    stream_options: dict[str, str] | None = None,
) -> Path:
    """Write ``audio`` [frames, channels] with FFmpeg's ``codec`` (and a small video track if ``video``)."""
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        if video:
            picture = out.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        if audio is not None:
            stream = out.add_stream(codec, rate=rate, layout=layout, options=stream_options or {})
            stream.format = stream.codec_context.codec.audio_formats[0].name
            stream.bit_rate = 160_000  # lossy codecs: transparent enough to compare (wmav2 needs one)
            for i in range(0, len(audio), 4096):
                chunk = np.ascontiguousarray(audio[i : i + 4096]).reshape(1, -1)  # packed: [1, n * channels]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        if video:
            seconds = len(audio) / rate if audio is not None else 1.0
            for i in range(round(seconds * 10)):
                frame = av.VideoFrame.from_ndarray(
                    np.full((48, 64, 3), 40 * (i % 6), np.uint8), format="rgb24"
                )
                frame.pts = i
                for packet in picture.encode(frame):
                    out.mux(packet)
            for packet in picture.encode(None):
                out.mux(packet)
    return path


def read_all(path: Path, block_frames: int = 16384) -> tuple[np.ndarray, list[int]]:
    """Decode through probe + read_blocks: the audio and the size of every block."""
    info = probe(path)
    blocks = list(read_blocks(info, block_frames))
    return np.concatenate(blocks), [len(b) for b in blocks]


def align(source: np.ndarray, decoded: np.ndarray, max_lag: int = 3000) -> int:
    """The codec delay: how many frames later ``decoded`` starts than ``source`` (by cross-correlation)."""
    n = min(len(source), len(decoded)) - 2 * max_lag
    ref = source[max_lag : max_lag + n, 0]
    scores = [
        float(np.dot(ref, decoded[max_lag + lag : max_lag + lag + n, 0])) for lag in range(-max_lag, max_lag)
    ]
    return int(np.argmax(scores)) - max_lag


def compare(source: np.ndarray, decoded: np.ndarray) -> tuple[int, list[float], list[float]]:
    """(delay, per-channel correlation, per-channel level ratio in dB) after removing the delay."""
    lag = align(source, decoded)
    a = source[max(0, -lag) :]
    b = decoded[max(0, lag) :]
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    corr = [float(np.corrcoef(a[:, c], b[:, c])[0, 1]) for c in range(a.shape[1])]
    level = [float(20 * np.log10(np.std(b[:, c]) / np.std(a[:, c]))) for c in range(a.shape[1])]
    return lag, corr, level


# --- FFmpeg formats ----------------------------------------------------------------------------

# name, codec, container, rate, extra keywords for encode(), lossless
FFMPEG_CASES = {
    "aac.m4a": ("aac", None, RATE, {}, False),
    "alac.m4a": ("alac", None, RATE, {}, True),
    "opus.webm": ("libopus", None, 48000, {}, False),
    "vorbis.mkv": ("vorbis", None, RATE, {"stream_options": {"strict": "experimental"}}, False),
    "wmav2.wma": ("wmav2", "asf", RATE, {}, False),
    "video.mp4": ("aac", None, RATE, {"video": True}, False),
}


@pytest.mark.parametrize("name", list(FFMPEG_CASES))
def test_ffmpeg_formats_decode_to_the_source(name, tmp_path):
    codec, container, rate, extra, lossless = FFMPEG_CASES[name]
    source = music(3.0, rate)
    path = encode(tmp_path / name, codec, source, rate, container=container, **extra)
    assert path.suffix in AUDIO_EXTENSIONS  # `stemsplit batch` picks it up

    with pytest.raises(sf.LibsndfileError):  # the point: libsndfile cannot read any of these
        sf.info(str(path))
    info = probe(path)
    assert (info.decoder, info.sample_rate, info.channels) == ("ffmpeg", rate, 2)
    assert not info.frames_exact and abs(info.frames - len(source)) < 0.05 * len(source)
    assert info.layout == ("FL", "FR") or info.layout is None

    block = 16384
    decoded, sizes = read_all(path, block)
    assert decoded.dtype == np.float32 and decoded.shape[1] == 2
    # Streamed: full blocks, then one shorter (several of them for 3 s).
    assert len(sizes) == math.ceil(len(decoded) / block) >= 8
    assert all(size == block for size in sizes[:-1]) and 0 < sizes[-1] <= block
    lag, corr, level = compare(source, decoded)
    assert abs(lag) <= 2112, lag  # codec delay (priming) at most
    assert min(corr) > 0.98, corr  # each channel is its own channel, in order
    assert max(abs(db) for db in level) < 1.0, level
    assert abs(len(decoded) - len(source)) <= 2112 + 2048  # priming and the last frame's padding
    if lossless:
        np.testing.assert_allclose(decoded, source, atol=2e-4)  # ALAC keeps 16-bit samples exactly


def test_mp4_length_is_its_sample_table(tmp_path):
    """AAC pads its last frame; an MP4's sample table says where the audio ends, and that is what is read."""
    source = music(2.0)
    path = encode(tmp_path / "song.m4a", "aac", source)
    info = probe(path)
    decoded, _ = read_all(path)
    assert info.frames == len(decoded) == len(source)


def test_five_one_aac_states_its_layout(tmp_path):
    source = music(1.0, channels=6)
    path = encode(tmp_path / "surround.m4a", "aac", source, layout="5.1")
    info = probe(path)
    assert info.channels == 6 and info.layout == ("FL", "FR", "FC", "LFE", "BL", "BR")
    decoded, _ = read_all(path)
    _, corr, _ = compare(source, decoded)
    assert min(corr[:3] + corr[4:]) > 0.95  # the LFE channel is low-passed by the codec


def test_nan_samples_through_ffmpeg(tmp_path):
    source = music(1.0)
    source[30000, 1] = np.nan
    path = encode(tmp_path / "nan.mkv", "pcm_f32le", source)
    with pytest.raises(AudioError, match=r"sample 30000 \(0\.68 s\) is NaN or infinite"):
        read_all(path)


def test_libsndfile_formats_stay_with_libsndfile(tmp_path):
    source = music(1.0)
    for name in ("song.wav", "song.flac", "song.mp3"):
        sf.write(tmp_path / name, source, RATE)
        info = probe(tmp_path / name)
        assert (info.decoder, info.frames_exact, info.frames) == ("libsndfile", True, RATE), name
        decoded, sizes = read_all(tmp_path / name, 10000)
        assert len(decoded) == RATE and sizes == [10000] * 4 + [4100]


# --- truncated and damaged files ----------------------------------------------------------------


def seconds_in(message: str) -> tuple[float, float]:
    found = re.search(r"truncated at (\d+\.\d+) s \(the file says (\d+\.\d+) s\)", message)
    assert found, message
    return float(found[1]), float(found[2])


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_wav_at_an_exact_position(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, music(4.0), RATE, subtype="PCM_16")
    header = path.stat().st_size - 4 * RATE * 4
    cut(path, header + round(1.67 * RATE) * 4)
    assert sf.info(str(path)).frames == round(1.67 * RATE)  # libsndfile says nothing: a shorter song
    with pytest.raises(AudioError) as error:
        probe(path)
    assert str(error.value) == f"{path}: truncated at 1.67 s (the file says 4.00 s)"


def ffmpeg_frames(path: Path) -> int:
    """Frames FFmpeg decodes from ``path`` before it ends or fails (an independent count)."""
    count = 0
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(audio=0):
                count += frame.samples
        except av.FFmpegError:
            pass
    return count


@pytest.mark.parametrize("kind", ["flac", "mp3", "m4a", "webm"])
def test_truncated_files_say_where_the_audio_stops(kind, tmp_path):
    path = tmp_path / f"cut.{kind}"
    rate = 48000 if kind == "webm" else RATE
    source = music(4.0, rate)
    if kind in ("flac", "mp3"):
        sf.write(path, source, rate)
    elif kind == "m4a":  # index first ("faststart"), as streaming services deliver them
        encode(path, "aac", source, options={"movflags": "+faststart"})
    else:
        encode(path, "libopus", source, rate)
    cut(path, path.stat().st_size // 2)
    with pytest.raises(AudioError) as error:
        probe(path)  # before any separating is done
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    at, stated = seconds_in(message)
    assert abs(stated - 4.0) < 0.05
    assert 1.5 < at < 2.5  # half the bytes: about half the song
    if kind in ("flac", "mp3"):  # FFmpeg, decoding the same file independently, stops there too
        assert abs(at - ffmpeg_frames(path) / rate) < 0.1


def test_mp4_cut_before_its_index(tmp_path):
    path = encode(tmp_path / "cut.m4a", "aac", music(3.0))  # the index ('moov') is written last
    cut(path, path.stat().st_size // 2)
    with pytest.raises(AudioError, match=r"truncated MP4/M4A file \(cut short inside its 'mdat' box"):
        probe(path)


def test_damaged_in_the_middle_is_not_truncated(tmp_path):
    path = tmp_path / "damaged.flac"
    sf.write(path, np.random.default_rng(1).uniform(-0.5, 0.5, (4 * RATE, 2)).astype(np.float32), RATE)
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 3000] = b"\xff" * 3000
    path.write_bytes(bytes(data))
    info = probe(path)  # its end is intact
    with pytest.raises(
        AudioError, match=r"damaged at 1\.\d\d s \(libsndfile cannot decode past this point\)"
    ):
        list(read_blocks(info, RATE))


def test_streamed_wav_with_unknown_length_is_fine(tmp_path):
    """Writers that cannot seek back (ffmpeg to a pipe) leave 0xFFFFFFFF as the data size."""
    path = tmp_path / "piped.wav"
    source = music(1.0)
    sf.write(path, source, RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    decoded, _ = read_all(path)
    assert len(decoded) == RATE


# --- what is not audio --------------------------------------------------------------------------


def jpeg(path: Path) -> Path:
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def make_bad(kind: str, folder: Path) -> tuple[Path, str]:
    path = folder / f"{kind}.mp3"
    if kind == "text":
        path.write_text("# my playlist\nsong one.mp3\nsong two.mp3\n" * 20)
        return path, "not an audio file (a text file)"
    if kind == "jpeg":
        jpeg(folder / "cover.jpg").rename(path)
        return path, "not an audio file (a JPEG image)"
    if kind.startswith("random"):  # seed 289: FFmpeg's format guess takes it for LRC lyrics
        path.write_bytes(np.random.default_rng(int(kind[6:])).bytes(5000))
        return path, "not an audio file (neither libsndfile nor FFmpeg knows its format)"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty file"
    if kind == "directory":
        path.mkdir()
        return path, "is a directory, not an audio file"
    if kind == "missing":
        return path, "no such file"
    if kind == "silent_video":
        path = encode(folder / "silent.mp4", "", None, video=True)
        return path, "no audio stream (a video without sound)"
    if kind == "fifo":
        os.mkfifo(path)
        return path, "a FIFO (named pipe), not a regular file"
    if kind == "socket":
        path = Path(tempfile.mkdtemp()) / "s.wav"  # socket paths must be short
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return path, "a socket, not a regular file"
    if kind == "device":
        return Path("/dev/null"), "a character device, not a regular file"
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "text",
        "jpeg",
        "random0",
        "random289",
        "empty",
        "directory",
        "missing",
        "silent_video",
        "fifo",
        "socket",
        "device",
    ],
)
def test_bad_files_are_one_line_saying_what_they_are(kind, tmp_path):
    path, expected = make_bad(kind, tmp_path)
    result: list[BaseException] = []

    def attempt() -> None:
        try:
            probe(path)
        except AudioError as exc:
            result.append(exc)

    worker = threading.Thread(target=attempt)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked opening a FIFO: unblock it so the test run can go on
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join()
        pytest.fail(f"probe({kind}) blocked")
    assert str(result[0]) == f"{path}: {expected}"


def test_permission_denied(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, music(0.5), RATE)
    path.chmod(0)
    code = "\n".join(
        [
            "from stemsplit.audio import probe",
            "try:",
            f"    probe({str(path)!r})",
            "except Exception as e:",
            "    print(e)",
        ]
    )
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root reads anything: without the capabilities that let it, it cannot
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    child = run(*command, timeout=60)
    assert child.stdout.strip() == f"{path}: permission denied", child.stdout + child.stderr


# --- downmix ------------------------------------------------------------------------------------

DEFAULTS = {
    3: "FL FR FC",
    4: "FL FR BL BR",
    5: "FL FR FC BL BR",
    6: "FL FR FC LFE BL BR",
    7: "FL FR FC LFE BC SL SR",
    8: "FL FR FC LFE BL BR SL SR",
}


def one_channel(channels: int, index: int, frames: int = 100) -> np.ndarray:
    block = np.zeros((frames, channels), np.float32)
    block[:, index] = np.linspace(-1, 1, frames)
    return block


@pytest.mark.parametrize("channels", sorted(DEFAULTS))
def test_downmix_keeps_each_channel_on_its_side(channels):
    names = DEFAULTS[channels].split()
    gain_of = {}
    for i, name in enumerate(names):
        out = downmix_to_stereo(one_channel(channels, i))
        assert out.shape == (100, 2) and out.dtype == np.float32
        gain_of[name] = (float(np.abs(out[:, 0]).max()), float(np.abs(out[:, 1]).max()))
    front = gain_of["FL"][0]
    assert gain_of["FL"][1] == 0 and gain_of["FR"][0] == 0 and gain_of["FR"][1] == front  # left stays left
    assert gain_of["FC"] == pytest.approx((C * front, C * front)) if "FC" in names else True
    for left, right in (("BL", "BR"), ("SL", "SR")):
        if left in names:  # surrounds at -3 dB, on their own side
            assert gain_of[left] == pytest.approx((C * front, 0)) and gain_of[right] == pytest.approx(
                (0, C * front)
            )
    if "BC" in names:
        assert gain_of["BC"] == pytest.approx((C * front, C * front))
    if "LFE" in names:
        assert gain_of["LFE"] == (0, 0)


@pytest.mark.parametrize("channels", [*sorted(DEFAULTS), 10])
def test_downmix_cannot_clip(channels):
    rng = np.random.default_rng(channels)
    signs = rng.choice([-1.0, 1.0], size=(1000, channels)).astype(np.float32)
    full = np.ones((10, channels), np.float32)
    assert np.abs(downmix_to_stereo(signs)).max() <= 1.0 + 1e-6
    assert np.abs(downmix_to_stereo(full)).max() == pytest.approx(1.0)  # and no quieter than it must


def test_downmix_uses_a_stated_layout():
    block = one_channel(4, 2)  # third of four channels
    assert np.abs(downmix_to_stereo(block)[:, 1]).max() == 0  # quad: BL, left only
    out = downmix_to_stereo(block, ("FL", "FR", "FC", "BC"))  # 4.0: a centre
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    assert "assumed" in describe_downmix(4) and "assumed" not in describe_downmix(4, ("FL", "FR", "FC", "BC"))


def test_downmix_of_many_channels_without_layout_is_mono():
    block = np.random.default_rng(0).uniform(-1, 1, (100, 12)).astype(np.float32)
    out = downmix_to_stereo(block)
    np.testing.assert_allclose(out[:, 0], block.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])
    assert "averaged to mono" in describe_downmix(12)


def test_layout_stated_in_files(tmp_path):
    # A WAV with a channel mask (WAVE_FORMAT_EXTENSIBLE, as FFmpeg writes it) is still read by
    # libsndfile; its layout comes from FFmpeg.
    wav = encode(tmp_path / "four.wav", "pcm_s16le", music(0.5, channels=4), layout="4.0")
    info = probe(wav)
    assert (info.decoder, info.layout) == ("libsndfile", ("FL", "FR", "FC", "BC"))
    sf.write(tmp_path / "quad.flac", music(0.5, channels=4), RATE)  # FLAC's 4 channels are quad
    assert probe(tmp_path / "quad.flac").layout == ("FL", "FR", "BL", "BR")
    sf.write(tmp_path / "plain.wav", music(0.5, channels=4), RATE)  # no mask: nothing stated
    assert probe(tmp_path / "plain.wav").layout is None


# --- C libraries and the terminal ----------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import io, sys, warnings
    import soundfile as sf
    from stemsplit import audio

    mode, path = sys.argv[1:]
    if mode == "redirect":
        audio.redirect_native_stderr()
        audio.redirect_native_stderr()  # idempotent
    elif mode == "not-fd-2":  # sys.stderr is not the terminal: nothing to do
        sys.stderr = io.StringIO()
        audio.redirect_native_stderr()
        sys.stderr = sys.__stderr__
    print("python before", file=sys.stderr)
    try:
        sf.read(path)
    except Exception:
        pass
    warnings.warn("python warning")
    print("python after", file=sys.stderr)
    """
)


@pytest.mark.parametrize("mode", ["plain", "redirect", "not-fd-2"])
def test_native_stderr_is_silenced(mode, tmp_path):
    path = tmp_path / "corrupt.mp3"
    sf.write(path, music(2.0), RATE)
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 3000] = bytes(3000)
    path.write_bytes(bytes(data))
    child = python("-c", CHILD, mode, path, timeout=60)
    assert child.returncode == 0, child.stderr
    python_lines = [line for line in child.stderr.splitlines() if "python" in line]
    assert python_lines[0] == "python before" and python_lines[-1] == "python after"
    assert any("UserWarning: python warning" in line for line in python_lines)
    mpg123 = "Illegal Audio-MPEG-Header" in child.stderr
    assert mpg123 == (mode != "redirect"), child.stderr
