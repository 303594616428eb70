"""Lyrics front end: parse plain/LRC lyrics into sections and turn them into the model's token ids.

``parse_lyrics`` / ``parse_lyrics_file`` give a :class:`LyricsDocument` (sections of lines);
``encode_lyrics`` gives the flat token ids of the released tokenisation; ``lyrics_phonemes`` shows the
phones per line; ``lyrics_coverage`` says how much of them the model's phoneme table keeps, per
language. Heavy dependencies (phonemizer, jieba, onnxruntime) load on first use.
"""
from __future__ import annotations

from dr2studio.lyrics.coverage import LanguageCoverage, LineCoverage, LyricsCoverage, lyrics_coverage
from dr2studio.lyrics.english import EspeakMissingError, espeak_version
from dr2studio.lyrics.g2p import (
    EncodedLine,
    LinePhones,
    LyricsG2P,
    encode_lyrics,
    lyrics_phonemes,
    resolve_g2p_assets,
    segment_line,
)
from dr2studio.lyrics.mandarin_assets import G2PAssetsError, load_mandarin_assets
from dr2studio.lyrics.parse import (
    STRUCTURE_TAGS,
    UNTAGGED,
    LyricsDocument,
    LyricsError,
    Section,
    parse_lyrics,
    parse_lyrics_file,
    render_sections,
)
from dr2studio.lyrics.vocab import PHONE_OFFSET, STOP_ID, TAG_IDS, PhonemeVocab, VocabError, load_vocab

__all__ = [
    "EncodedLine",
    "EspeakMissingError",
    "G2PAssetsError",
    "LanguageCoverage",
    "LineCoverage",
    "LinePhones",
    "LyricsCoverage",
    "LyricsDocument",
    "LyricsError",
    "LyricsG2P",
    "PHONE_OFFSET",
    "PhonemeVocab",
    "STOP_ID",
    "STRUCTURE_TAGS",
    "Section",
    "TAG_IDS",
    "UNTAGGED",
    "VocabError",
    "encode_lyrics",
    "espeak_version",
    "load_mandarin_assets",
    "load_vocab",
    "lyrics_coverage",
    "lyrics_phonemes",
    "parse_lyrics",
    "parse_lyrics_file",
    "render_sections",
    "resolve_g2p_assets",
    "segment_line",
]
