"""The separation API under its first name: ``from stemsplit.separate import Separator`` keeps working.

The engine lives in :mod:`stemsplit.engine` (:mod:`~stemsplit.engine.separator`,
:mod:`~stemsplit.engine.song_separator`, :mod:`~stemsplit.engine.overlap_add`,
:mod:`~stemsplit.engine.pool`, :mod:`~stemsplit.engine.residual`); new code imports from there, or
takes ``stemsplit.Separator``.
"""

from .engine.overlap_add import ShiftedOverlapAdd, StreamingOverlapAdd, shift_delays, window_count
from .engine.pool import WindowPool
from .engine.residual import share_residual
from .engine.runtime import pick_device
from .engine.separator import Separator
from .engine.settings import SeparationError, check_sample_rate, check_settings, choose_stems
from .engine.song_separator import SeparationResult, SongSeparator, as_audio_array, song_stats

__all__ = [
    "SeparationError",
    "SeparationResult",
    "Separator",
    "ShiftedOverlapAdd",
    "SongSeparator",
    "StreamingOverlapAdd",
    "WindowPool",
    "as_audio_array",
    "check_sample_rate",
    "check_settings",
    "choose_stems",
    "pick_device",
    "share_residual",
    "shift_delays",
    "song_stats",
    "window_count",
]
