"""A rendered song (:class:`Song`) and the mixing stage every song goes through: levels, one
song-wide reverb, one gain so the mixture peaks at 0.6 to 0.9 (the mixture is exactly the sum of
the stems)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

from .plan import NOTE_NAMES, STEMS, Plan


@dataclass
class Song:
    """One generated song.

    ``stems`` maps each name of :data:`STEMS` to float32 audio of shape
    [2, frames] (channels first); :attr:`mixture` is their sum.
    """

    stems: dict[str, np.ndarray]
    sample_rate: int
    seed: int
    tempo: float = 0.0
    key: str = ""
    description: str = ""
    info: dict[str, str] = field(default_factory=dict)

    @property
    def mixture(self) -> np.ndarray:
        """The sum of the stems, float32 [2, frames]."""
        return np.stack([self.stems[name] for name in STEMS]).sum(axis=0, dtype=np.float32)

    @property
    def frames(self) -> int:
        return self.stems[STEMS[0]].shape[-1]


# --- mixing: levels, reverb, normalisation -------------------------------------------------------

BASE_LEVEL_DB = {"drums": 0.0, "bass": -1.0, "other": -3.0, "vocals": 0.0}
REVERB_SEND = {"drums": (0.05, 0.25), "bass": (0.0, 0.08), "other": (0.1, 0.4), "vocals": (0.1, 0.45)}


def _active_rms(audio: np.ndarray, frame: int = 2048) -> float:
    """RMS over the frames where the stem plays (silent sections do not dilute its level)."""
    mono = audio.mean(axis=0)
    usable = mono[: len(mono) // frame * frame].reshape(-1, frame) if len(mono) >= frame else mono[None]
    energy = np.mean(usable**2, axis=1)
    loud = energy[energy > 1e-3 * energy.max()] if energy.max() > 0 else energy
    return float(np.sqrt(loud.mean())) if loud.size else 0.0


def _impulse_response(rng: np.random.Generator, sr: int) -> tuple[np.ndarray, float]:
    """A stereo room: exponentially decaying noise (independent per channel, which is what makes the
    reverb wide), darker as it decays, after a short pre-delay. Returns ([2, taps], RT60 seconds)."""
    rt60 = rng.uniform(0.3, 1.4)
    taps = round(min(rt60, 1.0) * sr)
    t = np.arange(taps) / sr
    noise = rng.standard_normal((2, taps)) * np.exp(-6.9 * t / rt60)
    noise = signal.sosfilt(signal.butter(1, rng.uniform(3000, 8000), fs=sr, output="sos"), noise, axis=-1)
    predelay = round(rng.uniform(0.005, 0.03) * sr)
    ir = np.concatenate([np.zeros((2, predelay)), noise], axis=1)
    return ir / np.sqrt(np.sum(ir**2) / 2), rt60


def mix_stems(
    dry: dict[str, np.ndarray], rng: np.random.Generator, sr: int
) -> tuple[dict[str, np.ndarray], float]:
    """Level the dry stems ([2, frames] each; a random gain within ±6 dB around their base level),
    send them into one song-wide room, and scale all by one gain so the mixture peaks at 0.6 to 0.9.
    Returns (float32 stems, the room's RT60 in seconds)."""
    ir, rt60 = _impulse_response(rng, sr)
    frames = dry[STEMS[0]].shape[-1]
    # The reverb is a plain FFT convolution (what scipy.signal.fftconvolve does), in float32 and with
    # the room's spectrum computed once for all four stems: it is most of the render time otherwise.
    size = sp_fft.next_fast_len(frames + ir.shape[-1], real=True)
    room = sp_fft.rfft(ir.astype(np.float32), size, axis=-1)
    stems = {}
    for name in STEMS:
        audio = dry[name]
        level = 0.1 * 10 ** ((BASE_LEVEL_DB[name] + rng.uniform(-6.0, 6.0)) / 20)
        audio = audio * (level / max(_active_rms(audio), 1e-9))
        send = rng.uniform(*REVERB_SEND[name])
        # A mono send into the stereo room, as on a mixing desk's aux bus; the two decorrelated
        # channels of the room make every stem a little wide.
        spectrum = sp_fft.rfft((send * audio.mean(axis=0)).astype(np.float32), size)
        audio = audio + sp_fft.irfft(spectrum * room, size, axis=-1)[:, :frames]
        stems[name] = audio

    # One gain for all stems: the mixture peaks between 0.6 and 0.9 and no stem exceeds 0.99.
    mixture = sum(stems.values())
    peak = float(np.abs(mixture).max())
    stem_peak = max(float(np.abs(a).max()) for a in stems.values())
    gain = min(rng.uniform(0.6, 0.9) / max(peak, 1e-9), 0.99 / max(stem_peak, 1e-9))
    return {name: (audio * gain).astype(np.float32) for name, audio in stems.items()}, rt60


def assemble_song(stems: dict[str, np.ndarray], sr: int, seed: int, plan: Plan, info: dict[str, str]) -> Song:
    key = f"{NOTE_NAMES[plan.tonic]} {plan.mode}"
    description = (
        f"{plan.tempo:.0f} BPM, {key}; drums: {info['drums']}; bass: {info['bass']}; "
        f"other: {info['other']}; vocals: {info['vocals']}; reverb {info['reverb']}"
    )
    if "soundfont" in info:
        description += f"; soundfont {info['soundfont']}"
    return Song(stems, sr, seed, plan.tempo, key, description, info)
