"""Downloading a checkpoint into the cache: resumed, retried, size- and hash-checked, renamed atomically.

A ``.part`` file is resumed with HTTP Range requests and renamed only once its
size and sha256 are right, under the cache entry's lock (the caller holds it),
so concurrent processes never see or write a half file. Hugging Face sources go
through ``huggingface_hub`` and its own cache. ``STEMSPLIT_OFFLINE=1`` or
``HF_HUB_OFFLINE=1`` use the cache only. Importable without torch.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import first_line
from ..version import __version__
from .cache import Source, check_hash, is_offline, record_path
from .errors import CheckpointError, ChecksumError, DownloadError, OfflineError, WeightsError

__all__ = ["SilentBar", "html_hint", "obtain"]

_CHUNK = 1 << 20
_ATTEMPTS = 5


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


def _download(source: Source, progress: bool) -> Path:
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
            check_hash(part, source.sha256, record_path(final), source.label, shown=shown)
        except ChecksumError as exc:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{exc}; the download was deleted") from None
    except WeightsError:
        with contextlib.suppress(OSError):
            final.parent.rmdir()  # only if empty: leave no trace of a failed first download
        raise
    os.replace(part, final)
    return final


def _offline_error(source: Source) -> OfflineError:
    return OfflineError(
        f"{source.label} is not in the cache ({source.directory}) and offline mode is on "
        "(STEMSPLIT_OFFLINE/HF_HUB_OFFLINE); run `stemsplit models download "
        f"{source.label}` with network access first, or unset offline mode"
    )


def obtain(source: Source, progress: bool) -> tuple[Path, bool]:
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


def _obtain_from_hub(source: Source, progress: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert source.repo_id is not None  # (obtain comes here for a Hub source only)

    try:
        path = hf_hub_download(
            repo_id=source.repo_id,
            filename=source.filename,
            revision=source.revision,
            local_files_only=is_offline(),
            library_name="stemsplit",
            library_version=__version__,
            tqdm_class=None if progress else SilentBar,
        )
    except LocalEntryNotFoundError:
        if is_offline():
            raise _offline_error(source) from None
        raise DownloadError(
            f"{source.label}: cannot reach the Hugging Face Hub for {source.repo_id} and it is not cached"
        ) from None
    except (OSError, ValueError) as exc:
        raise DownloadError(
            f"{source.label}: {source.repo_id}/{source.filename}: {first_line(exc)}"
        ) from None
    return Path(path)


class SilentBar(tqdm):
    """A progress bar that never shows (``progress=False`` means no output at all)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def html_hint(path: Path) -> str:
    """`` (the server sent an HTML page ...)`` when a downloaded "checkpoint" is a web page."""
    with open(path, "rb") as handle:
        start = handle.read(1024).lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")) or b"<html" in start:
        return " (the server sent an HTML page, not a checkpoint: check the URL)"
    return ""


# --- reading checkpoints --------------------------------------------------------------------
