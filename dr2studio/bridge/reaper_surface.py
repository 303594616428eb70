"""REAPER's own OSC control surface, heard by the bridge: the project's grid and its regions as sections.

REAPER (Preferences > Control/OSC/web > Add > OSC) sends its state to the bridge's OSC port with the
addresses of the pattern file ``bridges/reaper/dr2studio.ReaperOSC`` (REAPER's own names, the same
addresses its ``Default.ReaperOSC`` uses; see docs/reaper.md):

- ``/tempo/raw f`` (TEMPO): the project tempo; 0, negative, NaN or outside the request limit is an error
  event and leaves the session as it was.
- ``/time f`` (TIME) and ``/beat/str s`` (BEAT, "bar.beat.hundredths"): the play position. REAPER's
  surface has no time-signature message, so the numerator is read off the beat counter: when the bar
  number steps by one, the last beat seen in the bar before is the numerator (the denominator stays).
- ``/play``, ``/stop``, ``/pause``, ``/record`` (binary feedback 1/0): the transport state.
- ``/region/N/name|time|length|number/str`` and ``/marker/N/name|time|number/str`` (REGION_*,
  MARKER_*; N counts from 1 within the bank of DEVICE_REGION_COUNT / DEVICE_MARKER_COUNT).
- ``/action/...``: a toggle action's state, if REAPER reports one; ignored.

REAPER gets no acks (it sends the play position many times a second), only ``/dr2/error``.

A region named by a section kind ("Verse 1", "Chorus", "Pre-Chorus 2") becomes a section of the open
session; its lyrics come, first found wins, from the name after ``|`` (``"Verse 1 | line one / line
two"``: `` / `` breaks lines), from ``<section id>.lrc`` in the project folder (``verse-1.lrc``), or from
the project's ``lyrics.lrc``, the section of the same kind and number ("Verse 2" takes its second
``[verse]``). Markers count only when the project has no regions: a marker named by a kind starts a
section that ends at the next marker (a marker named "End" ends the last one; without it the last
gets :data:`LAST_MARKER_BARS` bars). A name that is no section kind is reported once with
``/dr2/error s:"reaper:region N" s:message`` and that region is left out whole.

When a job is done, :class:`ReaperAction` sends ``/action/<command id>`` to REAPER's listen port, so
the shipped import action (``bridges/reaper/dr2_import_takes.lua``) places the take.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import socket
import threading
from typing import Any

from pythonosc.osc_message_builder import build_msg

from dr2studio.bridge.core import Bridge
from dr2studio.bridge.paths import PathError, read_text_inside
from dr2studio.bridge.session import MAX_SECTION_LYRICS, SECTION_KINDS, BridgeError, Session, clean_lyrics, model_tag

log = logging.getLogger(__name__)

__all__ = ["ReaperSurface", "ReaperAction", "RegionPlan", "parse_region_name", "parse_action_target", "is_reaper_address",
           "check_command_id", "LYRICS_SEPARATOR", "LINE_BREAK", "SONG_LYRICS_FILE", "LAST_MARKER_BARS"]

#: Between a region's section name and its lyrics: ``"Verse 1 | first line / second line"``.
LYRICS_SEPARATOR = "|"
#: Breaks lyric lines inside a region name (a name is one line).
LINE_BREAK = " / "
#: The song's lyrics in the project folder, with ``[verse]``/``[chorus]`` tags (plain text or LRC).
SONG_LYRICS_FILE = "lyrics.lrc"
#: Length of the last section when markers (not regions) define the sections and no "End" marker closes it.
LAST_MARKER_BARS = 8
#: Region / marker slots the surface keeps (REAPER sends DEVICE_REGION_COUNT of them per bank).
MAX_SLOTS = 512
_MAX_LRC_BYTES = 256 * 1024
_SLOT_RE = re.compile(r"^/(region|marker)/(\d{1,4})/(name|time|length|number/str)$")
_BEAT_RE = re.compile(r"^\s*(-?\d+)\.(\d+)(?:\.(\d+))?\s*$")
_NAME_RE = re.compile(r"^\s*([A-Za-z][A-Za-z _-]*?)[\s_-]*(\d{1,3})?\s*$")
_ACTION_RE = re.compile(r"^/action(?:/[A-Za-z0-9_]{1,128}(?:/cc)?)?$")
_COMMAND_ID_RE = re.compile(r"^(?:_[A-Za-z0-9_]{1,127}|[1-9][0-9]{0,6})$")
_TRANSPORT = {"/play": "playing", "/stop": "stopped", "/pause": "paused", "/record": "recording"}


def is_reaper_address(address: str) -> bool:
    """An address REAPER's surface sends with ``dr2studio.ReaperOSC``: the ones this module reads, and
    ``/action/...`` (REAPER may report a toggle action's state there; the bridge ignores it)."""
    return (address in ("/tempo/raw", "/time", "/beat/str") or address in _TRANSPORT
            or bool(_SLOT_RE.match(address)) or bool(_ACTION_RE.match(address)))


def check_command_id(command_id: str) -> str:
    """A REAPER command id as the action list's "Copy selected action command ID" gives it: a number
    (built-in actions) or ``_`` + letters/digits (scripts: ``_RS1a2b...``, extensions: ``_SWS_...``)."""
    if not isinstance(command_id, str) or not _COMMAND_ID_RE.match(command_id):
        raise BridgeError(f"REAPER command id {command_id!r} must be a number (e.g. 40757) or '_' followed by "
                          "letters and digits (e.g. _RS7f3c...): copy it from REAPER's action list")
    return command_id


def parse_action_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of REAPER's OSC listen port ("Local listen port" of its OSC surface)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BridgeError(f"REAPER OSC address {text!r} must be HOST:PORT with a port in 1..65535, e.g. 127.0.0.1:8000")
    return host.strip("[]"), int(port)


@dataclasses.dataclass(frozen=True)
class RegionPlan:
    """What a region (or marker) name says: a section kind, its number if any, and lyrics if given."""

    kind: str
    number: int | None
    lyrics: str | None


def parse_region_name(name: str) -> RegionPlan:
    """``"Verse 1 | la la / la"`` -> ``RegionPlan("verse", 1, "la la\\nla")``; a name that is no section
    kind raises :class:`BridgeError` naming the kinds."""
    head, sep, rest = name.partition(LYRICS_SEPARATOR)
    m = _NAME_RE.match(head)
    kind = re.sub(r"[\s_]+", "-", m.group(1).strip().lower()) if m else ""
    if not m or kind not in SECTION_KINDS:
        raise BridgeError(f"{head.strip()!r} is no section kind; name the region one of "
                          f"{', '.join(sorted(SECTION_KINDS))} (a number may follow: 'Verse 2'), then "
                          f"'{LYRICS_SEPARATOR} lyrics' if you like")
    lyrics = "\n".join(part.strip() for part in rest.split(LINE_BREAK.strip())).strip() if sep else ""
    return RegionPlan(kind, int(m.group(2)) if m.group(2) else None, lyrics or None)


@dataclasses.dataclass
class _Slot:
    name: str = ""
    time: float | None = None
    length: float | None = None
    number: str = ""


@dataclasses.dataclass
class _Planned:
    where: str  # "region 3"
    sec_id: str
    kind: str
    start_s: float
    end_s: float
    lyrics: list[str] | None
    lyrics_from: str


class ReaperAction:
    """Sends ``/action/<command id>`` to REAPER's OSC listen port (pattern ``ACTION t/action/@``), from
    its own UDP socket; REAPER runs the action as if it were picked in the action list."""

    def __init__(self, host: str, port: int, command_id: str) -> None:
        self.command_id = check_command_id(command_id)
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise BridgeError(f"cannot resolve the REAPER host {host!r}: {exc}") from None
        self.target = info[4]
        self._sock = socket.socket(info[0], socket.SOCK_DGRAM)

    @property
    def address(self) -> str:
        return f"/action/{self.command_id}"

    def trigger(self) -> None:
        """Send the action once (UDP: an unreachable REAPER raises only where the OS reports it)."""
        self._sock.sendto(build_msg(self.address, []).dgram, self.target)

    def close(self) -> None:
        self._sock.close()


class ReaperSurface:
    """Follows REAPER's OSC feedback into the bridge's open session (see the module docstring).

    Attach with :meth:`attach` (the OSC server hands it every REAPER address); ``action`` (optional)
    is triggered after each finished job that wrote files.
    """

    def __init__(self, bridge: Bridge, action: ReaperAction | None = None) -> None:
        self.bridge = bridge
        self.action = action
        self.bpm: float | None = None
        self.numerator: int | None = None
        self.transport = "stopped"
        self._flags: set[str] = set()
        self.position_s: float | None = None
        self.beat: tuple[int, int, int] | None = None
        self.regions: dict[int, _Slot] = {}
        self.markers: dict[int, _Slot] = {}
        self._lock = threading.RLock()
        self._owned: set[str] = set()  # section ids this surface defined in the open session
        self._worded: set[str] = set()  # ... and those whose lyrics it set (from a name or a file)
        self._synced: Session | None = None  # the session that already has all of the above
        self._owner: Session | None = None  # the session self._owned belongs to
        self._reported: set[tuple[str, str]] = set()
        self._bar_last_beat: tuple[int, int] | None = None  # (bar, highest beat seen in it)
        self._candidate: int | None = None  # numerator the last full bar showed
        bridge.add_sink(self._on_event)

    # ------------------------------------------------------------------ wiring
    def attach(self, server: Any) -> "ReaperSurface":
        """Register with an :class:`~dr2studio.bridge.osc.OscServer` (its ``surfaces`` list)."""
        server.surfaces.append(self)
        return self

    def close(self) -> None:
        self.bridge.remove_sink(self._on_event)
        if self.action is not None:
            self.action.close()

    def handles(self, address: str) -> bool:
        """Whether ``address`` is one REAPER's surface sends with the shipped pattern file."""
        return is_reaper_address(address)

    def describe(self) -> dict[str, Any]:
        """What REAPER last said (for tests and ``/dr2/session/state`` readers)."""
        with self._lock:
            return {"bpm": self.bpm, "numerator": self.numerator, "transport": self.transport,
                    "position_s": self.position_s, "beat": list(self.beat) if self.beat else None,
                    "sections": sorted(self._owned)}

    # ---------------------------------------------------------------- messages
    def handle(self, address: str, args: tuple) -> tuple[str, list] | None:
        """One message from REAPER. Returns an error reply, or ``None``: REAPER gets no acks (it sends
        position updates many times a second and would not read them)."""
        with self._lock:
            try:
                return self._handle(address, args)
            except BridgeError as exc:
                return self._error(address, str(exc))

    def _handle(self, address: str, args: tuple) -> tuple[str, list] | None:
        if _ACTION_RE.match(address):
            return None  # an action's toggle state: nothing the session follows
        if address == "/tempo/raw":
            bpm = self._number(address, args)
            if not math.isfinite(bpm) or bpm <= 0:
                raise BridgeError(f"REAPER sent tempo {bpm!r} bpm; a tempo must be a positive number "
                                  "(the session keeps its tempo)")
            session = self.bridge.session
            if bpm != self.bpm or (session is not None and session.bpm != bpm):
                if session is not None:
                    self.bridge.set_tempo(bpm)  # the request limit refuses it before anything changes
                self.bpm = bpm
                self._synced = None  # section beats move with the tempo
        elif address == "/time":
            self.position_s = self._number(address, args)
        elif address == "/beat/str":
            self._beat(self._text(address, args))
        elif address in _TRANSPORT:
            on = (self._number(address, args) if args else 1.0) >= 0.5
            if address == "/stop":
                if on:
                    self._flags.clear()
            elif on:
                self._flags.add(_TRANSPORT[address])
            else:
                self._flags.discard(_TRANSPORT[address])
            # the flags come one message each, in no set order: pause and record outrank play
            self.transport = next((state for state in ("recording", "paused", "playing") if state in self._flags),
                                  "stopped")
        else:
            m = _SLOT_RE.match(address)
            assert m is not None
            kind, index, field = m.group(1), int(m.group(2)), m.group(3)
            table = self.regions if kind == "region" else self.markers
            if index < 1 or (index not in table and len(table) >= MAX_SLOTS):
                raise BridgeError(f"{kind} slot {index} is outside 1..{MAX_SLOTS}")
            slot = table.setdefault(index, _Slot())
            if field == "number/str":  # REAPER's own number: shown, never used for placing
                slot.number = self._text(address, args)
            else:
                value: Any = self._text(address, args) if field == "name" else self._number(address, args)
                if field != "name" and (not math.isfinite(value) or value < 0):
                    raise BridgeError(f"REAPER sent {kind} {index} {field} {value!r}; it must be a number >= 0")
                if getattr(slot, field) != value:  # REAPER repeats what did not change: no new pass then
                    setattr(slot, field, value)
                    self._synced = None
        return self._sync()

    def _number(self, address: str, args: tuple) -> float:
        if len(args) != 1 or isinstance(args[0], bool) or not isinstance(args[0], (int, float)):
            raise BridgeError(f"{address} takes one number, got {list(args)!r:.80}")
        return float(args[0])

    def _text(self, address: str, args: tuple) -> str:
        if len(args) != 1 or not isinstance(args[0], str):
            raise BridgeError(f"{address} takes one string, got {list(args)!r:.80}")
        return args[0]

    def _beat(self, text: str) -> None:
        """Read the numerator off the beat counter: a bar that went by while playing ends on its last
        beat; two bars in a row that agree set it (one missed update cannot change the meter)."""
        m = _BEAT_RE.match(text)
        if m is None:
            raise BridgeError(f"/beat/str {text!r} is not 'bar.beat.hundredths'")
        bar, beat, frac = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        previous = self._bar_last_beat
        if previous is not None and bar == previous[0] + 1 and beat == 1 and 1 <= previous[1] <= 32 \
                and self.transport in ("playing", "recording"):
            if previous[1] == self._candidate and previous[1] != self.numerator:
                self.numerator = previous[1]
                self._synced = None
            self._candidate = previous[1]
        elif previous is not None and (bar, beat) < previous:
            self._candidate = None  # a jump back (seek, loop): start counting again
        if previous is None or previous[0] != bar or beat >= previous[1]:
            self._bar_last_beat = (bar, beat)
        self.beat = (bar, beat, frac)

    def _error(self, where: str, message: str) -> tuple[str, list]:
        log.warning("REAPER %s: %s", where, message)
        return ("/dr2/error", [where, message])

    # ---------------------------------------------------------------- session
    def _sync(self) -> tuple[str, list] | None:
        """Bring the open session in line with what REAPER said; reply with the first new problem."""
        session = self.bridge.session
        if session is None or self._synced is session:
            return None
        if session is not self._owner:
            self._owned = set()  # another project: the sections there are not ours to remove
            self._worded = set()
            self._owner = session
        errors: list[tuple[str, str]] = []
        if self.bpm is not None and session.bpm != self.bpm:
            try:
                self.bridge.set_tempo(self.bpm)
            except BridgeError as exc:
                errors.append(("/tempo/raw", str(exc)))
        if self.numerator is not None and session.timesig[0] != self.numerator:
            try:
                self.bridge.set_timesig(self.numerator, session.timesig[1])
            except BridgeError as exc:
                errors.append(("/beat/str", str(exc)))
        plans = self._plan(session, errors)
        self.bridge.update_session(lambda s: self._apply(s, plans, errors))
        self._synced = session
        fresh = [e for e in errors if e not in self._reported]
        self._reported = set(errors)  # a problem is told once while it lasts, again if it comes back
        for where, message in fresh[1:]:
            self.bridge.emit("/dr2/error", where, message)
            log.warning("REAPER %s: %s", where, message)
        return self._error(*fresh[0]) if fresh else None

    def _spans(self) -> list[tuple[str, _Slot, float, float]]:
        """``(where, slot, start s, end s)`` of every named region, else of every named marker."""
        regions = [(f"reaper:region {i}", s) for i, s in sorted(self.regions.items())
                   if s.name.strip() and s.time is not None and s.length is not None and s.length > 0]
        if regions or any(s.name.strip() for s in self.regions.values()):
            return [(w, s, s.time, s.time + s.length) for w, s in regions]  # type: ignore[operator]
        markers = sorted(((s.time, i, s) for i, s in self.markers.items() if s.name.strip() and s.time is not None),
                         key=lambda t: (t[0], t[1]))
        spans = []
        for k, (time, i, slot) in enumerate(markers):
            if slot.name.strip().lower() == "end":
                continue
            if k + 1 < len(markers):
                end = markers[k + 1][0]
            else:
                bpm = self.bpm or 120.0
                end = time + LAST_MARKER_BARS * (self.numerator or 4) * 60.0 / bpm
            if end > time:
                spans.append((f"reaper:marker {i}", slot, time, end))
        return spans

    def _plan(self, session: Session, errors: list[tuple[str, str]]) -> list[_Planned]:
        plans: list[_Planned] = []
        counts: dict[str, int] = {}
        used: set[str] = set()
        song: dict[str, Any] = {}  # the project's lyrics.lrc, parsed at most once per pass
        for where, slot, start, end in sorted(self._spans(), key=lambda t: (t[2], t[0])):
            name = slot.name.strip()
            try:
                plan = parse_region_name(name)
            except BridgeError as exc:
                errors.append((where, f"{where}: {exc}; the region is ignored"))
                continue
            counts[plan.kind] = counts.get(plan.kind, 0) + 1
            number = plan.number if plan.number is not None else counts[plan.kind]
            sec_id = f"{plan.kind}-{number}"
            if sec_id in used:
                errors.append((where, f"{where} {name!r}: a second {plan.kind} {number}; number the regions "
                                      f"('{plan.kind.title()} 1', '{plan.kind.title()} 2'); the region is ignored"))
                continue
            try:
                lyrics, source = self._lyrics(session, plan, sec_id, number, where, song)
            except BridgeError as exc:
                errors.append((where, f"{where} {name!r}: {exc}; the region is ignored"))
                continue
            used.add(sec_id)
            plans.append(_Planned(where, sec_id, plan.kind, start, end, lyrics, source))
        return plans

    def _lyrics(self, session: Session, plan: RegionPlan, sec_id: str, number: int, where: str,
                song: dict[str, Any]) -> tuple[list[str] | None, str]:
        """Lyric lines of a region and where they came from (see the module docstring for the order)."""
        if plan.lyrics is not None:
            return clean_lyrics(plan.lyrics, f"lyrics in the name of {where}"), "name"
        own = f"{sec_id}.lrc"
        if (session.project / own).exists():
            return clean_lyrics(self._read(session, own), own), own
        if "doc" not in song:
            song["doc"] = None
            if (session.project / SONG_LYRICS_FILE).exists():
                from dr2studio.lyrics.parse import LyricsError, parse_lyrics

                try:
                    song["doc"] = parse_lyrics(self._read(session, SONG_LYRICS_FILE), source=SONG_LYRICS_FILE)
                except LyricsError as exc:
                    raise BridgeError(str(exc)) from exc
        if song["doc"] is None:
            return None, "none"
        try:
            section = song["doc"].find(model_tag(plan.kind), number)
        except KeyError:
            return None, "none"
        if not section.lines:  # a tag with nothing under it (an instrumental chorus, say)
            return None, "none"
        text = "\n".join(section.lines)
        if len(text) > MAX_SECTION_LYRICS:
            raise BridgeError(f"{SONG_LYRICS_FILE}: {section.label} has {len(text)} characters; the limit "
                              f"per section is {MAX_SECTION_LYRICS}")
        return clean_lyrics(text, f"{SONG_LYRICS_FILE} [{section.label}]"), f"{SONG_LYRICS_FILE} [{section.label}]"

    def _read(self, session: Session, name: str) -> str:
        try:
            return read_text_inside(session.project, name, max_bytes=_MAX_LRC_BYTES, what="lyrics file",
                                    suffixes=(".lrc",))[1]
        except PathError as exc:
            raise BridgeError(str(exc)) from exc

    def _apply(self, session: Session, plans: list[_Planned], errors: list[tuple[str, str]]) -> None:
        """Under the bridge lock: each region becomes a section with its lyrics, or nothing of it does."""
        keep = {p.sec_id for p in plans}
        for gone in self._owned - keep:
            session.sections.pop(gone, None)
            session.lyrics.pop(gone, None)
        self._owned &= keep
        self._worded &= keep
        for p in plans:
            before = (session.sections.get(p.sec_id), session.lyrics.get(p.sec_id))
            try:
                start = session.beats(p.start_s)
                session.define_section(p.sec_id, p.kind, start, session.beats(p.end_s) - start)
                if p.lyrics is not None:
                    session.set_lyrics(p.sec_id, "\n".join(p.lyrics))
                elif p.sec_id in self._worded:  # the words REAPER gave are gone from the name and the files
                    session.lyrics.pop(p.sec_id, None)
            except BridgeError as exc:
                for table, old in ((session.sections, before[0]), (session.lyrics, before[1])):
                    if old is None:
                        table.pop(p.sec_id, None)
                    else:
                        table[p.sec_id] = old
                errors.append((p.where, f"{p.where}: {exc}; the region is ignored"))
                self._owned.discard(p.sec_id)
                continue
            self._owned.add(p.sec_id)
            if p.lyrics is not None:
                self._worded.add(p.sec_id)
            else:
                self._worded.discard(p.sec_id)
            if p.lyrics is None and model_tag(p.kind) in ("verse", "chorus", "bridge", "hook") \
                    and not session.lyrics.get(p.sec_id):
                errors.append((p.where, f"{p.where} ({p.sec_id}): no lyrics; give them after '{LYRICS_SEPARATOR}' "
                                        f"in the region name, in {p.sec_id}.lrc or in {SONG_LYRICS_FILE} in the "
                                        "project folder (the section is kept; it will be sung without words)"))

    # ------------------------------------------------------------------ events
    def _on_event(self, address: str, args: list) -> None:
        """After a job wrote its take, ask REAPER to run the import action."""
        if self.action is None or address != "/dr2/job/done" or len(args) < 2 or not args[1]:
            return
        try:
            self.action.trigger()
        except OSError as exc:
            self.bridge.emit("/dr2/error", self.action.address,
                             f"could not send {self.action.address} to REAPER at {self.action.target}: {exc}")
