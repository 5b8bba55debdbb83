"""The model cache: where downloaded files live, their locks and their hashes. Importable without torch.

Layout under ``$STEMSPLIT_CACHE`` (default ``~/.cache/stemsplit``):
``models/NAME/FILE`` (the published file), ``FILE.sha256`` (its hash recorded
on first use), ``STEM.safetensors`` (+ ``.sha256``; the conversion of a pickled
checkpoint); ``urls/HASH/`` the same for plain URLs; ``locks/`` the lock files.
Files get 0666 minus the umask. A read-only cache (copied to an offline
machine) loads what it holds without locks; a cache that must be written but
cannot be is a :class:`CacheError` naming STEMSPLIT_CACHE.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..files import creation_problem, sha256_of, special_file, write_atomically, write_failure
from .errors import CacheError, ChecksumError, UnknownModelError
from .registry import CHECKPOINT_SUFFIXES, ModelEntry, load_registry

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = ["Source", "cache_dir", "cached_path", "downloaded_path", "is_offline", "locked", "source_of"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """``STEMSPLIT_OFFLINE`` or ``HF_HUB_OFFLINE`` set: use the cache only, never the network."""
    return _env_flag("STEMSPLIT_OFFLINE") or _env_flag("HF_HUB_OFFLINE")


def cache_dir() -> Path:
    """``$STEMSPLIT_CACHE``, default ``~/.cache/stemsplit`` (read on every call, so tests can redirect it)."""
    return Path(os.environ.get("STEMSPLIT_CACHE") or Path.home() / ".cache" / "stemsplit").expanduser()


@dataclass(frozen=True)
class Source:
    """A file to fetch and where its cached copy, hash record and conversion live."""

    label: str  # for messages: the model name or the URL's file name
    directory: Path  # our cache directory for it
    filename: str  # the published file name
    sha256: str  # expected hash, "" = trust on first use
    url: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    size: int | None = None
    shipped: bool = False  # a local file beside the registry: nothing to download, cache or lock
    registry: bool = False  # a registry model (`stemsplit models download NAME` fetches it again)

    @property
    def download_path(self) -> Path:
        return self.directory / Path(self.filename).name

    @property
    def converted_path(self) -> Path:
        return self.directory / (Path(self.filename).stem + ".safetensors")

    @property
    def lock_path(self) -> Path:
        return cache_dir() / "locks" / f"{self.directory.parent.name}-{self.directory.name}.lock"

    def local_file(self) -> Path | None:
        """The published file if it is in a cache (ours, or Hugging Face's for hub sources)."""
        if self.repo_id:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(self.repo_id, self.filename, revision=self.revision)
            return Path(found) if isinstance(found, str) else None
        return self.download_path if self.download_path.is_file() else None

    def loadable_file(self) -> Path | None:
        """The cached file that loading reads: the safetensors original or the conversion."""
        original = self.local_file()
        if original is not None and original.suffix == ".safetensors":
            return original
        return self.converted_path if self.converted_path.is_file() else None


def source_of(entry: ModelEntry) -> Source:
    if entry.path is not None:
        return Source(
            label=entry.name,
            directory=entry.path.parent,
            filename=entry.filename,
            sha256=entry.sha256,
            size=entry.size,
            shipped=True,
        )
    return Source(
        label=entry.name,
        directory=cache_dir() / "models" / entry.name,
        filename=entry.filename,
        sha256=entry.sha256,
        url=entry.url,
        repo_id=entry.repo_id,
        revision=entry.revision,
        size=entry.size,
        registry=True,
    )


def source_of_url(url: str) -> Source:
    filename = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    if not filename.endswith(CHECKPOINT_SUFFIXES):
        raise UnknownModelError(f"{url}: the URL must name a {', '.join(CHECKPOINT_SUFFIXES)} file")
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    directory = cache_dir() / "urls" / key
    return Source(label=filename, directory=directory, filename=filename, sha256="", url=url)


def cached_path(name: str) -> Path | None:
    """The cached file :func:`load_model` reads for registry model ``name``, or None if not there yet."""
    return source_of(load_registry().get(name)).loadable_file()


def downloaded_path(name: str) -> Path | None:
    """The published file of registry model ``name`` as downloaded (ours or Hugging Face's cache), or None."""
    return source_of(load_registry().get(name)).local_file()


@contextlib.contextmanager
def locked(source: Source, progress: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on one cache entry, so a second process waits instead of racing.

    A cache where the lock file cannot be made (read-only: copied to an offline
    machine, a read-only mount; or STEMSPLIT_CACHE is unusable) is used without
    the lock: nothing can be written there, so there is nothing to race with,
    what it holds still loads, and a write that turns out to be needed fails
    with its own :class:`CacheError`.
    """
    if source.shipped:  # read-only: loads need no lock and must work with an unwritable cache
        yield
        return
    path = source.lock_path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 - closed by the `with handle` below
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress:
                    print(f"stemsplit: waiting for another process using {source.label} ...", file=sys.stderr)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        else:  # pragma: no cover - Windows: locking() retries for 10 s, so loop
            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            else:  # pragma: no cover
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def _cache_setting() -> str:
    """How a message names the cache: the STEMSPLIT_CACHE setting, or the default folder."""
    variable = os.environ.get("STEMSPLIT_CACHE")
    return f"STEMSPLIT_CACHE={variable}" if variable else f"the model cache {cache_dir()}"


def cache_problem() -> str | None:
    """Why models cannot be downloaded into the cache (one line naming STEMSPLIT_CACHE), or None.

    ``stemsplit doctor`` says it before anything needs the cache: a device (``/dev/null``), a file, a
    folder that cannot be made or written to."""
    root = cache_dir()
    problem = _not_a_folder(root) or creation_problem(root)
    return f"{_cache_setting()}: {problem}; set STEMSPLIT_CACHE to a writable folder" if problem else None


def _not_a_folder(root: Path) -> str | None:
    """What the cache's path is when it is no folder (a device, a FIFO, a file), else None."""
    if kind := special_file(root):
        return f"is {kind}, not a folder"
    if root.exists() and not root.is_dir():
        return "is a file, not a folder"
    return None


def cache_error(exc: OSError) -> CacheError:
    """A failed write in the cache, as one line naming the file and the STEMSPLIT_CACHE setting."""
    root = cache_dir()
    problem = _not_a_folder(root)
    if problem is None:
        problem = f"{exc.filename}: {write_failure(exc, root)}" if exc.filename else write_failure(exc, root)
    return CacheError(f"{_cache_setting()}: {problem}; set STEMSPLIT_CACHE to a writable folder")


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda temp: temp.write_text(text))


def check_hash(
    path: Path, expected: str, record: Path, label: str, *, hint: str = "", shown: str | None = None
) -> str:
    """Check ``path`` against the registry hash, else the hash in ``record`` if there is one.

    ``record`` is named after the final file, so a ``.part`` is checked against
    the record of the file it becomes. Nothing is recorded here: trust on first
    use records a hash only once the file has parsed as a checkpoint
    (:func:`pin_hash`). Returns the sha256; raises :class:`ChecksumError` on a
    mismatch, naming ``shown`` (default: the path), with ``hint`` (how to clear it) appended.
    """
    actual = sha256_of(path)
    hint = f"; {hint}" if hint else ""
    shown = shown or str(path)
    if expected:
        if actual != expected:
            raise ChecksumError(
                f"{label}: {shown} has sha256 {actual}, but the registry says {expected}{hint}"
            )
        return actual
    if record.is_file():
        recorded = record.read_text().strip()
        if actual != recorded:
            raise ChecksumError(
                f"{label}: {shown} has sha256 {actual}, but {recorded} was recorded on first use "
                f"in {record}; the file changed{hint}"
            )
    return actual


def pin_hash(record: Path, sha256: str) -> None:
    """Trust on first use: pin ``sha256`` for later loads (only ever called for a file that parsed)."""
    record.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(record, sha256 + "\n")


def clear_hint(source: Source, *paths: Path) -> str:
    """How to get rid of a bad cached file: delete it (and what was derived from it), run again."""
    listing = " and ".join(str(p) for p in paths)
    again = f"`stemsplit models download {source.label}`" if source.registry else "the command"
    return f"delete {listing} and run {again} again"


# --- downloading ----------------------------------------------------------------------------
