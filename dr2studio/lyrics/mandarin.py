"""Mandarin text -> the released model's phone string (``"n|i↑|x|ɑʊ↓↑"``).

Pipeline (spec §4.4): spaces become ``_``, Arabic numerals become Chinese (cn2an), everything but CJK,
``_`` and ``,.?!;:'…`` is removed, jieba splits words, 一/不/儿 are merged into neighbours, each word gets
bopomofo from the released lexicon (or, for the 159 polyphonic characters, from the ONNX BERT classifier),
tone sandhi is applied **inside each word only**, and bopomofo is rewritten to IPA with tone arrows.

Without the released assets a pypinyin reader replaces the lexicon and the classifier (same segmentation,
sandhi and IPA table); pronunciations then differ on some polyphones, so a warning is logged once.
"""
from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol

from dr2studio.lyrics._text import ascii_punct, finish_phones, tighten_punct
from dr2studio.lyrics.mandarin_assets import MandarinAssets

__all__ = ["AssetReader", "MandarinG2P", "PypinyinReader", "bopomofo_to_ipa", "normalize_mandarin"]

log = logging.getLogger(__name__)

_TONE_MARKS = {"0": "˙", "5": "˙", "1": "", "2": "ˊ", "3": "ˇ", "4": "ˋ"}
_MARKED = "˙ˊˇˋ"
_NUMERALS = set("零一二三四五六七八九十")
_YI_STOP = set("：，；。？！“”‘’':,;.?!()（）{}【】[]-~`、 ")
_NO_NEUTRAL_ER = {"女儿", "老儿", "男儿", "少儿", "小儿"}

_SPACE_RE = re.compile(r"\s")
_SPACES_RE = re.compile(r"\s+")
_KEEP_RE = re.compile(r"[^\u4e00-\u9fff\s_,.?!;:'…]")
_HAS_CJK_RE = re.compile(r"[\u4e00-\u9fff]")
_BPMF_END_RE = re.compile(r"([\u3105-\u3129])$")

# Appendix C, applied in this order.
_BOPOMOFO_TO_IPA = [
    ("ㄅㄛ", "p⁼wo"), ("ㄆㄛ", "pʰwo"), ("ㄇㄛ", "mwo"), ("ㄈㄛ", "fwo"),
    ("ㄧㄢ", "|jɛn"), ("ㄩㄢ", "|ɥæn"), ("ㄧㄣ", "|in"), ("ㄩㄣ", "|ɥn"), ("ㄧㄥ", "|iŋ"), ("ㄨㄥ", "|ʊŋ"),
    ("ㄩㄥ", "|jʊŋ"), ("ㄧㄚ", "|ia"), ("ㄧㄝ", "|iɛ"), ("ㄧㄠ", "|iɑʊ"), ("ㄧㄡ", "|ioʊ"), ("ㄧㄤ", "|iɑŋ"),
    ("ㄨㄚ", "|ua"), ("ㄨㄛ", "|uo"), ("ㄨㄞ", "|uaɪ"), ("ㄨㄟ", "|ueɪ"), ("ㄨㄢ", "|uan"), ("ㄨㄣ", "|uən"),
    ("ㄨㄤ", "|uɑŋ"), ("ㄩㄝ", "|ɥɛ"),
    ("ㄅ", "p⁼"), ("ㄆ", "pʰ"), ("ㄇ", "m"), ("ㄈ", "f"), ("ㄉ", "t⁼"), ("ㄊ", "tʰ"), ("ㄋ", "n"), ("ㄌ", "l"),
    ("ㄍ", "k⁼"), ("ㄎ", "kʰ"), ("ㄏ", "x"), ("ㄐ", "tʃ⁼"), ("ㄑ", "tʃʰ"), ("ㄒ", "ʃ"), ("ㄓ", "ts`⁼"),
    ("ㄔ", "ts`ʰ"), ("ㄕ", "s`"), ("ㄖ", "ɹ`"), ("ㄗ", "ts⁼"), ("ㄘ", "tsʰ"), ("ㄙ", "|s"),
    ("ㄚ", "|a"), ("ㄛ", "|o"), ("ㄜ", "|ə"), ("ㄝ", "|ɛ"), ("ㄞ", "|aɪ"), ("ㄟ", "|eɪ"), ("ㄠ", "|ɑʊ"),
    ("ㄡ", "|oʊ"), ("ㄢ", "|an"), ("ㄣ", "|ən"), ("ㄤ", "|ɑŋ"), ("ㄥ", "|əŋ"), ("ㄦ", "əɹ"), ("ㄧ", "|i"),
    ("ㄨ", "|u"), ("ㄩ", "|ɥ"),
    ("ˉ", "→|"), ("ˊ", "↑|"), ("ˇ", "↓↑|"), ("ˋ", "↓|"), ("˙", "|"),
]
_RETROFLEX_RE = re.compile(r"([sɹ]`[⁼ʰ]?)([→↓↑ ]+|$)")
_DENTAL_RE = re.compile(r"([s][⁼ʰ]?)([→↓↑ ]+|$)")
_JUNK_RE = re.compile(r"^\||[^\w\s_,.?!;:'…|→↓↑⁼ʰ`]")


