"""The separation engine: windowing, overlap-add, streaming, stems on disk."""

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import RATE, StubConfig, StubNet, music, rel_l2

from stemsplit.output import OutputExistsError
from stemsplit.separate import (
    Separator,
    StreamingOverlapAdd,
    share_residual,
    song_stats,
    window_count,
)


def identity_stems(windows: torch.Tensor) -> torch.Tensor:
    """A fake two-source 'model': the window and its negative."""
    return torch.stack([windows, -windows], dim=1)


@pytest.mark.parametrize(
    "samples", [1, 100, 1025, 22050, 132300, 132301, 7 * 22050, 7 * 22050 + 13, 10 * RATE + 1]
)
@pytest.mark.parametrize(("batch_size", "block"), [(1, 10**9), (3, 5000), (8, RATE)])
def test_identity_model_gives_back_the_input(samples, batch_size, block):
    x = torch.randn(2, samples, generator=torch.Generator().manual_seed(samples))
    ola = StreamingOverlapAdd(identity_stems, window=3 * RATE, hop=RATE // 2, batch_size=batch_size)
    parts = [p for i in range(0, samples, block) for p in ola.push(x[:, i : i + block])]
    parts += list(ola.finish())
    y = torch.cat(parts, dim=-1)
    assert y.shape == (2, 2, samples)
    assert (y[0] - x).abs().max() <= 1e-6
    assert ola.windows_done == window_count(samples, 3 * RATE, RATE // 2)


def test_output_is_handed_back_while_streaming():
    """Finished audio comes out before the input ends, so memory stays bounded."""
    ola = StreamingOverlapAdd(identity_stems, window=RATE, hop=RATE // 4, batch_size=2)
    emitted = 0
    for _ in range(20):
        emitted += sum(p.shape[-1] for p in ola.push(torch.randn(1, RATE)))
        assert ola._input.shape[1] <= 3 * RATE  # the input buffer does not grow with the song
    assert emitted >= 18 * RATE


def test_window_count_follows_the_papers_padding():
    # 3 s windows every 0.5 s, window - hop of zeros on both sides: each sample is seen 6 times.
    assert window_count(10 * RATE, 3 * RATE, RATE // 2) == 25
    assert window_count(1, 3 * RATE, RATE // 2) == 6


@pytest.fixture(scope="module")
def separator_stage1(golden_model):
    return Separator(golden_model, stage=1, window=1.0, hop=0.5)


def stub_separator(**settings) -> Separator:
    """The engine around helpers.StubNet (a real ModelCard, the four music stems, stage 1 summing to the
    mixture, stage 2 not): the plumbing tests below check files, names, formats and streaming, which
    any network proves as well as the reference one does, at no cost."""
    return Separator(StubNet(StubConfig()).eval(), **{"stage": 1, "window": 1.0, "hop": 0.5} | settings)


def test_stage1_stems_sum_to_the_mixture_after_overlap_add(separator_stage1):
    mix = music(2.3).T
    stems = separator_stage1.separate(mix, RATE)
    assert list(stems) == ["drums", "bass", "other", "vocals"]
    total = sum(stems.values())
    assert total.shape == mix.shape
    assert rel_l2(torch.from_numpy(total), torch.from_numpy(mix)) < 1e-5


def test_other_sample_rates_come_back_at_their_rate(separator_stage1):
    t = np.arange(int(1.5 * 22050)) / 22050
    mix = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)[None]
    stems = separator_stage1.separate(mix, 22050)
    assert stems["vocals"].shape == mix.shape
    # Band-limited input: the round trip through 44.1 kHz keeps the stem sum close to the mix.
    assert rel_l2(torch.from_numpy(sum(stems.values())), torch.from_numpy(mix)) < 1e-2


def test_share_residual_makes_stems_sum_exactly_and_keeps_silence():
    torch.manual_seed(0)
    mix = torch.randn(1, 2, 8192)
    stems = torch.stack([mix * 0.5, mix * 0.3, torch.zeros_like(mix)], dim=1)  # sums to 0.8 mix
    fixed = share_residual(mix, stems)
    assert (fixed.sum(dim=1) - mix).abs().max() < 1e-5
    assert fixed[:, 2].abs().max() == 0  # the silent stem stays silent
    torch.testing.assert_close(fixed[:, 0] / 0.625, fixed[:, 1] / 0.375, atol=1e-4, rtol=1e-4)


def test_exact_stage2_stems_sum_to_the_input(golden_model):
    separator = Separator(golden_model, stage=2, exact=True, window=1.0, hop=0.5)
    mix = music(1.2).T
    stems = separator.separate(mix, RATE)
    assert np.abs(sum(stems.values()) - mix).max() < 1e-5


def test_separate_file_writes_stems(tmp_path):
    mix = music(1.7)
    sf.write(tmp_path / "my song.flac", mix, RATE, subtype="PCM_24")
    result = stub_separator().separate_file(tmp_path / "my song.flac", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "my song").iterdir()) == [
        "bass.wav",
        "drums.wav",
        "other.wav",
        "vocals.wav",
    ]
    read = {k: sf.read(p, always_2d=True) for k, p in result.outputs.items()}
    for audio, rate in read.values():
        assert rate == RATE and audio.shape == mix.shape
    assert sf.info(str(result.outputs["bass"])).subtype == "FLOAT"
    decoded_mix = sf.read(tmp_path / "my song.flac", always_2d=True)[0]
    assert np.abs(sum(a for a, _ in read.values()) - decoded_mix).max() < 1e-5


def test_two_stems_and_subsets(tmp_path):
    separator = stub_separator(stage=2)  # its stage 2 does not sum to the mixture: no_vocals is mix - vocals
    mix = music(1.2)
    sf.write(tmp_path / "a.wav", mix, RATE, subtype="FLOAT")
    result = separator.separate_file(tmp_path / "a.wav", tmp_path / "out", two_stems="vocals")
    assert set(result.outputs) == {"vocals", "no_vocals"}
    vocals, no_vocals = (sf.read(result.outputs[k])[0] for k in ("vocals", "no_vocals"))
    assert np.abs(vocals + no_vocals - mix).max() < 1e-5
    result = separator.separate_file(tmp_path / "a.wav", tmp_path / "subset", stems=["drums", "bass"])
    assert sorted(p.name for p in (tmp_path / "subset" / "a").iterdir()) == ["bass.wav", "drums.wav"]


def test_integer_output_is_rescaled_together(tmp_path):
    loud = music(1.2) * 8.0  # peaks well above full scale, in the stems too
    sf.write(tmp_path / "loud.wav", loud, RATE, subtype="FLOAT")
    result = stub_separator().separate_file(tmp_path / "loud.wav", tmp_path / "out", fmt="flac", bit_depth=16)
    assert result.rescaled_by < 1.0
    stems = [sf.read(p)[0] for p in result.outputs.values()]
    assert max(np.abs(s).max() for s in stems) <= 1.0
    assert sf.info(str(result.outputs["drums"])).subtype == "PCM_16"
    # One common factor: the stems still sum to the (scaled) mixture, within 16-bit rounding.
    assert np.abs(sum(stems) - loud * result.rescaled_by).max() < 4 * 2**-15


def test_existing_outputs_are_not_overwritten(tmp_path):
    separator = stub_separator()
    sf.write(tmp_path / "s.wav", music(1.1), RATE, subtype="FLOAT")
    out = tmp_path / "out" / "s"
    out.mkdir(parents=True)
    (out / "vocals.wav").write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists; not overwriting"):
        separator.separate_file(tmp_path / "s.wav", tmp_path / "out")
    assert (out / "vocals.wav").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["vocals.wav"]
    separator.separate_file(tmp_path / "s.wav", tmp_path / "out", overwrite=True)
    assert sf.info(str(out / "vocals.wav")).frames == int(1.1 * RATE)


def test_failure_mid_song_leaves_nothing(tmp_path):
    calls = []

    def explode(event):
        calls.append(event)
        if event["event"] == "windows" and event["done"] >= 2:
            raise KeyboardInterrupt

    separator = stub_separator(progress=explode)
    sf.write(tmp_path / "s.wav", music(3.0), RATE, subtype="FLOAT")
    with pytest.raises(KeyboardInterrupt):
        separator.separate_file(tmp_path / "s.wav", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no files, no temporaries, not even the folders it made


def test_song_stats_streaming_equals_whole_song():
    rng = np.random.default_rng(3)
    song_blocks = [rng.standard_normal((n, 2)).astype(np.float32) * 0.3 + 0.1 for n in (1000, 17, 5000)]
    mono = np.concatenate(song_blocks).mean(axis=1)
    mean, std = song_stats(iter(song_blocks))
    assert mean == pytest.approx(mono.mean(), rel=1e-6) and std == pytest.approx(mono.std(), rel=1e-6)
    assert song_stats([np.zeros((10, 2), np.float32)]) == (0.0, 1.0)  # silence: no division by zero


def test_meanstd_checkpoints_are_standardised_and_scaled_back(golden_model):
    seen = []
    hook = golden_model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        plain = Separator(golden_model, stage=1, window=1.0, hop=0.5)
        standardised = Separator(golden_model, stage=1, window=1.0, hop=0.5, normalization="meanstd")
        mix = music(1.2).T * 0.05 + 0.02
        plain.separate(mix, RATE)
        plain_inputs, seen[:] = torch.cat(seen, dim=-1), []
        stems = standardised.separate(mix, RATE)
        standard_inputs = torch.cat(seen, dim=-1)
    finally:
        hook.remove()
    assert plain_inputs.abs().max() < 0.1  # the raw song
    assert standard_inputs.abs().max() > 2  # the same song at unit standard deviation
    # Scaled back as Demucs and MSST do, each stem * std + mean: with this golden stage, which sums to its
    # input, the stems sum to the mixture plus the song's mean once more for each further stem.
    mean = mix.mean(axis=0, dtype=np.float64).mean()
    assert np.abs(sum(stems.values()) - (len(stems) - 1) * mean - mix).max() < 1e-5


def test_exact_reports_the_residual_level(tmp_path, golden_model):
    separator = Separator(golden_model, stage=2, exact=True, window=1.0, hop=0.5)
    sf.write(tmp_path / "a.wav", music(1.2), RATE, subtype="FLOAT")
    result = separator.separate_file(tmp_path / "a.wav", tmp_path / "out")
    assert result.residual_db is not None and -80 < result.residual_db < 20
    assert (
        Separator(golden_model, window=1.0, hop=0.5)
        .separate_file(tmp_path / "a.wav", tmp_path / "out2")
        .residual_db
        is None
    )


def test_file_pipeline_streams_output_before_reading_all_input():
    """Stems come out while the song is still being read: memory does not grow with the song."""
    separator = stub_separator()
    block, read = int(0.25 * RATE), []

    def blocks():
        for i in range(40):  # 10 s of song
            read.append(i)
            yield music(0.25)  # [frames, channels], as read_blocks gives them

    stream = separator._stream(blocks(), RATE, channels=2, frames=40 * block)
    first = next(stream)
    assert first.shape[0] == 4 and len(read) < 10
    total = first.shape[-1] + sum(part.shape[-1] for part in stream)
    assert total == 40 * block and len(read) == 40


def test_precision_auto_follows_the_cpu(golden_model):
    """auto: bf16 where the CPU computes it natively (within the issue's 5e-3 of fp32), else fp32."""
    from stemsplit.engine.runtime import cpu_auto_precision

    auto = Separator(golden_model, stage=2, window=1.0, hop=0.5, precision="auto", device="cpu")
    exact = Separator(golden_model, stage=2, window=1.0, hop=0.5, precision="fp32", device="cpu")
    assert auto.precision == cpu_auto_precision()[0]
    mix = music(1.2).T
    fast, reference = auto.separate(mix, RATE), exact.separate(mix, RATE)
    errors = [np.linalg.norm(fast[k] - reference[k]) / np.linalg.norm(reference[k]) for k in reference]
    assert max(errors) < (5e-3 if auto.precision == "bf16" else 1e-6)


def test_light_is_decided_by_the_engine(golden_model):
    """--light without a light model: the given network at a 1.5 s hop, unless a hop is asked for."""
    from stemsplit.card import LIGHT_HOP

    light = Separator(golden_model, light=True, device="cpu")
    assert light.hop == round(LIGHT_HOP * RATE) and "1.5 s hop" in light.light_note
    assert Separator(golden_model, light=True, window=1.0).hop == RATE  # never longer than the window
    asked = Separator(golden_model, light=True, hop=0.25)
    assert asked.hop == RATE // 4 and asked.light_note is None
    plain = Separator(golden_model)
    assert plain.hop == round(golden_model.card.hop * RATE) and plain.light_note is None


def test_precision_defaults_to_auto(golden_model):
    """No precision given: what ``auto`` picks (bf16 on CPUs with native bf16), in the API and the CLI."""
    from stemsplit.engine.runtime import cpu_auto_precision
    from stemsplit.model.families import build_model, family, make_config

    assert Separator(golden_model, device="cpu").precision == cpu_auto_precision()[0]
    # A family whose card says bf16 does not pay on the CPU (U-Mamba-Net's scan) stays in fp32.
    config = family("u-mamba-net").shrink(make_config("u-mamba-net", None, {}))
    speech = build_model("u-mamba-net", config, ("speaker1", "speaker2"))
    assert not speech.card.cpu_bf16 and Separator(speech, device="cpu").precision == "fp32"


@pytest.mark.slow  # inductor compiles C++ for the CPU: minutes on 2 cores
def test_compiled_network_compiles_once_and_agrees():
    """--compile: batches padded to one shape (silent windows are skipped: counts vary), one compilation."""
    from torch._dynamo.utils import counters

    from stemsplit.model import TSBSMamba2

    torch.manual_seed(0)
    model = TSBSMamba2(feature_dim=16, num_repeat_mask=1, num_repeat_map=1).eval()
    mix = music(4.0)
    mix[:, RATE : 3 * RATE] = 0  # digital silence: some batches have fewer audible windows
    events = []
    settings = {"window": 1.0, "hop": 0.5, "batch_size": 3, "precision": "fp32", "device": "cpu"}
    graphs = counters["stats"]["unique_graphs"]
    compiled = Separator(model, compile=True, progress=events.append, **settings).separate(mix, RATE)
    eager = Separator(model, **settings).separate(mix, RATE)
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert [e["event"] for e in events].count("compiled") == 1
    for name, stem in eager.items():
        assert np.abs(compiled[name] - stem).max() <= 1e-4 * np.abs(stem).max()


def test_window_pool_batches_songs_together_and_gives_each_its_own_stems():
    """Songs separated at once in threads (stemsplit batch --ray --songs-per-batch): their windows go
    through the network in shared calls, a mono song's never with a stereo song's, and each song gets the
    stems it gets alone (the stand-in network is per-sample, so exactly)."""
    import threading

    def separator() -> Separator:
        return Separator(StubNet(StubConfig()).eval(), window=1.0, hop=0.5, batch_size=2, device="cpu")

    songs = [music(2.0), music(1.3), music(3.1), music(1.7, channels=1)]
    alone = [separator().separate(audio.T, RATE) for audio in songs]

    pooled = separator()
    pool = pooled.pool_windows(len(songs))
    calls: list[tuple[int, ...]] = []
    pooled.model.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape)))
    results: list = [None] * len(songs)

    def run(k: int) -> None:
        with pool.song():
            results[k] = pooled.separate(songs[k].T, RATE)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(songs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, expected in zip(results, alone, strict=True):
        assert got.keys() == expected.keys()
        assert all(np.array_equal(got[stem], expected[stem]) for stem in got)
    assert max(shape[0] for shape in calls) > 2  # more windows per call than one song's batch
    assert max(shape[0] for shape in calls) <= 2 * len(songs)
    assert {shape[1] for shape in calls} == {1, 2}  # mono and stereo windows, never in one call


def test_window_pool_passes_the_network_error_to_every_song_in_the_call():
    from stemsplit.separate import WindowPool

    def broken(windows: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken network")

    pool = WindowPool(broken, max_windows=4)
    with pool.song(), pytest.raises(RuntimeError, match="broken network"):
        pool(torch.zeros(2, 2, 10))


def test_window_pool_takes_a_batch_around_windows_of_another_shape():
    """A stereo call between two mono ones: the batch is both mono calls, the stereo one waits. Before,
    taking the second mono call compared it with the stereo one as tensors (a dataclass's ==), which
    raised after the first was taken: that call was lost, and its song's thread waited for ever."""
    from stemsplit.engine.pool import WindowPool, _PooledCall

    pool = WindowPool(lambda windows: windows[:, None], max_windows=8)
    mono, stereo, mono_again = (_PooledCall(torch.ones(2, channels, 64)) for channels in (1, 2, 1))
    pool._waiting = [mono, stereo, mono_again]
    assert pool._take() == [mono, mono_again] and pool._waiting == [stereo]
    pool._run([mono, mono_again])
    assert mono.finished and mono_again.finished and not stereo.finished
