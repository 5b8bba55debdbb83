"""The ``stemsplit`` command line: parsing and printing only."""

from __future__ import annotations

import platform

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(
    name="stemsplit",
    help="Split a song into drums, bass, other and vocals with TS-BSMamba2.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"stemsplit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Split a song into drums, bass, other and vocals with TS-BSMamba2."""


@app.command()
def info() -> None:
    """Show versions, devices and which Mamba-2 backend will run."""
    import torch

    from .model.mamba2 import cuda_kernels, resolve_backend

    table = Table(show_header=False, box=None)
    table.add_row("stemsplit", __version__)
    table.add_row("python", platform.python_version())
    table.add_row("torch", torch.__version__)
    table.add_row("cpu threads", str(torch.get_num_threads()))
    cuda = torch.cuda.is_available()
    table.add_row("cuda", torch.cuda.get_device_name(0) if cuda else "not available")
    if cuda:
        kernels = cuda_kernels()
        if kernels is None:
            kernels_text = "mamba_ssm not importable (see warning above)"
        else:
            kernels_text = "mamba_ssm fused" if kernels.fused else "mamba_ssm unfused (no causal_conv1d)"
        table.add_row("cuda kernels", kernels_text)
    device = torch.device("cuda" if cuda else "cpu")
    table.add_row("mamba-2 backend", f"{resolve_backend(None, device)} (on {device.type})")
    console.print(table)