class WordReader(Protocol):
    """Gives the bopomofo syllables of one jieba word (``sentence``/``offset`` locate it in the line)."""

    def __call__(self, word: str, sentence: str, offset: int) -> list[str]: ...


def normalize_mandarin(text: str) -> str:
    """Digits to Chinese, full-width punctuation to ASCII, everything unpronounceable removed.

    Spaces survive as ``_`` (one ``_`` per whitespace character), as in the released front end.
    """
    text = _SPACE_RE.sub("_", text).strip()
    text = _SPACES_RE.sub("", ascii_punct(_an2cn(text)))
    return tighten_punct(_KEEP_RE.sub("", text))


# cn2an reads a digit run as one number, names 16 digits at most (longer runs came back as digits and were
# dropped) and slows down quadratically on long ones (82 s on 60,000 digits, 100 s full-width); runs of 17 or
# more digits are read digit by digit first (linear: a run is entered at its start and taken whole).
_LONG_DIGITS_RE = re.compile(r"(?<!\d)\d{17,}+")
_CN_DIGITS = "零一二三四五六七八九"


def _spell_cn_digits(m: re.Match[str]) -> str:
    return "".join(_CN_DIGITS[unicodedata.decimal(c, 0)] for c in m.group(0))


def _an2cn(text: str) -> str:
    if not any(c.isdigit() for c in text):
        return text
    text = _LONG_DIGITS_RE.sub(_spell_cn_digits, text)
    if not any(c.isdigit() for c in text):
        return text
    import cn2an

    try:
        return cn2an.transform(text, "an2cn")
    except Exception as exc:  # cn2an raises bare ValueError/KeyError on odd numerals
        log.debug("cn2an could not convert %r (%s); its digits are dropped", text, exc)
        return text


@lru_cache(maxsize=1)
def _jieba() -> Callable[[str], list[str]]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return lambda text: jieba.lcut(text, cut_all=False)


def _merge_yi(words: list[str]) -> list[str]:
    """A一A -> one word; a lone 一 is glued to the next word (the reference's two passes)."""
    out: list[str] = []
    for i, word in enumerate(words):
        if 0 < i < len(words) - 1 and word == "一" and words[i - 1] == words[i + 1]:
            if i - 1 < len(out):  # the reference writes by the original index
                out[i - 1] = out[i - 1] + "一" + out[i - 1]
            else:
                out.extend([word, words[i + 1]])
        elif i >= 2 and words[i - 1] == "一" and words[i - 2] == word:
            continue
        else:
            out.append(word)
    merged: list[str] = []
    for word in out:
        if merged and merged[-1] == "一":
            merged[-1] += word
        else:
            merged.append(word)
    return merged


