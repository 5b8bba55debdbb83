"""BSMamba2 (MSST's bs_mamba2 since 2026): golden match with the upstream network, the published layout,
and telling it apart from TS-BSMamba2 (the same MSST model type up to 2025) by YAML and by state dict.

The fixtures (tests/fixtures/bs_mamba2/, README.md there) are the upstream network's outputs on CPU,
with mamba_ssm's own reference functions in place of its CUDA kernels.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import GOLDEN_WEIGHTS, RATE, ROOT, music, run_cli
from safetensors.torch import load_file

from stemsplit.model import families
from stemsplit.model.bs_mamba2 import BSMamba2Config, config_from_state_dict
from stemsplit.weights import CheckpointError, load_model
from stemsplit.weights.checkpoint import bare_architecture
from stemsplit.weights.msst import read_msst_config

FIXTURES = ROOT / "tests" / "fixtures" / "bs_mamba2"
CONFIGS = json.loads((FIXTURES / "manifest.json").read_text())["configs"]
PUBLISHED_YAML = FIXTURES / "configs" / "config_bs_mamba2_vocals.yaml"
TS_YAML = FIXTURES / "configs" / "config_musdb18_bs_mamba2.yaml"  # MSST's TS-BSMamba2, same model type


def options(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def network(name: str, state_dict: dict | None = None) -> torch.nn.Module:
    """Fixture ``name``'s network, built through the family as a YAML's options are, upstream weights."""
    config = families.make_config("bs-mamba2", overrides=options(name))
    model = families.build_model("bs-mamba2", config, ()).eval()
    model.load_state_dict(state_dict or load_file(FIXTURES / f"{name}.safetensors"), strict=True)
    return model


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_the_upstream_network(name):
    io_ = load_file(FIXTURES / f"{name}_io.safetensors")
    with torch.no_grad():
        out = network(name)(io_["input"])
    assert out.shape == io_["output"].shape
    assert rel_l2(out, io_["output"]) <= 1e-5


def test_a_weight_nudged_by_005_breaks_the_match():
    """The backward Mamba-2 of the last frequency block counts: moving one of its weights is seen."""
    name = "mamba2_stereo_2stem_deep"
    state_dict = load_file(FIXTURES / f"{name}.safetensors")
    state_dict["layers.2.1.backward_blocks.0.mixer.in_proj.weight"][3, 5] += 0.05
    io_ = load_file(FIXTURES / f"{name}_io.safetensors")
    with torch.no_grad():
        out = network(name, state_dict)(io_["input"])
    assert rel_l2(out, io_["output"]) > 1e-4


def read_layout(path: Path) -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in path.read_text().splitlines() if not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.split(",")) for key, shape in rows}


def test_the_published_yaml_builds_upstreams_layout_key_for_key():
    """config_bs_mamba2_vocals.yaml (MSST v1.0.19's BSMamba2 vocals) through --model-config's path, on
    the meta device: every key of upstream's state dict, shape for shape, and no other."""
    msst = read_msst_config(PUBLISHED_YAML)
    assert msst.architecture == "bs-mamba2" and msst.stems == ("vocals", "other")
    assert (msst.window, msst.hop) == (8.0, 4.0)
    config = families.make_config(msst.architecture, overrides=msst.config, stems=msst.stems)
    assert config == families.family("bs-mamba2").presets["msst-vocals"]
    with torch.device("meta"):
        model = families.build_model("bs-mamba2", config, msst.stems)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == read_layout(FIXTURES / "layouts" / "config_bs_mamba2_vocals.tsv")
    assert model.card.rest_stem == "other"


def test_the_two_bs_mamba2_yamls_build_their_own_families():
    assert read_msst_config(TS_YAML).architecture == "ts-bsmamba2"
    assert read_msst_config(PUBLISHED_YAML).architecture == "bs-mamba2"


def test_state_dicts_tell_the_two_apart():
    ours = load_file(FIXTURES / "mamba2_mono_2stem.safetensors")
    assert bare_architecture(ours) == "bs-mamba2"
    assert bare_architecture(load_file(GOLDEN_WEIGHTS)) == "ts-bsmamba2"
    for name in CONFIGS:  # what a bare checkpoint's keys say of its network
        found = config_from_state_dict(load_file(FIXTURES / f"{name}.safetensors"))
        wanted = families.make_config("bs-mamba2", overrides=options(name))
        for field in ("dim", "depth", "stereo", "num_stems", "freqs_per_bands", "mask_estimator_depth"):
            assert getattr(found, field) == getattr(wanted, field), (name, field)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"module_type": "transformer"}, "module_type 'transformer' is not implemented"),
        ({"mamba_gmlp": True}, "mamba_gmlp"),
        ({"stft_win_length": 1024}, "stft_win_length must be 2048"),
        ({"dim": 24}, "dim must be a multiple of 16"),
    ],
)
def test_options_no_published_checkpoint_uses_are_refused_in_one_line(change, message):
    with pytest.raises(families.FamilyError, match=message) as error:
        families.make_config("bs-mamba2", overrides=change)
    assert "\n" not in str(error.value)
    assert BSMamba2Config(**change).problem() is not None


