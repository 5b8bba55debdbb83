"""The distribution: a wheel built from this tree installs into a fresh virtual environment and runs the
offline demo from there (the registry, the bundled models and the command all travel in the wheel).

PyPI's ``stemsplit`` is someone else's project, so the distribution is ``stemsplit-cli``; the import
package and the command stay ``stemsplit``. Nothing is downloaded: the wheel is built without build
isolation (setuptools comes with torch) and installed without dependencies, which the fresh environment
borrows from this one through a ``.pth`` line (a plain path: this environment's editable install of the
source tree is a ``.pth`` hook there, which a path line does not run, so the wheel's copy is the one found).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import soundfile as sf
from helpers import ROOT

DISTRIBUTION = "stemsplit-cli"


def test_the_distribution_name_is_ours():
    assert metadata.distribution(DISTRIBUTION).metadata["Name"] == DISTRIBUTION
    entry = next(e for e in metadata.entry_points(group="console_scripts") if e.name == "stemsplit")
    assert entry.value == "stemsplit.cli:main"


def test_a_built_wheel_installs_in_a_fresh_environment_and_runs_the_demo(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject.toml's build requirement")
    # (the fresh environment must not see this tree's sources through a PYTHONPATH a developer set)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = dict(check=True, capture_output=True, text=True, timeout=300, env=env)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist")],
        **run,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("stemsplit_cli-")
    with zipfile.ZipFile(wheel) as archive:  # the registry travels inside the package, as it is here
        assert archive.read("stemsplit/weights.toml") == (ROOT / "weights.toml").read_bytes()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], **run)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], **run)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               **run).stdout.strip())  # fmt: skip
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = subprocess.run([python, "-c", "import stemsplit; print(stemsplit.__file__)"], cwd=tmp_path, **run)
    assert Path(where.stdout.strip()).is_relative_to(site)  # the wheel's copy, not this source tree
    audio, rate = sf.read(ROOT / "examples" / "demo-song.flac", frames=2 * 44100)  # 2 s of the demo song
    song = tmp_path / "demo-song.flac"
    sf.write(song, audio, rate)
    done = subprocess.run(
        [venv / "bin" / "stemsplit", song, "--model", "demo", "-o", tmp_path / "stems", "-q"],
        cwd=tmp_path,
        **run,
    )
    assert done.stderr == ""
    written = sorted(p.name for p in (tmp_path / "stems" / "demo-song").iterdir())
    assert written == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