def _merge_bu(words: list[str]) -> list[str]:
    """A lone 不 is prepended to the next word (a trailing lone 不 disappears, as in the reference)."""
    out, last = [], ""
    for word in words:
        if word != "不":
            if last == "不":
                word = last + word
            out.append(word)
        last = word
    return out


def _merge_er(words: list[str]) -> list[str]:
    out: list[str] = []
    for i, word in enumerate(words):
        if i > 0 and word == "儿":
            out[-1] += word
        else:
            out.append(word)
    return out


def _set_tone(bpmf: str, mark: str) -> str:
    if bpmf and bpmf[-1] in _MARKED:
        return bpmf[:-1] + mark
    return bpmf + mark


def _ends(items: list[str], i: int, marks: str) -> bool:
    return -len(items) <= i < len(items) and bool(items[i]) and items[i][-1] in marks


def _sandhi(word: str, b: list[str]) -> list[str]:
    """Tone sandhi of one word (3-3, 不, 一, 儿), reproducing the reference's rules and its 3-3-3 bug."""
    n = len(b)
    if len(word) == 3 and _ends(b, 0, "ˇ") and _ends(b, 1, "ˇ") and _ends(b, -1, "ˇ"):
        b[0] += "ˊ"  # the reference appends instead of replacing; the stray arrow is dropped later
        b[1] += "ˊ"
    if len(word) == 2 and _ends(b, 0, "ˇ") and _ends(b, -1, "ˇ"):
        b[0] = b[0][:-1] + "ˊ"
    # 不
    if set(word) == {"不"} or word == "不字":
        pass
    elif len(word) == 3 and word[1] == "不" and n > 1 and b[1][:-1] == "ㄅㄨ":
        b[1] = b[1][:-1] + "˙"
    else:
        for i, ch in enumerate(word):
            if ch == "不" and i + 1 < min(n, len(word)) and _ends(b, i + 1, "ˋ"):
                b[i] = b[i][:-1] + "ˊ"
    # 一
    if "一" in word and any(c.isnumeric() for c in word if c != "一"):
        for i, ch in enumerate(word[:n]):
            if i == 0 and ch == "一" and len(word) > 1 and word[1] not in _NUMERALS:
                b[0] = _set_tone(b[0], "ˊ" if b[0] and _ends(b, 1, "ˋ˙") else "ˋ")
            elif ch == "一":
                b[i] = _set_tone(b[i], "")
    elif len(word) == 3 and word[1] == "一" and word[0] == word[-1] and n > 1:
        b[1] = _set_tone(b[1], "˙")
    elif word.startswith("第一") and n > 1:
        b[1] = _set_tone(b[1], "")
    elif word.startswith(("一月", "一日", "一号")) and n > 0:
        b[0] = _set_tone(b[0], "")
    else:
        for i, ch in enumerate(word[:n]):
            if ch == "一" and i + 1 < len(word):
                if _ends(b, i + 1, "ˋ"):
                    b[i] = _set_tone(b[i], "ˊ")
                elif word[i + 1] not in _YI_STOP:
                    b[i] = _set_tone(b[i], "ˋ")
    # 儿
    if len(word) > 1 and word[-1] == "儿" and word not in _NO_NEUTRAL_ER and n:
        b[-1] = _set_tone(b[-1], "˙")
    return b


def bopomofo_to_ipa(text: str) -> str:
    """``|``-joined bopomofo with tone marks -> ``|``-joined IPA phones with tone arrows."""
    for src, dst in _BOPOMOFO_TO_IPA:
        text = text.replace(src, dst)
    text = _RETROFLEX_RE.sub(r"\1ɹ\2", text)
    text = _DENTAL_RE.sub(r"\1ɹ\2", text)
    return finish_phones(_JUNK_RE.sub("", text))


