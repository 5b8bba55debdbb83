"""The bundled demo model and the README quick start: offline, on songs the model never saw."""

import hashlib
import importlib.util
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from helpers import ROOT, python, run

from stemsplit import weights
from stemsplit.separate import Separator
from stemsplit.train.eval import usdr
from stemsplit.train.synth import generate_song

STEMS = ("drums", "bass", "other", "vocals")
# Separation must beat "every stem = the mixture" by this much per stem (uSDR, dB). On the 10 held-out
# songs of benchmarks/eval_demo.py the smallest gain of any stem on any song was 5.3 dB (mean 11 dB;
# src/stemsplit/checkpoints/demo.md); 3 dB leaves room for shorter songs.
MARGIN_DB = 3.0


def load_example_module():
    spec = importlib.util.spec_from_file_location("make_demo_song", ROOT / "examples" / "make_demo_song.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network, an empty cache, the shipped registry."""
    monkeypatch.setenv("STEMSPLIT_OFFLINE", "1")
    monkeypatch.setenv("STEMSPLIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STEMSPLIT_REGISTRY", raising=False)


def test_demo_model_ships_in_the_package_small_and_verified(offline):
    entry = weights.load_registry().get("demo")
    assert entry.path == ROOT / "src" / "stemsplit" / "checkpoints" / "demo.safetensors"
    data = entry.path.read_bytes()
    assert len(data) == entry.size <= 12 * 10**6
    assert hashlib.sha256(data).hexdigest() == entry.sha256
    loaded = weights.load_model("demo", progress=False)
    assert loaded.stems == STEMS and loaded.sample_rate == 44100
    assert loaded.model.config.feature_dim == 32 and loaded.model.config.stride == 1024
    assert (ROOT / "src" / "stemsplit" / "checkpoints" / "demo.md").is_file()


def test_demo_beats_the_mixture_baseline_on_fresh_songs(offline):
    separator = Separator("demo", device="cpu")
    for seed in (424242, 515151):  # not seeds of the training data (those are 64-bit hashes)
        song = generate_song(seed, 10.0)
        estimates = separator.separate(song.mixture, song.sample_rate)
        for stem in STEMS:
            model = usdr(song.stems[stem], estimates[stem])
            baseline = usdr(song.stems[stem], song.mixture)
            assert model > baseline + MARGIN_DB, f"{seed} {stem}: {model:.2f} vs baseline {baseline:.2f}"


def test_readme_quick_start_separates_the_example_offline(tmp_path, offline):
    """The README's first command, as written, on the shipped example song; the stems are scored."""
    readme = (ROOT / "README.md").read_text()
    quick_start = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S).group(1).splitlines()
    command = "stemsplit examples/demo-song.flac -o stems/ --model demo"
    assert command in quick_start[0]
    assert quick_start[1].strip() == ".ci/run"

    example = load_example_module()
    song = example.render()
    shipped, rate = sf.read(ROOT / "examples" / "demo-song.flac", dtype="float32", always_2d=True)
    assert rate == example.SAMPLE_RATE and shipped.shape[0] <= 30 * rate
    np.testing.assert_allclose(shipped.T, song.mixture, atol=2 / 32768)  # the file is that song

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    result = run(*command.split(), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    for stem in STEMS:
        estimate, _ = sf.read(tmp_path / "stems" / "demo-song" / f"{stem}.wav", always_2d=True)
        model = usdr(song.stems[stem], estimate.T)
        baseline = usdr(song.stems[stem], song.mixture)
        assert model > baseline + MARGIN_DB, f"{stem}: {model:.2f} vs baseline {baseline:.2f}"


def test_separate_api_example_runs(tmp_path, offline):
    result = python(
        ROOT / "examples" / "separate_api.py", ROOT / "examples" / "demo-song.flac", tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "demo-song").iterdir()) == sorted(f"{s}.flac" for s in STEMS)
    assert "model demo: stems drums, bass, other, vocals at 44100 Hz" in result.stdout
