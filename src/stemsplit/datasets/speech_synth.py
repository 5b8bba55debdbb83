"""Two-talker, noisy and reverberant speech mixtures from one integer seed, in the Libri2Mix layout.

A stand-in for the reverberant, noisy Libri2Mix U-Mamba-Net (Dang et al.) trains on, made from what
Debian and PyPI provide: talkers (eSpeak NG voices, :data:`VOICES`, :data:`VARIANTS`, each split its
own: :data:`SPLIT_VARIANTS`), a shoebox room drawn as the paper's Table I (:func:`draw_room`,
pyroomacoustics), synthetic background noise, Libri2Mix's levels and its "min" overlap;
docs/training.md ("How a mixture is drawn") gives the ranges.

The targets ``s1/``, ``s2/`` are each talker's **direct sound** at the receiver (the paper's models
denoise *and* dereverberate, as in WHAMR!); ``s1_reverb/``, ``s2_reverb/`` the talkers as heard in
the room; ``noise/``; ``mix_clean/`` = ``s1_reverb + s2_reverb`` (not ``s1 + s2`` as in Libri2Mix)
and ``mix_both/`` = ``mix_clean + noise``, exactly (32-bit float WAV). :func:`write_dataset` writes
``OUT/{train-100,dev,test}/<folder>/<ID>.wav``, Libri2Mix's
``OUT/metadata/mixture_<split>_{mix_both,mix_clean}.csv`` (absolute paths) and
``OUT/metadata/speech_<split>_info.csv`` (how each mixture was drawn).

:func:`stemsplit.datasets.libri2mix.find_speech_mixtures` reads them, as it reads any
Libri2Mix-layout folder (Libri2Mix's own ``wav8k/min`` folder too).

The same seed and the same eSpeak NG version give byte-identical files.

One module (about 550 lines) because its parts are one recipe: the talkers, the room, the noise and
the levels share the 8 kHz rate and the paper's ranges, and a mixture is drawn from one seed
through all of them in a fixed order. The sentences the talkers read are :mod:`.sentences`; reading a
Libri2Mix-layout folder is :mod:`.libri2mix`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.resample import BlockResampler
from ..files import write_failure
from .libri2mix import MIXTURE_KINDS, SpeechSynthError
from .sentences import pick, sentence
from .synth_request import synth_request_problem

__all__ = [
    "FOLDERS",
    "SAMPLE_RATE",
    "SPLITS",
    "SPLIT_VARIANTS",
    "Room",
    "SpeechMixture",
    "Talker",
    "check_request",
    "check_tools",
    "coloured_noise",
    "draw_room",
    "draw_talkers",
    "generate_mixture",
    "impulse_responses",
    "mixture_id",
    "mixture_seed",
    "speak",
    "write_dataset",
]

SAMPLE_RATE = 8000  # the paper's (and Libri2Mix's wav8k)
SPLITS = ("train-100", "dev", "test")  # Libri2Mix's folder names (train-360 is not made here)
ID_PREFIX = {"train-100": "train", "dev": "dev", "test": "test"}
FOLDERS = ("s1", "s2", "s1_reverb", "s2_reverb", "noise", "mix_clean", "mix_both")
ESPEAK_PACKAGE = "espeak-ng"  # the Debian/Ubuntu package (and the program's name)
PYROOMACOUSTICS_INSTALL = "pip install 'stemsplit-cli[speech]'"

# English voices (accents) of eSpeak NG's own data (the "gmw/" files; the "mb/" ones need MBROLA).
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
# Variants that sound like people (no whisper, robot or croak): male, female and Klatt-synthesiser ones.
VARIANTS = (
    *(f"m{i}" for i in range(1, 8)),
    *(f"f{i}" for i in range(1, 6)),
    "klatt",
    "klatt2",
    "klatt3",
    "Andy",
    "Annie",
    "Alicia",
    "Denis",
    "Gene",
    "linda",
    "steph",
    "travis",
    "victor",
)
# Disjoint talker pools, as Libri2Mix's splits have disjoint speakers: two male and two female
# timbres are held out for dev and for test each; training draws from the other 16.
HELD_OUT_VARIANTS = {"dev": ("m5", "Denis", "f5", "steph"), "test": ("m3", "Gene", "f3", "linda")}
SPLIT_VARIANTS = {
    "train-100": tuple(v for v in VARIANTS if not any(v in held for held in HELD_OUT_VARIANTS.values())),
    **HELD_OUT_VARIANTS,
}
PITCH = (25, 75)  # espeak-ng -p, 0-99 around the variant's own pitch (50 = unchanged)
SPEED = (130, 200)  # espeak-ng -s, words per minute (175 is its default)
SPEECH_DB = (-33.0, -25.0)  # Libri2Mix's speech loudness range, here RMS dBFS of the reverberant talker
NOISE_DB = (-38.0, -30.0)  # and its noise range (5 dB lower)
MAX_AMP = 0.9  # no file peaks above this (Libri2Mix's limit)

# --- Table I of the paper: room, T60, receiver and source placement (metres, seconds, radians) ---
ROOM_LENGTH = ROOM_WIDTH = (5.0, 10.0)
ROOM_HEIGHT = (3.0, 4.0)
T60 = (0.2, 0.6)
RECEIVER_OFFSET = (-0.2, 0.2)  # from the middle of the floor plan, in length and width
HEIGHT = (0.9, 1.8)  # receiver and sources
DISTANCE = (0.66, 2.0)  # source to receiver, horizontal


# --- talkers: eSpeak NG ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Talker:
    """One synthetic talker: an eSpeak NG voice and variant, pitch (``-p``) and speed (``-s``)."""

    voice: str
    variant: str
    pitch: int
    speed: int

    @property
    def espeak_voice(self) -> str:
        return f"{self.voice}+{self.variant}"


def draw_talkers(rng: np.random.Generator, split: str = "train-100") -> tuple[Talker, Talker]:
    """Two talkers of ``split``'s pool with different variants (so different timbres), each with its own
    pitch and speed."""
    pool = SPLIT_VARIANTS[split]
    first, second = rng.choice(len(pool), size=2, replace=False)
    return tuple(  # type: ignore[return-value]
        Talker(
            voice=pick(rng, VOICES),
            variant=pool[int(variant)],
            pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
            speed=int(rng.integers(SPEED[0], SPEED[1] + 1)),
        )
        for variant in (first, second)
    )


def _espeak(talker: Talker, text: str) -> np.ndarray:
    """``text`` read by ``talker`` at 8 kHz, float32 [frames]."""
    args = ["espeak-ng", "-v", talker.espeak_voice, "-p", str(talker.pitch), "-s", str(talker.speed)]
    try:
        done = subprocess.run([*args, "--stdout", text], capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SpeechSynthError(
            f"espeak-ng is not installed; install the Debian package: apt-get install {ESPEAK_PACKAGE}"
        ) from None
    except subprocess.TimeoutExpired:
        raise SpeechSynthError(f"espeak-ng -v {talker.espeak_voice} took over 60 s for one text") from None
    if done.returncode != 0 or len(done.stdout) <= 44:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise SpeechSynthError(
            f"espeak-ng -v {talker.espeak_voice} failed (exit {done.returncode}"
            f"{': ' + reason[-1] if reason else ''})"
        )
    # Written to a pipe, the WAV header cannot give the real length; libsndfile reads to the end anyway.
    audio, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    resample = BlockResampler(rate, SAMPLE_RATE, 1)
    return np.concatenate([resample(audio[:, None]), resample.flush(1)])[:, 0]


def speak(talker: Talker, rng: np.random.Generator, frames: int) -> tuple[np.ndarray, str]:
    """At least ``frames`` samples (8 kHz) of ``talker`` reading random sentences, cut to ``frames``.

    Returns (speech float32 [frames], the text read).
    """
    sentences: list[str] = []
    words_needed = frames / SAMPLE_RATE * talker.speed / 60 * 1.2 + 3  # espeak's pauses slow it down
    while True:
        while sum(len(s.split()) for s in sentences) < words_needed:
            sentences.append(sentence(rng))
        text = " ".join(sentences)
        audio = _espeak(talker, text)
        if len(audio) >= frames:
            return audio[:frames], text
        words_needed *= 1.5  # the talker was slower than the estimate: read more


# --- rooms: pyroomacoustics ----------------------------------------------------------------------


@dataclass(frozen=True)
class Room:
    """A shoebox room with one receiver and two talkers (metres), and its reverberation time."""

    size: tuple[float, float, float]  # length, width, height
    t60: float  # seconds
    receiver: tuple[float, float, float]
    sources: tuple[tuple[float, float, float], tuple[float, float, float]]


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def draw_room(rng: np.random.Generator) -> Room:
    """A room, T60 and placement drawn as the U-Mamba-Net paper's Table I."""
    size = (_uniform(rng, ROOM_LENGTH), _uniform(rng, ROOM_WIDTH), _uniform(rng, ROOM_HEIGHT))
    t60 = _uniform(rng, T60)
    receiver = (
        size[0] / 2 + _uniform(rng, RECEIVER_OFFSET),
        size[1] / 2 + _uniform(rng, RECEIVER_OFFSET),
        _uniform(rng, HEIGHT),
    )
    sources = []
    for _ in range(2):
        height, distance, angle = _uniform(rng, HEIGHT), _uniform(rng, DISTANCE), rng.uniform(0, 2 * math.pi)
        # The room is at least 5 m wide and the receiver within 0.2 m of its middle, so a talker at most
        # 2 m away is always inside.
        sources.append(
            (receiver[0] + distance * math.cos(angle), receiver[1] + distance * math.sin(angle), height)
        )
    return Room(size, t60, receiver, (sources[0], sources[1]))


