"""The model registry (``weights.toml``): which models stemsplit knows by name. Importable without torch.

One ``[models.NAME]`` table per model says what to fetch (a URL, a Hugging Face
file or a file shipped in the package), its hash, its architecture (a family
of :mod:`stemsplit.model.families` and that family's config fields), its stems,
sample rate and normalisation. Parsing checks every field and names the file
and line of a bad one; the architecture itself is checked when the model is
built (that needs torch), with the same ``file:line``.

One ``[ensembles.NAME]`` table per named ensemble (Demucs's ``htdemucs_ft`` bag): models of the
registry that separate a song together, written as ``--model`` writes an ensemble
(:mod:`stemsplit.engine.ensemble_spec` reads that text and checks its members).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..card import NORMALIZATIONS, TASKS, stem_name_problem
from .errors import RegistryError, UnknownModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "EnsembleEntry",
    "ModelEntry",
    "Registry",
    "default_model_name",
    "has_light_model",
    "load_registry",
    "registry_path",
]

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".th")
# Before families, `architecture` named a TS-BSMamba2 preset; such registries still load.
LEGACY_ARCHITECTURES = {"ts": "ts-bsmamba2", "l-ts": "ts-bsmamba2"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def registry_path() -> Path:
    """``$STEMSPLIT_REGISTRY`` or the ``weights.toml`` shipped inside the package."""
    override = os.environ.get("STEMSPLIT_REGISTRY")
    if override:
        return Path(override).expanduser()
    return Path(str(resources.files("stemsplit") / "weights.toml"))


@dataclass(frozen=True)
class ModelEntry:
    """One ``[models.NAME]`` table of the registry, validated."""

    name: str
    description: str
    architecture: str  # a family of the architecture registry (stemsplit.model.families), as written
    preset: str | None  # a named config of that family; None: the family's default
    # fields that differ from the preset (sr = sample_rate added): numbers, strings, true/false, integer lists
    config: Mapping[str, int | float | str | bool | tuple[int, ...] | tuple[float, ...]]
    stems: tuple[str, ...]
    sample_rate: int
    normalization: str
    sha256: str  # lower-case hex, "" = trust on first use
    license: str
    light: bool = False
    task: str = "music"  # what the network separates (stemsplit.card.TASKS); "speakers": stemsplit speakers
    url: str | None = None
    repo_id: str | None = None
    path: Path | None = None  # a checkpoint shipped beside the registry (absolute once parsed)
    filename: str = ""  # the published file's name (from the URL, the Hub repo path, or the local path)
    revision: str | None = None
    size: int | None = None
    metrics: Mapping[str, Any] | None = None
    window: float | None = None  # seconds per window and between windows; None: the family's card
    hop: float | None = None
    cpu_s_per_min: float | None = None  # measured: seconds per minute of audio on a CPU (benchmarks/)
    lines: Mapping[str, str] = field(default_factory=dict)  # key -> "file:line", for later errors

    def where(self, key: str) -> str:
        """``file:line`` of ``key`` in the registry (for errors found when the model is built)."""
        return self.lines.get(key) or self.lines.get("", "")

    @property
    def sdr(self) -> float | None:
        """Published average SDR (dB), if the registry has one."""
        value = (self.metrics or {}).get("sdr_avg")
        return float(value) if isinstance(value, int | float) else None

    @property
    def headline_score(self) -> tuple[str, float] | None:
        return headline_score(self.metrics)


@dataclass(frozen=True)
class EnsembleEntry:
    """One ``[ensembles.NAME]`` table: registry models that separate together (``models``: ``--model``'s
    ensemble text, e.g. ``"drums=a,bass=b,other=c,vocals=d"``), and what was published of them."""

    name: str
    description: str
    models: str
    license: str
    metrics: Mapping[str, Any] | None = None
    where: str = ""  # "file:line" of the table

    @property
    def headline_score(self) -> tuple[str, float] | None:
        return headline_score(self.metrics)


def headline_score(metrics: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """(what, dB) to show first: the average over the stems, else the first stem's published SDR."""
    metrics = metrics or {}
    scores = [(k[4:], v) for k, v in metrics.items() if k.startswith("sdr_") and not isinstance(v, str)]
    scores.sort(key=lambda item: item[0] != "avg")  # stable: else the first, as the registry lists them
    return (scores[0][0], float(scores[0][1])) if scores else None


