"""Pretrained weights: the registry, verified downloads, the cache and safe loading.

Users must be able to trust what ``stemsplit`` downloads and runs, so every path
from a name to a model goes through the same few steps:

1. **Registry** (``weights.toml``, shipped in the package; ``STEMSPLIT_REGISTRY``
   replaces it): what to fetch, its hash, architecture, stems and normalisation.
2. **Download** into ``$STEMSPLIT_CACHE`` (default ``~/.cache/stemsplit``): a
   ``.part`` file resumed with HTTP Range requests, size- and sha256-checked,
   then atomically renamed, all under a per-model file lock so concurrent
   processes never see or write a half file. Hugging Face sources go through
   ``huggingface_hub`` and its own cache. ``STEMSPLIT_OFFLINE=1`` or
   ``HF_HUB_OFFLINE=1`` use the cache only.
3. **Hashes**: a registry ``sha256`` is always checked. Without one the hash of
   the first download is recorded next to it (trust on first use) once the file
   has parsed as a checkpoint (an HTML error page served as 200 is deleted, not
   pinned), and checked on every later use; ``stemsplit models verify``
   re-checks the whole cache. The safetensors conversion of a pickle is hashed
   and checked the same way. Errors about a cached file name it and say how to
   clear it.
4. **Safe loading**: safetensors directly; pickled checkpoints (``.ckpt``,
   ``.pt``, ``.pth``) only with ``torch.load(weights_only=True)``, so a file
   that needs arbitrary pickle code is refused before anything runs. A
   downloaded pickle is converted once to safetensors in the cache.
5. **Architecture check** against the registry config; a mismatch lists the
   offending keys.

Safetensors metadata stemsplit reads (and writes into converted files), for
checkpoints loaded by path or URL without a registry entry:

- ``stems``: comma-separated stem names in output order (default: drums, bass,
  other, vocals for 4 outputs, else source0, source1, ...)
- ``sample_rate``: Hz the model works at (default 44100)
- ``stride``: STFT hop in samples (default 512)
- ``normalization``: ``none`` (default) or ``meanstd``

Cache layout: ``models/NAME/FILE`` (the published file), ``FILE.sha256`` (its
hash recorded on first use), ``STEM.safetensors`` (+ ``.sha256``; the
conversion of a pickled checkpoint); ``urls/HASH/`` the same for plain URLs;
``locks/`` the lock files. Files get 0666 minus the umask. A read-only cache
(copied to an offline machine) loads what it holds without locks; a cache that
must be written but cannot be is a :class:`CacheError` naming STEMSPLIT_CACHE.
``progress=False`` prints nothing at all.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import http.client
import os
import pickle
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from tqdm import tqdm

from . import __version__
from .files import sha256_of, write_atomically
from .model import (
    PRESETS,
    StateDictMismatch,
    TSBSMamba2,
    TSBSMamba2Config,
    check_state_dict,
    config_from_state_dict,
    unwrap_state_dict,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DEFAULT_STEMS",
    "NORMALIZATIONS",
    "CacheError",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "LoadedModel",
    "ModelEntry",
    "OfflineError",
    "Registry",
    "RegistryError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "VerifyResult",
    "WeightsError",
    "cache_dir",
    "cached_path",
    "default_model_name",
    "downloaded_path",
    "fetch",
    "has_light_model",
    "is_offline",
    "load_model",
    "load_registry",
    "registry_path",
    "torch_load_safely",
    "verify",
]

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
NORMALIZATIONS = ("none", "meanstd")
DEFAULT_STEMS = ("drums", "bass", "other", "vocals")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_ATTEMPTS = 5


# --- errors ---------------------------------------------------------------------------------


class WeightsError(Exception):
    """Base of every error a user can get from loading weights; the message is one line."""


class RegistryError(WeightsError):
    """The registry file is not valid TOML or has a bad or missing field (message: ``file:line: ...``)."""


class UnknownModelError(WeightsError):
    """No registry model, file or URL by that name."""


class DownloadError(WeightsError):
    """The network transfer failed (after retries)."""


class OfflineError(WeightsError):
    """Offline mode is on and the model is not in the cache."""


class ChecksumError(WeightsError):
    """A file's sha256 (or size) differs from the registry or from the hash recorded on first use."""


