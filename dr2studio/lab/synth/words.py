"""A small English lexicon with known syllables, and a template grammar that makes singable lines.

Words are stored hyphenated by syllable ("to-night"), so the melody can give each syllable one note,
and each syllable carries the vowel the lead voice sings (one of ``a e i o u``) and its onset
consonant class (for the short noise burst that makes the voice sound syllabic).
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Syllable", "LyricLine", "VOWELS", "LEXICON", "make_line"]

VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u")

LEXICON: dict[str, tuple[str, ...]] = {
    "PRON": ("I", "you", "we", "they"),
    "DET": ("the", "a", "your", "my", "our", "this"),
    "AUX": ("will", "can", "nev-er", "al-ways", "still"),
    "VERB": (
        "run", "fall", "hold", "find", "chase", "dance", "sing", "call", "feel", "see", "keep",
        "break", "light", "dream", "wait", "shine", "fly", "fol-low", "car-ry", "wan-der", "re-mem-ber",
        "o-pen", "lis-ten", "hur-ry", "sur-ren-der", "dis-cov-er", "fade", "burn", "climb", "reach",
    ),
    "PREP": ("in-to", "through", "un-der", "a-cross", "by", "with", "o-ver", "be-yond", "to-ward", "on"),
    "ADJ": (
        "gold-en", "sil-ver", "qui-et", "bro-ken", "emp-ty", "end-less", "bright", "cold", "warm",
        "wild", "hol-low", "gen-tle", "lone-ly", "shin-ing", "dis-tant", "old", "new", "blue",
        "beau-ti-ful", "mid-night",
    ),
    "NOUN": (
        "night", "light", "sky", "heart", "road", "rain", "fire", "moon", "sea", "star", "dream",
        "home", "door", "wind", "sun", "riv-er", "mo-ment", "sha-dow", "cit-y", "sum-mer",
        "win-ter", "morn-ing", "o-cean", "wa-ter", "mem-o-ry", "hor-i-zon", "mel-o-dy", "sto-ry",
        "win-dow", "gar-den",
    ),
    "ADV": ("to-night", "a-gain", "a-way", "for-ev-er", "a-lone", "to-geth-er", "now", "slow-ly", "home"),
    "INTJ": ("oh", "hey", "yeah"),
}

_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("PRON", "VERB", "PREP", "DET", "NOUN"),
    ("PRON", "VERB", "DET", "ADJ", "NOUN"),
    ("PREP", "DET", "ADJ", "NOUN"),
    ("PRON", "VERB", "ADV"),
    ("PRON", "VERB", "PREP", "DET", "NOUN", "ADV"),
    ("INTJ", "PRON", "VERB", "ADV"),
    ("PRON", "AUX", "VERB", "DET", "NOUN"),
    ("DET", "ADJ", "NOUN", "ADV"),
    ("INTJ", "DET", "ADJ", "NOUN"),
)

_FRICATIVES = set("sfhvz")
_PLOSIVES = set("ptkbdgcjq")
_VOWEL_LETTERS = "aeiouy"


@dataclasses.dataclass(frozen=True)
class Syllable:
    """One sung syllable: its spelling, the vowel to sing, and the onset consonant class."""

    text: str
    vowel: str  # one of VOWELS
    onset: str  # "fricative", "plosive", "sonorant" or "none"


@dataclasses.dataclass(frozen=True)
class LyricLine:
    """A line of lyrics and its syllables, in order."""

    text: str
    syllables: tuple[Syllable, ...]


def _syllable(part: str) -> Syllable:
    low = part.lower()
    vowel = "a"
    for ch in low:
        if ch in _VOWEL_LETTERS:
            vowel = {"y": "i"}.get(ch, ch)
            break
    for digraph, v in (("ee", "i"), ("ea", "i"), ("oo", "u"), ("ou", "a"), ("ow", "o"), ("ai", "e"), ("igh", "a")):
        if digraph in low:
            vowel = v
            break
    first = low[0]
    if low.startswith(("sh", "th", "ch")) or first in _FRICATIVES:
        onset = "fricative"
    elif first in _PLOSIVES:
        onset = "plosive"
    elif first in _VOWEL_LETTERS:
        onset = "none"
    else:
        onset = "sonorant"
    return Syllable(part, vowel, onset)


def _word(entry: str) -> tuple[str, list[Syllable]]:
    parts = entry.split("-")
    return "".join(parts), [_syllable(p) for p in parts]


def make_line(rng: np.random.Generator, min_syllables: int = 3, max_syllables: int = 8) -> LyricLine:
    """A grammatical-looking line from a random template with ``min..max`` syllables.

    Draws until the syllable count fits (the templates span 3..11 syllables, so a few draws suffice).
    """
    if not 1 <= min_syllables <= max_syllables:
        raise ValueError(f"need 1 <= min_syllables <= max_syllables, got {min_syllables}, {max_syllables}")
    for _ in range(200):
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        words: list[str] = []
        syllables: list[Syllable] = []
        for slot in template:
            choices = LEXICON[slot]
            text, syl = _word(choices[rng.integers(len(choices))])
            words.append(text)
            syllables.extend(syl)
        if min_syllables <= len(syllables) <= max_syllables:
            words = [("an" if w == "a" and nxt[0] in "aeiou" else w) for w, nxt in zip(words, words[1:] + ["x"])]
            line = " ".join(words)
            return LyricLine(line[0].upper() + line[1:], tuple(syllables))
    raise RuntimeError(f"no template gives {min_syllables}..{max_syllables} syllables")
