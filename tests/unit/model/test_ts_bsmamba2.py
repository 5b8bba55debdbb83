"""TS-BSMamba2: numbers of the reference implementation, checkpoint layout, shapes."""

from pathlib import Path

import pytest
import torch
from helpers import FIXTURES, rel_l2, tiny_model

from stemsplit.model import (
    PRESETS,
    StateDictMismatch,
    TSBSMamba2,
    TSBSMamba2Config,
    config_from_state_dict,
)
from stemsplit.model.layers.bands import band_widths


def read_tsv(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


def layout(model) -> list[tuple[str, str, str]]:
    return [(k, str(tuple(v.shape)), str(v.dtype)) for k, v in model.state_dict().items()]


# --- golden ------------------------------------------------------------------------------


def test_golden_outputs_match_reference(golden, golden_model):
    io = golden["io"]
    with torch.no_grad():
        stage1, stage2 = golden_model(io["mixture"])
    assert stage1.shape == io["stage1"].shape == (2, 4, 2, 44100)
    assert rel_l2(stage1, io["stage1"]) < 1e-5
    assert rel_l2(stage2, io["stage2"]) < 1e-5


def test_golden_config_is_inferred(golden, golden_model):
    assert golden_model.config == TSBSMamba2Config(**golden["config"])
    assert sum(p.numel() for p in golden_model.parameters()) == 2_651_496


def test_stage1_stems_sum_to_mixture(golden, golden_model):
    mixture = golden["io"]["mixture"]
    with torch.no_grad():
        stage1, stage2 = golden_model(mixture)
    assert rel_l2(stage1.sum(dim=1), mixture) < 1e-6
    # Stage 2 adds a residual that is not constrained to sum to zero.
    assert rel_l2(stage2.sum(dim=1), mixture) > 1e-3


def test_grouped_band_modules_equal_per_band_loop(golden, golden_model):
    spec = golden_model._stft(golden["io"]["mixture"].reshape(4, -1))
    for split in (golden_model.BN_mask, golden_model.BN_map):
        torch.testing.assert_close(split(spec), split.forward_per_band(spec), rtol=1e-5, atol=1e-5)
    features = torch.randn(4, 57, spec.shape[-1], 32)
    for merge in (golden_model.mask, golden_model.map):
        torch.testing.assert_close(merge(features), merge.forward_per_band(features), rtol=1e-5, atol=1e-5)


# --- checkpoint layout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "tsv", "params"),
    [("ts", "state_dict_ts.tsv", 35_517_480), ("l-ts", "state_dict_l_ts.tsv", 27_708_648)],
)
def test_state_dict_layout_matches_reference(preset, tsv, params):
    model = TSBSMamba2.from_preset(preset)
    assert layout(model) == read_tsv(FIXTURES / tsv)
    assert sum(p.numel() for p in model.parameters()) == params
    # And a state dict of that layout gives back the same architecture.
    assert config_from_state_dict(model.state_dict()) == PRESETS[preset]


def test_band_split_of_the_paper():
    widths = band_widths(44100, 2048)
    assert widths == [2] * 20 + [4] * 10 + [11] * 8 + [23] * 8 + [46] * 8 + [92] * 2 + [121]
    assert len(widths) == 57 and sum(widths) == 1025


def test_from_state_dict_accepts_wrapped_checkpoint(golden):
    model = TSBSMamba2.from_state_dict({"state_dict": golden["weights"]})
    assert model.config.feature_dim == 32


def test_mismatched_state_dict_lists_the_problems(golden):
    weights = dict(golden["weights"])
    del weights["in_conv.bias"]
    weights["extra.weight"] = torch.zeros(3)
    weights["map.3.5.bias"] = torch.zeros(7)
    with pytest.raises(StateDictMismatch) as err:
        TSBSMamba2.from_state_dict(weights)
    message = str(err.value)
    assert "1 missing: in_conv.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "map.3.5.bias (7,) (model: (32,))" in message


def test_not_a_tsbsmamba2_state_dict():
    with pytest.raises(StateDictMismatch, match="not a TS-BSMamba2 state dict"):
        config_from_state_dict({"encoder.weight": torch.zeros(2)})


def test_state_dict_of_other_sample_rate_is_refused(golden):
    with pytest.raises(StateDictMismatch, match="band widths"):
        config_from_state_dict(golden["weights"], sr=48000)


def test_num_output_is_inferred():
    model = tiny_model(stems=("vocals", "accompaniment"))
    assert config_from_state_dict(model.state_dict()).num_output == 2


# --- shapes and behaviour --------------------------------------------------------------------


@pytest.mark.parametrize("samples", [1025, 1500, 2048, 4096, 5000, 22050, 22051])
def test_output_length_equals_input_length(samples):
    model = tiny_model().eval()
    with torch.no_grad():
        stage1, stage2 = model(torch.randn(1, 2, samples))
    assert stage1.shape == stage2.shape == (1, 4, 2, samples)
    assert torch.isfinite(stage2).all()


def test_too_short_input_is_a_clear_error():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"1024 samples is too short.*at least 1025"):
        model(torch.randn(1, 2, 1024))
    with pytest.raises(ValueError, match=r"\[batch, channels, samples\]"):
        model(torch.randn(2, 4000))


def test_batch_item_alone_equals_batched(golden_model):
    torch.manual_seed(1)
    batch = torch.randn(3, 2, 9000) * 0.2
    with torch.no_grad():
        together = golden_model(batch)
        alone = golden_model(batch[1:2])
    for t, a in zip(together, alone, strict=True):
        torch.testing.assert_close(a, t[1:2], rtol=1e-4, atol=1e-6)


def test_mono_equals_dual_mono(golden_model):
    mono = torch.randn(1, 1, 6000) * 0.3
    with torch.no_grad():
        out_mono = golden_model(mono)
        out_dual = golden_model(mono.expand(1, 2, 6000).contiguous())
    for m, d in zip(out_mono, out_dual, strict=True):
        torch.testing.assert_close(m[:, :, 0], d[:, :, 0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(d[:, :, 0], d[:, :, 1], rtol=1e-4, atol=1e-6)


def test_float64_agrees_with_float32(golden, golden_model):
    mixture = golden["io"]["mixture"][:1, :, :8000]
    with torch.no_grad():
        single = golden_model(mixture)[1]
        double = golden_model.double()(mixture.double())[1]
    golden_model.float()
    assert double.dtype == torch.float64
    assert rel_l2(single.double(), double) < 1e-5


def test_gradients_reach_every_parameter():
    model = tiny_model()
    mixture = torch.randn(2, 2, 4096) * 0.1
    stage1, stage2 = model(mixture)
    (stage1.abs().mean() + stage2.abs().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'xl'"):
        TSBSMamba2.from_preset("xl")


def test_portable_path_compiles_as_one_graph():
    """torch.compile(fullgraph=True) needs the portable path free of graph breaks (issue 13): a CUDA user
    without mamba-ssm gets inductor's fused kernels; on the CPU the oneDNN calls step aside while tracing."""
    model = TSBSMamba2(feature_dim=16, num_repeat_mask=1, num_repeat_map=1).eval()
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(torch.randn(1, 2, 22050))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
