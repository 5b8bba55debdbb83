"""Which stems eval scores against which (``evaluate.stems.match_stems``): a model and a test set of
different stem sets (htdemucs_6s on MUSDB's four, a 4-stem model on a 6-stem set, a vocals model) are
lined up by scoring other as the rest of the song, and the report names what was not scored.

A stand-in separator whose stems are fixed fractions of the mixture gives exact numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RATE

from stemsplit.card import MUSIC_STEMS, SIX_STEMS
from stemsplit.evaluate.metrics import usdr
from stemsplit.evaluate.scoring import evaluate_tracks
from stemsplit.evaluate.stems import match_stems


@pytest.mark.parametrize(
    ("model", "test_set", "rest", "estimate", "reference", "model_only", "test_only"),
    [
        (SIX_STEMS, MUSIC_STEMS, True, ("other", "guitar", "piano"), ("other",), (), ()),
        (MUSIC_STEMS, SIX_STEMS, True, ("other",), ("other", "guitar", "piano"), (), ()),
        (("vocals", "other"), MUSIC_STEMS, True, ("other",), ("other", "drums", "bass"), (), ()),
        (("other",), MUSIC_STEMS, False, ("other",), ("other",), (), ("drums", "bass", "vocals")),
        (("vocals", "piano"), MUSIC_STEMS, False, None, None, ("piano",), ("drums", "bass", "other")),
    ],
)
def test_which_stems_are_scored(model, test_set, rest, estimate, reference, model_only, test_only):
    match = match_stems(model, test_set, rest)
    assert match.scored == tuple(s for s in model if s in test_set)
    if estimate is not None:
        assert (match.estimate["other"], match.reference["other"]) == (estimate, reference)
    assert (match.unscored_model, match.unscored_test) == (model_only, test_only)


class Fractions:
    """A stand-in separator: stem k is ``fractions[k]`` x the mixture (exact numbers, no model)."""

    name, sample_rate, stage, precision, device = "fractions", RATE, 1, "fp32", "cpu"
    window = hop = RATE

    def __init__(self, stems, fractions):
        self.stems, self.fractions = tuple(stems), fractions

    def separate(self, mixture, rate):
        return {s: f * mixture for s, f in zip(self.stems, self.fractions, strict=True)}


class Track:
    def __init__(self, stems: dict[str, np.ndarray]):
        self.name, self.sample_rate, self.parts, self.stems = "song", RATE, stems, tuple(stems)

    def read(self, stem):
        return self.parts[stem]

    def read_mixture(self):
        return sum(self.parts.values())


def test_a_six_stem_model_on_a_four_stem_test_set_scores_other_as_the_rest():
    rng = np.random.default_rng(0)
    four = {s: rng.standard_normal((2, 4000)).astype(np.float32) for s in MUSIC_STEMS}
    six = Fractions(SIX_STEMS, [0.3, 0.2, 0.1, 0.2, 0.1, 0.1])
    report = evaluate_tracks(six, [Track(four)], compute_csdr=False)
    mixture = sum(four.values())
    assert report.stems == MUSIC_STEMS
    assert report.tracks[0].usdr["other"] == pytest.approx(usdr(four["other"], 0.3 * mixture), abs=1e-5)
    assert report.tracks[0].usdr["drums"] == pytest.approx(usdr(four["drums"], 0.3 * mixture), abs=1e-5)
    assert report.settings["other_scored_as"] == {
        "other": {"model": ["other", "guitar", "piano"], "test_set": ["other"]}
    }
    assert report.notes == [
        "other is scored as the rest of the song: the model's other + guitar + piano against the test "
        "set's other"
    ]

    # a 4-stem model on a 6-stem test set: the reference is summed instead
    six_set = {**four, "guitar": 0.5 * four["other"], "piano": 0.5 * four["bass"]}
    report = evaluate_tracks(
        Fractions(MUSIC_STEMS, [0.1, 0.2, 0.3, 0.4]), [Track(six_set)], compute_csdr=False
    )
    rest = six_set["other"] + six_set["guitar"] + six_set["piano"]
    expected = usdr(rest, 0.3 * sum(six_set.values()))
    assert report.stems == MUSIC_STEMS and report.tracks[0].usdr["other"] == pytest.approx(expected, abs=1e-5)

    # a vocals-only model: the stems it lacks are not scored, and the report says so
    report = evaluate_tracks(Fractions(["vocals"], [0.5]), [Track(six_set)], compute_csdr=False)
    assert report.stems == ("vocals",)
    assert report.settings["not_scored"] == {"model": [], "test_set": [*MUSIC_STEMS[:3], "guitar", "piano"]}
    assert report.notes == [
        "not scored: the test set's drums, bass, other, guitar, piano (the model gives no such stem)"
    ]
