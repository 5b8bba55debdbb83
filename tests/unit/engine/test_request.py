"""The pre-flight (stemsplit.engine.request): one typed request, checked once, the same from the command
line and from Python. The Python API checks exactly what the command line checks (issue 32 part 1, issue 33
part 6)."""

import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import FOUR_STEMS, RATE, StubConfig, StubNet, cli, song

from stemsplit.engine.request import EngineSettings, StemChoice, prepare, stem_names
from stemsplit.output import OutputError, OutputOptions, SongSource
from stemsplit.separate import SeparationError, Separator

# --- the parts of a request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ("vocals", ("vocals",)),  # one name, not the letters v, o, c, a, l, s
        ("vocals, drums", ("vocals", "drums")),  # as --stems takes them
        (["bass", "drums"], ("bass", "drums")),
        (("other",), ("other",)),
        (None, None),
    ],
)
def test_stem_names_take_a_string_as_the_command_line_does(given, names):
    assert stem_names(given) == names


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (",", "no stem names in ','"),
        (["vocals", "vocals"], "a stem is named twice"),
        ([], "must be stem names"),
        (["vocals", 3], "must be stem names"),
        (b"vocals", "must be stem names"),
        (7, "must be stem names"),
    ],
)
def test_bad_stem_names_are_one_line_naming_the_option(given, says):
    with pytest.raises(SeparationError, match=says) as caught:
        stem_names(given)
    assert caught.value.option == "stems"


def test_a_stem_choice_resolves_against_the_model_and_adds_the_residual():
    stems = ("bass", "drums", "other", "vocals")
    assert StemChoice().resolve(stems) == list(stems)
    assert StemChoice("vocals,bass").resolve(stems) == ["vocals", "bass"]
    assert StemChoice(two_stems="vocals").resolve(stems) == ["vocals", "no_vocals"]
    assert StemChoice("drums", residual=True).resolve(stems) == ["drums", "residual"]
    with pytest.raises(SeparationError, match="'piano' is not a stem of this ensemble"):
        StemChoice(["piano"]).resolve(stems, "this ensemble")
    with pytest.raises(SeparationError, match="goes without a list of stems") as caught:
        StemChoice("vocals", two_stems="drums")
    assert caught.value.option == "two_stems"


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        (dict(window="3"), "window"),
        (dict(hop=0), "hop"),
        (dict(batch_size=0), "batch_size"),
        (dict(precision="fp8"), "precision"),
        (dict(stage=3), "stage"),
        (dict(exact="yes"), "exact"),
        (dict(shifts=0), "shifts"),
        (dict(device="gpu"), "device"),
        (dict(compile="no"), "compile"),
        (dict(light=1), "light"),
    ],
)
def test_engine_settings_check_themselves_when_made(settings, option):
    with pytest.raises(SeparationError) as caught:
        EngineSettings(**settings)
    assert caught.value.option == option


# --- prepare: plan and probe, once -----------------------------------------------------------------


def test_prepare_plans_every_song_with_the_model_stems_and_probes_it(tmp_path):
    song(tmp_path / "a.wav")
    request = prepare(
        [tmp_path / "a.wav", tmp_path / "gone.wav"],
        tmp_path / "out",
        choice=StemChoice("vocals"),
        model_stems=("bass", "vocals"),
    )
    assert request.stems == ("vocals",)
    first, missing = request.songs
    assert first.info.frames == round(1.3 * RATE) and first.problem is None and first.identity is not None
    assert list(first.outputs.paths) == ["vocals"]
    assert missing.info is None and "gone.wav" in str(missing.problem)  # fails alone, not the request
    assert request.runnable() == [first]
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_prepare_plans_stand_ins_when_the_model_is_not_known_and_replans_once_it_is(tmp_path):
    song(tmp_path / "a.wav")
    request = prepare([SongSource(tmp_path / "a.wav")], tmp_path / "out")
    assert request.stems is None and list(request.songs[0].outputs.paths) == ["{stem}"]
    loaded = request.with_stems(["bass", "drums"])
    assert loaded.stems == ("bass", "drums")
    assert [p.name for p in loaded.songs[0].outputs.paths.values()] == ["bass.wav", "drums.wav"]
    assert loaded.songs[0].info == request.songs[0].info  # probed once
    assert loaded.with_stems(["bass", "drums"]) is loaded


def test_prepare_refuses_a_template_that_gives_one_file_for_every_stem_before_the_model_is_known(tmp_path):
    song(tmp_path / "a.wav")
    with pytest.raises(OutputError, match="one file for several stems") as caught:
        prepare([tmp_path / "a.wav"], tmp_path / "out", output=OutputOptions(filename="{track}.{ext}"))
    assert caught.value.option == "filename"


@pytest.mark.parametrize(
    ("call", "error", "option"),
    [
        (lambda tmp: prepare([tmp / "a.wav"], ""), OutputError, "out"),
        (lambda tmp: prepare([tmp / "a.wav"], "  "), OutputError, "out"),
        (lambda tmp: prepare([tmp / "a.wav"], 3), OutputError, "out"),
        (lambda tmp: prepare([b"a.wav"], tmp), SeparationError, "path"),
        (lambda tmp: prepare([""], tmp), SeparationError, "path"),
        (lambda tmp: prepare([tmp / "a.wav"], tmp, stream=0), SeparationError, "stream"),
        (lambda tmp: prepare([tmp / "a.wav"], tmp, stream=True), SeparationError, "stream"),
        (lambda tmp: prepare([tmp / "a.wav"], tmp, downmix="no"), SeparationError, "downmix"),
    ],
)
def test_prepare_refuses_what_the_command_line_refuses(tmp_path, call, error, option):
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert caught.value.option == option


