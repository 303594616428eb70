"""MIDI files as song plans: ``marker`` events name sections, ``lyrics`` events carry the words,
``set_tempo`` / ``time_signature`` give the grid and ``cue_marker`` events carry commands.

Times are read in beats (quarter notes: ticks / ticks_per_beat), the unit Ableton's timeline uses, and
turned into seconds and bars through the file's :class:`~dr2studio.tempomap.TempoMap` (every tempo and
meter change, not one average). Text is decoded in the encoding the file was written in (see
:mod:`.miditext`: UTF-8, GBK, Shift-JIS, ...).

Lyrics follow the karaoke conventions: syllables are concatenated; a syllable starting with ``/``
starts a new line and one starting with ``\\`` a new paragraph; one ending in ``\\r`` or ``\\n`` ends its
line. ``.kar`` files carry their words in ``text`` events, with ``@`` header lines that are skipped.
Syllables no section marker covers are kept: they get ``verse`` sections of their own, one per
paragraph, snapped to the bar line. A file with neither markers nor words becomes one ``instrumental``
section as long as the file.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

from dr2studio.bridge.miditext import decode_texts
from dr2studio.bridge.session import MAX_SECTIONS, SECTION_KINDS, BridgeError, Session
from dr2studio.tempomap import TempoMap

log = logging.getLogger(__name__)

__all__ = ["MidiPlan", "PlannedSection", "MidiImport", "read_midi_file", "apply_midi_plan", "import_midi_file",
           "import_midi_path", "imported_message", "MAX_MIDI_FILE", "MAX_MIDI_MARKERS", "MAX_MIDI_TEXT_EVENTS",
           "MAX_MIDI_GRID_CHANGES", "MAX_CUE_JOBS", "IMPORTED_ADDRESS"]

MAX_MIDI_FILE = 4 * 1024 * 1024
#: ``marker`` + ``cue_marker`` events a file may carry (a session holds at most 128 sections).
MAX_MIDI_MARKERS = 1024
#: Text events of all kinds (lyric syllables, text, names); a song's lyrics are limited to 48 K characters.
MAX_MIDI_TEXT_EVENTS = 65_536
#: Tempo + time signature changes.
MAX_MIDI_GRID_CHANGES = 10_000
#: ``generate`` cues (jobs) one file may start.
MAX_CUE_JOBS = 4
#: A marker longer than this names no section kind (kinds are short words) and is not parsed.
_MAX_KIND_TEXT = 64
IMPORTED_ADDRESS = "/dr2/midi/imported"
_STOP_MARKERS = {"end", "stop", "fin"}
_TEXT_TYPES = ("text", "lyrics", "marker", "cue_marker", "copyright")
_NAME_TYPES = ("track_name", "instrument_name", "device_name")
#: A syllable made only of these holds the previous note (melisma / extender marks); nothing to sing.
_EXTENDER = re.compile(r"^[-_+~]+$")
_SESSION_BPM = (20.0, 999.0)


@dataclasses.dataclass
class PlannedSection:
    sec_id: str
    kind: str
    start_beats: float
    length_beats: float
    lyrics: str = ""


@dataclasses.dataclass
class MidiPlan:
    """What a MIDI file says about a song. ``bpm`` is the tempo that sounds longest (for the style
    prompt); positions go through ``tempo_map``."""

    source: str
    bpm: float
    tempo_map: TempoMap
    timesig: tuple[int, int]
    sections: list[PlannedSection]
    cues: list[tuple[float, str]]
    length_beats: float
    encoding: str = "ascii"
    syllables: int = 0

    def seconds_at(self, beats: float) -> float:
        """Seconds at ``beats`` following the tempo map."""
        return self.tempo_map.seconds_at(beats)


@dataclasses.dataclass
class MidiImport:
    """What an import did, for the ``/dr2/midi/imported`` reply."""

    source: str
    plan: MidiPlan
    jobs: list[str]
    merged: bool


@dataclasses.dataclass
class _Text:
    beat: float
    track: int
    type: str
    text: str


_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ -")


def _kind_of(name: str) -> str | None:
    """The section kind a marker names: ``Verse 2``, ``pre-chorus_1``, ``Chorus: big`` -> kind, else None.

    Parsed by hand in one pass (a regular expression with nested optional parts backtracked
    catastrophically on a long marker and froze the bridge): text before the first ``:``, trailing
    digits and then ``_`` / ``-`` / spaces dropped, the rest must be a letter followed by letters,
    spaces and hyphens.
    """
    head = name.partition(":")[0].strip()
    if not head or len(head) > _MAX_KIND_TEXT:
        return None
    head = head.rstrip("0123456789").rstrip(" \t\r\n\f\v_-")
    if not head or not head[0].isascii() or not head[0].isalpha() or not set(head) <= _WORD_CHARS:
        return None
    word = head.strip().lower().replace(" ", "-")
    return word if word in SECTION_KINDS else None


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", text[:200]).strip("-").lower()[:48] or "section"
    if not base[0].isalnum():
        base = "s" + base
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _open(path: Path) -> Any:
    """mido reads text as latin-1 so the raw bytes survive for :func:`decode_texts`; out-of-range data
    bytes (a common writer bug) are clipped rather than refused. The bytes are read once, bounded
    (a file that grows after the size check cannot make the bridge read more)."""
    import io

    import mido

    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MIDI_FILE + 1)
    except OSError as exc:
        raise BridgeError(f"cannot read MIDI file {path.name}: {exc}", 404) from exc
    if len(data) > MAX_MIDI_FILE:
        raise BridgeError(f"MIDI file {path.name} is larger than {MAX_MIDI_FILE} bytes", 413)
    try:
        return mido.MidiFile(file=io.BytesIO(data), charset="latin1", clip=True)
    except Exception as exc:  # mido raises OSError, EOFError, ValueError, KeyError, IndexError... on bad files
        raise BridgeError(f"{path.name} is not a readable MIDI file: {type(exc).__name__}: {exc}") from exc


def _too_many(path: Path, what: str, count: int, limit: int) -> BridgeError:
    return BridgeError(f"{path.name}: {count} {what} exceed the limit of {limit}; nothing was applied", 413)


def read_midi_file(path: str | Path) -> MidiPlan:
    """Read sections, lyrics, tempo map, time signature and cues from a Standard MIDI File.

    Only reads: the whole file is parsed and every limit checked before anything is applied, so a
    file the bridge refuses leaves the session as it was.
    """
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"MIDI file {path} does not exist", 404)
    if path.stat().st_size > MAX_MIDI_FILE:
        raise BridgeError(f"MIDI file {path} is larger than {MAX_MIDI_FILE} bytes", 413)
    mid = _open(path)
    if mid.type not in (0, 1, 2):
        raise BridgeError(f"{path.name}: MIDI file type {mid.type} is not 0, 1 or 2 (a damaged header)")
    if not mid.tracks:
        raise BridgeError(f"{path.name}: the MIDI file has no tracks (a header alone, or a damaged file); nothing was applied")
    if mid.type == 2:
        raise BridgeError(f"{path.name}: type 2 MIDI files (independent patterns) have no common timeline")
    if not mid.ticks_per_beat or mid.ticks_per_beat <= 0:
        raise BridgeError(f"{path.name}: SMPTE time division is not supported (need ticks per quarter note)")
    tpb = float(mid.ticks_per_beat)
    tempos: list[tuple[float, float]] = []
    meters: list[tuple[float, int, int]] = []
    raw: list[tuple[float, int, str, bytes]] = []
    end_tick = 0
    markers_seen = 0
    for index, track in enumerate(mid.tracks):
        tick = 0
        for msg in track:
            tick += msg.time
            end_tick = max(end_tick, tick)
            if not msg.is_meta:
                continue
            beat = tick / tpb
            if msg.type in ("marker", "cue_marker"):
                markers_seen += 1
                if markers_seen > MAX_MIDI_MARKERS:
                    raise _too_many(path, "markers and cue markers", markers_seen, MAX_MIDI_MARKERS)
            if len(raw) >= MAX_MIDI_TEXT_EVENTS:
                raise _too_many(path, "text events", len(raw) + 1, MAX_MIDI_TEXT_EVENTS)
            if len(tempos) + len(meters) >= MAX_MIDI_GRID_CHANGES:
                raise _too_many(path, "tempo and meter changes", len(tempos) + len(meters) + 1, MAX_MIDI_GRID_CHANGES)
            if msg.type == "set_tempo":
                if msg.tempo > 0:
                    tempos.append((beat, 60_000_000.0 / msg.tempo))
            elif msg.type == "time_signature":
                if 1 <= msg.numerator <= 32 and msg.denominator in (1, 2, 4, 8, 16, 32):
                    meters.append((beat, int(msg.numerator), int(msg.denominator)))
                else:
                    log.warning("%s: time signature %s/%s at beat %g is not usable; ignored", path.name,
                                msg.numerator, msg.denominator, beat)
            elif msg.type in _TEXT_TYPES:
                raw.append((beat, index, msg.type, msg.text.encode("latin-1", errors="replace")))
            elif msg.type in _NAME_TYPES:
                raw.append((beat, index, msg.type, msg.name.encode("latin-1", errors="replace")))
    if end_tick == 0 and not raw and not tempos and not meters:
        raise BridgeError(f"{path.name}: the MIDI file holds no events (no tempo, meter, markers or lyrics); "
                          "nothing was applied")
    texts, encoding = decode_texts([r[3] for r in raw])
    events = sorted((_Text(b, i, t, s) for (b, i, t, _), s in zip(raw, texts)), key=lambda e: e.beat)
    tempo_map = TempoMap.from_changes(tempos, meters)
    length = end_tick / tpb
    bpm = min(max(tempo_map.main_bpm(length), _SESSION_BPM[0]), _SESSION_BPM[1])
    _, num, den = tempo_map.meters[0]
    markers = [(e.beat, e.text.strip()) for e in events if e.type == "marker" and e.text.strip()]
    cues = [(e.beat, e.text.strip()) for e in events if e.type == "cue_marker" and e.text.strip()]
    lyrics = _lyric_syllables(events, karaoke=path.suffix.lower() == ".kar")
    jobs = sum(1 for _, text in cues if _cue(text)[0] in ("generate", "song"))
    if jobs > MAX_CUE_JOBS:
        raise _too_many(path, "generate cues", jobs, MAX_CUE_JOBS)
    plan = MidiPlan(str(path), bpm, tempo_map, (num, den), [], cues, length, encoding)
    plan.sections = _sections(markers, lyrics, length, tempo_map)
    plan.syllables = len(lyrics)
    log.info("%s: %d sections, %d syllables (%s), %d tempo and %d meter changes", path.name, len(plan.sections),
             len(lyrics), encoding, len(tempo_map.tempos) - 1, len(tempo_map.meters) - 1)
    return plan


def _lyric_syllables(events: list[_Text], karaoke: bool) -> list[tuple[float, str]]:
    """The sung syllables: ``lyrics`` events, else karaoke ``text`` events (``@`` headers skipped).

    Several tracks often carry the same words (one per voice); where their spans overlap only the
    track with the most syllables is sung, tracks covering other parts of the song are added. Karaoke
    words come from one track.
    """
    candidates = [e for e in events if e.type == "lyrics"]
    single = False
    if not candidates:
        texts = [e for e in events if e.type == "text"]
        if karaoke or any(e.text.startswith("@") for e in texts):
            candidates = [e for e in texts if not e.text.startswith("@")]
            single = True  # other text tracks of a .kar hold credits, not words
    by_track: dict[int, list[_Text]] = {}
    for e in candidates:
        if not _EXTENDER.match(e.text.strip()) and e.text:
            by_track.setdefault(e.track, []).append(e)
    chosen: list[list[_Text]] = []
    for track in sorted(by_track.values(), key=len, reverse=True):
        lo, hi = track[0].beat, track[-1].beat
        if not chosen or (not single and all(hi < t[0].beat or lo > t[-1].beat for t in chosen)):
            chosen.append(track)
        else:
            log.info("lyrics of track %d overlap a longer lyric track; that one is sung", track[0].track)
    return sorted(((e.beat, e.text) for t in chosen for e in t), key=lambda s: s[0])


def _sections(markers: list[tuple[float, str]], lyrics: list[tuple[float, str]], length: float,
              tempo_map: TempoMap) -> list[PlannedSection]:
    """Sections from section-kind markers; lyrics outside them get ``verse`` sections of their own."""
    taken: set[str] = set()
    bounds: list[tuple[float, str | None, str]] = []  # (beat, kind or None for a stop, name)
    for beat, name in markers:
        if name.lower() in _STOP_MARKERS:
            bounds.append((beat, None, name))
        elif (kind := _kind_of(name)) is not None:
            bounds.append((beat, kind, name))
        else:
            log.warning("marker %r at beat %g is not a section kind (%s); it starts no section", name, beat,
                        ", ".join(SECTION_KINDS))
    bounds.sort(key=lambda b: b[0])
    sections: list[PlannedSection] = []
    gaps: list[tuple[float, float]] = []
    cursor = 0.0
    for i, (start, kind, name) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else max(length, start)
        if start > cursor:
            gaps.append((cursor, start))
        if kind is None:
            if end > start:
                gaps.append((start, end))
        else:
            if end <= start:  # a marker at the very end: four bars
                end = tempo_map.beat_of_bar(tempo_map.bar_at(start) + 4)
            sections.append(PlannedSection(_slug(name, taken), kind, start, end - start))
        cursor = max(cursor, end)
    if cursor < length or not bounds:
        gaps.append((cursor, max(length, cursor)))
    for lo, hi in gaps:
        inside = [(b, s) for b, s in lyrics if lo <= b < hi or (hi == length and b == hi)]
        if inside:
            sections.extend(_lyric_sections(inside, lo, hi, tempo_map, taken, song_start=not sections and lo == 0.0))
    if not sections and length > 0:  # no markers, no words: the whole piece, so a song job gets its length
        sections.append(PlannedSection("instrumental", "instrumental", 0.0, length))
    sections.sort(key=lambda s: s.start_beats)
    if len(sections) > MAX_SECTIONS:
        raise BridgeError(f"the file makes {len(sections)} sections; a session holds at most {MAX_SECTIONS}", 413)
    starts = [s.start_beats for s in sections]
    words: list[list[str]] = [[] for _ in sections]
    for beat, text in lyrics:
        words[max(0, bisect.bisect_right(starts, beat) - 1)].append(text)
    for sec, syllables in zip(sections, words):
        sec.lyrics = _join_syllables(syllables)
    return sections


def _lyric_sections(lyrics: list[tuple[float, str]], lo: float, hi: float, tempo_map: TempoMap, taken: set[str],
                    song_start: bool) -> list[PlannedSection]:
    """``verse`` sections for lyrics no marker covers: one per karaoke paragraph (``\\``), starting on
    the bar line of its first syllable; an instrumental ``intro`` before the first words at the song's start."""
    starts = [lo]
    for beat, text in lyrics[1:]:
        if text.startswith("\\"):
            bar = max(tempo_map.bar_start(beat), lo)
            if bar > starts[-1]:
                starts.append(bar)
    out: list[PlannedSection] = []
    first_bar = max(tempo_map.bar_start(lyrics[0][0]), lo)
    if song_start and first_bar > lo:
        out.append(PlannedSection(_slug("intro", taken), "intro", lo, first_bar - lo))
        starts[0] = first_bar
        starts = [s for i, s in enumerate(starts) if i == 0 or s > first_bar]
    bounds = starts + [max(hi, starts[-1] + 1.0)]
    for a, b in zip(bounds, bounds[1:]):
        out.append(PlannedSection(_slug("verse", taken), "verse", a, b - a))
    return out


