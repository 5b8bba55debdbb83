"""One song of a separation run: :class:`Song` (its planned outputs, then what became of it) and
:func:`separate_one` (for ``batch``: unless done, and under its claim; then all its stems or none), which
``batch --ray``'s workers run too."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from .flags import SeparationFlags
from .reporter import Reporter


@dataclasses.dataclass
class Song:
    """One input, as the run sees it: its planned outputs, then what became of it."""

    outputs: Any  # stemsplit.output.SongOutputs
    info: Any = None  # stemsplit.audio.AudioInfo, once probed
    status: str = "pending"  # pending, done, skipped, failed; claimed (by another process: waited for)
    details: str = ""
    identity: tuple[int, ...] | None = None  # the source as it was probed (source_identity)
    claim: Any = None  # batch: the song's stemsplit.batch.Claim, kept while another process holds it
    said: bool = False  # its failure's error line was printed already (before the model loaded)


def separate_one(
    separator,
    song: Song,
    options,
    flags: SeparationFlags,
    records,
    reporter: Reporter,
    claim_token: str | None = None,
    dead_claims: tuple[str, ...] = (),
) -> None:
    """Separate one song of the run (batch: unless done, and under its claim), and record what became of
    it in ``song``. ``flags``: the run's (its ``out``, ``downmix``, ``debug``, ``task``).
    ``claim_token``: the claim's token (a --ray worker's attempt, named by the driver);
    ``dead_claims``: tokens of earlier attempts at this song whose worker died (taken over at once)."""
    from ..audio.downmix import describe_downmix
    from ..audio.info import AudioError
    from ..batch import STATE_FOLDER, Claim, SourceChangedError
    from ..engine.settings import SeparationError
    from ..output.plan import OutputError, OutputExistsError

    source, out = song.outputs.source.path, flags.out
    claim = None
    song_options = options
    try:  # the song as it is now: it may have been replaced or edited since it was probed
        _probe_again_if_changed(separator, song, flags.downmix, batch=records is not None)
    except (AudioError, SeparationError, SourceChangedError) as exc:
        if flags.debug:
            raise
        song.status, song.details = "failed", str(exc)
        reporter.error(song.details, source=str(source))
        return
    if records is not None:
        if records.is_done(song.outputs, by_bytes=False):  # (the bytes are read once the song is claimed)
            song.status, song.details = "skipped", "done earlier with the same source and settings"
            reporter.emit({"event": "skipped", "source": str(source), "outputs": _paths(song)})
            return
        first_look = song.claim is None
        claim = song.claim = song.claim or Claim(
            out, song.outputs, options.filename, records.settings, token=claim_token
        )
        try:
            acquired = claim.acquire(dead_claims)
        except OSError as exc:  # OUT/.stemsplit unusable: this song fails, with its reason
            song.status, song.details = "failed", _os_problem(exc, out / STATE_FOLDER)
            reporter.error(song.details, source=str(source))
            return
        if not acquired and claim.conflict:  # another run, other settings: its stems and ours would mix
            song.status = "failed"
            song.details = (
                f"{source}: being separated by {claim.holder} with other settings "
                f"({', '.join(claim.conflict)}) into the same place; run again when it is done"
            )
            reporter.error(song.details, source=str(source))
            return
        if not acquired:  # waited for (see _report): done by its holder, or taken over once it is dead
            song.status, song.details = "claimed", f"being separated by {claim.holder}"
            if first_look:
                reporter.line(f"{source}: being separated by {claim.holder}; waiting for it")
                reporter.emit({"event": "waiting", "source": str(source), "holder": claim.holder})
            return
        if records.is_done(song.outputs):  # done by another process just before we claimed it, or moved
            claim.release()
            song.status, song.details = (
                "skipped",
                "done earlier with the same source (its bytes) and settings",
            )
            reporter.emit(
                {"event": "skipped", "source": str(source), "reason": "done", "outputs": _paths(song)}
            )
            return
        reporter.heartbeat = claim.heartbeat
    reporter.begin_song(source)
    try:
        if records is not None:
            # Stale stems of ours (an older source, other settings or stems) are replaced; a file of
            # anyone else's only with --overwrite, and it is the one named.
            records.begin(song.outputs, options.overwrite)
            song_options = dataclasses.replace(options, overwrite=True)
        result = separator.separate_song(song.outputs, song.info, song_options, flags.downmix)
        if records is not None:
            records.write(song.outputs, complete=True)
    except (AudioError, SeparationError, OutputError, OSError, SourceChangedError) as exc:
        if flags.debug:
            raise
        message = _song_problem(exc, song, out, batch=records is not None)
        if isinstance(exc, OutputExistsError):
            message += " (add --overwrite to replace it)"
        song.status, song.details = "failed", message
        reporter.error(message, source=str(source))
    else:
        song.status = "done"
        noun = "stems" if flags.task == "music" else "files"
        song.details = f"{len(result.outputs)} {noun} in {_common_parent(result.outputs.values())}"
        for note in song.info.notes:  # the header said otherwise: say what was read
            song.details += f"; {note}"
        if result.rescaled_by != 1.0:
            gain_db = 20 * math.log10(result.rescaled_by)
            song.details += f"; scaled by {result.rescaled_by:.3f} ({gain_db:.1f} dB) so nothing clips"
        if result.residual_db is not None:
            song.details += f"; residual {result.residual_db:.1f} dB shared among stems"
        if song.info.channels > 2:
            song.details += "; " + describe_downmix(song.info.channels, song.info.layout)
            if separator.output_channels(song.info.channels) == 1:
                song.details += ", then averaged to mono for the network"
        rate = options.sample_rate(song.info.sample_rate)
        if rate != song.info.sample_rate:
            song.details += f"; written at {rate} Hz ({options.fmt} cannot carry {song.info.sample_rate} Hz)"
        reporter.emit(
            {
                "event": "result",
                "source": str(source),
                "outputs": {k: str(v) for k, v in result.outputs.items()},  # (the run report's too)
                "rescaled_by": result.rescaled_by,
                "residual_db": result.residual_db,
                "notes": list(song.info.notes),  # where the file's header and its audio disagreed
            }
        )
    finally:
        reporter.heartbeat = lambda: None
        if claim is not None:
            claim.release()
        reporter.end_song()


def _paths(song: Song) -> dict[str, str]:
    """The song's output paths by stem, as events and the run report give them."""
    return {stem: str(path) for stem, path in song.outputs.paths.items()}