@dataclass(frozen=True)
class Registry:
    """The parsed registry: its file, the default model name, the models and the named ensembles."""

    path: Path
    default: str
    models: Mapping[str, ModelEntry]
    ensembles: Mapping[str, EnsembleEntry] = field(default_factory=dict)

    def get(self, name: str) -> ModelEntry:
        if name in self.ensembles:
            raise UnknownModelError(
                f"{name} is an ensemble of several models ({self.ensembles[name].models}); it runs "
                f"through stemsplit.Ensemble({name!r}) or --model {name}, not as one network"
            )
        if name not in self.models:
            close = difflib.get_close_matches(name, list(self.models), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            message = f"no model named {name!r} in {self.path}{hint}; known: {', '.join(self.models)}"
            raise UnknownModelError(f"{message} (a checkpoint file or an http(s) URL works too)", message)
        return self.models[name]

    @property
    def light_model(self) -> ModelEntry | None:
        """The first model marked ``light = true``, or None."""
        return next((m for m in self.models.values() if m.light), None)

    def default_for(self, task: str) -> ModelEntry | None:
        """The model used when none is named: ``default`` for music, the first ``task = "speakers"``
        entry for speakers (None when the registry has none)."""
        if task == "music":
            return self.models[self.default]
        return next((m for m in self.models.values() if m.task == task), None)


# A field's type: what isinstance checks (a number: an int or a float).
_FieldType = type | tuple[type, ...]

_FIELD_TYPES: dict[str, _FieldType] = {
    "description": str,
    "architecture": str,
    "preset": str,
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
    "task": str,
    "metrics": dict,
    "window": (int, float),
    "hop": (int, float),
    "cpu_s_per_min": (int, float),
}
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a table",
    (int, float): "a number",
}
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
    except UnicodeDecodeError as exc:  # TOML is UTF-8
        line = exc.object[: exc.start].count(b"\n") + 1
        raise RegistryError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        if match:
            raise RegistryError(f"{path}:{match.group(1)}: invalid TOML: {message}") from None
        raise RegistryError(f"{path}: invalid TOML: {message}") from None
    loc = _Locator(path, text)
    unknown = sorted(set(data) - {"default", "models", "ensembles"})
    if unknown:
        raise loc.error(
            f"unknown top-level key {unknown[0]!r} "
            "(expected 'default', [models.NAME] and [ensembles.NAME] tables)"
        )
    models_table = data.get("models")
    if not isinstance(models_table, dict) or not models_table:
        raise loc.error("no [models.NAME] tables")
    models = {name: _parse_entry(name, table, loc) for name, table in models_table.items()}
    default = data.get("default")
    if not isinstance(default, str):
        raise loc.error("missing top-level 'default = \"NAME\"'", None, "default")
    if default not in models:
        raise loc.error(f"default model {default!r} has no [models.{default}] table", None, "default")
    if models[default].task != "music":
        raise loc.error(
            f"default model {default!r} separates {models[default].task}; the default is a music model "
            '(the first task = "speakers" entry is the speakers command\'s default)',
            None,
            "default",
        )
    ensembles_table = data.get("ensembles", {})
    if not isinstance(ensembles_table, dict):
        raise loc.error("ensembles must be [ensembles.NAME] tables", None, "ensembles")
    ensembles = {name: _parse_ensemble(name, table, loc, models) for name, table in ensembles_table.items()}
    return Registry(path=path, default=default, models=models, ensembles=ensembles)


_ENSEMBLE_FIELDS: dict[str, _FieldType] = {"description": str, "models": str, "license": str, "metrics": dict}


def _parse_ensemble(name: str, table: Any, loc: _Locator, models: Mapping[str, ModelEntry]) -> EnsembleEntry:
    """An ``[ensembles.NAME]`` table, its fields' types checked (its ``models`` text is checked by
    :mod:`stemsplit.engine.ensemble_spec`, which this module does not import)."""
    where = f"ensembles.{name}"

    def fail(message: str, key: str | None = None) -> RegistryError:
        return loc.error(f"[{where}] {message}", where, key)

    if not isinstance(table, dict):
        raise fail("must be a table")
    if not _NAME.match(name):
        raise fail("ensemble names may use letters, digits, '.', '_' and '-' only")
    if name in models:
        raise fail(f"{name!r} is also a [models.{name}] table; a name means one thing")
    _check_fields(table, _ENSEMBLE_FIELDS, ("description", "models"), fail)
    return EnsembleEntry(
        name=name,
        description=table["description"],
        models=table["models"],
        license=table.get("license", "each model's own"),
        metrics=dict(table.get("metrics", {})),
        where=f"{loc.path}:{loc.line(where) or '?'}",
    )