# --- the Python API builds the same request --------------------------------------------------------


@pytest.fixture
def stub(stub_checkpoint):
    return Separator(stub_checkpoint, device="cpu", window=1.0, hop=0.5)


def test_separator_stems_choose_what_a_loaded_model_gives(stub_checkpoint, tmp_path):
    separator = Separator(stub_checkpoint, device="cpu", window=1.0, hop=0.5, stems=["vocals", "bass"])
    audio = song(tmp_path / "a.wav")
    assert sorted(separator.separate(audio.T, RATE)) == ["bass", "vocals"]
    result = separator.separate_file(tmp_path / "a.wav", tmp_path / "out")
    assert sorted(p.name for p in result.outputs.values()) == ["bass.wav", "vocals.wav"]
    # the call's own stems still win
    result = separator.separate_file(tmp_path / "a.wav", tmp_path / "out2", stems="drums")
    assert sorted(p.name for p in result.outputs.values()) == ["drums.wav"]
    with pytest.raises(SeparationError, match="'piano' is not a stem of this model") as caught:
        Separator(stub_checkpoint, device="cpu", stems=["piano"])
    assert caught.value.option == "stems"


@pytest.mark.parametrize(("option", "value"), [("sample_rate", 22050), ("normalization", "meanstd")])
def test_a_loaded_model_card_is_not_silently_overridden(stub_checkpoint, option, value):
    with pytest.raises(SeparationError, match="sets a network's card") as caught:
        Separator(stub_checkpoint, device="cpu", **{option: value})
    assert caught.value.option == option


def test_a_network_card_is_still_renamed_by_stems():
    separator = Separator(StubNet(StubConfig()), device="cpu", window=1.0, hop=0.5, stems="a,b,c,d")
    assert separator.stems == ("a", "b", "c", "d")
    assert sorted(separator.separate(np.zeros((2, RATE), np.float32), RATE)) == ["a", "b", "c", "d"]


def test_separate_file_takes_one_stem_name_as_a_string(stub, tmp_path):
    song(tmp_path / "a.wav")
    result = stub.separate_file(tmp_path / "a.wav", tmp_path / "out", stems="vocals")
    assert [p.name for p in result.outputs.values()] == ["vocals.wav"]


@pytest.mark.parametrize(
    ("arguments", "error", "says"),
    [
        (dict(out_dir=""), OutputError, "out: the folder name is empty"),
        (dict(path=b"a.wav"), SeparationError, "path: must be an audio file's path"),
        (dict(bit_depth="16", fmt="flac"), OutputError, "bit_depth: flac takes 16 or 24, not '16'"),
        (dict(stems="piano"), SeparationError, "stems: 'piano' is not a stem of this model"),
        (dict(stream=0), SeparationError, "stream: must be an audio stream's number from 1"),
    ],
)
def test_separate_file_refuses_in_one_line_before_any_window(
    stub, tmp_path, monkeypatch, arguments, error, says
):
    song(tmp_path / "a.wav")
    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(stub, "_forward", lambda windows: ran.append(windows))
    call = dict(path=tmp_path / "a.wav", out_dir=tmp_path / "out") | arguments
    with pytest.raises(error, match=says):
        stub.separate_file(call.pop("path"), call.pop("out_dir"), **call)
    assert not ran and sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # nothing written anywhere


def test_separate_file_takes_a_format_in_any_case_as_the_command_line_does(stub, tmp_path):
    song(tmp_path / "a.wav")
    result = stub.separate_file(tmp_path / "a.wav", tmp_path / "out", fmt="FLAC", stems="bass")
    assert sf.info(result.outputs["bass"]).format == "FLAC"


def test_a_sparse_tensor_is_one_line_not_a_type_error(stub):
    audio = torch.zeros(2, RATE).to_sparse()
    with pytest.raises(SeparationError, match=r"sparse torch\.float32 tensor"):
        stub.separate(audio, RATE)


class _Bent(StubNet):
    """The stand-in network, bent: its stems' sum misses the mixture by a share that grows with the level
    (the plain stand-in's residual is the same share of any song)."""

    def forward(self, mixture):
        stage1, stage2 = super().forward(mixture)
        return stage1, stage2 + mixture[:, None].square()


def test_residual_db_is_each_thread_s_own_song(tmp_path):
    """exact: two songs separated at once by one Separator each get their own residual level."""
    separator = Separator(_Bent(StubConfig()), device="cpu", window=1.0, hop=1.0, exact=True)
    loud, quiet = tmp_path / "loud.wav", tmp_path / "quiet.wav"
    song(loud, seconds=1.5, scale=0.5)
    rng = np.random.default_rng(0)
    sf.write(quiet, (0.01 * rng.standard_normal((RATE * 3 // 2, 2))).astype(np.float32), RATE)
    alone = {}
    for path in (loud, quiet):
        separator.separate_file(path, tmp_path / "alone", overwrite=True)
        alone[path] = separator.residual_db()
    assert alone[loud] != pytest.approx(
        alone[quiet], abs=0.5
    )  # two songs that differ, or the test proves nothing
    together, start = {}, threading.Barrier(2)

    def run(path):
        start.wait()
        together[path] = separator.separate_file(path, tmp_path / "together", overwrite=True).residual_db

    threads = [threading.Thread(target=run, args=(path,)) for path in (loud, quiet)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == {path: pytest.approx(db, abs=1e-6) for path, db in alone.items()}


# --- the command line goes through the same request ------------------------------------------------


def test_the_command_line_plans_once_with_the_loaded_model_stems(stub_checkpoint, tmp_path):
    song(tmp_path / "a.wav")
    result = cli(tmp_path / "a.wav", "-m", stub_checkpoint, "-o", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == FOUR_STEMS
