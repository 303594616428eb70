"""How much of a lyric the model's phoneme table can voice, per language.

The G2P front end drops every phone the model's table lacks (as the released inference does), so a
Mandarin lyric sent to an English-only table mostly vanishes without a word. :func:`lyrics_coverage`
counts, per language (English / Mandarin, from the per-line language detection of the front end),
the phones produced, kept and dropped, and names the lines that lost some.

The rule the studio applies (documented in the README):

- **warn** whenever any phone is dropped (one line: how many, which language, how many lines);
- **refuse** when the lyrics have lyric lines but not one *sung* phone (a phone with a letter in it,
  so not punctuation or the word separator ``_``) is left, unless an instrumental is asked for;
- an instrumental sends only the structure tags (``[inst]`` when the lyrics have none).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dr2studio.lyrics.g2p import EncodedLine

__all__ = [
    "LANGUAGE_NAMES",
    "LanguageCoverage",
    "LineCoverage",
    "LyricsCoverage",
    "is_sung",
    "lyrics_coverage",
]

#: Display names of the languages the front end detects.
LANGUAGE_NAMES: dict[str, str] = {"en": "English", "zh": "Mandarin"}


def is_sung(phone: str) -> bool:
    """A phone that is a sound (has a letter), not punctuation or the word separator."""
    return any(ch.isalpha() for ch in phone)


def _pct(part: int, whole: int) -> str:
    return f"{round(100 * part / whole)} %" if whole else "0 %"


@dataclass(frozen=True)
class LanguageCoverage:
    """Phones of one language: produced by the G2P, kept by the table, dropped."""

    language: str  # "en" | "zh"
    total: int
    kept: int
    dropped: int
    lines: int  # lyric lines with at least one phone of this language

    @property
    def name(self) -> str:
        return LANGUAGE_NAMES.get(self.language, self.language)


@dataclass(frozen=True)
class LineCoverage:
    """One lyric line that lost phones."""

    text: str
    section: str  # the section label, e.g. "verse 1"
    languages: tuple[str, ...]
    total: int
    kept: int
    dropped_phones: tuple[str, ...]


@dataclass(frozen=True)
class LyricsCoverage:
    """What a phoneme table keeps of a lyric: counts per language and the lines affected.

    ``sung`` counts kept phones that are sounds (see :func:`is_sung`); ``lyric_lines`` the lyric
    (non-tag) lines. Kept as ``to_dict()`` in a Song's settings (``"lyrics_coverage"``).
    """

    source: str | None
    table: str
    languages: tuple[LanguageCoverage, ...]
    lines: tuple[LineCoverage, ...]
    lyric_lines: int
    sung: int
    instrumental: bool = False

    @property
    def total(self) -> int:
        return sum(lang.total for lang in self.languages)

    @property
    def kept(self) -> int:
        return sum(lang.kept for lang in self.languages)

    @property
    def dropped(self) -> int:
        return sum(lang.dropped for lang in self.languages)

    @property
    def any_dropped(self) -> bool:
        """Whether the table loses any phone of these lyrics (the warning rule)."""
        return self.dropped > 0

    @property
    def nothing_to_sing(self) -> bool:
        """Lyric lines exist but no sung phone survives the table (the refusal rule)."""
        return self.lyric_lines > 0 and self.sung == 0

    def language(self, code: str) -> LanguageCoverage | None:
        return next((lang for lang in self.languages if lang.language == code), None)

    def _where(self) -> str:
        return f"lyrics {self.source}" if self.source else "lyrics"

    def summary(self) -> str:
        """One line: what is dropped, in which language, in how many lines."""
        per = ", ".join(
            f"{lang.name} {lang.dropped} of {lang.total} ({_pct(lang.dropped, lang.total)})"
            for lang in self.languages if lang.total
        )
        return (
            f"{self._where()}: the phoneme table of {self.table} drops {self.dropped} of {self.total} phones "
            f"({_pct(self.dropped, self.total)}) in {len(self.lines)} of {self.lyric_lines} lyric lines - {per}; "
            "those sounds will not be sung (`dr2studio lyrics FILE` lists them per line)"
        )

    def refusal(self) -> str:
        """The one-line error when nothing is left to sing."""
        langs = " and ".join(lang.name for lang in self.languages if lang.total) or "these"
        return (
            f"{self._where()}: nothing left to sing: the phoneme table of {self.table} keeps no sung phone "
            f"of the {self.total} {langs} phones; use a model whose table covers {langs}, "
            "or ask for an instrumental (instrumental=True; CLI --instrumental)"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (``--json`` field and Song settings)."""
        return {
            "source": self.source,
            "table": self.table,
            "total": self.total,
            "kept": self.kept,
            "dropped": self.dropped,
            "sung": self.sung,
            "lyric_lines": self.lyric_lines,
            "instrumental": self.instrumental,
            "nothing_to_sing": self.nothing_to_sing,
            "languages": {lang.language: {k: v for k, v in asdict(lang).items() if k != "language"}
                          for lang in self.languages},
            "lines": [dict(asdict(line), languages=list(line.languages), dropped_phones=list(line.dropped_phones))
                      for line in self.lines],
            "message": self.summary() if self.any_dropped else None,
        }


def lyrics_coverage(
    lines: Sequence[EncodedLine],
    *,
    source: str | None = None,
    table: str = "the model",
    instrumental: bool = False,
) -> LyricsCoverage:
    """Count, per language, the phones of ``lines`` (from :meth:`LyricsG2P.encode_document`) kept and dropped."""
    totals: dict[str, list[int]] = {}
    affected: list[LineCoverage] = []
    lyric_lines = sung = 0
    for line in lines:
        if line.is_tag:
            continue
        lyric_lines += 1
        present: set[str] = set()
        for phone, lang, kept in line.parts:
            t = totals.setdefault(lang, [0, 0, 0])
            t[0] += 1
            t[1] += kept
            present.add(lang)
            if kept and is_sung(phone):
                sung += 1
        for lang in present:
            totals[lang][2] += 1
        lost = tuple(p for p, _, kept in line.parts if not kept)
        if lost:
            affected.append(LineCoverage(line.text, line.section.label, _ordered(present), len(line.parts),
                                         len(line.parts) - len(lost), lost))
    languages = tuple(
        LanguageCoverage(lang, t[0], t[1], t[0] - t[1], t[2]) for lang, t in sorted(totals.items(), key=_lang_key)
    )
    return LyricsCoverage(source, table, languages, tuple(affected), lyric_lines, sung, instrumental)


def _lang_key(item: tuple[str, Any]) -> tuple[int, str]:
    order = list(LANGUAGE_NAMES)
    return (order.index(item[0]) if item[0] in order else len(order), item[0])


def _ordered(langs: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(langs, key=lambda lang: _lang_key((lang, None))))
