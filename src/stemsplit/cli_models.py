"""``stemsplit models``: list, download, locate and verify pretrained weights.

Mounted by ``cli.py`` with ``app.add_typer(models_app, name="models")``; all the
work is in :mod:`stemsplit.weights`, this module only parses and prints.
"""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from .cli_common import EXIT_FAILED, EXIT_USAGE, fail
from .cli_common import out_console as console

models_app = typer.Typer(
    help="List, download, locate and verify pretrained models (registry: weights.toml).",
    invoke_without_command=True,
    add_completion=False,
)


def _fail(exc: Exception) -> typer.Exit:
    """A registry name that is not there is a usage error (exit 2); the rest exit 1."""
    from .weights import UnknownModelError

    if isinstance(exc, UnknownModelError):
        return fail(exc.names_only, EXIT_USAGE)
    return fail(str(exc), EXIT_FAILED)


def _size_text(entry) -> str:  # a weights.ModelEntry
    """The registry size, else the downloaded file's, else an estimate from the architecture (``~``)."""
    from . import weights

    size = entry.size
    if size is None:
        local = weights.downloaded_path(entry.name)
        size = local.stat().st_size if local is not None else None
    if size is not None:
        return f"{size / 1e6:.0f} MB"
    import torch

    from .model import build_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = build_model(entry.architecture, weights.entry_config(entry), entry.stems)
    estimate = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return f"~{estimate / 1e6:.0f} MB"


@models_app.callback(invoke_without_command=True)
def list_models(ctx: typer.Context) -> None:
    """Show the models stemsplit knows: architecture, stems, size, cached or not, published SDR, license."""
    from . import weights

    if ctx.invoked_subcommand is not None:
        return
    try:
        registry = weights.load_registry()
    except weights.WeightsError as exc:
        raise _fail(exc) from None
    light = registry.light_model
    table = Table(title=f"Models in {registry.path}", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("architecture", "stems", "size", "cached", "SDR", "license", ""):
        table.add_column(column)
    for entry in registry.models.values():
        flags = {"default": entry.name == registry.default, "light": entry is light}
        marks = [mark for mark, on in flags.items() if on]
        sdr = entry.sdr
        table.add_row(
            entry.name,
            f"{entry.architecture} ({entry.preset})" if entry.preset else entry.architecture,
            ", ".join(entry.stems),
            _size_text(entry),
            "bundled" if entry.path else "yes" if weights.cached_path(entry.name) else "no",
            f"{sdr:.2f} dB" if sdr is not None else "-",
            entry.license,
            ", ".join(marks),
        )
    console.print(table)
    if weights.is_offline():
        console.print("offline mode is on (STEMSPLIT_OFFLINE / HF_HUB_OFFLINE): only cached models load")


@models_app.command()
def download(
    name: str | None = typer.Argument(None, help="Registry name (default: the registry's default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download, verify and convert a model into the cache, then check that it loads; print its path."""
    from . import weights

    try:
        name = name or weights.default_model_name()
        weights.load_registry().get(name)  # a registry name, not a file or URL (load_model takes those)
        weights.load_model(name, progress=not quiet)
        path = weights.cached_path(name)
    except weights.WeightsError as exc:
        raise _fail(exc) from None
    console.print(str(path), highlight=False, soft_wrap=True)


@models_app.command()
def path(name: str | None = typer.Argument(None, help="Registry name (default: the default model).")) -> None:
    """Print the cached file a model loads from (exit status 1 if it is not downloaded yet)."""
    from . import weights

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
    from . import weights

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
