"""Named ensembles in the registry (``[ensembles.NAME]``, as Demucs's htdemucs_ft bag): ``--model NAME`` runs
its members, downloaded from a loopback server, exactly as the same ensemble written out on the command line;
``stemsplit models`` lists and shows it; a bad table is one line, before anything downloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from helpers import FIXTURES, GOLDEN_WEIGHTS, RATE, music, run_cli
from weights_server import tiny_entry, write_registry

from stemsplit.engine.ensemble import Ensemble
from stemsplit.weights import UnknownModelError, load_model, load_registry

PACKAGE = FIXTURES / "htdemucs" / "package"
SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]
BAG = "drums=six,bass=four,other=four,vocals=six"


@pytest.fixture
def registry(env, server):
    """Two models on 127.0.0.1 (a tiny six-stem HTDemucs, the golden four-stem TS-BSMamba2) and a bag
    taking drums and vocals from the first, bass and other from the second."""
    server.files["six.safetensors"] = (PACKAGE / "tiny6_hf.safetensors").read_bytes()
    segment = 4096 / 44100
    models = {
        "four": tiny_entry(url=server.url("tiny.safetensors"), window=1.0, hop=0.5),
        "six": tiny_entry(
            architecture="htdemucs", preset="htdemucs_6s", config={"segment": segment}, stems=SIX,
            normalization="meanstd", url=server.url("six.safetensors"), window=segment, hop=segment / 2,
        ),
    }  # fmt: skip
    path = write_registry(env / "weights.toml", models)
    with path.open("a") as handle:
        handle.write(f'[ensembles.bag]\ndescription = "a bag"\nmodels = "{BAG}"\n')
        handle.write('metrics = { test_set = "MUSDB18-HQ test", metric = "SDR", sdr_avg = 1.5 }\n')
    return path


def test_a_named_ensemble_runs_as_its_text_does(tmp_path, capsys, registry, server):
    sf.write(tmp_path / "song.wav", music(0.5), RATE, subtype="FLOAT")
    for name, model in {"named": "bag", "written": BAG}.items():
        status, _, err = run_cli(capsys, tmp_path / "song.wav", "--model", model, "-o", tmp_path / name)
        assert status == 0, err
    assert "drums, vocals: six alone (chosen); bass: four alone (chosen)" in err
    # four's other holds the guitar and piano six gives apart: they are taken out of it (ensemble_spec)
    assert "other: four alone (chosen) (four's less guitar, piano, which its other holds)" in err
    assert "guitar, piano: only six has them" in err
    written = sorted(p.name for p in (tmp_path / "named" / "song").iterdir())
    assert written == sorted(f"{s}.wav" for s in SIX)
    for stem in SIX:
        named, _ = sf.read(tmp_path / "named" / "song" / f"{stem}.wav", dtype="float32")
        spelled, _ = sf.read(tmp_path / "written" / "song" / f"{stem}.wav", dtype="float32")
        np.testing.assert_array_equal(named, spelled)
        assert np.abs(named).max() > 1e-4
    # The Python API takes the name too; Separator and load_model, which run one network, say what it is.
    assert Ensemble("bag", download_progress=False).stems == tuple(SIX)
    with pytest.raises(UnknownModelError, match="bag is an ensemble of several models"):
        load_model("bag")


def test_models_lists_shows_and_downloads_a_named_ensemble(capsys, registry, server):
    status, out, err = run_cli(capsys, "models")
    assert status == 0, err
    row = next(line for line in out.splitlines() if line.startswith("bag "))
    assert row.split()[:4] == ["bag", "2", "models", "6"] and "1.50 avg M" in row
    status, out, err = run_cli(capsys, "models", "bag")
    assert status == 0, err
    assert "six (htdemucs), four (ts-bsmamba2)" in out and "bass: four alone" in out
    assert "other: four alone (chosen) (four's less guitar, piano, which its other holds)" in " ".join(
        out.split()
    )
    status, out, err = run_cli(capsys, "models", "--json")
    assert json.loads(out)["ensembles"][0]["members"] == ["six", "four"]
    assert server.requests_for("six.safetensors") == []  # listing downloads nothing
    status, out, err = run_cli(capsys, "models", "download", "bag", "-q")
    assert status == 0, err
    assert len(out.strip().splitlines()) == 2 and server.requests_for("six.safetensors")


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        ("drums=four,bass=ghost", "[ensembles.bag] models: 'ghost' is not a [models.NAME] of the registry"),
        ("four", "[ensembles.bag] models: not two models"),
        ("four,,six", "[ensembles.bag] models: an empty model"),
    ],
)
def test_a_bad_named_ensemble_is_one_line_before_any_download(tmp_path, capsys, env, server, models, problem):
    path = write_registry(env / "weights.toml", {"four": tiny_entry(url=server.url("tiny.safetensors"))})
    path.write_text(path.read_text() + f'[ensembles.bag]\ndescription = "x"\nmodels = "{models}"\n')
    sf.write(tmp_path / "song.wav", music(0.2), RATE)
    status, _, err = run_cli(capsys, tmp_path / "song.wav", "--model", "bag", "-o", tmp_path / "out")
    assert status == 2 and problem in err and len(err.strip().splitlines()) == 1
    assert server.requests == [] and not (tmp_path / "out").exists()


def test_registry_ensemble_tables_are_checked(env):
    four = tiny_entry(path=str(GOLDEN_WEIGHTS), sha256="0" * 64)
    path = write_registry(env / "weights.toml", {"four": four})
    base = path.read_text()
    cases = {
        '[ensembles.four]\ndescription = "x"\nmodels = "a,b"\n': "'four' is also a [models.four] table",
        '[ensembles.bag]\nmodels = "a,b"\n': "missing field 'description'",
        '[ensembles.bag]\ndescription = "x"\nmodels = ["a"]\n': "field 'models' must be a string",
        '[ensembles.bag]\ndescription = "x"\nmodels = "a,b"\nweights = 2\n': "unknown field 'weights'",
    }
    for table, message in cases.items():
        path.write_text(base + table)
        with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_registry(path)


def test_the_shipped_bag_is_demucs_htdemucs_ft():
    """htdemucs_ft as Demucs's remote/htdemucs_ft.yaml makes it: network k gives stem k alone."""
    from stemsplit.engine.ensemble_spec import named_ensemble

    spec = named_ensemble("htdemucs_ft")
    registry = load_registry()
    assert spec is not None and len(spec.models) == 4
    for stem, index in spec.choice.items():
        member = registry.models[spec.models[index]]
        assert member.name == f"htdemucs_ft-{stem}" and member.architecture == "htdemucs"
        assert member.stems == ("drums", "bass", "other", "vocals")