def _pyroomacoustics():
    try:
        import pyroomacoustics
    except ImportError:
        raise SpeechSynthError(f"simulating rooms needs pyroomacoustics: {PYROOMACOUSTICS_INSTALL}") from None
    return pyroomacoustics


def impulse_responses(room: Room, reflections: bool = True) -> list[np.ndarray]:
    """The two talkers' impulse responses at the receiver (8 kHz, float64), by the image-source method.

    ``reflections=False`` keeps the direct path only: the same delay and
    distance loss (and the same fractional-delay filter), no walls.
    """
    pra = _pyroomacoustics()
    absorption, max_order = pra.inverse_sabine(room.t60, list(room.size))
    shoebox = pra.ShoeBox(
        list(room.size),
        fs=SAMPLE_RATE,
        materials=pra.Material(absorption),
        max_order=max_order if reflections else 0,
    )
    for source in room.sources:
        shoebox.add_source(list(source))
    shoebox.add_microphone(list(room.receiver))
    shoebox.compute_rir()
    return [np.asarray(rir, dtype=np.float64) for rir in shoebox.rir[0]]


def _convolve(audio: np.ndarray, ir: np.ndarray, frames: int) -> np.ndarray:
    """The first ``frames`` samples of ``audio * ir`` (FFT convolution, float64)."""
    size = 1 << (len(audio) + len(ir) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(ir, size), size)[:frames]


