"""Ruff and mypy are part of the one test command: the tree stays lint-clean, formatted and type-checked
(mypy's settings, and the modules it does not check yet, are in pyproject.toml)."""

import shutil

import pytest
from helpers import ROOT, run


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
@pytest.mark.parametrize("command", [["ruff", "check", "."], ["ruff", "format", "--check", "."]])
def test_ruff(command):
    result = run(*command, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy not installed (pip install -e '.[test]')")
def test_mypy(tmp_path):
    result = run("mypy", "--cache-dir", tmp_path / "cache", cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
