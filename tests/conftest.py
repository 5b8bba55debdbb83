import json
import os
import subprocess
import threading

import numpy as np
import pytest
import torch
from helpers import (
    FIXTURES,
    GOLDEN_WEIGHTS,
    RATE,
    STUB_ARCH,
    StubConfig,
    StubNet,
    song,
    stub_family,
    tiny_model,
    tiny_toml,
    write_track,
)
from safetensors.torch import load_file, save_file
from weights_server import FileServer, golden_ckpt_bytes


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch takes its share of the CPUs (one thread each for CI's two
    workers on two cores), and so do the processes its tests start (OMP_NUM_THREADS): two workers
    with a thread per core each ran four busy threads on two cores. Alone (-n 0) torch keeps its own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# Collected first, in this order: the folders of the longest files (training and fine-tuning runs, then the
# end-to-end runs). Under --dist loadfile a worker that draws a long file last runs it alone at the end.
LONGEST_FIRST = ("tests/unit/train/", "tests/e2e/")


def pytest_collection_modifyitems(items):
    items.sort(
        key=lambda item: next((k for k, p in enumerate(LONGEST_FIRST) if item.nodeid.startswith(p)), 2)
    )


@pytest.fixture(scope="session")
def golden():
    """The small reference model (feature_dim 32, 2 + 2 layers): config, weights, input and outputs."""
    return {
        "config": json.loads((FIXTURES / "golden_small_config.json").read_text()),
        "weights": load_file(GOLDEN_WEIGHTS),
        "io": load_file(FIXTURES / "golden_small_io.safetensors"),
    }


@pytest.fixture(scope="session")
def golden_model(golden):
    from stemsplit.model import TSBSMamba2

    return TSBSMamba2.from_state_dict(golden["weights"]).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The tiny TS-BSMamba2 (N = 16, 1 + 1 layers) saved as a bare state dict (no metadata): fast
    plumbing tests."""
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_file(tiny_model().state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def stub_file(tmp_path_factory):
    """helpers.StubNet saved by save_checkpoint (architecture, config and stems in its metadata)."""
    from stemsplit.weights import save_checkpoint

    path = tmp_path_factory.mktemp("models") / "stub.safetensors"
    save_checkpoint(StubNet(StubConfig()), path)
    return str(path)


@pytest.fixture
def stub_checkpoint(stub_file, monkeypatch):
    """The stand-in music network's checkpoint, its family registered for this test only: plumbing tests
    through ``helpers.cli`` (in this process) without the cost of a real network."""
    from stemsplit.model import families

    monkeypatch.setitem(families.FAMILIES, STUB_ARCH, stub_family())
    return stub_file


@pytest.fixture
def server():
    """A real HTTP server on 127.0.0.1 (weights_server.FileServer) serving the golden model as
    ``tiny.ckpt`` (a pickled state dict) and ``tiny.safetensors``; tests add files and faults."""
    server = FileServer()
    server.files["tiny.ckpt"] = golden_ckpt_bytes()
    server.files["tiny.safetensors"] = GOLDEN_WEIGHTS.read_bytes()
    yield server
    server.close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private model cache (tmp_path/cache) and registry path (tmp_path/weights.toml), offline
    switches cleared: nothing touches the network or the home directory. Returns tmp_path."""
    monkeypatch.setenv("STEMSPLIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STEMSPLIT_REGISTRY", str(tmp_path / "weights.toml"))
    monkeypatch.delenv("STEMSPLIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_musdb(tmp_path_factory):
    """A tiny MUSDB18-HQ-layout dataset for training runs (helpers.train_args): 3 training tracks and
    1 validation track, 4 s each, and ``tiny.toml``, the tiny TS-BSMamba2's --model-config."""
    root = tmp_path_factory.mktemp("musdb")
    rng = np.random.default_rng(0)
    names = [
        "Song A",
        "Song B",
        "Song C",
        "Actions - One Minute Smile",
    ]  # the last is a MUSDB validation track
    for k, name in enumerate(names):
        t = np.arange(4 * RATE) / RATE
        stems = {
            "drums": (rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 2 * t) > 0.7))[:, None] * 0.2,
            "bass": np.sin(2 * np.pi * (55 + 10 * k) * t)[:, None] * 0.3,
            "other": np.sin(2 * np.pi * (330 + 20 * k) * t)[:, None] * 0.2,
            "vocals": np.sin(2 * np.pi * (660 + 30 * k) * t + np.sin(2 * np.pi * 5 * t))[:, None] * 0.2,
        }
        write_track(
            root / "train" / name, {stem: np.repeat(mono, 2, axis=1) for stem, mono in stems.items()}, RATE
        )
    (root / "tiny.toml").write_text(tiny_toml())
    return root


@pytest.fixture(scope="module")
def a_song(tmp_path_factory):
    """A 1.3 s stereo chord (helpers.song) as a float WAV, shared by a module's tests: read, never changed."""
    folder = tmp_path_factory.mktemp("inputs")
    song(folder / "song.wav")
    return folder / "song.wav"


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB tmpfs: a real full disk (needs root or CAP_SYS_ADMIN; skipped elsewhere). Fill it
    to the point a test needs with :func:`helpers.fill_disk`."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + made.stderr.decode().strip())
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def held_claims():
    """A list for the batch claims (``stemsplit.batch.Claim``) a test acquires itself: each is released
    when the test ends, passed or failed (a held claim's heartbeat thread touches its file until then)."""
    claims: list = []
    yield claims
    for claim in claims:
        claim.release()


@pytest.fixture(autouse=True)
def no_claim_left_held():
    """No test ends with a batch claim still held in this process, by the test or by a command it ran
    here: its heartbeat thread would outlive the test, touching a file in a removed folder."""
    before = set(threading.enumerate())
    yield
    beating = [t for t in threading.enumerate() if t.name.startswith("claim ") and t not in before]
    for thread in beating:  # release() wakes the thread at once; let it finish its last loop
        thread.join(timeout=2)
    assert not [t.name for t in beating if t.is_alive()], "a batch claim was left held (see held_claims)"
