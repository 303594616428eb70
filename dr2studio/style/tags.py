"""Style text -> tags: genre, tempo, key, mode, vocal, instruments, mood.

``"pop, 120 bpm, A minor, female vocal, piano, drums"`` becomes ``genre:pop``, a soft tempo tag (weights
on the two nearest tempo centres), ``key:9``, ``mode:minor``, ``vocal:female``, ``inst:piano``,
``inst:drums``. Known phrases are found anywhere in a comma/semicolon separated chunk ("upbeat pop song
with piano" works); a chunk with no known phrase is hashed into one of a fixed number of buckets, so
unfamiliar words still change the embedding, deterministically.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from dr2studio.requests import MAX_LYRICS_CHARS, TEMPO

__all__ = [
    "GENRES",
    "INSTRUMENTS",
    "MOODS",
    "StyleTags",
    "TEMPO_CENTERS",
    "default_tag_vocab",
    "parse_style_tags",
]

GENRES: tuple[str, ...] = (
    "pop", "rock", "hip hop", "rap", "r&b", "soul", "funk", "jazz", "blues", "country", "folk", "classical",
    "electronic", "dance", "house", "techno", "trance", "edm", "dubstep", "drum and bass", "ambient", "lofi",
    "metal", "punk", "indie", "reggae", "latin", "disco", "gospel", "ballad", "trap", "k-pop", "j-pop",
    "c-pop", "mandopop", "cinematic", "orchestral", "acoustic", "synthwave", "soundtrack", "children",
)
INSTRUMENTS: tuple[str, ...] = (
    "piano", "electric piano", "keys", "organ", "acoustic guitar", "electric guitar", "guitar", "bass",
    "synth bass", "drums", "percussion", "drum machine", "808", "synth", "synth pluck", "pad", "strings",
    "violin", "cello", "brass", "trumpet", "saxophone", "flute", "harp", "choir", "ukulele", "banjo",
    "accordion", "harmonica", "bells", "erhu", "guzheng", "pipa",
)
MOODS: tuple[str, ...] = (
    "happy", "sad", "energetic", "calm", "dark", "romantic", "melancholic", "uplifting", "chill", "aggressive",
    "dreamy", "epic", "nostalgic", "hopeful", "angry", "peaceful", "playful", "emotional", "groovy",
    "relaxing", "upbeat", "slow", "fast", "intense", "soft", "bright",
)
_ALIASES = {
    "hip-hop": "hip hop", "hiphop": "hip hop", "rnb": "r&b", "r and b": "r&b", "rhythm and blues": "r&b",
    "lo-fi": "lofi", "lo fi": "lofi", "electronica": "electronic", "dnb": "drum and bass",
    "drum & bass": "drum and bass", "kpop": "k-pop", "jpop": "j-pop", "cpop": "c-pop", "film score": "soundtrack",
    "drum": "drums", "drum kit": "drums", "beat": "drums", "beats": "drums", "keyboard": "keys",
    "synthesizer": "synth", "synths": "synth", "sax": "saxophone", "string": "strings", "bass guitar": "bass",
    "horns": "brass", "vocals": "vocal", "voice": "vocal", "relaxed": "relaxing", "mellow": "calm",
    "chilled": "chill",
}
#: Tempo centres in bpm; a tempo is split linearly between its two nearest centres.
TEMPO_CENTERS: tuple[int, ...] = (60, 75, 90, 105, 120, 135, 150, 165, 180)
#: Unknown chunks fall into this many hashed buckets.
HASH_BUCKETS = 64

_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SPLIT_RE = re.compile(r"[,;\n/|，；、]+")
_BPM_RE = re.compile(r"(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b", re.IGNORECASE)
_KEY_RE = re.compile(
    r"(?<![A-Za-z#])([A-G])\s?([#♯b♭]|sharp|flat)?\s*(major|minor|maj|min|m)(?![A-Za-z])", re.IGNORECASE
)
_KEY_OF_RE = re.compile(r"\bkey of ([A-G])([#♯b♭]?)(?![A-Za-z])", re.IGNORECASE)
_MODE_RE = re.compile(r"\b(major|minor)\b", re.IGNORECASE)
_VOCAL_RE = re.compile(r"\b(female|male|woman|man|girl|boy)\b[\s-]*(?:vocals?|voice|singer)\b", re.IGNORECASE)
_INSTRUMENTAL_RE = re.compile(r"\b(instrumental|no vocals?)\b", re.IGNORECASE)


def _phrase_re(phrases: list[str]) -> re.Pattern[str]:
    alts = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<![\w&-])({alts})(?![\w&-])", re.IGNORECASE)


_KNOWN = {**{g: f"genre:{g}" for g in GENRES}, **{i: f"inst:{i}" for i in INSTRUMENTS},
          **{m: f"mood:{m}" for m in MOODS}}
_PHRASE_RE = _phrase_re(list(_KNOWN) + [a for a in _ALIASES if _ALIASES[a] in _KNOWN])


@dataclass(frozen=True)
class StyleTags:
    """The tags read from a style text; ``weights`` gives each tag's weight (1, or a tempo split)."""

    tags: tuple[str, ...]
    weights: tuple[float, ...]
    tempo: float | None = None
    key: int | None = None
    mode: str | None = None
    unknown: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.tags, self.weights))


