"""--model and --model-config, checked before anything loads (no torch): registry names, checkpoint
files and URLs, MSST YAMLs, ensembles; what the registry or a file's metadata says of a model's stems
and task. The separation commands, eval and finetune take their model checks from here."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ..errors import UsageError
from .common import EXIT_USAGE, fail, usage_error

if TYPE_CHECKING:
    from .reporter import Reporter

# The command for each task (stemsplit.card.TASKS), for the one-line refusal of the other task's models.
TASK_COMMANDS = {"music": "separate", "speakers": "speakers"}

# weights.CHECKPOINT_SUFFIXES (importing weights imports torch, which takes seconds; a test keeps them equal).
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".th")


@overload
def model_argument(model: str) -> str | Path: ...
@overload
def model_argument(model: None) -> None: ...
def model_argument(model: str | None) -> str | Path | None:
    """--model checked before anything is loaded: a path must be a readable file; URLs http(s) or file.

    Returns what the loader gets: a path as a :class:`Path` (file:///x -> /x), anything else unchanged
    (a registry name is checked against the registry later).
    """
    if model is None or model.startswith(("http://", "https://")):
        return model
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", model):
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        url = urlsplit(model)
        if url.scheme.lower() != "file":
            raise UsageError(
                f"--model: {url.scheme}:// URLs are not supported; give a registry name, "
                "a checkpoint file or an http(s) URL"
            )
        if url.netloc not in ("", "localhost"):
            raise UsageError(
                f"--model: {model} names the host {url.netloc!r}; "
                "write file:///absolute/path or the path itself"
            )
        model = url2pathname(url.path)
    path = Path(model).expanduser()
    if not (path.suffix in CHECKPOINT_SUFFIXES or "/" in model or os.sep in model or path.is_file()):
        return model  # a registry name
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb"):  # permissions, ACLs, a file system that refuses
                pass
    except FileNotFoundError:
        raise UsageError(f"--model: {model} does not exist") from None
    except OSError as exc:
        raise UsageError(f"--model: {model} cannot be read: {(exc.strerror or str(exc)).lower()}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--model: {model} is a folder, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"--model: {model} is not a regular file")
    return path


def msst_config(path: Path | None, model: str | Path | None) -> Any:
    """--model-config read before anything loads (torch-free); None without one."""
    if path is None:
        return None
    if not isinstance(model, Path) and not (
        isinstance(model, str) and model.startswith(("http://", "https://"))
    ):
        raise UsageError(
            "--model-config: goes with a checkpoint file or URL given with --model "
            "(a registry model carries its own config)"
        )
    from ..weights.msst import ModelConfigError, read_msst_config

    try:
        return read_msst_config(path)
    except ModelConfigError as exc:
        raise UsageError(f"--model-config: {exc}") from None


def window_before_loading(model: str | Path | None, light: bool, msst: Any, task: str) -> float | None:
    """The window (seconds) one model will use, as far as it is known before it loads: its MSST
    YAML's, its registry entry's, or the usual card's 3 s for an entry that names none; None for a
    checkpoint file or URL (the model's card says once it is loaded)."""
    from ..card import DEFAULT_WINDOW

    if msst is not None:
        return msst.window
    entry = registry_entry(model, light, task)
    if entry is None:
        return None
    return entry.window or DEFAULT_WINDOW


def check_msst_network(msst: Any) -> None:
    """The YAML's model: section against its family (imports torch): an option the family lacks, or
    a value it cannot take, is a usage error before the checkpoint is read."""
    from ..model import families

    try:
        families.make_config(msst.architecture, overrides=msst.config, stems=msst.stems)
    except families.FamilyError as exc:
        raise UsageError(f"--model-config: {msst.path}: {exc}") from None


def ensemble_argument(
    model: str | Path | None, model_config: Path | None, task: str
) -> tuple[str | Path | None, Any]:
    """--model (and whether --model-config was given) checked before anything loads: for one model,
    (what the loader gets, see :func:`model_argument`; None); for an ensemble (see
    :mod:`stemsplit.engine.ensemble_spec`), (``model`` as given, its :class:`EnsembleSpec`), each model
    checked as one is."""
    from ..engine.ensemble_spec import parse_models
    from ..engine.settings import SeparationError

    text = None if model is None else os.fspath(model)
    try:
        spec = None if text is None else parse_models(text)
    except SeparationError as exc:
        raise usage_error(exc) from None
    if spec is not None and len(spec.models) == 1:  # "a:2", "vocals=a": that model alone
        text, spec = os.fspath(spec.models[0]), None  # (parsed: a string)
    if spec is None:
        return model_argument(text), None
    if task != "music":
        raise UsageError(
            f"--model: {text}: ensembles are for music (speaker models give their talkers in an order "
            "of their own, so they cannot be averaged)"
        )
    if model_config is not None:
        raise UsageError("--model-config: goes with one checkpoint, not an ensemble of models")
    models = [model_argument(os.fspath(model)) for model in spec.models]  # (parsed: strings)
    files: dict[str, Any] = {}
    for model in models:
        if isinstance(model, Path):
            same = files.setdefault(os.path.realpath(model), model)
            if same is not model:
                raise UsageError(f"--model: {same} and {model} are the same file; give each model once")
    return model, dataclasses.replace(spec, models=tuple(models))


def ensemble_stems(spec: Any, light: bool, task: str) -> tuple[str, ...] | None:
    """An ensemble's stems, when the registry or the files' metadata say every member's (torch-free);
    a model of another task, or a stem choice its model cannot give, is a usage error."""
    from ..engine.ensemble_spec import plan_stems
    from ..engine.settings import SeparationError

    member_stems = []
    for model in spec.models:
        problem, stems = known_model(model, light, task)
        if problem:
            raise wrong_task(problem, task)
        member_stems.append(stems)
    known = [stems for stems in member_stems if stems]
    if len(known) < len(member_stems):
        return None
    try:
        plan = plan_stems(known, spec.weights, spec.choice, [os.fspath(m) for m in spec.models])
    except SeparationError as exc:
        raise usage_error(exc) from None
    return tuple(plan)


@overload
def checked_model(model: str) -> str | Path: ...
@overload
def checked_model(model: None) -> None: ...
def checked_model(model: str | None) -> str | Path | None:
    """:func:`model_argument` for the commands that load one model (eval, finetune), with a registry
    name looked up too (the registry needs no torch): a usage error (exit 2) before anything loads."""
    from ..weights import WeightsError, load_registry

    try:
        checked = model_argument(model)
        if isinstance(checked, str) and not checked.startswith(("http://", "https://")):
            load_registry().get(checked)
    except UsageError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except WeightsError as exc:
        raise fail(f"--model: {exc}", EXIT_USAGE) from None
    return checked


def checked_models(model: str | None, task: str) -> tuple[str | Path | None, Any]:
    """--model of a command that scores models (eval): (the model, None) for one, checked as
    :func:`checked_model` checks it; or (None, the ensemble's spec) with each member so checked, and
    the stem choices checked where the registry or the files' metadata say the members' stems.
    Usage errors exit 2 before anything loads."""
    from ..weights import WeightsError, load_registry

    try:
        one, spec = ensemble_argument(model, None, task)
        if spec is None:
            return checked_model(None if one is None else os.fspath(one)), None
        for member in spec.models:
            if isinstance(member, str) and not member.startswith(("http://", "https://")):
                load_registry().get(member)
        ensemble_stems(spec, False, task)
    except UsageError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except WeightsError as exc:
        raise fail(f"--model: {exc}", EXIT_USAGE) from None
    return None, spec


def registry_entry(model: str | Path | None, light: bool, task: str) -> Any:
    """The registry entry of a model, known without loading (or downloading) it; None for files/URLs.

    With no ``--model``, the task's default; a registry without one for the task is a usage error.
    """
    from .. import weights

    try:
        registry = weights.load_registry()
        if model is None and task != "music":
            entry = registry.default_for(task)
            if entry is None:
                raise UsageError(
                    f'no {task} model to use: {registry.path} has no entry with task = "{task}"; '
                    "give a checkpoint with --model"
                )
        elif model is None:
            entry = (registry.light_model if light else None) or registry.models[registry.default]
        elif isinstance(model, str) and model in registry.models:  # (a Path is a file)
            entry = registry.models[model]
        else:
            return None
    except (weights.WeightsError, KeyError):
        return None  # the model loader will say what is wrong, in its own words
    return entry


def known_model(
    model: str | Path | None, light: bool, task: str
) -> tuple[str | None, tuple[str, ...] | None]:
    """What the registry entry or the checkpoint file's metadata says of a model, without torch:
    (the problem when it separates another task than ``task``, its stems; each None when not known)."""
    from ..engine.settings import task_mismatch

    entry = registry_entry(model, light, task)
    if entry is not None:
        return task_mismatch(entry.name, entry.task, entry.stems, task), tuple(entry.stems)
    if model is None or not os.path.isfile(model):
        return None, None
    from ..weights import file_info  # torch-free: what a safetensors file's metadata says

    info = file_info(model)
    if not info:
        return None, None
    problem = task_mismatch(Path(model).name, info.task, info.stems or (), task) if info.task else None
    return problem, tuple(info.stems) if info.stems else None


def wrong_task(problem: str, task: str) -> UsageError:
    """A model of the other task: the problem, and the command that takes it."""
    other = next(t for t in TASK_COMMANDS if t != task)
    return UsageError(f"--model: {problem}; use stemsplit {TASK_COMMANDS[other]} for it")


def load_separator(
    model: str | Path | None, ensemble: Any, msst: Any, settings: Any, task: str, reporter: Reporter
) -> Any:
    """The model the flags name, after the pre-flight: a Separator (or an Ensemble for ``ensemble``) with
    the request's ``settings`` (EngineSettings), reporting to ``reporter``; the run's, and each --ray
    worker's. The loading's errors are the library's (the caller says which flag)."""
    from ..engine.separator import Separator

    common = dict(
        settings=settings,
        task=task,
        progress=reporter.on_event,
        download_progress=not (reporter.quiet or reporter.json_lines),
    )
    if ensemble is None:
        return Separator(model, model_config=msst, **common)
    from ..engine.ensemble import Ensemble

    return Ensemble(list(ensemble.models), weights=ensemble.weights, choose=ensemble.choice, **common)
