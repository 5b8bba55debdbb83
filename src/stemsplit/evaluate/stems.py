"""Which of a model's stems are scored against which of a test set's.

Each stem the model and the test set both have is scored,
with one exception. MUSDB18's ``other`` is everything that is not drums, bass or vocals, so it
holds the guitar and piano that htdemucs_6s gives apart, and that model's own other lacks them:
scored alone against MUSDB's other it would be marked down for what its guitar and piano stems
got right. So when the model's other is the rest of the song
(:func:`stemsplit.card.other_is_the_rest`) and either side has stems the other lacks, ``other``
is scored as the rest of the song on both sides: the model's other plus its stems the test set
lacks (htdemucs_6s on MUSDB18-HQ: other + guitar + piano), against the test set's other plus
its stems the model lacks (a 4-stem model on a 6-stem test set: other + guitar + piano). The
figures then compare with those of any model on the same test set (``benchmarks/compare_evals.py``),
and the report says what was summed (``settings.other_scored_as``). Otherwise a stem only one
side has is not scored, and the report says so (``settings.not_scored``); both go in its
``notes`` and under the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..card import OTHER, other_is_the_rest

__all__ = ["StemMatch", "match_stems", "separator_other_is_the_rest"]


@dataclass(frozen=True)
class StemMatch:
    """How a model's stems are scored against a test set's (see :func:`match_stems`).

    scored: the stems scored, in the model's order.
    estimate, reference: scored stem -> the model's / the test set's stems summed for it (the stem
        alone, but for ``other`` scored as the rest of the song).
    unscored_model, unscored_test: the stems of either side that go into no score.
    """

    scored: tuple[str, ...]
    estimate: dict[str, tuple[str, ...]]
    reference: dict[str, tuple[str, ...]]
    unscored_model: tuple[str, ...] = ()
    unscored_test: tuple[str, ...] = ()

    def summed(self) -> dict[str, dict[str, list[str]]]:
        """The scored stems that are sums of stems: {stem: {"model": [...], "test_set": [...]}}."""
        return {
            stem: {"model": list(self.estimate[stem]), "test_set": list(self.reference[stem])}
            for stem in self.scored
            if (self.estimate[stem], self.reference[stem]) != ((stem,), (stem,))
        }

    def notes(self) -> list[str]:
        """One line for each way the scores differ from "each stem against the same stem"."""
        lines = [
            f"{stem} is scored as the rest of the song: the model's {' + '.join(self.estimate[stem])} "
            f"against the test set's {' + '.join(self.reference[stem])}"
            for stem in self.summed()
        ]
        for whose, stems, why in (
            ("the model's", self.unscored_model, "the test set has no such stem"),
            ("the test set's", self.unscored_test, "the model gives no such stem"),
        ):
            if stems:
                lines.append(f"not scored: {whose} {', '.join(stems)} ({why})")
        return lines


def match_stems(model: Sequence[str], test_set: Sequence[str], rest: bool) -> StemMatch:
    """What to score when a model of stems ``model`` separates a test set of stems ``test_set``.

    Each stem both have is scored against itself. When ``rest`` (the model's ``other`` is the rest
    of the song: :func:`stemsplit.card.other_is_the_rest`) and both have ``other``, the stems only
    one side has go into ``other`` on that side: 6 stems on MUSDB18-HQ score the model's
    other + guitar + piano against MUSDB's other (the module says why). Otherwise they are not scored.
    """
    common = tuple(s for s in model if s in test_set)
    model_only = tuple(s for s in model if s not in test_set)
    test_only = tuple(s for s in test_set if s not in model)
    estimate: dict[str, tuple[str, ...]] = {s: (s,) for s in common}
    reference: dict[str, tuple[str, ...]] = {s: (s,) for s in common}
    if rest and OTHER in common:
        estimate[OTHER] += model_only
        reference[OTHER] += test_only
        model_only = test_only = ()
    return StemMatch(common, estimate, reference, model_only, test_only)


def separator_other_is_the_rest(separator: Any) -> bool:
    """Whether the ``other`` of a Separator (or an ensemble: of each member that gives one) is the rest
    of the song (:func:`stemsplit.card.other_is_the_rest`); a stand-in without a card is read by its
    stems."""
    givers = [m for m in getattr(separator, "members", [separator]) if OTHER in m.stems]
    return bool(givers) and all(
        other_is_the_rest(m.stems, getattr(getattr(m, "card", None), "rest_stem", None)) for m in givers
    )