# --- noise ----------------------------------------------------------------------------------------


def coloured_noise(rng: np.random.Generator, frames: int) -> tuple[np.ndarray, str]:
    """Background noise: Gaussian noise with a 1/f^slope spectrum (0 white, 1 pink, 2 brown), a resonance
    (a hum) and a slow amplitude wobble. Returns (float64 [frames] with unit RMS, a description)."""
    slope = _uniform(rng, (0.0, 2.0))
    hum_hz, hum_db = _uniform(rng, (60.0, 1500.0)), _uniform(rng, (0.0, 15.0))
    freqs = np.fft.rfftfreq(frames, 1 / SAMPLE_RATE)
    shape = np.maximum(freqs, 20.0) ** (-slope / 2)  # amplitude, so power goes as 1/f^slope
    shape *= 1 + (10 ** (hum_db / 20) - 1) * np.exp(-0.5 * ((freqs - hum_hz) / (0.05 * hum_hz)) ** 2)
    spectrum = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) * shape
    noise = np.fft.irfft(spectrum, frames)
    wobble_hz, depth = _uniform(rng, (0.1, 2.0)), _uniform(rng, (0.0, 0.5))
    t = np.arange(frames) / SAMPLE_RATE
    noise *= 1 + depth * np.sin(2 * math.pi * wobble_hz * t + rng.uniform(0, 2 * math.pi))
    description = (
        f"slope {slope:.2f}, hum {hum_hz:.0f} Hz +{hum_db:.1f} dB, wobble {wobble_hz:.2f} Hz x{depth:.2f}"
    )
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12), description