def _tempo_weights(bpm: float) -> list[tuple[str, float]]:
    c = TEMPO_CENTERS
    if bpm <= c[0]:
        return [(f"tempo:{c[0]}", 1.0)]
    if bpm >= c[-1]:
        return [(f"tempo:{c[-1]}", 1.0)]
    for lo, hi in zip(c, c[1:]):
        if lo <= bpm <= hi:
            w = (bpm - lo) / (hi - lo)
            return [(t, x) for t, x in ((f"tempo:{lo}", 1.0 - w), (f"tempo:{hi}", w)) if x > 0]
    raise AssertionError("unreachable")


def _pitch_class(letter: str, accidental: str | None) -> int:
    pc = _PC[letter.upper()]
    acc = (accidental or "").lower()
    if acc in ("#", "♯", "sharp"):
        pc += 1
    elif acc in ("b", "♭", "flat"):
        pc -= 1
    return pc % 12


def hash_bucket(chunk: str) -> str:
    """Stable bucket tag for an unfamiliar chunk (CRC32 of its lowercased words)."""
    norm = " ".join(chunk.lower().split())
    return f"hash:{zlib.crc32(norm.encode('utf-8')) % HASH_BUCKETS}"


def parse_style_tags(text: str) -> StyleTags:
    """Read the tags of a style text (any order, any case; see the module docstring)."""
    if text is not None and len(text) > MAX_LYRICS_CHARS:  # every pattern here is linear; this bounds the work
        raise ValueError(f"style text holds {len(text)} characters; the limit is {MAX_LYRICS_CHARS}")
    found: dict[str, float] = {}
    tempo = key = mode = None
    unknown: list[str] = []
    for chunk in _SPLIT_RE.split(text or ""):
        chunk = chunk.strip().strip(".")
        if not chunk:
            continue
        rest = chunk
        m = _BPM_RE.search(rest)
        if m:
            bpm = float(m.group(1))
            if TEMPO.low <= bpm <= TEMPO.high:  # "10 bpm" is no tempo a request may ask for: not stated
                tempo = bpm
            rest = rest[: m.start()] + " " + rest[m.end():]
        m = _KEY_RE.search(rest)
        if m and (m.group(3).lower() != "m" or m.group(1).isupper()):
            key = _pitch_class(m.group(1), m.group(2))
            mode = "minor" if m.group(3).lower() in ("minor", "min", "m") else "major"
            rest = rest[: m.start()] + " " + rest[m.end():]
        else:
            m = _KEY_OF_RE.search(rest)
            if m:
                key = _pitch_class(m.group(1), m.group(2))
                rest = rest[: m.start()] + " " + rest[m.end():]
            m = _MODE_RE.search(rest)
            if m:
                mode = m.group(1).lower()
                rest = rest[: m.start()] + " " + rest[m.end():]
        m = _VOCAL_RE.search(rest)
        if m:
            found["vocal:female" if m.group(1).lower() in ("female", "woman", "girl") else "vocal:male"] = 1.0
            rest = rest[: m.start()] + " " + rest[m.end():]
        if _INSTRUMENTAL_RE.search(rest):
            found["vocal:none"] = 1.0
            rest = _INSTRUMENTAL_RE.sub(" ", rest)
        hits = _PHRASE_RE.findall(rest)
        for phrase in hits:
            name = phrase.lower()
            found[_KNOWN[_ALIASES.get(name, name)]] = 1.0
        leftover = _PHRASE_RE.sub(" ", rest).strip(" -.")
        if not hits and leftover and re.search(r"[^\W\d_]", leftover):
            found.setdefault(hash_bucket(leftover), 1.0)
            unknown.append(leftover)
    if tempo is not None:
        found.update(_tempo_weights(tempo))
    if key is not None:
        found[f"key:{key}"] = 1.0
    if mode is not None:
        found[f"mode:{mode}"] = 1.0
    tags = tuple(found)
    return StyleTags(tags, tuple(found[t] for t in tags), tempo, key, mode, tuple(unknown))


def default_tag_vocab() -> list[str]:
    """Every tag :func:`parse_style_tags` can produce, in a fixed order (index 0 = ``<none>``)."""
    vocab = ["<none>"]
    vocab += [f"genre:{g}" for g in GENRES]
    vocab += [f"inst:{i}" for i in INSTRUMENTS]
    vocab += [f"mood:{m}" for m in MOODS]
    vocab += ["vocal:female", "vocal:male", "vocal:none"]
    vocab += [f"tempo:{c}" for c in TEMPO_CENTERS]
    vocab += [f"key:{k}" for k in range(12)]
    vocab += ["mode:major", "mode:minor"]
    vocab += [f"hash:{h}" for h in range(HASH_BUCKETS)]
    return vocab
