"""``stemsplit batch``'s bookkeeping: finding the songs, remembering which are done, sharing the work.

Below, the names the CLI (and the tests) use; stemsplit's own modules import from the module that
defines a name.
"""

from .songs import (
    CLAIM_POLL_SECONDS,
    STATE_FOLDER,
    BatchError,
    Claim,
    DoneRecords,
    GivenNames,
    Shard,
    SourceChangedError,
    find_songs,
    parse_shard,
    process_space,
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