def _join_syllables(syllables: list[str]) -> str:
    lines: list[str] = []
    current = ""
    for syl in syllables:
        if syl[:1] in ("/", "\\"):
            if current.strip():
                lines.append(current.strip())
            current, syl = "", syl[1:]
        ends = syl.endswith(("\r", "\n"))
        current += syl.rstrip("\r\n")
        if ends:
            if current.strip():
                lines.append(current.strip())
            current = ""
    if current.strip():
        lines.append(current.strip())
    return "\n".join(lines)


def _cue(text: str) -> tuple[str, str]:
    """A cue marker as ``(command, argument)``: ``style: pop`` -> ``("style", "pop")``."""
    command, _, arg = text.partition(":")
    return command.strip().lower(), arg.strip()


def apply_midi_plan(bridge: Any, plan: MidiPlan, *, merge: bool = False, job_prefix: str = "midi") -> MidiImport:
    """Make ``plan`` the session's grid, sections and lyrics, then run its cues, all or nothing.

    By default the plan replaces the sections and lyrics there were (a second import must not pile
    stale sections on the first); ``merge`` keeps them and overwrites same-named ones. Everything is
    checked on a scratch copy first; the session is changed and the cue jobs submitted under the
    bridge's lock, and if a job cannot be queued (queue full) the session is put back and the jobs
    already queued are cancelled, so a file the session cannot take changes nothing.
    Cues: ``style: TEXT`` sets the style; ``generate`` (or ``song``) starts a whole-song job.
    """
    from dr2studio.bridge.core import BridgeJob

    current = bridge.require_session()
    scratch = Session(project=current.project, daw=current.daw)
    if merge:
        for sec in current.sections.values():
            scratch.define_section(sec.sec_id, sec.kind, sec.start_beats, sec.length_beats)
        for sec_id, lines in current.lyrics.items():
            scratch.set_lyrics(sec_id, "\n".join(lines))
    scratch.set_tempo(round(plan.bpm, 3))
    scratch.set_timesig(*plan.timesig)
    for sec in plan.sections:
        scratch.define_section(sec.sec_id, sec.kind, sec.start_beats, sec.length_beats)
        scratch.set_lyrics(sec.sec_id, sec.lyrics)
    style: str | None = None
    generate = 0
    for _, text in plan.cues:
        command, arg = _cue(text)
        if command == "style" and arg:
            if len(arg) > 1000:
                raise BridgeError(f"{Path(plan.source).name}: style cue of {len(arg)} characters; the limit is 1000")
            style = arg
        elif command in ("generate", "song"):
            generate += 1
        else:
            log.warning("%s: cue %r is not a command (style: TEXT, generate)", plan.source, text[:80])
    if generate > MAX_CUE_JOBS:
        raise BridgeError(f"{Path(plan.source).name}: {generate} generate cues; the limit is {MAX_CUE_JOBS}", 413)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(plan.source).stem)[:40]
    fields = ("bpm", "timesig", "tempo_map", "sections", "lyrics", "chunks", "style")

    def adopt(session: Session) -> list[str]:
        before = {name: getattr(session, name) for name in fields}
        session.bpm, session.timesig = scratch.bpm, scratch.timesig
        session.tempo_map = None if plan.tempo_map.is_constant else plan.tempo_map
        session.sections, session.lyrics, session.chunks = scratch.sections, scratch.lyrics, {}
        if style is not None:
            session.style = style
        jobs: list[str] = []
        try:
            for _ in range(generate):
                job_id = f"{job_prefix}-{stem}-{uuid.uuid4().hex[:8]}"
                bridge.submit(job_id, BridgeJob("song"))
                jobs.append(job_id)
        except BaseException:
            for name, value in before.items():
                setattr(session, name, value)
            for job_id in jobs:
                try:
                    bridge.cancel(job_id)
                except BridgeError:
                    pass  # already over
            raise
        return jobs

    jobs = bridge.update_session(adopt)
    return MidiImport(Path(plan.source).name, plan, jobs, merge)