def pickled(state_dict: dict, path: Path) -> Path:
    """A checkpoint as MSST saves one: a pickled plain state dict."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_a_bare_checkpoint_loads_as_bsmamba2_and_says_so(tmp_path, capsys):
    """No YAML: the key names say BSMamba2, the weights its size, MSST's published config the rest
    (hop 441): the fixture made at hop 441 comes out as upstream's."""
    name = "mamba2_stereo_1stem"
    ckpt = pickled(load_file(FIXTURES / f"{name}.safetensors"), tmp_path / "bs_mamba2_vocals.ckpt")
    loaded = load_model(ckpt, progress=True)
    assert loaded.card.architecture == "bs-mamba2"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loaded as BSMamba2 (bs-mamba2" in err and "key names" in err
    io_ = load_file(FIXTURES / f"{name}_io.safetensors")
    with torch.no_grad():
        assert rel_l2(loaded.model(io_["input"]), io_["output"]) <= 1e-5


def test_a_checkpoint_of_the_other_bs_mamba2_is_named_in_the_error(tmp_path):
    ckpt = pickled(load_file(FIXTURES / "mamba2_mono_2stem.safetensors"), tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="the checkpoint is a BSMamba2") as error:
        load_model(ckpt, model_config=TS_YAML, progress=False)
    assert "\n" not in str(error.value)


CHUNK = 8820  # 0.2 s windows, every 0.1 s (num_overlap 2)


def msst_yaml(path: Path, name: str) -> Path:
    """An MSST config for fixture ``name``, as MSST writes one (tuples tagged !!python/tuple)."""
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in options(name).items()}
    config = {
        "audio": {"chunk_size": CHUNK, "sample_rate": RATE, "num_channels": 2},
        "model": {**model, "multi_stft_resolutions_window_sizes": (4096, 2048)},
        "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
        "inference": {"batch_size": 1, "num_overlap": 2},
    }
    path.write_text(yaml.dump(config))
    return path


def test_cli_separates_with_a_checkpoint_and_its_yaml(tmp_path, capsys):
    """stemsplit song.wav --model x.ckpt --model-config x.yaml, one window: vocals as the upstream
    network gives them, other = the mixture minus vocals, and a line saying which bs_mamba2 it is."""
    name = "mamba2_stereo_1stem"
    ckpt = pickled(load_file(FIXTURES / f"{name}.safetensors"), tmp_path / "bs_mamba2.ckpt")
    config = msst_yaml(tmp_path / "config.yaml", name)
    mix = music(CHUNK / RATE)
    sf.write(tmp_path / "song.wav", mix, RATE, subtype="FLOAT")
    seconds = str(CHUNK / RATE)
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", ckpt, "--model-config", config,
        "--window", seconds, "--hop", seconds, "-o", tmp_path / "out", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    assert "bs_mamba2.ckpt: loaded as BSMamba2 (bs-mamba2" in err and "config.yaml's model options" in err
    vocals, _ = sf.read(tmp_path / "out" / "song" / "vocals.wav", dtype="float32")
    other, _ = sf.read(tmp_path / "out" / "song" / "other.wav", dtype="float32")
    with torch.no_grad():
        expected = network(name)(torch.from_numpy(mix.T.copy())[None])[0, 0]  # [ch, samples]
    np.testing.assert_allclose(vocals, expected.numpy().T, atol=2e-5)
    np.testing.assert_allclose(other, mix - vocals, atol=2e-5)
    assert np.abs(vocals).max() > 1e-3


def test_registry_entry_is_the_published_yaml():
    """bs-mamba2-vocals: its config, stems, window and hop are config_bs_mamba2_vocals.yaml's, and its
    score is MSST's, on the test set MSST names (the paper's figures are another model's)."""
    from stemsplit.weights import load_registry
    from stemsplit.weights.load import entry_config

    entry = load_registry().get("bs-mamba2-vocals")
    msst = read_msst_config(PUBLISHED_YAML)
    assert {k: v for k, v in entry.config.items() if k != "sr"} == {
        k: v for k, v in msst.config.items() if k != "sr"
    }
    assert (entry.stems, entry.sample_rate, entry.window, entry.hop) == (
        msst.stems,
        msst.sample_rate,
        msst.window,
        msst.hop,
    )
    assert entry_config(entry) == families.make_config("bs-mamba2", overrides=msst.config)
    assert entry.metrics["test_set"] == "MVSEP multisong" and entry.metrics["sdr_vocals"] == 8.82
    assert entry.filename == "bs_mamba2_vocals.ckpt"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["portable", "cuda"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cuda_matches_the_upstream_network(name, backend, monkeypatch):
    """The fixtures on a GPU, through the portable scan and (where installed) mamba_ssm's kernels."""
    from stemsplit.model.layers.mamba2 import cuda_kernels

    if backend == "cuda" and cuda_kernels() is None:
        pytest.skip("mamba_ssm is not installed")
    monkeypatch.setenv("STEMSPLIT_MAMBA_BACKEND", backend)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    io_ = load_file(FIXTURES / f"{name}_io.safetensors")
    with torch.no_grad():
        out = network(name).cuda()(io_["input"].cuda()).cpu()
    assert rel_l2(out, io_["output"]) <= 1e-4  # the kernels sum in another order
