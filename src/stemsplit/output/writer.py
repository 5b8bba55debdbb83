"""Writing one song's stems, all together or not at all (:class:`StemWriter`).

Stem blocks, as the engine makes them, stream to temporary float32 WAVs beside their destinations
(written here, not by libsndfile: RF64 past 4 GiB, silence as holes; :class:`_FloatTemp`); the commit
converts them to the output format and renames them into place together, under a journal
(:mod:`.journal`). On any failure before the last rename the renamed ones are rolled back, every
temporary is removed, and so is every folder the writer created.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.info import sf_name
from ..audio.resample import BlockResampler
from ..files import sweep_stale_temporaries, temporary_sibling, write_failure
from .journal import backup_name, check_inside, identity, recover_unfinished_commits, write_journal
from .plan import OUTPUT_FORMATS, OutputError, OutputOptions, SongOutputs, check_regular, exists_error

# A float32 WAV temporary's header: RIFF/RF64 (12), JUNK/ds64 (36), fmt (26), fact (12), data (8) bytes.
_FLOAT_HEADER_BYTES = 94
# The largest RIFF size field: a WAV past it is RF64 (EBU Tech 3306), whose ds64 chunk holds 64-bit sizes.
_RIFF_LIMIT = 0xFFFFFFFF


def float_wav_header(frames: int, sample_rate: int, channels: int) -> bytes:
    """The header of a float32 WAV of ``frames`` frames (:data:`_FLOAT_HEADER_BYTES` long, whatever the size).

    Up to 4 GiB a plain RIFF WAVE whose JUNK chunk keeps the room a ds64 chunk
    needs; past it the same layout as RF64, the JUNK turned into ds64 (as EBU
    Tech 3306 intends), so a stem of any length has a header that says its length.
    """
    data = frames * channels * 4
    riff = _FLOAT_HEADER_BYTES - 8 + data
    if riff > _RIFF_LIMIT:
        head = b"RF64" + b"\xff\xff\xff\xff" + b"WAVE"
        head += b"ds64" + struct.pack("<IQQQI", 28, riff, data, frames, 0)
        data_size = 0xFFFFFFFF
    else:
        head = b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"JUNK" + struct.pack("<I", 28) + bytes(28)
        data_size = data
    fmt = struct.pack("<HHIIHHH", 3, channels, sample_rate, sample_rate * channels * 4, channels * 4, 32, 0)
    header = (
        head + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"fact" + struct.pack("<II", 4, min(frames, 0xFFFFFFFF))
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip
    assert len(header) == _FLOAT_HEADER_BYTES
    return header


class _FloatTemp:
    """A float32 WAV being streamed beside its destination (a hidden temporary name).

    Written here rather than by libsndfile, whose WAV writer cannot pass
    4 GiB (a stem over 3 h 22 min at 44.1 kHz stereo was cut or got a broken
    header): raw samples after room for the header, which :meth:`close` fills
    in (RF64 past 4 GiB, see :func:`float_wav_header`). A block of silence
    is skipped over rather than written: it reads as zeros and takes no disk
    (silent stems of long recordings are common).
    """

    def __init__(self, destination: Path, sample_rate: int, channels: int) -> None:
        self.destination = destination
        self.sample_rate, self.channels = sample_rate, channels
        self.peak = 0.0
        self.frames = 0
        self.path = temporary_sibling(destination, ".partial")
        try:
            self._file = open(self.path, "r+b")  # noqa: SIM115 - closed by close()
            self._file.seek(_FLOAT_HEADER_BYTES)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def write(self, block: np.ndarray) -> bool:
        """block: [frames, channels] float32. False (nothing written) if it holds NaN or infinity."""
        if len(block):
            peak = float(np.abs(block).max())
            if not math.isfinite(peak):
                return False
            self.peak = max(self.peak, peak)
            if peak == 0.0:
                self._file.seek(block.size * 4, os.SEEK_CUR)  # a hole: zeros, no disk
            else:
                self._file.write(np.ascontiguousarray(block, dtype="<f4").data)
            self.frames += len(block)
        return True

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.truncate()  # a trailing hole, made part of the file
                self._file.seek(0)
                self._file.write(float_wav_header(self.frames, self.sample_rate, self.channels))
            finally:
                self._file.close()

    def discard(self) -> None:
        """Close without finishing (a full disk must not stop the clean-up) and remove the file."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


