"""What a model tells the engine about itself: its card. Importable without torch.

Every network stemsplit runs carries a :class:`ModelCard` as ``model.card``
(Demucs' ``model.sources`` / ``model.samplerate`` are the example): the stem
names in output order, the sample rate it works at, how its input is
normalised, the window and hop it was made for. The separation engine reads
these from the model, never from a global, so a second family (BSRNN) or a
checkpoint with other stems needs no change to the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_HOP",
    "DEFAULT_WINDOW",
    "LIGHT_HOP",
    "MUSIC_STEMS",
    "NORMALIZATIONS",
    "OTHER",
    "SIX_STEMS",
    "SPEAKER_STEMS",
    "TASKS",
    "ModelCard",
    "card_of",
    "default_stem_names",
    "other_is_the_rest",
    "stem_name_problem",
]

# The four stems of MUSDB18 in the order the published TS-BSMamba2 checkpoints use;
# the training data, the synthesiser and checkpoints without stem names default to them.
MUSIC_STEMS: tuple[str, ...] = ("drums", "bass", "other", "vocals")
# htdemucs_6s' sources in its output order: MUSDB18's four, then guitar and piano (MSST's
# config_htdemucs_6stems.yaml and demucs.cpp name them so; a Demucs file's kwargs["sources"] decides).
SIX_STEMS: tuple[str, ...] = (*MUSIC_STEMS, "guitar", "piano")

# MUSDB18's catch-all stem: everything that is not drums, bass or vocals (guitar and piano included).
OTHER = "other"

# The outputs of a two-talker speech model (U-Mamba-Net), and what `stemsplit speakers` names its files.
SPEAKER_STEMS: tuple[str, ...] = ("speaker1", "speaker2")

# A stem's name becomes a file name (vocals.wav) and a word of a comma-separated --stems list.
MAX_STEM_NAME = 64


def stem_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a stem's name (one line), or None."""
    if (
        0 < len(name) <= MAX_STEM_NAME
        and name.isprintable()  # no newline, no escape sequence, no undecodable byte
        and not {"/", "\\", ","} & set(name)  # no subfolder, no second stem
        and name == name.strip()
        and not name.startswith(".")  # no hidden file, no '..'
    ):
        return None
    rule = f"1-{MAX_STEM_NAME} printable characters, no '/', '\\' or ',', no leading '.' or space"
    return f"{name!r} is not a stem name ({rule})"


# "none": the model sees raw audio; "meanstd": the mono mix's whole-song mean and std are
# taken out before the windows and put back after (see separate.song_stats).
NORMALIZATIONS = ("none", "meanstd")


# What a network separates: "music" (stems of a song: ``stemsplit separate``) or "speakers" (the talkers
# of a recording: ``stemsplit speakers``). Each command refuses the other task's models.
TASKS = ("music", "speakers")

# The paper's chunked protocol (BSRNN IV-C, TS-BSMamba2 likewise): 3 s windows every 0.5 s.
DEFAULT_WINDOW, DEFAULT_HOP = 3.0, 0.5

# ``light`` without a light model: 3x fewer windows. BSRNN's Table II puts a 1.5 s hop
# about 0.1 dB below the 0.5 s one.
LIGHT_HOP = 1.5


def default_stem_names(count: int) -> tuple[str, ...]:
    """Names for a network's ``count`` outputs when nothing names them: MUSDB's four, htdemucs_6s' six,
    else source0, source1, ..."""
    known = {len(MUSIC_STEMS): MUSIC_STEMS, len(SIX_STEMS): SIX_STEMS}
    return known.get(count, tuple(f"source{i}" for i in range(count)))


def other_is_the_rest(stems: Sequence[str], rest_stem: str | None = None) -> bool:
    """Whether a model's ``other`` is the mixture minus its other stems, and so holds every instrument
    the model gives no stem of its own (what ensembles and ``eval`` need to line up models and test
    sets of different stem sets).

    True when ``other`` is its rest stem (a vocals RoFormer's: the mixture minus vocals), or when its
    stems include MUSDB's four: a model that splits the whole song (a 4-stem model's other holds
    guitar and piano; htdemucs_6s' other does not, it has stems of their own). Not for a network of
    the one target ``other`` (a BSRNN's): that is MUSDB's other, whatever it was trained beside.
    """
    return OTHER in stems and (rest_stem == OTHER or set(MUSIC_STEMS) <= set(stems))


@dataclass(frozen=True)
class ModelCard:
    """A network's facts, as the engine needs them.

    architecture: family name in the architecture registry (``ts-bsmamba2``, ``bsrnn``).
    stems: output names, in the order of the network's stem axis.
    sample_rate: Hz the network works at; the engine resamples to and from it.
    min_samples: the shortest window the network accepts.
    max_samples: the longest window it accepts (HTDemucs: its training segment, which it pads
        shorter windows to), or None for any length.
    stages: how many outputs ``model(mixture)`` returns (TS-BSMamba2: 2, the last is final).
    stft: (n_fft, hop) of the network's spectrogram, used to share a residual exactly
        (a time-domain network, which has none, names the STFT to share it in).
    normalization: one of :data:`NORMALIZATIONS`.
    window, hop: recommended seconds per window and between windows (the paper's protocol).
    channels: channel count the network was trained on. 1: the engine averages the input's channels to
        mono before the network and its outputs are mono (speech); 2: mono and stereo go through as
        they are (the music families fold channels into the batch).
    task: one of :data:`TASKS`.
    permutation_invariant: the network's outputs come in no fixed order (it was trained with a
        permutation-invariant loss, as speaker separation is). The engine then lines up each
        window's outputs with the output so far before adding them (see
        :class:`stemsplit.separate.StreamingOverlapAdd`), so a talker stays in one file.
    cpu_bf16: bf16 autocast was measured faster than fp32 on CPUs with native bf16, within
        5e-3 of it (benchmarks/bench_model.py): then ``precision="auto"`` picks it there.
    rest_stem: the last stem, when the network does not estimate it: the mixture minus the
        others (a single-target RoFormer's ``other``, as MSST makes it); None when every
        stem is the network's own.
    """

    architecture: str
    stems: tuple[str, ...]
    sample_rate: int
    min_samples: int
    stft: tuple[int, int]
    stages: int = 1
    normalization: str = "none"
    window: float = DEFAULT_WINDOW
    hop: float = DEFAULT_HOP
    channels: int = 2
    task: str = "music"
    permutation_invariant: bool = False
    cpu_bf16: bool = False
    rest_stem: str | None = None
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if not self.stems or len(set(self.stems)) != len(self.stems):
            raise ValueError(f"stems must be distinct names, got {self.stems!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}")
        if self.rest_stem is not None and self.rest_stem != self.stems[-1]:
            raise ValueError(f"rest_stem {self.rest_stem!r} must be the last stem, {self.stems[-1]!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")


def card_of(model: nn.Module) -> ModelCard:
    """``model.card``: every network stemsplit builds or loads carries one. (To a type checker an
    ``nn.Module``'s attributes are tensors or modules; this says what the card is, and checks it.)"""
    card = model.card
    assert isinstance(card, ModelCard), f"{type(model).__name__}.card is a {type(card).__name__}"
    return card
