"""Reading audio: probing, decoding, downmixing and resampling, block by block (the modules of this package).

For now the package is one module, :mod:`stemsplit.audio.probe`, moved here whole so its history
follows it; the next commit splits it.
"""

from .probe import (
    AUDIO_EXTENSIONS,
    MAX_SAMPLE,
    AudioError,
    AudioInfo,
    BlockResampler,
    describe_downmix,
    downmix_to_stereo,
    libsndfile_reason,
    probe,
    read_blocks,
    redirect_native_stderr,
    sf_name,
    unplayable_problem,
    unplayable_sample,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "MAX_SAMPLE",
    "AudioError",
    "AudioInfo",
    "BlockResampler",
    "describe_downmix",
    "downmix_to_stereo",
    "libsndfile_reason",
    "probe",
    "read_blocks",
    "redirect_native_stderr",
    "sf_name",
    "unplayable_problem",
    "unplayable_sample",
]
