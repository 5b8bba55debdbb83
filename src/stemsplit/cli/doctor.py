"""``stemsplit doctor``: what runs here (versions, devices, kernels, cache, codecs), for bug reports."""

from __future__ import annotations

import os
import platform

from rich.table import Table

from ..version import __version__
from .common import out_console, warning_line


def doctor_command() -> None:
    """What runs here: versions, devices, Mamba-2 kernels, model cache, audio codecs."""
    import soundfile
    import soxr
    import torch

    from ..model.layers.mamba2 import BACKEND_ENV, cuda_kernels, resolve_backend

    table = Table(show_header=False, box=None)
    table.add_row("stemsplit", __version__)
    table.add_row("python", f"{platform.python_version()} ({platform.platform()})")
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
    try:
        backend = f"{resolve_backend(None, device)} (on {device.type})"
    except (ValueError, RuntimeError) as exc:  # STEMSPLIT_MAMBA_BACKEND asks for what cannot run here
        backend = f"{BACKEND_ENV}={os.environ.get(BACKEND_ENV)}: {exc}"
    table.add_row("mamba-2 backend", backend)
    from ..engine.runtime import cpu_auto_precision

    precision, why = cpu_auto_precision()
    table.add_row(
        "cpu precision",
        f"--precision auto gives {precision} on the CPU: {why}"
        + (" (for models measured faster in bf16: TS-BSMamba2, BSRNN)" if precision == "bf16" else ""),
    )
    table.add_row("libsndfile", soundfile.__libsndfile_version__)
    table.add_row("formats", ", ".join(sorted(soundfile.available_formats())))
    try:
        import av

        codec = ".".join(map(str, av.library_versions["libavcodec"]))
        table.add_row("ffmpeg (PyAV)", f"av {av.__version__}, libavcodec {codec}")
    except ImportError as exc:
        table.add_row("ffmpeg (PyAV)", f"not importable ({exc}): only libsndfile's formats")
    table.add_row("resampler", f"soxr {soxr.__version__}")
    from .. import weights
    from ..weights.cache import cache_problem

    cache_note = cache_problem()
    table.add_row(
        "model cache", str(weights.cache_dir()) + (" (unusable: see the warning)" if cache_note else "")
    )
    try:
        registry = weights.load_registry()
        for name in registry.models:
            path = weights.cached_path(name)
            state = f"cached, {path.stat().st_size / 1e6:.0f} MB" if path else "not downloaded"
            table.add_row(f"  {name}", state + (" (default)" if name == registry.default else ""))
    except weights.WeightsError as exc:
        table.add_row("  registry", f"unreadable: {exc}")
    out_console.print(table)
    if cache_note:  # models would fail to download only later, at the first separation
        warning_line(cache_note)
