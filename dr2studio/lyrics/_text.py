"""Text clean-up shared by the English and Mandarin converters (same rules in both released front ends)."""
from __future__ import annotations

import re

#: The marks the released tokeniser keeps as phones.
PUNCT = ",.?!;:'…"
_CJK_PUNCT = [("，", ","), ("。", "."), ("！", "!"), ("？", "?"), ("；", ";"), ("：", ":"), ("、", ","),
              ("‘", "'"), ("’", "'"), ("⋯", "…"), ("···", "…"), ("・・・", "…"), ("...", "…")]
PUNCT_SPACE_RE = re.compile(r"\s*([,.?!;:'…])\s*")
_WRAP_PUNCT_RE = re.compile(r"([,.?!;:'…])")
_BARS_RE = re.compile(r"\|+")


def ascii_punct(text: str) -> str:
    """Full-width punctuation to ASCII, ellipses to ``…``."""
    for src, dst in _CJK_PUNCT:
        text = text.replace(src, dst)
    return text


def finish_phones(phones: str) -> str:
    """Punctuation as its own ``|p|`` phone, ``|`` runs collapsed, trailing ``|`` removed."""
    return _BARS_RE.sub("|", _WRAP_PUNCT_RE.sub(r"|\1|", phones)).rstrip("|")
