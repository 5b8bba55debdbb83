"""``stemsplit batch``'s bookkeeping, in three parts: :mod:`.songs` finds the songs under the folders
given, takes a ``--shard`` share and names each song's done record and claim; :mod:`.records` keeps
the done records (which songs are done, with which settings, and which files are stemsplit's own);
:mod:`.claims` lets several processes share one output folder, each song separated once.

Below, the names the CLI (and the tests) use; stemsplit's own modules import from the module that
defines a name.
"""

from .claims import CLAIM_POLL_SECONDS, Claim, process_space
from .records import DoneRecords, GivenNames
from .songs import (
    STATE_FOLDER,
    BatchError,
    Shard,
    SourceChangedError,
    find_songs,
    parse_shard,
    shard_of,
    song_key,
    song_path_key,
    song_slot,
    source_changed,
)

__all__ = [
    "CLAIM_POLL_SECONDS",
    "STATE_FOLDER",
    "BatchError",
    "Claim",
    "DoneRecords",
    "GivenNames",
    "Shard",
    "SourceChangedError",
    "find_songs",
    "parse_shard",
    "process_space",
    "shard_of",
    "song_key",
    "song_path_key",
    "song_slot",
    "source_changed",
]
