"""The output side of a run: where every stem goes, in which format, and committing a song's stems.

Three parts, used in this order:

1. :mod:`.plan`: :class:`OutputOptions` and :func:`plan_outputs` decide, before any audio is
   decoded, every path a run will write, and check them: the template's fields,
   that every path stays inside the output folder, that no two songs (or two
   stems of one song) share a file, that format, bit depth and sample rate go
   together.
2. :mod:`.writer`: :class:`StemWriter` takes one song's stem blocks as the engine makes them,
   streams them to temporary float32 WAVs beside their destinations (written
   here: RF64 past 4 GiB, silence as holes), and
   :meth:`StemWriter.commit` converts them to the output format and renames
   them into place together. If anything fails before the last rename, the
   renamed ones are rolled back (files they replaced are put back), every
   temporary is removed, and so is every folder the writer created: a song's
   stems appear all together or not at all.
3. :mod:`.journal`: a power cut between the renames of a commit cannot roll anything back then;
   so before its first rename a commit writes a journal into the output folder, and the next
   writer into that folder finishes a dead process's commit (:func:`recover_unfinished_commits`).

The engine (:mod:`stemsplit.separate`) knows nothing about paths; the CLI adds
flag names to the messages here (an :class:`OutputError` names the option it is
about in ``option``).

Below, the names callers outside stemsplit (and the tests) use; stemsplit's own modules import from
the module that defines a name.
"""

from .journal import recover_unfinished_commits
from .plan import OutputError, OutputExistsError, OutputOptions, SongOutputs, SongSource, plan_outputs
from .writer import StemWriter

__all__ = [
    "OutputError",
    "OutputExistsError",
    "OutputOptions",
    "SongOutputs",
    "SongSource",
    "StemWriter",
    "plan_outputs",
    "recover_unfinished_commits",
]
