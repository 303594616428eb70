"""Lyrics files -> a song as sections of lines.

Accepts plain lyrics and LRC. Structure tags (``[verse]``, ``[Chorus]``, `` [chorus 2] ``, ``[Verse 1: Ann]``)
start a new section; LRC time stamps (``[mm:ss.xx]``, several per line, and enhanced ``<mm:ss.xx>`` word
stamps) are removed from the text but kept per line as timing hints; LRC ID tags (``[ar:...]``,
``[offset:+250]``, any ``[key:value]``) are read as metadata and never sung; blank lines are skipped.
Anything else in square brackets is an error naming the file and line, because the model would
otherwise sing the bracketed words.

This is more forgiving than the released ``parse_lyrics``, which only recognises an exact lowercase tag
with nothing around it (it sings ``[Verse]`` as the word "verse") and crashes on blank lines.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dr2studio.lyrics.vocab import TAG_IDS
from dr2studio.requests import MAX_LYRICS_BYTES, MAX_LYRICS_CHARS

__all__ = [
    "LyricsDocument",
    "LyricsError",
    "Section",
    "STRUCTURE_TAGS",
    "UNTAGGED",
    "parse_lyrics",
    "parse_lyrics_file",
    "read_lyrics_bytes",
    "render_sections",
]

log = logging.getLogger(__name__)

#: Structure tag names, in id order.
STRUCTURE_TAGS: tuple[str, ...] = tuple(sorted(TAG_IDS, key=TAG_IDS.__getitem__))
#: Kind of the section holding lines that come before the first structure tag.
UNTAGGED = "untagged"
_ALIASES = {"instrumental": "inst", "interlude": "inst"}

# (?<!\s): a whitespace run is entered only at its start, so even an unanchored search stays linear
_TIME_RE = re.compile(r"(?<!\s)\s*+\[(\d{1,3}):(\d{1,2}(?:[.:]\d{1,3})?)\]")
_WORD_TIME_RE = re.compile(r"<\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?>")
_META_RE = re.compile(r"^\[\s*([A-Za-z#][\w#-]*)\s*:(.*)\]$")
# A structure tag: name, optional number, optional ": who". The name is taken whole (possessive) and its
# trailing ``_``/``-`` given back to the number's separator afterwards (:func:`_tag_name`); the former lazy
# name overlapping ``[\s_-]*`` backtracked cubically (a 60 KB ``[a____...!]`` took minutes).
_TAG_RE = re.compile(r"^\[\s*+([A-Za-z][A-Za-z_-]*+)(?:[\s_-]*+(\d++))?\s*+(?::[^\]]*+)?\]$")
_LEADING_RE = re.compile(r"^(\[[^\[\]]*\])\s*(.*)$")
_BRACKET_RE = re.compile(r"\[[^\]]*\]?|\]")
_LINE_SPLIT_RE = re.compile(r"\r\n|\r|\n")


class LyricsError(ValueError):
    """A lyrics file cannot be read; ``source`` and ``line`` say where."""

    def __init__(self, message: str, source: str | None = None, line: int | None = None) -> None:
        where = source or "<lyrics>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True)
class Section:
    """One part of a song: ``kind`` is a structure tag name (or :data:`UNTAGGED`), ``index`` counts the
    sections of that kind from 1 ("the second chorus" is ``Section("chorus", 2, ...)``).

    ``times`` holds, per line, the LRC time stamps in seconds (empty when the file had none);
    ``start_time`` is the stamp on the tag line itself, if any.
    """

    kind: str
    index: int = 1
    lines: tuple[str, ...] = ()
    times: tuple[tuple[float, ...], ...] = ()
    start_time: float | None = None

    def __post_init__(self) -> None:
        kind = self.kind.strip().lower() if isinstance(self.kind, str) else self.kind
        if kind != UNTAGGED and kind not in TAG_IDS:
            raise ValueError(f"unknown section kind {self.kind!r}; expected one of {', '.join(STRUCTURE_TAGS)}")
        if not isinstance(self.index, int) or self.index < 1:
            raise ValueError(f"section index must be an int >= 1, got {self.index!r}")
        lines = tuple(str(x) for x in self.lines)
        bad = [x for x in lines if "\n" in x or "\r" in x]
        if bad:
            raise ValueError(f"a section line must be a single line, got {bad[0]!r}")
        times = tuple(tuple(float(t) for t in ts) for ts in self.times) or tuple(() for _ in lines)
        if len(times) != len(lines):
            raise ValueError(f"section {kind}: {len(times)} timing entries for {len(lines)} lines")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "times", times)

    @property
    def tag(self) -> str | None:
        """``"[chorus]"`` as the released tokeniser spells it, or ``None`` for untagged lines."""
        return None if self.kind == UNTAGGED else f"[{self.kind}]"

    @property
    def label(self) -> str:
        """Human name, e.g. ``"chorus 2"``."""
        return f"{self.kind} {self.index}"

    @property
    def first_time(self) -> float | None:
        """Earliest time stamp of the section (tag line or lines), or ``None`` without LRC timing."""
        stamps = [t for ts in self.times for t in ts]
        if self.start_time is not None:
            stamps.append(self.start_time)
        return min(stamps) if stamps else None

    def to_text(self) -> str:
        """The section as lyrics text: the tag line (if any) followed by its lines."""
        head = [self.tag] if self.tag else []
        return "\n".join(head + list(self.lines))


def render_sections(sections: Iterable[Section]) -> str:
    """Lyrics text for ``sections``, in order, one tag or lyric per line (what the tokeniser reads)."""
    return "\n".join(s.to_text() for s in sections if s.tag or s.lines)


@dataclass(frozen=True)
class LyricsDocument:
    """A parsed song: its sections in order, LRC metadata, and where it came from."""

    sections: tuple[Section, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", tuple(self.sections))

    @classmethod
    def from_sections(
        cls, sections: Iterable[Section], *, metadata: dict[str, str] | None = None, source: str | None = None
    ) -> "LyricsDocument":
        """Build a song from sections (e.g. after inserting a bridge), renumbering each kind from 1."""
        counts: dict[str, int] = {}
        out = []
        for s in sections:
            counts[s.kind] = counts.get(s.kind, 0) + 1
            out.append(dataclasses.replace(s, index=counts[s.kind]))
        return cls(tuple(out), dict(metadata or {}), source)

    def __iter__(self) -> Iterator[Section]:
        return iter(self.sections)

    def __len__(self) -> int:
        return len(self.sections)

    @property
    def lines(self) -> list[str]:
        """Every lyric line, in order, without tags."""
        return [line for s in self.sections for line in s.lines]

    def find(self, kind: str, index: int = 1) -> Section:
        """The ``index``-th section of ``kind`` (``find("chorus", 2)``); ``KeyError`` lists what exists."""
        kind = kind.strip().lower()
        for s in self.sections:
            if s.kind == kind and s.index == index:
                return s
        have = ", ".join(s.label for s in self.sections) or "no sections"
        raise KeyError(f"no {kind} {index} in {self.source or 'these lyrics'} (it has: {have})")

    def position(self, kind: str, index: int = 1) -> int:
        """Position of a section in :attr:`sections`."""
        return self.sections.index(self.find(kind, index))

    def to_text(self, sections: Sequence[Section] | None = None) -> str:
        """Lyrics text for the whole song or for the given sections (tags normalised to lowercase)."""
        return render_sections(self.sections if sections is None else sections)


def _parse_time(minutes: str, seconds: str) -> float:
    sec = seconds.replace(":", ".")
    return int(minutes) * 60.0 + float(sec)


def _tag_name(m: re.Match[str]) -> str:
    """The tag name of a :data:`_TAG_RE` match, as the lazy ``[A-Za-z_-]*?`` of the original pattern read it."""
    return m.group(1).rstrip("_-") if m.group(2) is not None else m.group(1)


def _shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for an error message (a 60 KB tag stays a one-line error)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _canonical_tag(name: str) -> str | None:
    key = name.lower()
    if key in TAG_IDS:
        return key
    return _ALIASES.get(key)


def parse_lyrics(text: str, source: str | os.PathLike | None = None) -> LyricsDocument:
    """Parse plain lyrics or LRC text into a :class:`LyricsDocument`.

    ``source`` only names the text in error messages (``song.lrc:12: unknown tag [pre-chorus] ...``).
    """
    if not isinstance(text, str):
        raise TypeError(f"lyrics must be a str, got {type(text).__name__}")
    src = None if source is None else str(source)
    if len(text) > MAX_LYRICS_CHARS:
        raise LyricsError(f"lyrics hold {len(text)} characters; the limit is {MAX_LYRICS_CHARS}", src)
    if text.startswith("\ufeff"):
        text = text[1:]
    builder = _SectionBuilder()
    metadata: dict[str, str] = {}
    for line_no, raw in enumerate(_LINE_SPLIT_RE.split(text), start=1):
        line = raw.strip()
        if not line:
            continue
        stamps: list[float] = []
        pos = 0
        while (m := _TIME_RE.match(line, pos)) is not None:  # by position: no copy of the line per stamp
            stamps.append(_parse_time(m.group(1), m.group(2)))
            pos = m.end()
        line = line[pos:]
        line = _WORD_TIME_RE.sub("", line).strip()
        if not line:
            continue  # a time stamp alone marks a pause in LRC
        lead = _LEADING_RE.match(line)
        tag = _TAG_RE.match(lead.group(1)) if lead is not None else None
        kind = _canonical_tag(_tag_name(tag)) if tag is not None else None
        if kind is not None:
            builder.start(kind, stamps[0] if stamps else None)
            line = lead.group(2)
            if not line:
                continue
        meta = _META_RE.match(line)
        if meta is not None and not stamps and _canonical_tag(meta.group(1)) is None and "[" not in meta.group(2):
            metadata[meta.group(1).strip().lower()] = meta.group(2).strip()
            continue
        bracket = _BRACKET_RE.search(line)
        if bracket is not None:
            raise LyricsError(
                f"unknown bracketed tag {_shorten(bracket.group(0))!r}; structure tags are "
                f"{' '.join('[' + t + ']' for t in STRUCTURE_TAGS)} (any case); LRC time stamps look like "
                "[01:23.45]; remove the brackets to sing the words",
                src,
                line_no,
            )
        builder.add(line, tuple(stamps))
    sections = builder.finish()
    offset = metadata.get("offset")
    if offset:
        try:
            shift = float(offset) / 1000.0
        except ValueError:
            log.warning("%s: ignoring LRC offset %r (not a number of milliseconds)", src or "<lyrics>", offset)
        else:
            sections = [_shift(s, -shift) for s in sections]
    return LyricsDocument(tuple(sections), metadata, src)


def _shift(section: Section, delta: float) -> Section:
    times = tuple(tuple(max(0.0, t + delta) for t in ts) for ts in section.times)
    start = None if section.start_time is None else max(0.0, section.start_time + delta)
    return dataclasses.replace(section, times=times, start_time=start)


class _SectionBuilder:
    """Accumulates lines into sections, counting each kind."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.counts: dict[str, int] = {}
        self.kind: str | None = None
        self.start_time: float | None = None
        self.lines: list[str] = []
        self.times: list[tuple[float, ...]] = []

    def _flush(self) -> None:
        if self.kind is None:
            return
        self.counts[self.kind] = self.counts.get(self.kind, 0) + 1
        self.sections.append(
            Section(self.kind, self.counts[self.kind], tuple(self.lines), tuple(self.times), self.start_time)
        )
        self.lines, self.times = [], []

    def start(self, kind: str, start_time: float | None) -> None:
        self._flush()
        self.kind, self.start_time = kind, start_time

    def add(self, line: str, stamps: tuple[float, ...]) -> None:
        if self.kind is None:
            self.kind, self.start_time = UNTAGGED, None
        self.lines.append(line)
        self.times.append(stamps)

    def finish(self) -> list[Section]:
        self._flush()
        return self.sections