def imported_message(result: MidiImport) -> tuple[str, list]:
    """``/dr2/midi/imported s:file i:sections i:syllables s:encoding s:json`` (the json lists the
    section ids, bpm, tempo and meter changes and the jobs the cues started)."""
    plan = result.plan
    detail = {
        "sections": [s.sec_id for s in plan.sections],
        "bpm": round(plan.bpm, 3),
        "timesig": list(plan.timesig),
        "tempo_changes": len(plan.tempo_map.tempos) - 1,
        "meter_changes": len(plan.tempo_map.meters) - 1,
        "seconds": round(plan.seconds_at(plan.length_beats), 3),
        "jobs": result.jobs,
        "merged": result.merged,
    }
    return IMPORTED_ADDRESS, [result.source, len(plan.sections), plan.syllables, plan.encoding,
                              json.dumps(detail, ensure_ascii=False)]


def import_midi_path(bridge: Any, path: str | Path, *, merge: bool = False, job_prefix: str = "midi") -> MidiImport:
    """Read and apply a MIDI file the caller already trusts (the watch folder's)."""
    return apply_midi_plan(bridge, read_midi_file(path), merge=merge, job_prefix=job_prefix)


def import_midi_file(bridge: Any, path: str, merge: bool = False) -> MidiImport:
    """``/dr2/midi/file``: read a MIDI file from inside the open project and apply it."""
    from dr2studio.bridge.paths import PathError, resolve_inside

    session = bridge.require_session()
    try:
        resolved = resolve_inside(session.project, path, "MIDI file")
    except PathError as exc:
        raise BridgeError(str(exc), 403) from exc
    if resolved.suffix.lower() not in (".mid", ".midi", ".kar"):
        raise BridgeError(f"MIDI file {path!r} must end with .mid, .midi or .kar")
    return import_midi_path(bridge, resolved, merge=merge)
