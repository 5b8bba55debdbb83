"""Reading audio, block by block: probing, decoding, downmixing, resampling (writing stems is
:mod:`stemsplit.output`). Everything streams: a song is never held in memory whole.

Decoding: libsndfile first (wav, flac, ogg vorbis/opus, mp3, aiff, caf, ...),
then FFmpeg through PyAV, whose wheel carries FFmpeg's libraries, for what
libsndfile cannot read: AAC/ALAC in M4A/MP4, WMA, Opus/Vorbis in WebM/MKV and
the soundtrack of videos (MP4, MOV, MKV, WebM, AVI). Resampling is soxr's
streaming resampler (high quality).

Lengths: the audio decides, never the header. libsndfile knows a file's
exact frame count from its header; FFmpeg's containers often state only a
duration, so :class:`AudioInfo` says whether ``frames`` is exact
(``frames_exact``); when it is not, the number of frames :func:`read_blocks`
yields is the truth. Where a header misstates the audio, probe finds the
audio itself, and says so in ``AudioInfo.notes``:

- WAV: a chunk walk (:func:`.spliced.wav_facts`) finds every data chunk's bytes (size
  0 or 0xFFFFFFFF over audio, two data chunks, past 4 GiB); libsndfile then
  decodes them through an RF64 header made here (a :class:`.info.Segment`).
- MP3: mpg123 trusts the first Xing/Info tag and stops where the rate
  changes; an MP3 with more bytes than its tag counts, or with no tag, is
  decoded by FFmpeg, which reads every frame.
- Ogg: each link of a chained Ogg is a :class:`.info.Segment` of its own, converted
  to the song's rate and channels.
- Several audio streams: the default one, or the one asked for.

Problems are :class:`AudioError`, one line starting with the path: not a
regular file (FIFO, socket, device), permission denied, a directory, empty,
not an audio file (text, images, archives, unknown bytes), no audio stream
(a video without sound), truncated (at the position where decoding really
stops), NaN or infinite samples, samples beyond ±:data:`.decode.MAX_SAMPLE` (not audio).

The modules, each importing only those before it (and nothing of the engine):

- :mod:`.info`: :class:`AudioInfo`, :class:`AudioError`, what they all share
- :mod:`.downmix`: more than two channels folded to stereo
- :mod:`.resample`: :class:`BlockResampler`
- :mod:`.spliced`: WAVs whose header misstates their audio, chained Ogg
- :mod:`.ffmpeg`: probing and decoding with FFmpeg (PyAV)
- :mod:`.probing`: :func:`probe`, what a file holds
- :mod:`.decode`: :func:`read_blocks`
- :mod:`.native_stderr`: C libraries' messages kept off the terminal

Below, the names callers outside stemsplit use (and the messages and docs name); stemsplit's own
modules import from the module that defines a name.
"""

from .decode import read_blocks
from .downmix import describe_downmix, downmix_to_stereo
from .info import AUDIO_EXTENSIONS, AudioError, AudioInfo
from .native_stderr import redirect_native_stderr
from .probing import probe
from .resample import BlockResampler

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "BlockResampler",
    "describe_downmix",
    "downmix_to_stereo",
    "probe",
    "read_blocks",
    "redirect_native_stderr",
]
