"""Demucs model files (weights/demucs.py): a `.th` as Demucs saves it and a Demucs 4.1 safetensors file,
both made by upstream's code (tests/fixtures/htdemucs/package/, make_package_fixtures.py), loaded without
running any pickle code, and run through Demucs's song path: normalised by the mono mix's mean and std,
the network once on a one-segment song, scaled back."""

from __future__ import annotations

import json
import os
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FIXTURES, run_cli
from safetensors.torch import load_file, save_file
from weights_server import tiny_entry, write_registry

from stemsplit.separate import Separator
from stemsplit.weights import CheckpointError, RegistryError, UnsafeCheckpointError, load_model

PACKAGE = FIXTURES / "htdemucs" / "package"
SIX = ("drums", "bass", "other", "vocals", "guitar", "piano")
SONG = load_file(PACKAGE / "tiny6_song.safetensors")  # mix [2, 4096], stems [6, 2, 4096] (upstream's)
SEGMENT = 4096 / 44100  # the fixture's Fraction(1024, 11025) s


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["tiny6.th", "tiny6_hf.safetensors"])
def test_a_demucs_file_loads_and_separates_as_demucs_does(name):
    loaded = load_model(PACKAGE / name)
    card = loaded.card
    assert (card.architecture, card.stems, card.sample_rate, card.normalization) == (
        "htdemucs", SIX, 44100, "meanstd"
    )  # fmt: skip
    assert card.window == pytest.approx(SEGMENT) and card.hop == pytest.approx(0.75 * SEGMENT)
    # The published weights are float16: the network holds exactly those values, in float32.
    stored = load_file(PACKAGE / "tiny6_hf.safetensors")
    weights = loaded.model.state_dict()
    assert all(weights[k].dtype == torch.float32 for k in stored)
    assert all(torch.equal(weights[k], v.float()) for k, v in stored.items())

    separator = Separator(loaded.model, window=SEGMENT, hop=SEGMENT, device="cpu")
    stems = separator.separate(SONG["mix"].numpy(), 44100)
    got = torch.stack([torch.from_numpy(np.asarray(stems[s])) for s in SIX])
    assert rel_l2(got, SONG["stems"]) < 1e-5
    # The song has a DC offset, and Demucs puts the mean back into every stem.
    assert float(SONG["mix"].mean()) > 5e-3


def test_a_th_file_separates_through_the_command_line(tmp_path, capsys):
    sf.write(tmp_path / "song.wav", SONG["mix"].numpy().T, 44100, subtype="FLOAT")
    seconds = str(SEGMENT)
    status, _, err = run_cli(
        capsys, tmp_path / "song.wav", "--model", PACKAGE / "tiny6.th",
        "--window", seconds, "--hop", seconds, "-o", tmp_path / "out",
    )  # fmt: skip
    assert status == 0, err
    written = sorted(p.name for p in (tmp_path / "out" / "song").iterdir())
    assert written == sorted(f"{s}.wav" for s in SIX)
    for index, stem in enumerate(SIX):
        audio, _ = sf.read(tmp_path / "out" / "song" / f"{stem}.wav", dtype="float32")
        assert rel_l2(torch.from_numpy(audio.T.copy()), SONG["stems"][index]) < 1e-5


def saved(tmp_path: Path, package: object, name: str = "model.th") -> Path:
    path = tmp_path / name
    torch.save(package, path)
    return path


class Payload:
    """Unpickling this runs ``touch FILE``: what a hostile model file would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_hostile_th_is_refused_and_nothing_in_it_runs(tmp_path, capsys):
    target = tmp_path / "pwned"
    state = load_file(PACKAGE / "tiny6_hf.safetensors")
    package = {"klass": Payload(target), "args": [], "kwargs": {"sources": list(SIX)}, "state": state}
    path = saved(tmp_path, package)
    with pytest.raises(UnsafeCheckpointError, match=r"model\.th: refused: it needs arbitrary pickle code"):
        load_model(path)
    assert not target.exists()
    sf.write(tmp_path / "song.wav", SONG["mix"].numpy().T, 44100)
    status, out, err = run_cli(capsys, tmp_path / "song.wav", "--model", path, "-o", tmp_path / "out")
    assert status != 0 and not target.exists() and not (tmp_path / "out").exists()
    assert len(err.strip().splitlines()) == 1 and "refused" in err and "Traceback" not in err + out


@pytest.fixture
def fake_demucs(monkeypatch):
    """Modules named like Demucs's, so that a test can pickle a package naming its classes."""
    classes = {}
    for module, name in [("demucs.hdemucs", "HDemucs"), ("demucs.htdemucs", "HTDemucs")]:
        fake = types.ModuleType(module)
        cls = type(name, (), {"__module__": module})
        setattr(fake, name, cls)
        monkeypatch.setitem(sys.modules, module, fake)
        classes[name] = cls
    monkeypatch.setitem(sys.modules, "demucs", types.ModuleType("demucs"))
    return classes


def hf_metadata() -> dict[str, str]:
    """The Demucs 4.1 file's metadata (klass, args, kwargs), read from its safetensors header."""
    with open(PACKAGE / "tiny6_hf.safetensors", "rb") as handle:
        return json.loads(handle.read(int.from_bytes(handle.read(8), "little")))["__metadata__"]


def package_of(klass: type, **changes: object) -> dict:
    """The fixture's network as a Demucs package naming ``klass`` (what serialize_model pickles)."""
    kwargs = json.loads(hf_metadata()["kwargs"])
    kwargs["segment"] = Fraction(kwargs["segment"]["numerator"], kwargs["segment"]["denominator"])
    state = load_file(PACKAGE / "tiny6_hf.safetensors")
    return {"klass": klass, "args": [], "kwargs": kwargs, "state": state, **changes}


