"""Lyrics -> token ids for the DiT, exactly as the released inference builds them.

Per line (spec §4.1-4.2): a structure tag gives ``[tag_id, 511]``; a lyric line is split into Mandarin and
English runs, each run is converted to a ``|``-separated phone string, every phone found in the vocab
becomes ``index + 1`` (others are silently dropped, as in the reference), and ``511`` closes the line.

Where the reference crashes (blank lines, lines with only digits or punctuation, unknown characters) this
module does something sensible instead: blank lines are skipped by the parser, and a line without any
Chinese or Latin letter is read in the song's main language (``2024`` is sung as "twenty twenty-four" in
an English song, 二千零二十四 in a Mandarin one).
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dr2studio.lyrics.english import english_to_phones
from dr2studio.lyrics.mandarin import MandarinG2P
from dr2studio.lyrics.mandarin_assets import G2PAssetsError, load_mandarin_assets
from dr2studio.lyrics.parse import LyricsDocument, LyricsError, Section, parse_lyrics
from dr2studio.lyrics.vocab import STOP_ID, TAG_IDS, PhonemeVocab, VocabLike, load_vocab
from dr2studio.requests import MAX_LYRIC_TOKENS

__all__ = [
    "EncodedLine",
    "LinePhones",
    "LyricsG2P",
    "encode_lyrics",
    "lyrics_phonemes",
    "main_language",
    "resolve_g2p_assets",
    "segment_line",
]

log = logging.getLogger(__name__)

#: Environment variable naming a default Mandarin asset folder.
G2P_ASSETS_ENV = "DR2STUDIO_G2P_ASSETS"


def _char_class(ch: str) -> str:
    if "\u4e00" <= ch <= "\u9fa5":
        return "zh"
    if "A" <= ch <= "Z" or "a" <= ch <= "z":
        return "en"
    return "other"


def segment_line(text: str) -> list[tuple[str, str]]:
    """Split a line into ``(text, "zh" | "en" | "other")`` runs, as the reference's ``get_segment``.

    Digits, spaces and punctuation stick to the open run; leading ones join the first real run. A run of
    kind ``"other"`` only appears when the line has no Chinese character and no ASCII letter at all.
    """
    segments: list[tuple[str, str]] = []
    cur, lang = "", ""
    for ch in text:
        kind = _char_class(ch)
        if not cur:
            cur, lang = ch, kind
        elif lang == "other":
            cur += ch
            lang = kind
        elif kind in (lang, "other"):
            cur += ch
        else:
            segments.append((cur, lang))
            cur, lang = ch, kind
    if cur:
        segments.append((cur, lang))
    return segments


@dataclass(frozen=True)
class LinePhones:
    """What the model hears for one lyric line."""

    text: str
    raw: str  # the ``|``-joined phone string of the reference's chn_eng_g2p
    phones: tuple[str, ...]  # phones found in the vocab, in order
    ids: tuple[int, ...]  # their token ids (vocab index + 1); no trailing [stop]
    dropped: tuple[str, ...]  # non-empty parts of ``raw`` that are not in the vocab
    segments: tuple[tuple[str, str], ...]
    #: every non-empty part of ``raw`` as ``(phone, language, in the table)``: what coverage counts
    parts: tuple[tuple[str, str, bool], ...] = ()


@dataclass(frozen=True)
class EncodedLine:
    """One tag or lyric line of a song with its token ids (``[stop]`` included)."""

    section: Section
    text: str  # the tag (``"[chorus]"``) or the lyric line
    is_tag: bool
    phones: tuple[str, ...]
    ids: tuple[int, ...]
    dropped: tuple[str, ...] = ()
    parts: tuple[tuple[str, str, bool], ...] = ()  # see :attr:`LinePhones.parts`; empty for tags


def resolve_g2p_assets(g2p_assets: str | os.PathLike | None, model_dir: str | os.PathLike | None = None) -> Path | None:
    """The Mandarin asset folder to use: the one given, else ``<model_dir>/g2p``, else ``$DR2STUDIO_G2P_ASSETS``."""
    given, what = g2p_assets, "--g2p-assets"
    if given is None and model_dir is not None and (Path(model_dir) / "g2p").is_dir():
        return Path(model_dir) / "g2p"
    if given is None and os.environ.get(G2P_ASSETS_ENV):
        given, what = os.environ[G2P_ASSETS_ENV], f"${G2P_ASSETS_ENV}"
    if given is None:
        return None
    path = Path(given).expanduser()
    if not path.is_dir():
        raise G2PAssetsError(f"{what} folder not found: {path}")
    return path


_FALLBACK_WARNED = False
_FALLBACK_LOCK = threading.Lock()


def _warn_fallback(reason: str) -> None:
    global _FALLBACK_WARNED
    with _FALLBACK_LOCK:
        if not _FALLBACK_WARNED:
            _FALLBACK_WARNED = True
            log.warning(
                "Mandarin lyrics use the pypinyin fallback (%s); some pronunciations may differ from what the "
                "released model was trained on. Give the released g2p data with --g2p-assets DIR "
                "(the official repository's g2p/sources folder) for exact tokens.",
                reason,
            )


def _has_mandarin_phones(vocab: PhonemeVocab) -> bool:
    """Whether the table holds tone-marked (Mandarin) phones, as the released one does."""
    return any(ch in phone for phone in vocab.index for ch in "→↑↓")


class LyricsG2P:
    """Line and song tokeniser over one phoneme table and one Mandarin front end.

    ``g2p_assets``: folder with the released Mandarin data, or ``None`` for the pypinyin fallback. The
    Mandarin front end (and its 665k-entry lexicon) is only loaded when a Mandarin line is met.
    """

    def __init__(self, vocab: VocabLike, g2p_assets: str | os.PathLike | None = None) -> None:
        self.vocab: PhonemeVocab = load_vocab(vocab)
        self.g2p_assets = None if g2p_assets is None else Path(g2p_assets)
        self._mandarin: MandarinG2P | None = None
        self._lock = threading.Lock()

    @property
    def mandarin(self) -> MandarinG2P:
        with self._lock:
            if self._mandarin is None:
                if self.g2p_assets is None:
                    if _has_mandarin_phones(self.vocab):
                        _warn_fallback("no --g2p-assets folder was given")
                    else:  # the table cannot voice Mandarin anyway; the lyrics' coverage says so
                        log.info("Mandarin lyrics use the pypinyin fallback; %s holds no Mandarin phones",
                                 self.vocab.source)
                    self._mandarin = MandarinG2P(None)
                else:
                    self._mandarin = MandarinG2P(load_mandarin_assets(self.g2p_assets))
            return self._mandarin

    @property
    def mandarin_mode(self) -> str:
        """``"unused"`` until a Mandarin line is met, then ``"released"`` or ``"pypinyin-fallback"``."""
        if self._mandarin is None:
            return "unused"
        return "released" if self._mandarin.exact else "pypinyin-fallback"

    def _convert(self, segment: str, lang: str) -> str:
        return self.mandarin(segment) if lang == "zh" else english_to_phones(segment)

    def line(self, text: str, default_language: str = "en") -> LinePhones:
        """Phones and ids of one lyric line (``default_language`` reads a line with no letters at all)."""
        if default_language not in ("en", "zh"):
            raise ValueError(f"default_language must be 'en' or 'zh', got {default_language!r}")
        text = text.strip()
        segments = segment_line(text)
        raw = ""
        tagged: list[tuple[str, str]] = []  # (phone, language) per non-empty part of raw
        for i, (seg, lang) in enumerate(segments):
            if lang == "other":
                lang = default_language
            converted = self._convert(seg, lang)
            raw += converted + "|"
            tagged += [(p, lang) for p in converted.split("|") if p]
            if lang == "en" and i == len(segments) - 1 and raw.endswith("_|"):
                raw = raw[:-2]
                if tagged and tagged[-1][0] == "_":
                    tagged.pop()
        parts = raw.split("|")
        phones = tuple(p for p in parts if p in self.vocab)
        dropped = tuple(p for p in parts if p and p not in self.vocab)
        ids = tuple(self.vocab.token_id(p) for p in phones)
        info = tuple((p, lang, p in self.vocab) for p, lang in tagged)
        return LinePhones(text, raw, phones, ids, dropped, tuple(segments), info)

    def encode_document(self, doc: LyricsDocument) -> list[EncodedLine]:
        """Every tag and lyric line of ``doc`` with its ids; lines with nothing to sing are left out."""
        language = main_language(doc.lines)
        out: list[EncodedLine] = []
        count = 0
        for section in doc.sections:
            if section.tag is not None:
                count = _count_tokens(count, 2, doc, section.tag)
                out.append(EncodedLine(section, section.tag, True, (section.tag, "[stop]"), (TAG_IDS[section.kind], STOP_ID)))
            for text in section.lines:
                try:
                    lp = self.line(text, language)
                except LyricsError as exc:  # raised by a converter that does not know the file: name it here
                    if exc.source is None and doc.source is not None:
                        raise LyricsError(str(exc).removeprefix("<lyrics>: "), doc.source) from exc
                    raise
                count = _count_tokens(count, len(lp.ids) + 1, doc, text)
                if not lp.ids and all(kind == "other" for _, kind in lp.segments):
                    # the reference crashes on these (no letter at all); leave the line out
                    log.warning("%s: nothing to sing in lyric line %r; it is left out", doc.source or "lyrics", text)
                    continue
                if not lp.ids:  # e.g. a lone 不: the reference keeps the bare [stop]
                    # info: the lyrics' coverage (dr2studio.lyrics.coverage) warns once for all such lines
                    log.info("%s: lyric line %r has no phones in the table; only [stop] is kept", doc.source or "lyrics", text)
                out.append(EncodedLine(section, text, False, lp.phones + ("[stop]",), lp.ids + (STOP_ID,), lp.dropped,
                                       lp.parts))
        return out


def _count_tokens(count: int, more: int, doc: LyricsDocument, text: str) -> int:
    """``count + more``, or :class:`LyricsError` as soon as a song's tokens pass MAX_LYRIC_TOKENS (encoding
    stops there, so a huge lyric never builds its whole token list in memory)."""
    count += more
    if count > MAX_LYRIC_TOKENS:
        short = text if len(text) <= 40 else text[:40] + "..."
        raise LyricsError(f"lyrics encode to more than {MAX_LYRIC_TOKENS} tokens (the limit) by line {short!r}; "
                          "shorten them or split the song", doc.source)
    return count


def main_language(lines: Iterable[str]) -> str:
    """``"zh"`` when more lines contain Chinese than contain Latin letters, else ``"en"``."""
    zh = en = 0
    for line in lines:
        kinds = {_char_class(c) for c in line}
        zh += "zh" in kinds
        en += "en" in kinds
    return "zh" if zh > en else "en"


_CACHE: dict[tuple[str, str], LyricsG2P] = {}
_CACHE_LOCK = threading.Lock()


def _g2p_for(vocab: VocabLike, g2p_assets: str | os.PathLike | None) -> LyricsG2P:
    model_dir = vocab if isinstance(vocab, (str, os.PathLike)) and Path(vocab).is_dir() else None
    assets = resolve_g2p_assets(g2p_assets, model_dir)
    if isinstance(vocab, (str, os.PathLike)):
        key = (str(Path(vocab).resolve()), str(assets.resolve()) if assets else "")
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is None:
                hit = _CACHE[key] = LyricsG2P(vocab, assets)
            return hit
    return LyricsG2P(vocab, assets)


def _document(text: str | LyricsDocument) -> LyricsDocument:
    return text if isinstance(text, LyricsDocument) else parse_lyrics(text)


def lyrics_phonemes(
    text: str | LyricsDocument, vocab: VocabLike, g2p_assets: str | os.PathLike | None = None
) -> list[EncodedLine]:
    """Per tag and lyric line: the phones and ids the model will receive (for display and debugging)."""
    return _g2p_for(vocab, g2p_assets).encode_document(_document(text))


def encode_lyrics(text: str | LyricsDocument, vocab: VocabLike, g2p_assets: str | os.PathLike | None = None) -> list[int]:
    """Lyrics (text or a parsed document) -> the flat token id list the DiT is conditioned on.

    ``vocab``: a ``vocab.json`` path, a model directory (its ``g2p/`` subfolder is then used for Mandarin
    when ``g2p_assets`` is not given), a mapping or a :class:`PhonemeVocab`.
    """
    return [i for line in lyrics_phonemes(text, vocab, g2p_assets) for i in line.ids]