def _check_fields(
    table: Mapping[str, Any],
    types: Mapping[str, _FieldType],
    required: Sequence[str],
    fail: Callable[..., RegistryError],
) -> None:
    """Every key of a ``[models.NAME]`` or ``[ensembles.NAME]`` table known and of its type, and the
    required ones there; ``fail(message, key)`` makes the error at the key's line."""
    for key, value in table.items():
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(types)}"
            raise fail(f"unknown field {key!r} ({hint})", key)
        expected = types[key]
        if not isinstance(value, expected) or (expected in (int, (int, float)) and isinstance(value, bool)):
            raise fail(f"field {key!r} must be {_TYPE_NAMES[expected]}, not {type(value).__name__}", key)
    for key in required:
        if key not in table:
            raise fail(f"missing field {key!r}")


def _parse_entry(name: str, table: Any, loc: _Locator) -> ModelEntry:
    where = f"models.{name}"

    def fail(message: str, key: str | None = None) -> RegistryError:
        return loc.error(f"[{where}] {message}", where, key)

    if not isinstance(table, dict):
        raise fail("must be a table")
    if not _NAME.match(name):
        raise fail("model names may use letters, digits, '.', '_' and '-' only")
    _check_fields(table, _FIELD_TYPES, _REQUIRED, fail)

    # The family and its config fields are checked when the model is built (stemsplit.model.families
    # imports torch; the registry must not, so that `stemsplit --stems` is checked in a blink).
    architecture, preset = table["architecture"], table.get("preset")
    if architecture in LEGACY_ARCHITECTURES:  # registries written before there were families
        architecture, preset = LEGACY_ARCHITECTURES[architecture], preset or architecture
    overrides = dict(table.get("config", {}))
    for key, value in overrides.items():
        if isinstance(value, list):  # (RoFormer band widths, SCNet's band shares); the family checks each
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                raise fail(f"config.{key} must be a list of numbers", "config")
            overrides[key] = tuple(value)
        elif not isinstance(value, int | float | str):  # bool is an int
            raise fail(f"config.{key} must be a number, a string, true/false or a list of numbers", "config")
    sample_rate = table["sample_rate"]
    if overrides.get("sr", sample_rate) != sample_rate:
        raise fail(f"sample_rate {sample_rate} differs from config.sr {overrides['sr']}", "sample_rate")
    if sample_rate <= 0:
        raise fail("sample_rate must be a positive number of Hz", "sample_rate")

    stems = table["stems"]
    if not stems or not all(isinstance(s, str) and s for s in stems) or len(set(stems)) != len(stems):
        raise fail("stems must be a list of distinct, non-empty names", "stems")
    problem = next(filter(None, map(stem_name_problem, stems)), None)  # each becomes a file name
    if problem:
        raise fail(f"stems: {problem}", "stems")
    if table.get("task", "music") not in TASKS:
        raise fail(f"task must be one of {', '.join(TASKS)}", "task")
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
    for key in ("window", "hop", "cpu_s_per_min"):
        if key in table and table[key] <= 0:
            raise fail(f"{key} must be a positive number of seconds", key)
    if "window" in table and "hop" in table and table["hop"] > table["window"]:
        raise fail(f"hop {table['hop']} is longer than window {table['window']}", "hop")
    for key, value in table.get("metrics", {}).items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise fail(f"metrics.{key} must be a number or a string", "metrics")

    return ModelEntry(
        name=name,
        description=table["description"],
        architecture=architecture,
        preset=preset,
        config={"sr": sample_rate, **overrides},
        stems=tuple(stems),
        sample_rate=sample_rate,
        normalization=table["normalization"],
        sha256=sha256,
        license=table["license"],
        light=table.get("light", False),
        task=table.get("task", "music"),
        url=url,
        repo_id=repo_id,
        path=path,
        filename=filename,
        revision=table.get("revision"),
        size=table.get("size"),
        metrics=dict(table.get("metrics", {})),
        window=float(table["window"]) if "window" in table else None,
        hop=float(table["hop"]) if "hop" in table else None,
        cpu_s_per_min=float(table["cpu_s_per_min"]) if "cpu_s_per_min" in table else None,
        lines={
            key: f"{loc.path}:{loc.line(where, key or None) or '?'}"
            for key in ("", "architecture", "preset", "config", "stems", "task")
        },
    )


def default_model_name(light: bool = False) -> str:
    """The registry default, or its light model when ``light`` and the registry has one."""
    registry = load_registry()
    light_model = registry.light_model if light else None
    return light_model.name if light_model else registry.default


def has_light_model() -> bool:
    """Whether the registry has a model marked ``light = true`` (``load_model(light=True)`` picks it)."""
    return load_registry().light_model is not None