# --- one mixture ----------------------------------------------------------------------------------


@dataclass
class SpeechMixture:
    """One generated mixture: float32 [frames] arrays at :data:`SAMPLE_RATE`.

    ``s1``/``s2`` are the talkers' direct sound (the targets), ``s1_reverb``/
    ``s2_reverb`` what the receiver hears of each; ``mix_clean`` is the sum of
    those two and ``mix_both`` that plus ``noise``. ``info`` records the draw.
    """

    s1: np.ndarray
    s2: np.ndarray
    s1_reverb: np.ndarray
    s2_reverb: np.ndarray
    noise: np.ndarray
    talkers: tuple[Talker, Talker]
    room: Room
    info: dict[str, str]
    sample_rate: int = SAMPLE_RATE

    @property
    def mix_clean(self) -> np.ndarray:
        return self.s1_reverb + self.s2_reverb  # float32 + float32: what the file holds, to the bit

    @property
    def mix_both(self) -> np.ndarray:
        return self.mix_clean + self.noise

    def parts(self) -> dict[str, np.ndarray]:
        """Every file's audio by folder name (:data:`FOLDERS`)."""
        return {name: getattr(self, name) for name in FOLDERS}


def _rms_db(audio: np.ndarray) -> float:
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))), 1e-12))


def generate_mixture(seed: int, seconds: float, split: str = "train-100") -> SpeechMixture:
    """Render one mixture ``round(seconds * 8000)`` samples long, its talkers from ``split``'s pool; the
    same arguments give the same arrays."""
    if split not in SPLIT_VARIANTS:
        raise SpeechSynthError(f"split must be one of {', '.join(SPLIT_VARIANTS)}, not {split!r}")
    if seed < 0:
        raise SpeechSynthError(f"seed must be a non-negative integer, not {seed}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise SpeechSynthError(f"seconds must be positive, not {seconds}")
    frames = round(seconds * SAMPLE_RATE)
    # Separate streams for talkers, texts, room and noise: changing one part of the recipe keeps the others.
    talker_rng, text_rng, room_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    talkers = draw_talkers(talker_rng, split)
    room = draw_room(room_rng)
    reverberant, direct = impulse_responses(room), impulse_responses(room, reflections=False)

    info: dict[str, str] = {}
    images, targets = [], []
    for i, talker in enumerate(talkers):
        dry, text = speak(talker, text_rng, frames)
        dry = dry.astype(np.float64)
        image = _convolve(dry, reverberant[i], frames)
        gain = 10 ** ((_uniform(room_rng, SPEECH_DB) - _rms_db(image)) / 20)
        images.append(gain * image)
        targets.append(gain * _convolve(dry, direct[i], frames))
        info[f"source_{i + 1}_text"] = text
    noise, noise_description = coloured_noise(noise_rng, frames)
    noise *= 10 ** (_uniform(noise_rng, NOISE_DB) / 20)
    info["noise"] = noise_description

    # One gain for every part, so the sums stay exact: nothing peaks above MAX_AMP.
    peak = max(float(np.abs(a).max()) for a in (*images, *targets, noise, images[0] + images[1] + noise))
    scale = min(1.0, MAX_AMP / max(peak, 1e-12))
    s1, s2, s1_reverb, s2_reverb, noise = ((scale * a).astype(np.float32) for a in (*targets, *images, noise))
    for i, image in enumerate((s1_reverb, s2_reverb), 1):
        info[f"source_{i}_dB"] = f"{_rms_db(image):.2f}"
    info["noise_dB"] = f"{_rms_db(noise):.2f}"
    return SpeechMixture(s1, s2, s1_reverb, s2_reverb, noise, talkers, room, info)


# --- the dataset ---------------------------------------------------------------------------------


def mixture_seed(seed: int, split: str, index: int) -> int:
    """The seed of mixture ``index`` of ``split``: a hash of all three, so splits never share seeds and
    asking for more mixtures never changes the earlier ones."""
    entropy = [seed % 2**64, SPLITS.index(split), index, 0x5BEEC4]  # the last: not synth.py's songs
    low, high = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return int(low) | int(high) << 32  # in Python integers: numpy would round through float64


def mixture_id(split: str, index: int) -> str:
    return f"{ID_PREFIX[split]}-{index:05d}"


def check_tools() -> None:
    """Raise :class:`SpeechSynthError` unless eSpeak NG (with every voice and variant used) and
    pyroomacoustics are installed. Fast: runs ``espeak-ng --voices`` and imports nothing."""
    if importlib.util.find_spec("pyroomacoustics") is None:
        raise SpeechSynthError(f"simulating rooms needs pyroomacoustics: {PYROOMACOUSTICS_INSTALL}")
    listings = {}
    for kind in ("en", "variant"):
        try:
            done = subprocess.run(
                ["espeak-ng", f"--voices={kind}"], capture_output=True, text=True, timeout=30, check=False
            )
        except FileNotFoundError:
            raise SpeechSynthError(
                f"espeak-ng is not installed; install the Debian package: apt-get install {ESPEAK_PACKAGE}"
            ) from None
        except subprocess.TimeoutExpired:
            raise SpeechSynthError("espeak-ng --voices did not answer within 30 s") from None
        # Columns: Pty Language Age/Gender VoiceName File [Other Languages]; "File" is gmw/en-US, !v/m3, ...
        rows = [line.split() for line in done.stdout.splitlines()[1:]]
        listings[kind] = {row[1] for row in rows if len(row) > 4} | {
            row[4].rsplit("/", 1)[-1] for row in rows if len(row) > 4
        }
    missing = [v for v in VOICES if v.lower() not in {name.lower() for name in listings["en"]}]
    missing += [f"+{v}" for v in VARIANTS if v not in listings["variant"]]
    if missing:
        raise SpeechSynthError(
            f"espeak-ng lacks the voices {', '.join(missing)}; install a complete {ESPEAK_PACKAGE} "
            "(its espeak-ng-data, version 1.50 or later)"
        )


def check_request(
    out: Path, *, train: int, dev: int, test: int, seconds: float, seed: int, workers: int = 1
) -> None:
    """Raise :class:`SpeechSynthError` for a request that :func:`write_dataset` refuses; writes nothing."""
    counts = {"train": train, "dev": dev, "test": test}
    problem = synth_request_problem(Path(out), counts, "mixtures", seconds, SAMPLE_RATE, seed, workers)
    if problem:
        raise SpeechSynthError(problem)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    """A mono 32-bit float WAV, written by hand: libsndfile adds a PEAK chunk holding the time of
    writing, and then the same seed would not give the same bytes."""
    data = np.ascontiguousarray(audio, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, SAMPLE_RATE, 4 * SAMPLE_RATE, 4, 32)  # 3: IEEE float, 1 channel
    body = b"".join(
        [
            b"WAVE",
            b"fmt " + struct.pack("<I", len(fmt)) + fmt,
            b"fact" + struct.pack("<II", 4, len(audio)),  # the frame count, which non-PCM WAVs carry
            b"data" + struct.pack("<I", len(data)) + data,
        ]
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _render(job: tuple[Path, str, int, float]) -> dict[str, str]:
    """Generate one mixture, write its seven files under ``job[0]`` and return its info row."""
    folder, name, seed, seconds = job
    mixture = generate_mixture(seed, seconds, split=folder.name)
    for part, audio in mixture.parts().items():
        _write_wav(folder / part / f"{name}.wav", audio)
    room = mixture.room
    row = {
        "mixture_ID": name,
        "seed": str(seed),
        "room_length": f"{room.size[0]:.3f}",
        "room_width": f"{room.size[1]:.3f}",
        "room_height": f"{room.size[2]:.3f}",
        "t60": f"{room.t60:.3f}",
        "receiver": " ".join(f"{x:.3f}" for x in room.receiver),
    }
    for i, (talker, source) in enumerate(zip(mixture.talkers, room.sources, strict=True), 1):
        row[f"source_{i}_position"] = " ".join(f"{x:.3f}" for x in source)
        row[f"source_{i}_voice"] = talker.espeak_voice
        row[f"source_{i}_pitch"] = str(talker.pitch)
        row[f"source_{i}_speed"] = str(talker.speed)
    return row | mixture.info


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_dataset(
    out: Path,
    *,
    train: int,
    dev: int,
    test: int,
    seconds: float,
    seed: int,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write a Libri2Mix-layout dataset (see the module's docstring) into the new or empty folder ``out``.

    All or nothing: everything is written into a hidden folder inside ``out``
    and moved into place at the end; on any error (or Ctrl-C) that folder is
    removed, and so is ``out`` if this call created it. ``progress(done,
    total)`` is called after each mixture.
    """
    out = Path(out)
    check_request(out, train=train, dev=dev, test=test, seconds=seconds, seed=seed, workers=workers)
    check_tools()
    counts = {"train-100": train, "dev": dev, "test": test}
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".synth-speech-{os.getpid()}.partial"
    final = out.resolve()
    try:
        staging.mkdir()
        jobs, names = [], {}
        for split, count in counts.items():
            names[split] = [mixture_id(split, i) for i in range(count)]
            for folder in FOLDERS if count else ():
                (staging / split / folder).mkdir(parents=True)
            jobs += [
                (staging / split, name, mixture_seed(seed, split, i), seconds)
                for i, name in enumerate(names[split])
            ]
        rows = []
        if workers == 1:
            for done, job in enumerate(jobs, 1):
                rows.append(_render(job))
                if progress:
                    progress(done, len(jobs))
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
            try:
                for done, row in enumerate(pool.map(_render, jobs), 1):
                    rows.append(row)
                    if progress:
                        progress(done, len(jobs))
            finally:  # on Ctrl-C or an error: drop the queued mixtures, let the running ones end
                pool.shutdown(wait=True, cancel_futures=True)

        (staging / "metadata").mkdir()
        frames = str(round(seconds * SAMPLE_RATE))
        start = 0
        for split, count in counts.items():
            if not count:
                continue
            split_rows, start = rows[start : start + count], start + count
            for kind in MIXTURE_KINDS:
                table = []
                for name in names[split]:
                    row = {"mixture_ID": name, "mixture_path": str(final / split / kind / f"{name}.wav")}
                    row["source_1_path"] = str(final / split / "s1" / f"{name}.wav")
                    row["source_2_path"] = str(final / split / "s2" / f"{name}.wav")
                    if kind == "mix_both":
                        row["noise_path"] = str(final / split / "noise" / f"{name}.wav")
                    table.append(row | {"length": frames})
                _write_csv(staging / "metadata" / f"mixture_{split}_{kind}.csv", table)
            _write_csv(staging / "metadata" / f"speech_{split}_info.csv", split_rows)
        for entry in sorted(staging.iterdir()):
            os.rename(entry, out / entry.name)
        staging.rmdir()
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, (OSError, sf.LibsndfileError)):  # a full disk: one line, as every failed write
            raise SpeechSynthError(f"{out}: writing the dataset failed: {write_failure(exc, out)}") from None
        raise
