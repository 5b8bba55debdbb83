"""One line that names the machine a benchmark ran on."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> str:
    parts = [f"{cpu_name()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)"]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    parts.append(f"torch {torch.__version__}")
    for package in ("mamba-ssm", "causal-conv1d"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{package} {importlib.metadata.version(package)}")
    parts.append(f"python {platform.python_version()}")
    return "; ".join(parts)
