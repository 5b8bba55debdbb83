"""``stemsplit models``: list, download, locate and verify pretrained weights.

Mounted by ``stemsplit.cli`` with ``app.add_typer(models_app, name="models")``; all the
work is in :mod:`stemsplit.weights`, this module only parses and prints.
``stemsplit models NAME`` is the hidden ``show`` command (``cli.main`` inserts it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from ..errors import StemsplitError
from .common import EXIT_FAILED, EXIT_USAGE, Commands, fail
from .common import out_console as console

models_app = typer.Typer(
    cls=Commands,
    help="List, download, locate and verify pretrained models (registry: weights.toml).",
    invoke_without_command=True,
    add_completion=False,
)


def _fail(exc: Exception) -> StemsplitError:
    """A registry name that is not there is a usage error (exit 2); the rest exit 1."""
    from ..weights import UnknownModelError

    if isinstance(exc, UnknownModelError):
        return fail(exc.names_only, EXIT_USAGE)
    return fail(str(exc), EXIT_FAILED)


def _size_text(entry) -> str:  # a weights.ModelEntry
    """The registry size, else the downloaded file's, else an estimate from the architecture (``~``)."""
    from .. import weights

    size = entry.size
    if size is None:
        local = weights.downloaded_path(entry.name)
        size = local.stat().st_size if local is not None else None
    if size is not None:
        return f"{size / 1e6:.0f} MB"
    import torch

    from ..model import build_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_model(entry.architecture, weights.entry_config(entry), entry.stems)
    estimate = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return f"~{estimate / 1e6:.0f} MB"


# Published scores come from different test sets; the table marks each so that none is read against
# another (a MUSDB18-HQ figure and a multisong one are not comparable).
TEST_SETS = {"MUSDB18-HQ test": "M", "MVSEP multisong": "S"}


def _score_text(entry) -> str:
    score = entry.headline_score
    if score is None:
        return "-"
    what, value = score
    test_set = (entry.metrics or {}).get("test_set")
    mark = TEST_SETS.get(test_set, "?") if test_set else "?"
    return f"{value:.2f} {what[:3]} {mark}"


def _notes(entry, registry, cached: bool) -> list[str]:
    notes = [note for note, on in (("default", entry.name == registry.default), ("light", entry.light)) if on]
    if entry.task != "music":
        notes.append(entry.task)
    notes.append("bundled" if entry.path else "cached" if cached else "")
    return [n for n in notes if n]


def _describe(entry, registry) -> dict:
    """Everything the registry says of one model, for `stemsplit models NAME` and --json."""
    from .. import weights

    cached = weights.cached_path(entry.name)
    source = entry.url or (f"hf://{entry.repo_id}/{entry.filename}" if entry.repo_id else str(entry.path))
    return {
        "name": entry.name,
        "description": entry.description,
        "family": entry.architecture,
        "preset": entry.preset,
        "task": entry.task,
        "stems": list(entry.stems),
        "rest_stem": _rest_stem(entry),
        "sample_rate": entry.sample_rate,
        "window": entry.window,
        "hop": entry.hop,
        "normalization": entry.normalization,
        "source": source,
        "revision": entry.revision,
        "size": _size_text(entry),
        "sha256": entry.sha256 or None,
        "license": entry.license,
        "metrics": dict(entry.metrics or {}),
        "cpu_s_per_min": entry.cpu_s_per_min,
        "default": entry.name == registry.default,
        "light": entry.light,
        "cached": str(cached) if cached else None,
    }


def _describe_ensemble(entry, registry) -> dict:
    """Everything the registry says of a named ensemble: its members, stems (where each comes from),
    and the sums of its members' sizes and CPU speeds (every member runs on every song)."""
    from .. import weights
    from ..card import other_is_the_rest
    from ..engine.ensemble_spec import describe_plan, named_ensemble, plan_stems, rest_parts

    spec = named_ensemble(entry.name)
    assert spec is not None  # (entry is a named ensemble of the registry)
    names = [os.fspath(m) for m in spec.models]  # (a registry ensemble's members are registry names)
    members = [registry.models[m] for m in names]
    plan = plan_stems([m.stems for m in members], spec.weights, spec.choice, names)
    rest = [other_is_the_rest(m.stems, _rest_stem(m)) for m in members]
    less = rest_parts([m.stems for m in members], rest, plan)  # as the Ensemble will run it
    speeds = [m.cpu_s_per_min for m in members]
    sizes = [m.size for m in members]
    return {
        "name": entry.name,
        "description": entry.description,
        "ensemble": entry.models,
        "members": names,
        "stems": list(plan),
        "plan": describe_plan(plan, names, spec.choice, less),
        "size_mb": sum(sizes) / 1e6 if all(sizes) else None,
        "cpu_s_per_min": sum(speeds) if all(speeds) else None,
        "license": entry.license,
        "metrics": dict(entry.metrics or {}),
        "cached": all(weights.cached_path(m.name) is not None for m in members),
    }