def _decode(data: bytes, source: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LyricsError(f"not valid UTF-16 after its byte-order mark ({exc.reason})", source) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LyricsError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); save the file as UTF-8",
            source,
            line,
        ) from exc


def read_lyrics_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a lyrics file, refused before reading when it is not a regular file (a folder, a FIFO
    that would block, a device) or is larger than :data:`~dr2studio.requests.MAX_LYRICS_BYTES`."""
    path = Path(path)
    try:
        # non-blocking open (a FIFO would wait for a writer forever), then stat the open file: no swap in between
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise LyricsError("not a regular file", str(path))
            if info.st_size > MAX_LYRICS_BYTES:
                raise LyricsError(f"file is {info.st_size} bytes; the limit for lyrics is {MAX_LYRICS_BYTES} bytes "
                                  f"({MAX_LYRICS_CHARS} characters)", str(path))
            data = f.read(MAX_LYRICS_BYTES + 1)  # bounded even if the file grows after the stat
    except FileNotFoundError:
        raise LyricsError("file not found", str(path)) from None
    except IsADirectoryError:
        raise LyricsError("is a folder, not a lyrics file", str(path)) from None
    except OSError as exc:
        raise LyricsError(f"cannot read: {exc.strerror or exc}", str(path)) from exc
    if len(data) > MAX_LYRICS_BYTES:
        raise LyricsError(f"file grew past the limit for lyrics ({MAX_LYRICS_BYTES} bytes) while being read", str(path))
    return data


def parse_lyrics_file(path: str | os.PathLike) -> LyricsDocument:
    """Read and parse a ``.lrc``/``.txt`` file (UTF-8 with or without BOM, or UTF-16 with BOM).

    The size is checked before reading (:func:`read_lyrics_bytes`) and the text length before parsing.
    """
    data = read_lyrics_bytes(path)
    return parse_lyrics(_decode(data, str(path)), source=str(path))
