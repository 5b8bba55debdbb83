"""Where a MUSDB18-HQ-layout dataset's tracks are: folder and track names only, no audio read.

``ROOT/<subset>/<track>/<stem>.wav``, with the validation tracks inside
``ROOT/train`` (named by ``ROOT/valid.txt``, else MUSDB18's own 14). Importable
without torch or numpy, so ``train``, ``finetune`` and ``eval`` refuse a wrong
folder as a usage error at once, before a model or torch loads;
:func:`stemsplit.datasets.musdb.find_tracks` builds on the same functions and then
probes every stem file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from ..errors import StemsplitError

__all__ = [
    "HQ_URL",
    "VALID_LIST",
    "DatasetError",
    "check_training_layout",
    "checked_validation_names",
    "musdb_validation_names",
    "track_folders",
    "track_stems",
    "validation_names",
]

HQ_URL = "https://zenodo.org/records/3338373"
VALID_LIST = "valid.txt"  # optional: the dataset's own validation track names


class DatasetError(StemsplitError):
    """The dataset cannot be used as given; the one-line message names the path and the problem."""

    def __init__(self, message: str = "") -> None:
        # An error in a DataLoader worker comes back re-raised as DatasetError("Caught DatasetError in
        # DataLoader worker process 0.\nOriginal Traceback ...\n<module>.DatasetError: MESSAGE"):
        # keep the worker's own one-line MESSAGE, which is what the user needs.
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


def track_folders(root: str | Path, subset: str, limit: int | None = None) -> list[Path]:
    """The track folders of ``ROOT/<subset>``, sorted by name (the first ``limit``); hidden ones left out.

    A missing root or subset, an empty subset, or the compressed MUSDB18 (``.stem.mp4``)
    is a :class:`DatasetError` naming the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    folder = root / subset
    for place in (root, folder):
        if place.is_dir() and next(place.glob("*.stem.mp4"), None) is not None:
            raise DatasetError(
                f"{place}: holds .stem.mp4 files, the compressed MUSDB18; stemsplit reads MUSDB18-HQ, "
                f"the uncompressed wav version ({HQ_URL})"
            )
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise DatasetError(f"{folder}: {what} (expected the layout ROOT/{subset}/<track>/<stem>.wav)")
    folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{folder}: no track folders (expected {folder}/<track>/<stem>.wav)")
    return folders[:limit]


def track_stems(folders: Iterable[Path]) -> tuple[str, ...]:
    """A test set's stems, by file name alone: every ``<stem>.wav`` in any of the track ``folders``
    (``mixture.wav`` and hidden files aside), sorted by name. Every track must then have them all
    (:func:`stemsplit.datasets.musdb.find_tracks` checks): one missing is an error, never a stem skipped.
    No such file at all is a :class:`DatasetError` naming the first folder."""
    folders = list(folders)
    stems = sorted(
        {
            path.stem
            for folder in folders
            for path in folder.glob("*.wav")
            if path.stem != "mixture" and not path.name.startswith(".")
        }
    )
    if not stems:
        place = folders[0] if folders else "the test set"
        raise DatasetError(f"{place}: no stem files (expected {place}/<stem>.wav beside mixture.wav)")
    return tuple(stems)


def musdb_validation_names() -> list[str]:
    """The 14 MUSDB18 validation tracks, from the ``musdb`` package's own config.

    The file is parsed directly because importing ``musdb`` pulls in stempeg and ffmpeg.
    """
    spec = importlib.util.find_spec("musdb")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the MUSDB18 validation split needs the musdb package: pip install 'stemsplit-cli[train]'"
        )
    try:
        import yaml
    except ImportError:
        raise DatasetError(
            "reading the musdb config needs PyYAML: pip install 'stemsplit-cli[train]'"
        ) from None
    path = Path(next(iter(spec.submodule_search_locations))) / "configs" / "mus.yaml"
    try:
        names = yaml.safe_load(path.read_text())["validation_tracks"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: no validation_tracks list ({exc})") from None
    return [str(name) for name in names]


def validation_names(root: str | Path) -> list[str]:
    """The validation tracks of a dataset: listed in ``ROOT/valid.txt`` if there, else MUSDB18's 14.

    ``valid.txt`` (one track name per line, ``#`` comments) lets datasets other than
    MUSDB18-HQ, such as ``stemsplit synth`` output, name their own validation split.
    """
    listing = Path(root) / VALID_LIST
    if not listing.exists():
        return musdb_validation_names()
    if not listing.is_file():
        raise DatasetError(f"{listing}: not a file (it lists the validation tracks, one name a line)")
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{listing}: cannot read ({exc})") from None
    return [name for line in lines if (name := line.split("#", 1)[0].strip())]


def checked_validation_names(root: str | Path, train_names: Iterable[str]) -> list[str]:
    """:func:`validation_names`, where a ``valid.txt`` naming a track not among ``train_names`` (those of
    ``ROOT/train``) is an error: a misspelt name would train on the track meant for validation."""
    names = validation_names(root)
    missing = sorted(set(names) - set(train_names))
    if missing and (Path(root) / VALID_LIST).is_file():
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(
            f"{Path(root) / VALID_LIST}: names tracks that are not in {Path(root) / 'train'}: {shown}"
        )
    return names


def check_training_layout(root: str | Path) -> None:
    """What a training run on ``root`` reads first, by name only: ``ROOT/train``'s track folders and the
    ``valid.txt`` if there is one (a :class:`DatasetError` if either is wrong). Without one, MUSDB18's
    names come from the musdb package later: a missing package is the install's problem, not the folder's."""
    folders = track_folders(root, "train")
    if (Path(root) / VALID_LIST).exists():
        checked_validation_names(root, [folder.name for folder in folders])
