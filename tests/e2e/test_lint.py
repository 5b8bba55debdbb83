"""Ruff is part of the one test command: the tree stays lint-clean and formatted."""

import shutil

import pytest
from helpers import ROOT, run


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
@pytest.mark.parametrize("command", [["ruff", "check", "."], ["ruff", "format", "--check", "."]])
def test_ruff(command):
    result = run(*command, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