class UnsafeCheckpointError(WeightsError):
    """A pickled checkpoint needs arbitrary code to load; it was refused and nothing in it ran."""


class CheckpointError(WeightsError):
    """A checkpoint is unreadable, not a TS-BSMamba2, or differs from its registry architecture."""


class CacheError(WeightsError):
    """The cache folder is unusable (a file, not creatable) or cannot be written when it must be."""


# --- environment ----------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """``STEMSPLIT_OFFLINE`` or ``HF_HUB_OFFLINE`` set: use the cache only, never the network."""
    return _env_flag("STEMSPLIT_OFFLINE") or _env_flag("HF_HUB_OFFLINE")


def cache_dir() -> Path:
    """``$STEMSPLIT_CACHE``, default ``~/.cache/stemsplit`` (read on every call, so tests can redirect it)."""
    return Path(os.environ.get("STEMSPLIT_CACHE") or Path.home() / ".cache" / "stemsplit").expanduser()


def registry_path() -> Path:
    """``$STEMSPLIT_REGISTRY`` or the ``weights.toml`` shipped inside the package."""
    override = os.environ.get("STEMSPLIT_REGISTRY")
    if override:
        return Path(override).expanduser()
    return Path(str(resources.files("stemsplit") / "weights.toml"))


# --- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One ``[models.NAME]`` table of the registry, validated."""

    name: str
    description: str
    architecture: str
    config: TSBSMamba2Config
    stems: tuple[str, ...]
    sample_rate: int
    normalization: str
    sha256: str  # lower-case hex, "" = trust on first use
    license: str
    light: bool = False
    url: str | None = None
    repo_id: str | None = None
    path: Path | None = None  # a checkpoint shipped beside the registry (absolute once parsed)
    filename: str = ""  # the published file's name (from the URL, the Hub repo path, or the local path)
    revision: str | None = None
    size: int | None = None
    metrics: Mapping[str, Any] | None = None

    @property
    def sdr(self) -> float | None:
        """Published average SDR (dB), if the registry has one."""
        value = (self.metrics or {}).get("sdr_avg")
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Registry:
    """The parsed registry: its file, the default model name and the models in file order."""

    path: Path
    default: str
    models: Mapping[str, ModelEntry]

    def get(self, name: str) -> ModelEntry:
        if name not in self.models:
            close = difflib.get_close_matches(name, list(self.models), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownModelError(
                f"no model named {name!r} in {self.path}{hint}; known: {', '.join(self.models)} "
                "(a checkpoint file or an http(s) URL works too)"
            )
        return self.models[name]

    @property
    def light_model(self) -> ModelEntry | None:
        """The first model marked ``light = true``, or None."""
        return next((m for m in self.models.values() if m.light), None)


_FIELD_TYPES: dict[str, type] = {
    "description": str,
    "architecture": str,
    "config": dict,
    "stems": list,
    "sample_rate": int,
    "normalization": str,
    "url": str,
    "repo_id": str,
    "path": str,
    "filename": str,
    "revision": str,
    "sha256": str,
    "size": int,
    "license": str,
    "light": bool,
    "metrics": dict,
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table"}
_REQUIRED = ("description", "architecture", "stems", "sample_rate", "normalization", "sha256", "license")


class _Locator:
    """Finds the line of a table or key in the registry text, so errors can name it.

    tomllib gives line numbers only for syntax errors; for a bad value we look
    the key up ourselves (good enough for the plain layout the registry uses).
    """

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]")

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line(self, table: str | None, key: str | None = None) -> int | None:
        current: str | None = None
        for number, raw in enumerate(self.lines, 1):
            header = self._HEADER.match(raw)
            if header:
                current = re.sub(r"[\"'\s]", "", header.group(1))
                if key is None and current == table:
                    return number
                continue
            if current == table and key and re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", raw):
                return number
        return self.line(table) if key and table else None

    def error(self, message: str, table: str | None = None, key: str | None = None) -> RegistryError:
        number = self.line(table, key)
        where = f"{self.path}:{number}" if number else str(self.path)
        return RegistryError(f"{where}: {message}")


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read and validate the registry (default: :func:`registry_path`); raise :class:`RegistryError`."""
    path = Path(path) if path is not None else registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the model registry ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        if match:
            raise RegistryError(f"{path}:{match.group(1)}: invalid TOML: {message}") from None
        raise RegistryError(f"{path}: invalid TOML: {message}") from None
    loc = _Locator(path, text)
    unknown = sorted(set(data) - {"default", "models"})
    if unknown:
        raise loc.error(f"unknown top-level key {unknown[0]!r} (expected 'default' and [models.NAME] tables)")
    models_table = data.get("models")
    if not isinstance(models_table, dict) or not models_table:
        raise loc.error("no [models.NAME] tables")
    models = {name: _parse_entry(name, table, loc) for name, table in models_table.items()}
    default = data.get("default")
    if not isinstance(default, str):
        raise loc.error("missing top-level 'default = \"NAME\"'", None, "default")
    if default not in models:
        raise loc.error(f"default model {default!r} has no [models.{default}] table", None, "default")
    return Registry(path=path, default=default, models=models)


def _parse_entry(name: str, table: Any, loc: _Locator) -> ModelEntry:
    where = f"models.{name}"

    def fail(message: str, key: str | None = None) -> RegistryError:
        return loc.error(f"[{where}] {message}", where, key)

    if not isinstance(table, dict):
        raise fail("must be a table")
    if not _NAME.match(name):
        raise fail("model names may use letters, digits, '.', '_' and '-' only")
    for key, value in table.items():
        if key not in _FIELD_TYPES:
            close = difflib.get_close_matches(key, list(_FIELD_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise fail(f"unknown field {key!r}{hint}", key)
        expected = _FIELD_TYPES[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise fail(f"field {key!r} must be {_TYPE_NAMES[expected]}, not {type(value).__name__}", key)
    for key in _REQUIRED:
        if key not in table:
            raise fail(f"missing field {key!r}")

    architecture = table["architecture"]
    if architecture not in PRESETS:
        raise fail(f"architecture {architecture!r} is not one of {', '.join(PRESETS)}", "architecture")
    overrides = table.get("config", {})
    known = {f.name for f in fields(TSBSMamba2Config)}
    for key, value in overrides.items():
        if key not in known:
            raise fail(f"config has unknown field {key!r} (known: {', '.join(sorted(known))})", "config")
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(f"config.{key} must be an integer", "config")
    sample_rate = table["sample_rate"]
    config = replace(PRESETS[architecture], **{"sr": sample_rate, **overrides})
    if config.sr != sample_rate:
        raise fail(f"sample_rate {sample_rate} differs from config.sr {config.sr}", "sample_rate")

    stems = table["stems"]
    if not stems or not all(isinstance(s, str) and s for s in stems) or len(set(stems)) != len(stems):
        raise fail("stems must be a list of distinct, non-empty names", "stems")
    if len(stems) != config.num_output:
        raise fail(f"{len(stems)} stems but the network has num_output = {config.num_output}", "stems")
    if table["normalization"] not in NORMALIZATIONS:
        raise fail(f"normalization must be one of {', '.join(NORMALIZATIONS)}", "normalization")
    sha256 = table["sha256"].strip().lower()
    if sha256 and not _SHA256.match(sha256):
        raise fail('sha256 must be 64 hex digits, or "" to trust the first download', "sha256")
    if "size" in table and table["size"] <= 0:
        raise fail("size must be a positive number of bytes", "size")

    url = table.get("url")
    repo_id = table.get("repo_id")
    local = table.get("path")
    if sum(bool(source) for source in (url, repo_id, local)) != 1:
        raise fail("give exactly one source: url, repo_id + filename (+ revision), or path")
    path = None
    if local:
        # Shipped files are verified on every load, so their hash must be known up front.
        if not sha256:
            raise fail("a local checkpoint (path) needs its sha256", "sha256")
        if not local.endswith(".safetensors"):
            raise fail(f"local checkpoint {local!r} must be a .safetensors file", "path")
        path = (loc.path.resolve().parent / local).resolve()
        filename = path.name
    elif url:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise fail(f"url must be http(s), got {url!r}", "url")
        if "filename" in table or "revision" in table:
            raise fail("filename and revision belong to Hugging Face sources (repo_id), not to url", "url")
        filename = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
    else:
        filename = table.get("filename", "")
        if not filename:
            raise fail("a Hugging Face source needs filename", "repo_id")
    if not filename.endswith(CHECKPOINT_SUFFIXES):
        raise fail(f"checkpoint file {filename!r} must end in {', '.join(CHECKPOINT_SUFFIXES)}", "url")
    for key, value in table.get("metrics", {}).items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise fail(f"metrics.{key} must be a number or a string", "metrics")

    return ModelEntry(
        name=name,
        description=table["description"],
        architecture=architecture,
        config=config,
        stems=tuple(stems),
        sample_rate=sample_rate,
        normalization=table["normalization"],
        sha256=sha256,
        license=table["license"],
        light=table.get("light", False),
        url=url,
        repo_id=repo_id,
        path=path,
        filename=filename,
        revision=table.get("revision"),
        size=table.get("size"),
        metrics=dict(table.get("metrics", {})),
    )


def default_model_name(light: bool = False) -> str:
    """The registry default, or its light model when ``light`` and the registry has one."""
    registry = load_registry()
    light_model = registry.light_model if light else None
    return light_model.name if light_model else registry.default


def has_light_model() -> bool:
    """Whether the registry has a model marked ``light = true`` (``load_model(light=True)`` picks it)."""
    return load_registry().light_model is not None


# --- where things live ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
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


def _source_of(entry: ModelEntry) -> _Source:
    if entry.path is not None:
        return _Source(
            label=entry.name,
            directory=entry.path.parent,
            filename=entry.filename,
            sha256=entry.sha256,
            size=entry.size,
            shipped=True,
        )
    return _Source(
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


def _source_of_url(url: str) -> _Source:
    filename = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    if not filename.endswith(CHECKPOINT_SUFFIXES):
        raise UnknownModelError(f"{url}: the URL must name a {', '.join(CHECKPOINT_SUFFIXES)} file")
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    directory = cache_dir() / "urls" / key
    return _Source(label=filename, directory=directory, filename=filename, sha256="", url=url)


def cached_path(name: str) -> Path | None:
    """The cached file :func:`load_model` reads for registry model ``name``, or None if not there yet."""
    return _source_of(load_registry().get(name)).loadable_file()


def downloaded_path(name: str) -> Path | None:
    """The published file of registry model ``name`` as downloaded (ours or Hugging Face's cache), or None."""
    return _source_of(load_registry().get(name)).local_file()


# --- locking and hashing --------------------------------------------------------------------


@contextlib.contextmanager
def _locked(source: _Source, progress: bool = True) -> Iterator[None]:
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


def _cache_error(exc: OSError) -> CacheError:
    """A failed write in the cache, as one line naming the file and the STEMSPLIT_CACHE setting."""
    root = cache_dir()
    variable = os.environ.get("STEMSPLIT_CACHE")
    setting = f"STEMSPLIT_CACHE={variable}" if variable else f"the model cache {root}"
    if root.exists() and not root.is_dir():
        problem = "is a file, not a folder"
    else:
        problem = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    return CacheError(f"{setting}: {problem}; set STEMSPLIT_CACHE to a writable folder")


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomic(path: Path, text: str) -> None:
    write_atomically(path, lambda temp: temp.write_text(text))


def _check_hash(
    path: Path, expected: str, record: Path, label: str, *, hint: str = "", shown: str | None = None
) -> str:
    """Check ``path`` against the registry hash, else the hash in ``record`` if there is one.

    ``record`` is named after the final file, so a ``.part`` is checked against
    the record of the file it becomes. Nothing is recorded here: trust on first
    use records a hash only once the file has parsed as a checkpoint
    (:func:`_record`). Returns the sha256; raises :class:`ChecksumError` on a
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


def _record(record: Path, sha256: str) -> None:
    """Trust on first use: pin ``sha256`` for later loads (only ever called for a file that parsed)."""
    record.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(record, sha256 + "\n")


def _clear_hint(source: _Source, *paths: Path) -> str:
    """How to get rid of a bad cached file: delete it (and what was derived from it), run again."""
    listing = " and ".join(str(p) for p in paths)
    again = f"`stemsplit models download {source.label}`" if source.registry else "the command"
    return f"delete {listing} and run {again} again"


# --- downloading ----------------------------------------------------------------------------


class _Retry(Exception):
    """A transient transfer failure: try again, resuming from what is on disk."""


def _transfer(url: str, part: Path, label: str, progress: bool) -> None:
    """One HTTP request appending to ``part`` (Range from its size); raise _Retry if cut short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"stemsplit/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is not a prefix of this file: start over
            part.unlink()
            raise _Retry("server refused to resume") from None
        if exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{label}: {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Retry(str(getattr(exc, "reason", exc))) from None
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                part.unlink()
                raise _Retry(f"server resumed at the wrong place ({content_range!r})")
        else:
            offset = 0  # a plain 200: the server sends the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            try:
                while block := response.read(_CHUNK):
                    handle.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"connection lost: {exc}") from None
    received = part.stat().st_size
    if total is not None and received < total:
        raise _Retry(f"connection closed after {received} of {total} bytes")


def _download(source: _Source, progress: bool) -> Path:
    """Download ``source.url`` to the cache: resume, retry, check size and hash, rename atomically.

    The caller holds the lock. On a hash or size mismatch nothing is kept.
    """
    assert source.url is not None
    final = source.download_path
    part = final.with_name(final.name + ".part")
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        for attempt in range(_ATTEMPTS):
            try:
                _transfer(source.url, part, source.label, progress)
                break
            except _Retry as exc:
                last = exc
                if attempt + 1 < _ATTEMPTS:
                    time.sleep(min(0.2 * 2**attempt, 5.0))
        else:
            raise DownloadError(
                f"{source.label}: download from {source.url} failed after {_ATTEMPTS} attempts ({last}); "
                "run the command again to resume"
            )
        try:
            size = part.stat().st_size
            if source.size is not None and size != source.size:
                raise ChecksumError(
                    f"{source.label}: downloaded {size} bytes, but the registry says {source.size}"
                )
            shown = f"the download from {source.url}"
            _check_hash(part, source.sha256, _record_path(final), source.label, shown=shown)
        except ChecksumError as exc:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{exc}; the download was deleted") from None
    except WeightsError:
        with contextlib.suppress(OSError):
            final.parent.rmdir()  # only if empty: leave no trace of a failed first download
        raise
    os.replace(part, final)
    return final


def _offline_error(source: _Source) -> OfflineError:
    return OfflineError(
        f"{source.label} is not in the cache ({source.directory}) and offline mode is on "
        "(STEMSPLIT_OFFLINE/HF_HUB_OFFLINE); run `stemsplit models download "
        f"{source.label}` with network access first, or unset offline mode"
    )


def _obtain(source: _Source, progress: bool) -> tuple[Path, bool]:
    """The published file, from the cache or downloaded (the caller holds the lock).

    Also returns whether it was downloaded just now (so it can be deleted if it is no checkpoint).
    """
    if source.shipped:
        if not source.download_path.is_file():
            missing = f"{source.download_path} is missing from the installation"
            raise CheckpointError(f"{source.label}: {missing}; reinstall stemsplit")
        return source.download_path, False
    if source.repo_id:
        return _obtain_from_hub(source, progress), False
    if source.download_path.is_file():
        return source.download_path, False
    if is_offline():
        raise _offline_error(source)
    return _download(source, progress), True


def _obtain_from_hub(source: _Source, progress: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = hf_hub_download(
            repo_id=source.repo_id,
            filename=source.filename,
            revision=source.revision,
            local_files_only=is_offline(),
            library_name="stemsplit",
            library_version=__version__,
            tqdm_class=None if progress else _SilentBar,
        )
    except LocalEntryNotFoundError:
        if is_offline():
            raise _offline_error(source) from None
        raise DownloadError(
            f"{source.label}: cannot reach the Hugging Face Hub for {source.repo_id} and it is not cached"
        ) from None
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(f"{source.label}: {source.repo_id}/{source.filename}: {first_line}") from None
    return Path(path)


def fetch(name: str, *, progress: bool = True) -> Path:
    """Make sure registry model ``name`` is downloaded and verified; return the file loading reads.

    For a pickled checkpoint that is its safetensors conversion in the cache.
    """
    return _fetch_source(_source_of(load_registry().get(name)), progress)


def _fetch_source(source: _Source, progress: bool) -> Path:
    with _locked(source, progress):
        try:
            return _prepare(source, progress)
        except OSError as exc:  # the cache could not be written (read-only, full, not a folder)
            raise _cache_error(exc) from None


class _SilentBar(tqdm):
    """A progress bar that never shows (``progress=False`` means no output at all)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _prepare(source: _Source, progress: bool) -> Path:
    """Obtain, verify and (for pickles) convert; return the safetensors file to load. Caller locks.

    A pickle's conversion, once made, is all later loads need (the published
    file may even be deleted). It is hashed when made and checked against that
    hash on every load, like a download; it is made afresh when its hash record
    is missing or when it was converted from another file than the one the
    registry (or the first download's record) names.
    """
    converted = source.converted_path
    pickled = not source.filename.endswith(".safetensors")
    if pickled and converted.is_file() and _conversion_is_current(source, converted):
        return converted
    original, fresh = _obtain(source, progress)
    record = _record_path(source.download_path)
    hint = "reinstall stemsplit" if source.shipped else _clear_hint(source, original)
    try:
        sha = _check_hash(original, source.sha256, record, source.label, hint=hint)
        # Parse before trusting: an HTML error page served as 200 must not be cached, let alone pinned.
        if pickled:
            state_dict = _load_pickle(original, source.label)
        else:
            _read_metadata(original, source.label)
    except (CheckpointError, UnsafeCheckpointError) as exc:
        if fresh:
            html = _html_hint(original)
            original.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                original.parent.rmdir()  # only if empty: leave no trace of a failed first download
            raise type(exc)(f"{exc}{html}; the download was deleted") from None
        raise type(exc)(f"{exc}; {hint}") from None
    if not source.sha256 and not source.shipped and not record.is_file():
        _record(record, sha)  # trust on first use, now that it is known to be a checkpoint
    if not pickled:
        return original
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    metadata = {"source": original.name, "source_sha256": sha}
    converted.parent.mkdir(parents=True, exist_ok=True)
    digest = []

    def write(temp: Path) -> None:
        save_file(tensors, str(temp), metadata=metadata)
        digest.append(sha256_of(temp))

    # The conversion first, then its record: a crash in between leaves a conversion without a
    # record, which the next load makes afresh (the other order could pin a file never written).
    write_atomically(converted, write)
    _record(_record_path(converted), digest[0])
    return converted


def _conversion_is_current(source: _Source, converted: Path) -> bool:
    """The cached conversion is intact (its recorded hash) and made from the right published file.

    False (convert again) when it has no hash record or comes from another file; a
    :class:`ChecksumError` when it changed since it was made.
    """
    record = _record_path(converted)
    if not record.is_file():
        return False
    hint = _clear_hint(source, converted, record)
    _check_hash(converted, "", record, source.label, hint=hint)
    try:
        made_from = _read_metadata(converted, source.label).get("source_sha256")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {hint}") from None
    original_record = _record_path(source.download_path)
    expected = source.sha256 or (original_record.read_text().strip() if original_record.is_file() else None)
    return expected is None or made_from == expected


def _html_hint(path: Path) -> str:
    """`` (the server sent an HTML page ...)`` when a downloaded "checkpoint" is a web page."""
    with open(path, "rb") as handle:
        start = handle.read(1024).lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")) or b"<html" in start:
        return " (the server sent an HTML page, not a checkpoint: check the URL)"
    return ""


# --- reading checkpoints --------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _as_state_dict(obj: Any, label: str) -> dict[str, torch.Tensor]:
    """Unwrap trainer wrappers and check that what is left maps names to tensors."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label}: holds a {type(obj).__name__}, not a state dict")
    state_dict = unwrap_state_dict(obj)
    bad = [str(k) for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{label}: not a state dict: {', '.join(bad[:5])} are not tensors")
    return dict(state_dict)


def _where(path: Path, label: str | None) -> str:
    """``label: path``, or just the path when the label is only its name (local files)."""
    return str(path) if label in (None, path.name, str(path)) else f"{label}: {path}"


def _unreadable(path: Path, label: str | None, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{_where(path, label)}: not a readable checkpoint ({_load_failure(exc)})")


def _load_failure(exc: BaseException) -> str:
    """The useful part of a torch.load error: its messages run to paragraphs of advice (including
    "set weights_only=False", which we never want a user to read as a fix)."""
    text = str(exc).strip()
    if isinstance(exc, EOFError) or not text:
        return "the file is empty or cut short"
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    first = text.splitlines()[0]
    return first.split(". ", 1)[0].rstrip(".")


def torch_load_safely(path: Path, label: str | None = None) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no pickle code runs.

    The one place stemsplit unpickles anything (checkpoints here, ``last.pt`` in
    training). Raises :class:`UnsafeCheckpointError` for a file that needs code
    (a class or function the weights-only unpickler does not allow) and
    :class:`CheckpointError` for anything unreadable; both one line naming ``path``
    (after ``label``, a model name, when given).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler stops at the first global (function or class) it does not allow.
        blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if blocked:
            raise UnsafeCheckpointError(
                f"{_where(path, label)}: refused: it needs arbitrary pickle code ({blocked.group(1)}); "
                "only plain tensor checkpoints are accepted and nothing in it was run"
            ) from None
        raise _unreadable(path, label, exc) from None
    except Exception as exc:  # torch.load raises many types on garbage: KeyError, RuntimeError, EOFError...
        raise _unreadable(path, label, exc) from None


def _load_pickle(path: Path, label: str) -> dict[str, torch.Tensor]:
    """A pickled state dict, loaded weights-only (see :func:`torch_load_safely`)."""
    return _as_state_dict(torch_load_safely(path, label), label)


def _read_metadata(path: Path, label: str) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{_where(path, label)}: not a readable safetensors file ({exc})") from None


def _load_safetensors(path: Path, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{_where(path, label)}: not a readable safetensors file ({exc})") from None
    return _as_state_dict(state_dict, label), metadata


def _read_any(path: Path, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        return _load_safetensors(path, label)
    if path.suffix in CHECKPOINT_SUFFIXES:
        return _load_pickle(path, label), {}
    known = ", ".join(CHECKPOINT_SUFFIXES)
    raise CheckpointError(f"{label}: unknown checkpoint type {path.suffix!r} (known: {known})")


# --- building models ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A ready network and what the separation engine needs to run it."""

    model: TSBSMamba2  # eval mode, on CPU
    name: str  # registry name, or the file name for a path or URL
    stems: tuple[str, ...]  # output order
    sample_rate: int
    normalization: str  # "none" or "meanstd"
    light: bool


def _build(state_dict: Mapping[str, torch.Tensor], config: TSBSMamba2Config, label: str) -> TSBSMamba2:
    """The network with ``config`` and these weights; a mismatch names the offending keys."""
    model = TSBSMamba2.from_config(config)
    try:
        check_state_dict(model, state_dict)
    except StateDictMismatch as exc:
        try:
            found = config_from_state_dict(state_dict, sr=config.sr, stride=config.stride)
            diff = ", ".join(
                f"{f.name} {getattr(found, f.name)} (expected {getattr(config, f.name)})"
                for f in fields(config)
                if getattr(found, f.name) != getattr(config, f.name)
            )
            seen = f"the checkpoint has {diff}; " if diff else ""
        except StateDictMismatch:
            seen = ""
        raise CheckpointError(f"{label}: architecture differs from the registry: {seen}{exc}") from None
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _from_metadata(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str], name: str
) -> LoadedModel:
    """A checkpoint without a registry entry: architecture from the weights, the rest from metadata."""

    def integer(key: str, default: int) -> int:
        value = metadata.get(key, "").strip()
        if not value:
            return default
        if not value.isdigit():
            raise CheckpointError(f"{name}: metadata {key}={value!r} is not a whole number")
        return int(value)

    sample_rate = integer("sample_rate", 44100)
    try:
        config = config_from_state_dict(state_dict, sr=sample_rate, stride=integer("stride", 512))
    except StateDictMismatch as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    if metadata.get("stems", "").strip():
        stems = tuple(s.strip() for s in metadata["stems"].split(","))
        if len(stems) != config.num_output:
            raise CheckpointError(
                f"{name}: metadata names {len(stems)} stems but the network has {config.num_output} outputs"
            )
    elif config.num_output == len(DEFAULT_STEMS):
        stems = DEFAULT_STEMS
    else:
        stems = tuple(f"source{i}" for i in range(config.num_output))
    normalization = metadata.get("normalization", "none").strip() or "none"
    if normalization not in NORMALIZATIONS:
        raise CheckpointError(f"{name}: metadata normalization={normalization!r} is not none or meanstd")
    return LoadedModel(
        model=_build(state_dict, config, name),
        name=name,
        stems=stems,
        sample_rate=sample_rate,
        normalization=normalization,
        light=False,
    )


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def load_model(
    spec: str | os.PathLike | None = None, *, light: bool = False, progress: bool = True
) -> LoadedModel:
    """Load a model by registry name, local checkpoint path or http(s) URL, verified, on the CPU.

    ``None`` is the registry default, or its light model when ``light`` is set
    and the registry has one (see :func:`has_light_model`; without one this
    returns the default and ``LoadedModel.light`` is False). ``light`` is
    ignored when ``spec`` is given. Downloads show a progress bar on stderr
    unless ``progress`` is False. Every failure raises a :class:`WeightsError`.
    """
    if spec is None:
        registry = load_registry()
        entry = (registry.light_model if light else None) or registry.models[registry.default]
        return _load_entry(entry, progress)
    text = os.fspath(spec)
    if _is_url(text):
        source = _source_of_url(text)
        path = _fetch_source(source, progress)
        state_dict, metadata = _load_safetensors(path, source.label)
        return _from_metadata(state_dict, metadata, source.label)
    path = Path(text).expanduser()
    looks_like_path = path.suffix in CHECKPOINT_SUFFIXES or os.sep in text or path.is_file()
    if isinstance(spec, os.PathLike) or looks_like_path:
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        state_dict, metadata = _read_any(path, path.name)
        return _from_metadata(state_dict, metadata, path.name)
    return _load_entry(load_registry().get(text), progress)


def _load_entry(entry: ModelEntry, progress: bool) -> LoadedModel:
    path = _fetch_source(_source_of(entry), progress)
    state_dict, _ = _load_safetensors(path, entry.name)
    return LoadedModel(
        model=_build(state_dict, entry.config, entry.name),
        name=entry.name,
        stems=entry.stems,
        sample_rate=entry.sample_rate,
        normalization=entry.normalization,
        light=entry.light,
    )


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-hashing one cached model."""

    name: str
    status: str  # "ok", "mismatch", "not cached", "unverified" (no hash known yet)
    detail: str


def verify(name: str | None = None) -> list[VerifyResult]:
    """Re-hash the cached files of one registry model (or all) against the registry or recorded hashes."""
    registry = load_registry()
    entries = [registry.get(name)] if name is not None else list(registry.models.values())
    results = []
    for entry in entries:
        source = _source_of(entry)
        with _locked(source, progress=False):
            results.append(_verify_one(source))
    return results


def _verify_one(source: _Source) -> VerifyResult:
    original = source.local_file()
    checks = []  # (file, registry hash, record, how to clear it)
    if original is not None:
        record = _record_path(source.download_path)
        if not source.sha256 and not record.is_file():
            return VerifyResult(source.label, "unverified", f"no hash known or recorded for {original}")
        hint = "reinstall stemsplit" if source.shipped else _clear_hint(source, original)
        checks.append((original, source.sha256, record, hint))
    converted = source.converted_path
    if not source.filename.endswith(".safetensors") and converted.is_file():
        record = _record_path(converted)
        if not record.is_file():  # the next load converts it afresh
            return VerifyResult(source.label, "unverified", f"no hash recorded for {converted}")
        checks.append((converted, "", record, _clear_hint(source, converted, record)))
    if not checks:
        return VerifyResult(source.label, "not cached", f"run `stemsplit models download {source.label}`")
    for path, expected, record, hint in checks:
        try:
            _check_hash(path, expected, record, source.label, hint=hint)
        except ChecksumError as exc:
            return VerifyResult(source.label, "mismatch", str(exc))
    basis = "registry sha256" if source.sha256 else "hashes recorded on first use"
    return VerifyResult(source.label, "ok", f"{', '.join(str(c[0]) for c in checks)} match the {basis}")
