"""The output side of a run: the plan of every path, and committing a song's stems.

For now the package is one module, :mod:`stemsplit.output.plan`, moved here whole so its history
follows it; the next commit splits it.
"""

from .plan import (
    DEFAULT_FILENAME,
    OUTPUT_FORMATS,
    TEMPLATE_FIELDS,
    OutputError,
    OutputExistsError,
    OutputOptions,
    SongOutputs,
    SongSource,
    StemWriter,
    exists_error,
    path_parts,
    plan_outputs,
    recover_unfinished_commits,
    track_name,
)

__all__ = [
    "DEFAULT_FILENAME",
    "OUTPUT_FORMATS",
    "TEMPLATE_FIELDS",
    "OutputError",
    "OutputExistsError",
    "OutputOptions",
    "SongOutputs",
    "SongSource",
    "StemWriter",
    "exists_error",
    "path_parts",
    "plan_outputs",
    "recover_unfinished_commits",
    "track_name",
]