def test_a_package_pickled_here_loads_like_upstreams(tmp_path, fake_demucs):
    """The loader reads the package, not one file's bytes: the same content pickled again loads the same."""
    path = saved(tmp_path, package_of(fake_demucs["HTDemucs"], training_args={"epochs": 1}))
    ours = load_model(path).model
    theirs = load_model(PACKAGE / "tiny6.th").model
    theirs_state = theirs.state_dict()
    assert all(torch.equal(v, theirs_state[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("hdemucs", r"model\.th: a Demucs HDemucs model \(demucs\.hdemucs\.HDemucs\); stemsplit runs Demucs"),
        ("quantized", r"model\.th: a quantized \(DiffQ\) Demucs model"),
        ("positional", r"model\.th: a Demucs model built with positional arguments"),
        ("no sources", r"model\.th: Demucs kwargs do not name the sources"),
        ("bad option", r"model\.th: .*cac"),
    ],
)
def test_demucs_files_stemsplit_cannot_run_are_refused_in_one_line(tmp_path, fake_demucs, change, message):
    package = package_of(fake_demucs["HTDemucs"])
    if change == "hdemucs":
        package["klass"] = fake_demucs["HDemucs"]
    elif change == "quantized":
        package["state"] = {"__quantized": True, "quantized": [1, 2]}
    elif change == "positional":
        package["args"] = [4]
    elif change == "no sources":
        del package["kwargs"]["sources"]
    else:
        package["kwargs"]["cac"] = False  # the Wiener-filter path, which stemsplit does not build
    with pytest.raises(CheckpointError, match=message) as caught:
        load_model(saved(tmp_path, package))
    assert "\n" not in str(caught.value)


def test_a_quantized_demucs_safetensors_is_refused(tmp_path):
    tensors = load_file(PACKAGE / "tiny6_hf.safetensors")
    save_file(tensors, str(tmp_path / "q.safetensors"), metadata={**hf_metadata(), "structure": "{}"})
    with pytest.raises(CheckpointError, match=r"q\.safetensors: a quantized \(DiffQ\) Demucs model"):
        load_model(tmp_path / "q.safetensors")


def test_a_registry_entry_of_a_demucs_file_downloads_and_runs(tmp_path, capsys, env, server):
    """As the published htdemucs entries: a Demucs 4.1 safetensors from a server (here 127.0.0.1). The
    file's own kwargs build the network; the entry's stems and family must agree with them."""
    server.files["5c90dfd2.safetensors"] = (PACKAGE / "tiny6_hf.safetensors").read_bytes()
    entry = tiny_entry(
        architecture="htdemucs",
        preset="htdemucs_6s",
        config={"segment": SEGMENT},
        stems=list(SIX),
        normalization="meanstd",
        url=server.url("5c90dfd2.safetensors"),
    )
    wrong = {**entry, "stems": ["drums", "bass", "other", "vocals", "piano", "guitar"]}
    write_registry(env / "weights.toml", {"tiny-6s": entry, "swapped": wrong})
    loaded = load_model("tiny-6s", progress=False)
    assert loaded.stems == SIX and loaded.card.window == pytest.approx(SEGMENT)
    separator = Separator("tiny-6s", window=SEGMENT, hop=SEGMENT, device="cpu")
    stems = separator.separate(SONG["mix"].numpy(), 44100)
    got = torch.stack([torch.from_numpy(np.asarray(stems[s])) for s in SIX])
    assert rel_l2(got, SONG["stems"]) < 1e-5
    swapped = r"\[models\.swapped\] stems is .*'piano', 'guitar'.*but the file says"
    with pytest.raises(RegistryError, match=swapped):
        load_model("swapped", progress=False)


def test_a_registry_entry_of_a_th_file_is_converted_once_and_keeps_what_it_is(env, server):
    """A .th URL in the registry: downloaded, read without running pickle code, converted to safetensors in
    the cache with its Demucs class and kwargs kept, so a later load (from the conversion) builds the same."""
    server.files["tiny6.th"] = (PACKAGE / "tiny6.th").read_bytes()
    entry = tiny_entry(
        architecture="htdemucs", preset="htdemucs_6s", config={}, stems=list(SIX), normalization="meanstd",
        url=server.url("tiny6.th"),
    )  # fmt: skip
    write_registry(env / "weights.toml", {"tiny-th": entry})
    first = load_model("tiny-th", progress=False).model
    again = load_model("tiny-th", progress=False).model
    assert len(server.requests_for("tiny6.th")) == 1  # the second load read the conversion
    reference = load_model(PACKAGE / "tiny6.th").model.state_dict()
    for model in (first, again):
        assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
        assert model.card.window == pytest.approx(SEGMENT)  # from the file's kwargs, not the preset's 7.8 s


def test_a_window_longer_than_the_segment_is_a_usage_error(tmp_path, capsys):
    """HTDemucs pads a shorter window to its training segment; a longer one is refused before any window."""
    sf.write(tmp_path / "song.wav", SONG["mix"].numpy().T, 44100)
    flags = ["--model", PACKAGE / "tiny6.th", "--window", "0.2", "-o", tmp_path / "o"]
    status, _, err = run_cli(capsys, tmp_path / "song.wav", *flags)
    assert status == 2 and not (tmp_path / "o").exists()
    assert err.strip().splitlines()[-1] == (
        "stemsplit: error: --window: 0.2 s is longer than this model's longest window "
        "(0.09288 s, the segment it was trained on)"
    )