class AssetReader:
    """Bopomofo from the released lexicon and polyphone classifier (the exact path)."""

    def __init__(self, assets: MandarinAssets) -> None:
        self.assets = assets

    def _syllable(self, pinyin: str) -> str | None:
        base = self.assets.pinyin_to_bopomofo.get(pinyin[:-1])
        mark = _TONE_MARKS.get(pinyin[-1:])
        return None if base is None or mark is None else base + mark

    def _char(self, c: str) -> str:
        pinyin = self.assets.lexicon.get(c)
        bpmf = self._syllable(pinyin) if pinyin else None
        if bpmf is None and pinyin:  # the reference crashes here; read it with pypinyin instead
            bpmf = "".join(_pypinyin_bopomofo(c))
        return bpmf if bpmf is not None else c

    def __call__(self, word: str, sentence: str, offset: int) -> list[str]:
        a = self.assets
        if word in a.lexicon and word not in a.polychars:
            out: list[str] = []
            for pinyin in a.lexicon[word].split(" "):
                bpmf = self._syllable(pinyin)
                out.extend([bpmf] if bpmf is not None else _pypinyin_bopomofo(word))
            return out
        out = []
        for i, c in enumerate(word):
            if c in a.polychars:
                bpmf = self._syllable(a.polyphone.predict(sentence, offset + i))
                out.append(bpmf if bpmf is not None else self._char(c))
            else:
                out.append(self._char(c))
        return out


def _pypinyin_bopomofo(word: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(word, style=Style.BOPOMOFO)


# Where pypinyin's dictionary differs from the released lexicon on words common in lyrics.
_COLLOQUIAL = {"谁": "ㄕㄟˊ"}
_NEUTRAL_SECOND = frozenset(
    "妈妈 爸爸 哥哥 姐姐 弟弟 妹妹 奶奶 爷爷 姥姥 叔叔 舅舅 婶婶 宝宝 星星 娃娃 太太 谢谢 娘娘 公公 婆婆".split()
)


class PypinyinReader:
    """Bopomofo from pypinyin's phrase dictionary: the fallback when the released assets are absent."""

    def __call__(self, word: str, sentence: str, offset: int) -> list[str]:
        if not _HAS_CJK_RE.search(word):
            return list(word)
        from pypinyin import Style, lazy_pinyin

        items = lazy_pinyin(word, style=Style.BOPOMOFO, errors=lambda s: list(s))
        items = [_COLLOQUIAL.get(c, b) for c, b in zip(word, items)] if len(items) == len(word) else items
        if word in _NEUTRAL_SECOND and len(items) == 2:
            items[1] = _set_tone(items[1], "˙")
        return items


class MandarinG2P:
    """Mandarin segments -> phone strings, with the released assets or the pypinyin fallback."""

    def __init__(self, assets: MandarinAssets | None = None) -> None:
        self.assets = assets
        self.reader: WordReader = AssetReader(assets) if assets is not None else PypinyinReader()
        self._lock = threading.Lock()

    @property
    def exact(self) -> bool:
        """True when the released lexicon and polyphone model are used."""
        return self.assets is not None

    def words(self, text: str) -> list[str]:
        """jieba words of the normalised text, after the 一/不/儿 merges."""
        return _merge_er(_merge_bu(_merge_yi(_jieba()(text))))

    def bopomofo(self, text: str) -> str:
        """Normalised text -> ``|``-joined bopomofo, word by word, with sandhi."""
        out = ""
        offset = 0
        for word in self.words(text):
            items = _sandhi(word, self.reader(word, text, offset))
            offset += len(word)
            if not _HAS_CJK_RE.search(word):
                out += "|" + word
                continue
            items = [_BPMF_END_RE.sub(r"\1ˉ", x) for x in items]
            if out:
                out += "|"
            out += "|".join(items)
        return out

    def __call__(self, text: str) -> str:
        """One Mandarin segment (may contain spaces, digits, punctuation) -> phones."""
        with self._lock:
            return bopomofo_to_ipa(self.bopomofo(normalize_mandarin(text)))
