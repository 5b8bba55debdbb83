"""Random English sentences from a small built-in grammar: what the synthetic talkers of
``stemsplit synth-speech`` (:mod:`stemsplit.datasets.speech_synth`) read aloud."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pick", "sentence"]


_DETERMINERS = ("the", "a", "my", "your", "our", "that", "this", "every", "one", "some")
_ADJECTIVES = (
    "old", "young", "quiet", "bright", "small", "heavy", "yellow", "green", "strange", "careful",
    "silver", "wooden", "happy", "tired", "clever", "distant", "warm", "cold", "busy", "gentle",
    "broken", "famous", "narrow", "empty", "purple",
)  # fmt: skip
_NOUNS = (
    "teacher", "garden", "river", "window", "doctor", "table", "mountain", "letter", "train",
    "farmer", "kitchen", "painter", "island", "bottle", "village", "engine", "student", "market",
    "forest", "lamp", "neighbour", "bridge", "piano", "pilot", "blanket", "harbour", "baker",
    "station", "candle", "monkey", "library", "captain", "pencil", "orchard", "castle", "sailor",
    "basket", "tower", "rabbit", "ladder",
)  # fmt: skip
_VERBS = (
    "found", "carried", "painted", "opened", "watched", "remembered", "followed", "cleaned",
    "visited", "answered", "borrowed", "described", "noticed", "repaired", "counted", "ignored",
    "admired", "delivered", "covered", "measured",
)  # fmt: skip
_INTRANSITIVE = ("waited", "laughed", "arrived", "slept", "travelled", "whispered", "disappeared", "listened")
_ADVERBS = ("slowly", "quietly", "again", "yesterday", "at last", "twice", "early", "suddenly", "today")
_PREPOSITIONS = ("near", "behind", "under", "beside", "across", "inside", "above", "beyond", "past")
_NAMES = ("Anna", "Peter", "Maria", "John", "Clara", "David", "Lucy", "Thomas", "Emma", "Oliver")
_NUMBERS = ("two", "three", "four", "five", "seven", "ten", "twelve", "twenty", "forty", "a hundred")


def pick(rng: np.random.Generator, words: Sequence[str]) -> str:
    """One of ``words``, drawn uniformly."""
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.15:
        return pick(rng, _NAMES)
    if kind < 0.25:
        return f"{pick(rng, _NUMBERS)} {pick(rng, _NOUNS)}s"
    words = [pick(rng, _ADJECTIVES)] if rng.random() < 0.5 else []
    words.append(pick(rng, _NOUNS))
    determiner = pick(rng, _DETERMINERS)
    if determiner == "a" and words[0][0] in "aeiou":
        determiner = "an"
    return " ".join([determiner, *words])


def sentence(rng: np.random.Generator) -> str:
    """One random English sentence (8 templates over a few hundred words), capitalised and punctuated."""
    template = int(rng.integers(8))
    subject, thing, place = _noun_phrase(rng), _noun_phrase(rng), _noun_phrase(rng)
    verb, adverb, preposition = pick(rng, _VERBS), pick(rng, _ADVERBS), pick(rng, _PREPOSITIONS)
    text, end = {
        0: (f"{subject} {verb} {thing}", "."),
        1: (f"{subject} {verb} {thing} {preposition} {place}", "."),
        2: (f"{subject} {pick(rng, _INTRANSITIVE)} {adverb}", "."),
        3: (f"why did {subject} leave {thing} {preposition} {place}", "?"),
        4: (f"{adverb} {subject} {verb} {thing}, and then {pick(rng, _INTRANSITIVE)}", "."),
        5: (f"have you seen {thing} {preposition} {place}", "?"),
        6: (f"I think {subject} {verb} {thing} {adverb}", "."),
        7: (f"look, {subject} {pick(rng, _INTRANSITIVE)} {preposition} {place}", "!"),
    }[template]
    return text[0].upper() + text[1:] + end