class StemWriter:
    """One song's stems: streamed to temporaries, then committed all together or not at all.

    ::

        with StemWriter(song, options, sample_rate=44100, channels=2) as writer:
            for block in blocks:  # {stem: [frames, channels] float32}
                writer.write(block)
            gain = writer.commit()

    Entering checks the destinations (existing files, unless ``overwrite``),
    creates the folders and sweeps temporaries of dead processes from them.
    Leaving without :meth:`commit` (an exception, Ctrl-C) removes every
    temporary and every folder the writer created.
    """

    def __init__(self, song: SongOutputs, options: OutputOptions, sample_rate: int, channels: int) -> None:
        if problem := options.rate_problem(sample_rate):  # before anything is separated or created
            raise OutputError(f"{song.source.path}: {problem}", "fmt")
        self.song, self.options = song, options
        self.sample_rate, self.channels = sample_rate, channels
        self._temps: dict[str, _FloatTemp] = {}
        self._made_folders: list[Path] = []
        self._committed = False

    def __enter__(self) -> StemWriter:
        try:
            recover_unfinished_commits(self.song.out_dir)  # a power cut's half commit, before we look
            self._check_destinations()
            for stem, path in self.song.paths.items():
                self._make_folder(path.parent)
                sweep_stale_temporaries(path.parent)
                self._temps[stem] = _FloatTemp(path, self.sample_rate, self.channels)
        except BaseException as exc:
            self._clean_up()
            if isinstance(exc, OSError):
                raise self._os_error(exc) from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self._clean_up()

    def write(self, stems: Mapping[str, np.ndarray]) -> None:
        """Append a block of every stem: {stem: [frames, channels] float32}."""
        try:
            for stem, temp in self._temps.items():
                if not temp.write(stems[stem]):
                    raise OutputError(
                        f"{self.song.source.path}: the {stem} stem came out NaN or infinite "
                        "(is the input too loud?); nothing was written for this song"
                    )
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise self._os_error(exc) from None

    def commit(self) -> float:
        """Convert and rename every stem into place; returns the gain applied (1.0: none).

        With ``clip_mode="rescale"`` and an integer format, all stems of the song
        are divided by one factor if any would clip, so they still sum to the mix.
        """
        options = self.options
        try:
            for temp in self._temps.values():
                temp.close()  # the last buffered samples and the header: a full disk may show only now
        except OSError as exc:
            raise self._os_error(exc) from None
        peak = max((t.peak for t in self._temps.values()), default=0.0)
        gain = 1.0 / peak if options.integer and options.clip_mode == "rescale" and peak > 1.0 else 1.0
        rate = options.sample_rate(self.sample_rate)
        finals: dict[str, Path] = {}
        try:
            for stem, temp in self._temps.items():
                if not options.integer and rate == self.sample_rate:
                    finals[stem] = temp.path  # already float32 wav
                else:
                    finals[stem] = self._convert(temp.path, temp.destination, gain, rate)
                    temp.path.unlink()
            self._check_destinations()  # something may have appeared while we separated
            self._rename_all(finals)
        except BaseException as exc:
            for path in finals.values():
                path.unlink(missing_ok=True)
            if isinstance(exc, (OSError, sf.LibsndfileError, RuntimeError)):
                raise self._os_error(exc) from None
            raise
        self._committed = True
        return gain

    # -- helpers --

    def _check_destinations(self) -> None:
        check_regular(self.song.paths.values())  # again: it may have appeared since the run was planned
        for path in self.song.paths.values():
            if os.path.isdir(path):
                raise OutputError(f"{path} is a folder; cannot write a stem there")
            if os.path.lexists(path) and not self.options.overwrite:
                raise exists_error(path)

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not os.path.lexists(folder):
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # another process made it meanwhile: not ours to remove
                continue
            self._made_folders.append(path)

    def _convert(self, source: Path, destination: Path, gain: float, rate: int) -> Path:
        """Float wav ``source`` -> a temporary in the output format (times ``gain``); returns its path."""
        container, subtypes = OUTPUT_FORMATS[self.options.fmt]
        subtype = subtypes[self.options.bit_depth]
        clamp = self.options.clip_mode == "clamp"
        target = temporary_sibling(destination, ".partial")
        try:
            with sf.SoundFile(sf_name(source)) as src:
                if container == "WAV" and _past_riff_limit(
                    src.frames * rate / src.samplerate, src.channels, subtype
                ):
                    container = "RF64"  # libsndfile's WAV writer cannot pass 4 GiB
                resample = BlockResampler(src.samplerate, rate, src.channels)
                with sf.SoundFile(
                    sf_name(target),
                    "w",
                    samplerate=rate,
                    channels=src.channels,
                    format=container,
                    subtype=subtype,
                ) as dst:
                    for block in src.blocks(65536, dtype="float32", always_2d=True):
                        block = resample(block * gain if gain != 1.0 else block)
                        dst.write(np.clip(block, -1.0, 1.0) if clamp else block)
                    dst.write(resample.flush(src.channels))
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    def _rename_all(self, finals: dict[str, Path]) -> None:
        """Rename every stem into place; on any failure put everything back as it was.

        A journal (see :mod:`.journal`) is written and synced before the first
        rename, so a power cut midway is undone by the next run; it is removed
        once every rename succeeded, or everything was put back.
        """
        out_dir = self.song.out_dir
        entries = []  # (destination, final, backup name, identity of the old file or None)
        for stem, final in finals.items():
            destination = self.song.paths[stem]
            entries.append((destination, final, backup_name(destination), identity(destination)))
        journal = write_journal(out_dir, entries)
        # (destination, its backup, the new file's identity)
        done: list[tuple[Path, Path | None, list[int] | None]] = []
        try:
            for destination, final, backup, _ in entries:
                check_inside(out_dir, destination)  # a link put in since the plan must not lead out
                new = identity(final)
                if os.path.isdir(destination) and not os.path.islink(destination):  # appeared since the check
                    raise OutputError(
                        f"{destination} is a folder; cannot write a stem there; "
                        "nothing was written for this song"
                    )
                if os.path.lexists(destination):  # overwriting: keep the old file until all succeeded
                    os.replace(destination, backup)
                    done.append((destination, backup, new))
                else:
                    done.append((destination, None, new))
                os.replace(final, destination)
        except BaseException:
            restored = True
            for destination, kept, new in reversed(done):
                try:
                    if new is not None and identity(destination) == new:  # ours, renamed in already
                        destination.unlink()
                    if kept is not None:
                        os.replace(kept, destination)
                except OSError:
                    restored = False  # the journal stays: the next run puts it back
            if restored:
                journal.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # committed: a backup left now is removed by the next run
            for _, kept, _ in done:
                if kept is not None:
                    kept.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)

    def _clean_up(self) -> None:
        for temp in self._temps.values():
            temp.discard()
        for folder in reversed(self._made_folders):
            with contextlib.suppress(OSError):  # only if empty: another song may have written there
                folder.rmdir()

    def _os_error(self, exc: BaseException) -> OutputError:
        """A failed write as one line, in the words of every failed write (:func:`write_failure`)."""
        folder = self.song.out_dir
        reason = write_failure(exc, folder)
        return OutputError(f"writing stems into {folder} failed: {reason}; nothing was written for this song")


def _past_riff_limit(frames: float, channels: int, subtype: str) -> bool:
    """Whether a WAV of ``frames`` frames of ``subtype`` would pass the RIFF's 4 GiB (with room for a
    header of any size libsndfile writes)."""
    sample_bytes = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4}[subtype]
    return frames * channels * sample_bytes > _RIFF_LIMIT - (1 << 16)
