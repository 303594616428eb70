"""Text clean-up shared by the English and Mandarin converters (same rules in both released front ends)."""
from __future__ import annotations

import re

#: The marks the released tokeniser keeps as phones.
PUNCT = ",.?!;:'…"
_CJK_PUNCT = [("，", ","), ("。", "."), ("！", "!"), ("？", "?"), ("；", ";"), ("：", ":"), ("、", ","),
              ("‘", "'"), ("’", "'"), ("⋯", "…"), ("···", "…"), ("・・・", "…"), ("...", "…")]
# Whitespace touching a punctuation mark. The old form ``\s*([,.?!;:'…])\s*`` rescanned a whitespace run from
# every position in it (quadratic); here a run is entered only at its start and taken whole (``\s++``).
PUNCT_SPACE_RE = re.compile(r"(?<!\s)\s++(?=[,.?!;:'…])|(?<=[,.?!;:'…])\s++")
_WRAP_PUNCT_RE = re.compile(r"([,.?!;:'…])")
_BARS_RE = re.compile(r"\|+")


def ascii_punct(text: str) -> str:
    """Full-width punctuation to ASCII, ellipses to ``…``."""
    for src, dst in _CJK_PUNCT:
        text = text.replace(src, dst)
    return text


def tighten_punct(text: str) -> str:
    """Drop the whitespace before and after each punctuation mark (``"a , b"`` -> ``"a,b"``), in linear time."""
    return PUNCT_SPACE_RE.sub("", text)


def finish_phones(phones: str) -> str:
    """Punctuation as its own ``|p|`` phone, ``|`` runs collapsed, trailing ``|`` removed."""
    return _BARS_RE.sub("|", _WRAP_PUNCT_RE.sub(r"|\1|", phones)).rstrip("|")
