"""The text of a MIDI file's meta events, decoded in the encoding it was written in.

The MIDI standard names no encoding. Sequencers write the system code page: UTF-8 on newer tools,
GBK in China, Shift-JIS in Japan, CP949 in Korea, Windows-1252 in the West. mido decodes every text
event as latin-1, which loses nothing: ``text.encode("latin-1")`` gives the raw bytes back. The
encoding is then detected once over all of a file's non-ASCII text events together (one syllable is
too short to tell GBK from Big5), with charset-normalizer.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

__all__ = ["detect_encoding", "decode_texts", "clean_text"]

#: Where charset-normalizer finds several encodings equally clean (one ``©`` or ``é`` byte in a
#: copyright line fits dozens of code pages), Windows-1252, the Western sequencers' default, wins.
TIE_BREAK = "cp1252"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def detect_encoding(raws: list[bytes]) -> str:
    """The encoding of a file's text events: ``ascii``, or charset-normalizer's verdict over all the
    non-ASCII events (padding stripped), ``latin_1`` when it has none."""
    evidence = [raw.strip(b" \x00") for raw in raws if not raw.isascii()]
    if not evidence:
        return "ascii"
    from charset_normalizer import from_bytes

    results = from_bytes(b"\n".join(evidence))
    best = results.best()
    if best is None:
        log.warning("the text events match no known encoding; reading them as latin-1")
        return "latin_1"
    if best.encoding != "utf_8":
        for match in results:
            if match.chaos <= best.chaos + 1e-9 and TIE_BREAK in match.could_be_from_charset:
                return TIE_BREAK
    return best.encoding


def clean_text(text: str) -> str:
    """Drop NUL padding and control characters (line breaks and tabs stay: they mark lyric lines)."""
    return _CONTROL.sub("", text)


def decode_texts(raws: list[bytes]) -> tuple[list[str], str]:
    """Decode every event's bytes with the file's encoding; returns the texts and the encoding.

    A byte sequence the detected encoding cannot read becomes U+FFFD (reported once), never an error.
    """
    encoding = detect_encoding(raws)
    texts, bad = [], 0
    for raw in raws:
        try:
            texts.append(clean_text(raw.decode(encoding)))
        except UnicodeDecodeError:
            bad += 1
            texts.append(clean_text(raw.decode(encoding, errors="replace")))
    if bad:
        log.warning("%d text event(s) are not valid %s; unreadable bytes became U+FFFD", bad, encoding)
    return texts, encoding