def _rest_stem(entry) -> str | None:
    """A single-target RoFormer's second stem (the mixture minus the target), known from its config."""
    outputs = entry.config.get("num_stems")
    return entry.stems[-1] if isinstance(outputs, int) and len(entry.stems) == outputs + 1 else None


@models_app.callback(invoke_without_command=True)
def list_models(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="Every model in full, as JSON."),
) -> None:
    """The models stemsplit knows, to choose from: family, stems, size, published SDR, CPU speed.

    `stemsplit models NAME` shows one in full.
    """
    from .. import weights

    if ctx.invoked_subcommand is not None:
        return
    try:
        registry = weights.load_registry()
    except weights.WeightsError as exc:
        raise _fail(exc) from None
    if json_output:
        models = [_describe(entry, registry) for entry in registry.models.values()]
        ensembles = [_describe_ensemble(entry, registry) for entry in registry.ensembles.values()]
        listing = {"registry": str(registry.path), "models": models, "ensembles": ensembles}
        typer.echo(json.dumps(listing, indent=2))
        return
    # One line a model, in 80 columns: the marks (default, light, cached, ...) go below the table.
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, title_justify="left")
    table.title = f"Models in {registry.path}"
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("stems", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("SDR dB", no_wrap=True)
    table.add_column("s/min", justify="right", no_wrap=True)
    marks: dict[str, list[str]] = {}
    stem_sets: list[tuple[str, tuple[str, ...], str]] = []  # (the stems column, the stems, the name)
    for entry in registry.models.values():
        cached = not entry.path and weights.cached_path(entry.name) is not None
        for note in _notes(entry, registry, cached):
            marks.setdefault(note, []).append(entry.name)
        speed = f"{entry.cpu_s_per_min:.0f}" if entry.cpu_s_per_min else "-"
        stems = f"{len(entry.stems)}" + ("*" if _rest_stem(entry) else "")
        stem_sets.append((stems, tuple(entry.stems), entry.name))
        table.add_row(entry.name, entry.architecture, stems, _size_text(entry), _score_text(entry), speed)
    for ensemble in registry.ensembles.values():
        facts = _describe_ensemble(ensemble, registry)
        speed = f"{facts['cpu_s_per_min']:.0f}" if facts["cpu_s_per_min"] else "-"
        family = f"{len(facts['members'])} models"
        size = f"{facts['size_mb']:.0f} MB" if facts["size_mb"] else "-"
        stems = str(len(facts["stems"]))
        stem_sets.append((stems, tuple(facts["stems"]), ensemble.name))
        table.add_row(ensemble.name, family, stems, size, _score_text(ensemble), speed)
    console.print(table)
    console.print("; ".join(f"{note}: {', '.join(names)}" for note, names in marks.items()), highlight=False)
    console.print(_stem_sets(stem_sets), highlight=False)
    console.print(LEGEND, style="dim", highlight=False)
    if weights.is_offline():
        console.print("offline mode is on (STEMSPLIT_OFFLINE / HF_HUB_OFFLINE): only cached models load")


def _stem_sets(rows: list[tuple[str, tuple[str, ...], str]]) -> str:
    """The line under the table naming the stems of each value of the stems column (``4: drums, bass,
    other, vocals; 6: ..., guitar, piano``); ``rows``: (that value, the stems, the name) of each row.
    A value that stands for two stem sets names their models too."""
    sets: dict[str, dict[tuple[str, ...], list[str]]] = {}  # column text -> stems -> names
    for key, stems, name in rows:
        sets.setdefault(key, {}).setdefault(stems, []).append(name)
    parts = []
    for key, by_stems in sets.items():
        for stems, names in by_stems.items():
            label = key if len(by_stems) == 1 else f"{key} ({', '.join(names)})"
            parts.append(f"{label}: {', '.join(stems)}")
    return "stems " + "; ".join(parts)


LEGEND = (
    "SDR: as published, on M = MUSDB18-HQ test or S = MVSEP multisong (not comparable with each other); "
    "avg: the mean over the stems, else the one stem scored. stems *: the last is the mixture minus the "
    "others. s/min: CPU seconds per minute of audio at the model's window and hop "
    "(benchmarks/bench_model.py --registry). `stemsplit models NAME`: one model in full; --json: all."
)


@models_app.command("show", hidden=True)
def show(
    name: str = typer.Argument(..., help="Registry name."),
    json_output: bool = typer.Option(False, "--json", help="As JSON."),
) -> None:
    """One model in full (`stemsplit models NAME`)."""
    from .. import weights

    try:
        registry = weights.load_registry()
        if name in registry.ensembles:
            return _show_ensemble(registry.ensembles[name], registry, json_output)
        entry = registry.get(name)
    except weights.WeightsError as exc:
        raise _fail(exc) from None
    facts = _describe(entry, registry)
    if json_output:
        typer.echo(json.dumps(facts, indent=2))
        return
    stems = ", ".join(entry.stems)
    if facts["rest_stem"]:
        stems += f" ({facts['rest_stem']} = the mixture minus the others: the network does not estimate it)"
    rows = {
        "model": entry.name
        + "".join(f" ({note})" for note in _notes(entry, registry, facts["cached"] is not None)),
        "about": entry.description,
        "family": entry.architecture + (f" (preset {entry.preset})" if entry.preset else ""),
        "task": entry.task,
        "stems": stems,
        "audio": f"{entry.sample_rate} Hz, normalization {entry.normalization}",
        "windows": _windows_text(entry),
        "published": _metrics_text(entry.metrics or {}),
        "CPU speed": f"{entry.cpu_s_per_min:.0f} s per minute of audio"
        if entry.cpu_s_per_min
        else "not measured",
        "source": facts["source"] + (f" (revision {entry.revision})" if entry.revision else ""),
        "size": facts["size"],
        "sha256": entry.sha256 or "not published: recorded on the first download (trust on first use)",
        "license": entry.license,
        "cached": facts["cached"] or "no: `stemsplit models download " + entry.name + "`",
    }
    _print_facts(rows)


def _show_ensemble(entry, registry, json_output: bool) -> None:
    from ..engine.settings import SeparationError

    try:
        facts = _describe_ensemble(entry, registry)
    except SeparationError as exc:
        raise fail(exc.problem, EXIT_FAILED) from None
    if json_output:
        typer.echo(json.dumps(facts, indent=2))
        return
    members = registry.models
    rows = {
        "ensemble": entry.name + (" (cached)" if facts["cached"] else ""),
        "about": entry.description,
        "models": ", ".join(f"{m} ({members[m].architecture})" for m in facts["members"]),
        "stems": facts["plan"],
        "published": _metrics_text(entry.metrics or {}),
        "CPU speed": f"{facts['cpu_s_per_min']:.0f} s per minute of audio (its models together)"
        if facts["cpu_s_per_min"]
        else "not measured",
        "size": f"{facts['size_mb']:.0f} MB in all" if facts["size_mb"] else "-",
        "license": entry.license,
        "use": f"--model {entry.name}; `stemsplit models download {entry.name}` fetches its models",
    }
    _print_facts(rows)


def _print_facts(rows: dict[str, str]) -> None:
    """`stemsplit models NAME`: one fact a line, its name in bold, long values folded."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


def _windows_text(entry) -> str:
    if entry.window is None:
        return "the family's (see its model card)"
    return f"{entry.window:g} s every {entry.hop or entry.window:g} s"


def _metrics_text(metrics: Mapping[str, Any]) -> str:
    scores = ", ".join(f"{k[4:]} {v}" for k, v in metrics.items() if k.startswith("sdr_"))
    if not scores:
        return "no scores"
    where = ", ".join(str(metrics[k]) for k in ("test_set", "metric") if k in metrics)
    source = f"; {metrics['source']}" if "source" in metrics else ""
    return f"SDR {scores} dB" + (f" on {where}" if where else "") + source


@models_app.command()
def download(
    name: str | None = typer.Argument(None, help="Registry name (default: the registry's default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download, verify and convert a model into the cache, then check that it loads; print its path."""
    from .. import weights
    from ..engine.ensemble_spec import named_ensemble
    from ..engine.settings import SeparationError

    try:
        name = name or weights.default_model_name()
        ensemble = named_ensemble(name)
        names = [os.fspath(m) for m in ensemble.models] if ensemble is not None else [name]  # or each member
        paths = []
        for each in names:
            weights.load_registry().get(each)  # a registry name, not a file or URL (load_model takes those)
            weights.load_model(each, progress=not quiet)
            paths.append(weights.cached_path(each))
    except weights.WeightsError as exc:
        raise _fail(exc) from None
    except SeparationError as exc:
        raise fail(exc.problem, EXIT_FAILED) from None
    for path in paths:
        console.print(str(path), highlight=False, soft_wrap=True)


@models_app.command()
def path(name: str | None = typer.Argument(None, help="Registry name (default: the default model).")) -> None:
    """Print the cached file a model loads from (exit status 1 if it is not downloaded yet)."""
    from .. import weights

    try:
        name = name or weights.default_model_name()
        found = weights.cached_path(name)
    except weights.WeightsError as exc:
        raise _fail(exc) from None
    if found is None:
        raise fail(f"{name} is not downloaded yet; run `stemsplit models download {name}`")
    console.print(str(found), highlight=False, soft_wrap=True)


@models_app.command("verify")
def verify_command(
    name: str | None = typer.Argument(None, help="Registry name (default: every cached model)."),
) -> None:
    """Re-hash cached models against the registry or the hash recorded on first download."""
    from .. import weights

    try:
        results = weights.verify(name)
    except weights.WeightsError as exc:
        raise _fail(exc) from None
    styles = {"ok": "green", "mismatch": "red", "not cached": "dim", "unverified": "yellow"}
    for result in results:
        style = styles.get(result.status, "")
        console.print(
            Text(f"{result.status:>10}", style=style), f" {result.name}: {result.detail}", soft_wrap=True
        )
    bad = any(r.status == "mismatch" for r in results)
    missing = name is not None and any(r.status == "not cached" for r in results)
    if bad or missing:
        raise typer.Exit(1)
