"""The installed ``stemsplit`` command."""

import shutil
import subprocess
import sys

import pytest

import stemsplit


def run(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("stemsplit")
    command = [exe, *args] if exe else [sys.executable, "-m", "stemsplit", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_console_script_is_installed():
    assert shutil.which("stemsplit"), "pip install . should put a stemsplit command on PATH"


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"stemsplit {stemsplit.__version__}"


def test_info_names_the_backend():
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout
    assert "portable (on cpu)" in result.stdout or "(on cuda)" in result.stdout


@pytest.mark.parametrize("args", [("frobnicate",), ("--no-such-flag",)])
def test_unknown_command_fails(args):
    result = run(*args)
    assert result.returncode != 0
    assert "No such" in result.stderr
