"""English text -> the released model's phone string (``"h|ə|l|oʊ|_|w|ɜː|l|d"``).

The model was trained on espeak-ng 1.51 output as seen through phonemizer, after a tacotron-style number
and abbreviation expansion. Every step below reproduces that front end (spec §4.3), quirks included:
apostrophes split words (``don't`` -> ``d ɑː n ' t iː``), hyphens vanish (``twenty-four`` ->
``twentyfour``), nothing is lowercased. espeak-ng 1.52 changes some vowels (``oː|ɹ`` -> ``ɔːɹ``); a
warning is logged once when another version is found.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
from functools import lru_cache
from typing import Any

from dr2studio.lyrics._text import PUNCT, ascii_punct, finish_phones, tighten_punct
from dr2studio.lyrics.parse import LyricsError
from dr2studio.requests import MAX_LYRIC_TOKENS

__all__ = [
    "EspeakMissingError",
    "english_to_phones",
    "espeak_version",
    "normalize_english",
    "special_map",
]

log = logging.getLogger(__name__)

_REFERENCE_ESPEAK = "1.51"

_ABBREVIATIONS = [
    (re.compile(rf"\b{short}\b", re.IGNORECASE), long)
    for short, long in [
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
        ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
        ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
        ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"), ("etc", "et cetera"),
        ("btw", "by the way"),
    ]
]

# Number patterns match what the released front end's did, in linear time: a digit run is entered only at
# its start (``(?<![0-9])``) and taken whole (possessive ``++``), so a long run of digits is scanned once
# instead of once per position (``[0-9.,]*[0-9]+%`` took 19 s on 4,000 digits).
_COMMA_NUMBER_RE = re.compile(r"([0-9][0-9,]+[0-9])")
_POUNDS_RE = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS_RE = re.compile(r"\$([0-9.,]*[0-9]+)")
_FRACTION_RE = re.compile(r"(?<![0-9])([0-9]++)/([0-9]++)")
_DECIMAL_RE = re.compile(r"(?<![0-9])([0-9]++\.[0-9]++)")
_PERCENT_RE = re.compile(r"(?<![0-9.,])([0-9.,]*+(?<=[0-9])%)")
_ORDINAL_RE = re.compile(r"(?<![0-9])[0-9]++(st|nd|rd|th)")
_NUMBER_RE = re.compile(r"[0-9]+")

# Text clean-up of the phonemizer front end.
_DROP_RE = re.compile(r"[^\w\s_,.?!;:'…]")
_SPACES_RE = re.compile(r"\s+")

# A trailing word separator is added when the phone string ends in one of these characters.
_TRAILING_SEP_CHARS = set("p⁼ʰmftnlkxʃs`ɹaoəɛɪeɑʊŋiuɥwæjː")

_SPECIAL_RULES = [("t|ɹ", "tɹ"), ("d|ɹ", "dɹ"), ("t|s", "ts"), ("d|z", "dz"), ("ɪ|ɹ", "ɪɹ"), ("ɐ", "ɚ"),
                  ("ᵻ", "ɪ"), ("əl", "l"), ("x", "k"), ("ɬ", "l"), ("ʔ", "t"), ("n̩", "n"), ("oː|ɹ", "oːɹ")]
_SPECIAL_RES = [
    (re.compile(r"(^|[_|])" + re.escape(src) + r"(?=[_|]|$)"), dst) for src, dst in _SPECIAL_RULES
]


class EspeakMissingError(RuntimeError):
    """phonemizer or the espeak-ng system library is not available."""


@lru_cache(maxsize=1)
def _inflect() -> Any:
    """inflect's engine, imported without typeguard's run-time instrumentation.

    inflect decorates its functions with ``typeguard.typechecked``, which re-compiles them at import and
    makes ``import inflect`` take seconds. The checks only guard argument types, which are always right
    here, so the decorator is swapped for the identity while inflect is first imported.
    """
    if "inflect" not in sys.modules:
        try:
            import typeguard
        except ImportError:
            typeguard = None
        original = getattr(typeguard, "typechecked", None)
        if typeguard is not None:
            typeguard.typechecked = _no_typecheck
        try:
            import inflect
        finally:
            if typeguard is not None:
                typeguard.typechecked = original
    import inflect

    return inflect.engine()


def _no_typecheck(target: Any = None, **_: Any) -> Any:
    return target if target is not None else (lambda f: f)


#: Longer digit runs are read digit by digit: inflect names numbers up to 10**36 only, and Python refuses
#: to convert more than 4300 digits to an int (both raised out of the lyrics front end before).
_MAX_SPOKEN_DIGITS = 30
#: The longest English segment handed to espeak (characters, after numbers are spelled out): four per token of
#: the song's token limit, so a segment beyond it could never be sung anyway.
_MAX_SPOKEN_CHARS = 4 * MAX_LYRIC_TOKENS
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _too_long(digits: str) -> bool:
    return sum(c.isdigit() for c in digits) > _MAX_SPOKEN_DIGITS


def _spell_digits(digits: str) -> str:
    return " ".join(_DIGIT_WORDS[int(c)] for c in digits if c in "0123456789")


def _words(n: int | str, **kw: Any) -> str:
    if isinstance(n, str) and _too_long(n):
        return _spell_digits(n)
    return _inflect().number_to_words(n, **kw)


def _dollars(m: re.Match[str]) -> str:
    match = m.group(1)
    parts = match.split(".")
    if len(parts) > 2 or _too_long(match):
        return f" {match} dollars "
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    d_unit = "dollar" if dollars == 1 else "dollars"
    c_unit = "cent" if cents == 1 else "cents"
    if dollars and cents:
        return f" {dollars} {d_unit}, {cents} {c_unit} "
    if dollars:
        return f" {dollars} {d_unit} "
    if cents:
        return f" {cents} {c_unit} "
    return " zero dollars "


def _fraction(m: re.Match[str]) -> str:
    if _too_long(m.group(1)) or _too_long(m.group(2)):
        return f" {_spell_digits(m.group(1))} over {_spell_digits(m.group(2))} "
    num, den = int(m.group(1)), int(m.group(2))
    if den == 2:
        return " one half " if num == 1 else f" {_words(num)} halves "
    if den == 4:
        return " one quarter " if num == 1 else f" {_words(num)} quarters "
    return f" {_words(num)} {_inflect().ordinal(_words(den))} "


def _number(m: re.Match[str]) -> str:
    if _too_long(m.group(0)):
        return f" {_spell_digits(m.group(0))} "
    num = int(m.group(0))
    if 1000 < num < 3000:
        if num == 2000:
            return " two thousand "
        if 2000 < num < 2010:
            return f" two thousand {_words(num % 100)} "
        if num % 100 == 0:
            return f" {_words(num // 100)} hundred "
        return " " + _words(num, andword="", zero="oh", group=2).replace(", ", " ") + " "
    return f" {_words(num, andword='')} "


def normalize_english(text: str) -> str:
    """Abbreviations and numbers spelled out, as the released front end does before phonemizing."""
    for regex, long in _ABBREVIATIONS:
        text = regex.sub(long, text)
    text = _COMMA_NUMBER_RE.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS_RE.sub(r"\1 pounds", text)
    text = _DOLLARS_RE.sub(_dollars, text)
    text = _FRACTION_RE.sub(_fraction, text)
    text = _DECIMAL_RE.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _PERCENT_RE.sub(lambda m: m.group(1).replace("%", " percent "), text)
    text = _ORDINAL_RE.sub(lambda m: f" {_words(m.group(0))} ", text)
    return _NUMBER_RE.sub(_number, text)


def _clean_for_espeak(text: str) -> str:
    text = _DROP_RE.sub("", ascii_punct(text.strip()))
    text = tighten_punct(text)
    return _SPACES_RE.sub(" ", text)


def special_map(phones: str) -> str:
    """Merge/rename whole phones (``t|ɹ`` -> ``tɹ``, ``ɐ`` -> ``ɚ`` ...) until nothing changes."""
    for regex, dst in _SPECIAL_RES:
        while True:
            new = regex.sub(lambda m: m.group(1) + dst, phones)
            if new == phones:
                break
            phones = new
    return phones


class _Espeak:
    """One phonemizer backend, configured like the released front end; calls are serialised."""

    def __init__(self) -> None:
        try:
            from phonemizer.backend import EspeakBackend
            from phonemizer.separator import Separator
        except ImportError as exc:
            raise EspeakMissingError(
                "English lyrics need phonemizer: pip install 'dr2studio[g2p]' "
                "(and the espeak-ng system package: apt-get install espeak-ng)"
            ) from exc
        quiet = logging.getLogger("dr2studio.lyrics.phonemizer")
        quiet.setLevel(logging.ERROR)
        try:
            self.backend = EspeakBackend(
                "en-us",
                punctuation_marks=PUNCT,
                preserve_punctuation=True,
                with_stress=False,
                tie=False,
                language_switch="remove-flags",
                words_mismatch="ignore",
                logger=quiet,
            )
        except RuntimeError as exc:  # phonemizer: "espeak not installed on your system"
            raise EspeakMissingError(
                "English lyrics need the espeak-ng system library, which was not found "
                f"({exc}); install it with: apt-get install espeak-ng (macOS: brew install espeak-ng)"
            ) from exc
        self.separator = Separator(word="|_|", syllable="-", phone="|")
        self.lock = threading.Lock()
        version = ".".join(str(v) for v in self.backend.version()[:2])
        if version != _REFERENCE_ESPEAK:
            log.warning(
                "espeak-ng %s found; the released model was trained with %s, so a few English vowels "
                "may differ (e.g. 'four', 'more')",
                version,
                _REFERENCE_ESPEAK,
            )

    def __call__(self, text: str) -> str:
        with self.lock:
            return self.backend.phonemize([text], separator=self.separator, strip=True, njobs=1)[0]


_ESPEAK: _Espeak | None = None
_ESPEAK_LOCK = threading.Lock()


def _espeak() -> _Espeak:
    global _ESPEAK
    with _ESPEAK_LOCK:
        if _ESPEAK is None:
            _ESPEAK = _Espeak()
        return _ESPEAK


def espeak_version() -> str | None:
    """Installed espeak-ng version (``"1.51"``), or ``None`` when it cannot be loaded."""
    try:
        return ".".join(str(v) for v in _espeak().backend.version())
    except EspeakMissingError:
        return None


def english_to_phones(text: str) -> str:
    """One English segment -> ``|``-separated phones, as the released ``english_to_ipa``.

    A trailing ``|_`` is added when the last phone ends in a sonorant-like character (the caller removes
    it again when the segment ends the line). Returns ``""`` when nothing is left to pronounce.
    """
    cleaned = _clean_for_espeak(normalize_english(text))
    if not cleaned:
        return ""
    if len(cleaned) > _MAX_SPOKEN_CHARS:  # numbers spelled out can grow a line tenfold; espeak is ~10 us a char
        raise LyricsError(f"a lyric line reads as {len(cleaned)} characters once its numbers are spelled out "
                          f"(limit {_MAX_SPOKEN_CHARS}): {text[:40]!r}...")
    phones = _espeak()(cleaned)
    phones = finish_phones(phones)
    if not phones:
        return ""
    if phones[-1] in _TRAILING_SEP_CHARS:
        phones += "|_"
    return special_map(phones)