def _probe_again_if_changed(separator, song: Song, downmix: bool, batch: bool) -> None:
    """Before a song's turn: if its file is not the one probed when the run began (edited, replaced),
    probe and check it again, so that its length, rate and channels are today's. Raises
    :class:`~stemsplit.batch.SourceChangedError` if it is gone, AudioError or SeparationError if the new
    file cannot be separated."""
    from ..audio.probing import probe
    from ..batch import source_changed
    from ..engine.request import source_identity

    now = source_identity(song.outputs.source.path)
    if now == song.identity:
        return
    if now is None:
        raise source_changed(song.outputs.source.path, gone=True, resumable=batch)
    song.info, song.identity = probe(song.outputs.source.path), now
    separator.check_input(song.info, downmix)


def _song_problem(exc: Exception, song: Song, out: Path, batch: bool) -> str:
    """What made a song fail, naming what actually failed: the song itself when it changed or went
    while it was read (whatever error that caused: a decoding error, a missing file), batch's records
    in OUT/.stemsplit, else the file the error names."""
    from ..batch import STATE_FOLDER, SourceChangedError, source_changed
    from ..engine.request import source_identity

    source = song.outputs.source.path
    if not isinstance(exc, SourceChangedError) and source_identity(source) != song.identity:
        gone = source_identity(source) is None
        return f"{source_changed(source, gone=gone, resumable=batch)}; reading it gave: {exc}"
    if isinstance(exc, OSError):
        return _os_problem(exc, out / STATE_FOLDER)
    return str(exc)


def _os_problem(exc: OSError, records: Path) -> str:
    """An OSError as one line: the file it names and the reason (in the words of every failed write), and
    "(batch's records)" when that file is in ``records`` (OUT/.stemsplit: full disk, permissions, junk)."""
    from ..files import write_failure

    name = exc.filename or records
    line = f"{name}: {write_failure(exc, Path(name).parent)}"
    if os.path.abspath(name) == os.path.abspath(records) or os.path.abspath(name).startswith(
        os.path.abspath(records) + os.sep
    ):
        line += " (batch's records)"
    return line


def record_settings(
    separator, options, downmix: bool, stream: int | None, stems: list[str]
) -> dict[str, Any]:
    """What changes a song's stems: a batch re-separates a song when any of it differs (``downmix``,
    ``stream``: the run's --downmix and --stream).

    An ensemble's fingerprint covers its members, their weights and which stem comes from which;
    its window, hop, stage and precision are each member's, in a list."""
    members = getattr(separator, "members", None)

    def each(name: str) -> Any:
        return getattr(separator, name) if members is None else [getattr(m, name) for m in members]

    return {
        "model": separator.fingerprint(),
        "window": each("window"),
        "hop": each("hop"),
        "stage": each("stage"),
        "exact": separator.exact,
        "shifts": each("shifts"),
        "precision": each("precision"),
        "downmix": downmix,
        **({"stream": stream} if stream is not None else {}),  # absent: records stay valid
        "stems": stems,
        "format": options.fmt,
        "bit_depth": options.bit_depth,
        "clip_mode": options.clip_mode,
        "filename": options.filename,
    }


def _common_parent(paths) -> str:
    return os.path.commonpath([str(p.parent) for p in paths])
