"""Files that appear whole or not at all: written under a temporary sibling name, then renamed.

Every file stemsplit writes for a user (stems, checkpoints, reports, the model
cache) goes through here, so a crash, Ctrl-C or full disk never leaves a
half-written file under the final name, and finished files get the usual
permissions (0666 minus the umask, as ``open()`` would give; ``tempfile.mkstemp``
would leave them readable by their owner only).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["temporary_sibling", "write_atomically"]


def temporary_sibling(destination: Path, suffix: str = ".tmp") -> Path:
    """Create an empty, hidden file beside ``destination`` (same folder, so renaming is atomic)."""
    destination = Path(destination)
    while True:
        path = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temp)`` into a temporary sibling of ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    temp = temporary_sibling(path)
    mode = temp.stat().st_mode & 0o777
    try:
        write(temp)
        os.chmod(temp, mode)  # some writers (safetensors) re-create the file as 0600
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
