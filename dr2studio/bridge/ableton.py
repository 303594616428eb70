"""Ableton Live beside the bridge: follow its grid through AbletonOSC, place takes with the DR2Studio script.

Two halves, both optional (``dr2studio bridge --ableton HOST:PORT --ableton-script-port N``):

- :class:`AbletonFollower` is an AbletonOSC client. AbletonOSC listens on 11000 and answers on 11001
  of the sender's host (a fixed port, not the sender's), so the follower binds the reply port. It asks
  for ``/live/song/get/tempo``, ``signature_numerator``, ``signature_denominator``, ``song_length``
  and ``cue_points`` (reply: ``name, time, name, time ...``) every :data:`POLL_S` seconds, and
  subscribes to ``/live/song/start_listen/tempo`` and the signature (AbletonOSC sends the value at
  once and on every change, to ``/live/song/get/<property>``). Cue points have no listener in
  AbletonOSC, hence the poll. What Live says becomes the open ``ableton`` session's tempo, time
  signature and sections (:meth:`~dr2studio.bridge.core.Bridge.follow_daw`): a locator named by a
  section kind ("Verse 1", "Chorus") starts a section that runs to the next locator; "End" closes
  the last one; the last runs to the arrangement's end (``song_length``) or four bars. A locator
  name that is no section kind, a tempo of 0 or NaN, a time signature Live should never report,
  each give one ``/dr2/error`` naming the value, and the session keeps what it had.
- :class:`LivePlacer` asks the DR2Studio Remote Script (``bridges/ableton/DR2Studio``) to place a
  take: ``/dr2/place s:request_id s:json`` to its UDP port, answered by ``/dr2/placed`` or
  ``/dr2/place/error``. :class:`AbletonLink` sends one request per finished take of an ``ableton``
  session (its WAV stems and the ``.mid`` files its manifest entry lists under ``midi``) from one
  worker thread, so jobs never wait for Live. The script places all stems or none; when it refuses,
  the bridge relays its message as ``/dr2/error /dr2/daw/place``; when it does not answer within the
  timeout the take simply stays where it was written (``Samples/Imported/dr2/<take>/``) and the
  subscribers get ``/dr2/daw/fallback s:job s:folder s:reason``.

Events: ``/dr2/daw/synced s:daw s:json`` (what changed), ``/dr2/daw/placed s:job i:clips s:json``,
``/dr2/daw/fallback s:job s:folder s:reason``. Details and setup: docs/ableton.md.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

from dr2studio.bridge.core import Bridge
from dr2studio.bridge.deliver import TakeWritten
from dr2studio.bridge.midifile import _kind_of, _slug
from dr2studio.bridge.paths import PathError, resolve_inside
from dr2studio.bridge.session import SECTION_KINDS, BridgeError
from dr2studio.requests import PLACE_TIMEOUT, TEMPO, RequestError

log = logging.getLogger(__name__)

__all__ = [
    "AbletonFollower", "AbletonLink", "LivePlacer", "PlaceRefused", "PlaceTimeout", "parse_hostport",
    "sections_from_cues", "LIVE_PORT", "REPLY_PORT", "SCRIPT_PORT", "POLL_S",
]

#: AbletonOSC's ports: it listens on 11000 and replies to the sender's host on 11001.
LIVE_PORT, REPLY_PORT = 11000, 11001
#: The DR2Studio Remote Script's default UDP port (``DR2STUDIO_LIVE_PORT`` in Live's environment moves it).
SCRIPT_PORT = 11010
#: How often tempo, signature, arrangement length and locators are asked for again (cue points have no listener).
POLL_S = 2.0
#: How long the bridge waits for the Remote Script to answer a placement before it falls back
#: (the limit is :data:`dr2studio.requests.PLACE_TIMEOUT`).
DEFAULT_PLACE_TIMEOUT_S = 5.0
_STOP_NAMES = {"end", "stop", "fin"}
_LISTENED = ("tempo", "signature_numerator", "signature_denominator")
_QUERIED = ("tempo", "signature_numerator", "signature_denominator", "song_length", "cue_points")
_MAX_DATAGRAM = 65535


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``:PORT`` as ``(host, port)``; ValueError naming the text otherwise."""
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    host = host.strip("[]") or "127.0.0.1"
    if not sep:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number in 1..65535")
    return host, int(port)


def _send(sock: socket.socket, target: tuple[str, int], address: str, *args: Any) -> None:
    try:
        sock.sendto(build_msg(address, list(args)).dgram, target)
    except OSError as exc:  # Live not running: UDP is best effort, the next poll tries again
        log.debug("cannot send %s to %s: %s", address, target, exc)


# ------------------------------------------------------------------------------------------- the grid

def sections_from_cues(cues: list[tuple[str, float]], song_length: float | None,
                       beats_per_bar: float) -> list[tuple[str, str, float, float]]:
    """Sections ``(sec_id, kind, start_beats, length_beats)`` from Live's locators ``(name, beat)``.

    A locator named by a section kind starts a section running to the next locator; ``End`` (or
    ``Stop``, ``Fin``) only ends one. The last section runs to ``song_length`` when that lies after
    it, else four bars. Any other name is a :class:`BridgeError` that names every such locator, so
    a set with a typo changes nothing rather than half of its sections.
    """
    ordered = sorted(((str(n), float(t)) for n, t in cues), key=lambda c: c[1])
    bad = [f"{name!r} at beat {beat:g}" for name, beat in ordered
           if name.strip().lower() not in _STOP_NAMES and _kind_of(name) is None]
    if bad:
        raise BridgeError(f"Live locator{'s' if len(bad) > 1 else ''} {', '.join(bad)} name{'' if len(bad) > 1 else 's'} "
                          f"no section kind ({', '.join(sorted(SECTION_KINDS))}, with an optional number: "
                          "'Verse 1'; 'End' closes the last section); rename it in Live. The sections were not changed")
    taken: set[str] = set()
    sections = []
    for i, (name, start) in enumerate(ordered):
        kind = _kind_of(name)
        if kind is None:  # a stop locator
            continue
        if i + 1 < len(ordered):
            end = ordered[i + 1][1]
        elif song_length is not None and song_length > start:
            end = song_length
        else:
            end = start + 4 * beats_per_bar
        if end > start:  # two locators on one beat: the later one wins
            sections.append((_slug(name, taken), kind, start, end - start))
    return sections


@dataclasses.dataclass
class LiveGrid:
    """The last values Live reported (None until it has)."""

    tempo: float | None = None
    numerator: int | None = None
    denominator: int | None = None
    song_length: float | None = None
    cues: list[tuple[str, float]] | None = None


class AbletonFollower:
    """An AbletonOSC client that keeps the open ``ableton`` session on Live's tempo, meter and locators.

    ``live``: where AbletonOSC listens (host, 11000); ``reply_port``: where it answers (11001), bound
    on ``bind_host`` (default: all interfaces when Live is on another machine, else loopback).
    """

    def __init__(self, bridge: Bridge, live: tuple[str, int] = ("127.0.0.1", LIVE_PORT), *,
                 reply_port: int = REPLY_PORT, bind_host: str | None = None, poll_s: float = POLL_S) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.bridge, self.live, self.poll_s = bridge, live, poll_s
        self.grid = LiveGrid()
        try:
            self._live_ip = socket.gethostbyname(live[0])
        except OSError as exc:
            raise BridgeError(f"cannot resolve Live's host {live[0]!r}: {exc}") from exc
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        loopback = live[0] in ("127.0.0.1", "localhost")
        try:
            self.sock.bind((bind_host or ("127.0.0.1" if loopback else ""), reply_port))
        except OSError as exc:
            self.sock.close()
            raise BridgeError(f"cannot listen for AbletonOSC's replies on port {reply_port}: {exc} "
                              "(is another AbletonOSC client running?)") from exc
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._reported: dict[str, str] = {}  # what was last reported per topic, so a poll does not repeat it
        self.received = 0

    @property
    def reply_port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> "AbletonFollower":
        self.subscribe()
        for target, name in ((self._read_loop, "dr2-ableton-read"), (self._poll_loop, "dr2-ableton-poll")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def subscribe(self) -> None:
        """Ask AbletonOSC for change messages (again after it restarts: ``/live/startup``)."""
        for prop in _LISTENED:
            _send(self.sock, self.live, f"/live/song/start_listen/{prop}")

    def query(self) -> None:
        for prop in _QUERIED:
            _send(self.sock, self.live, f"/live/song/get/{prop}")

    def close(self) -> None:
        self._stop.set()
        for prop in _LISTENED:
            _send(self.sock, self.live, f"/live/song/stop_listen/{prop}")
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.sock.close()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.query()
            self._stop.wait(self.poll_s)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(_MAX_DATAGRAM)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)  # e.g. ICMP port unreachable while Live is not running
                continue
            if sender[0] != self._live_ip:  # only Live's host speaks for Live (the port may face a network)
                log.debug("ignoring a packet from %s on the AbletonOSC reply port", sender[0])
                continue
            try:
                message = OscMessage(data)
            except Exception as exc:  # not a plain message: AbletonOSC never sends bundles
                log.debug("ignoring an unreadable packet from AbletonOSC: %s", exc)
                continue
            self.received += 1
            try:
                self.handle(message.address, list(message.params))
            except Exception:  # one odd reply must not stop following
                log.exception("handling %s from AbletonOSC failed", message.address)

    # ------------------------------------------------------------------ replies
    def handle(self, address: str, params: list) -> None:
        """Apply one AbletonOSC message (replies and listener updates look the same)."""
        if address == "/live/startup":
            self.subscribe()
            self.query()
        elif address == "/live/error":
            self._report("live", address, f"AbletonOSC reported an error: {params[0] if params else '?'}")
        elif address == "/live/song/get/tempo":
            self._tempo(params[0] if params else None)
        elif address in ("/live/song/get/signature_numerator", "/live/song/get/signature_denominator"):
            self._signature(address.rsplit("_", 1)[1], params[0] if params else None)
        elif address == "/live/song/get/song_length":
            value = params[0] if params else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
                self.grid.song_length = float(value)
        elif address == "/live/song/get/cue_points":
            self._cues(address, params)

    def _report(self, topic: str, address: str, message: str) -> None:
        if self._reported.get(topic) != message:
            self._reported[topic] = message
            log.warning("%s", message)
            self.bridge.emit("/dr2/error", address, message)

    def _clear(self, topic: str) -> None:
        self._reported.pop(topic, None)

    def _tempo(self, value: Any) -> None:
        address = "/live/song/get/tempo"
        try:
            bpm = float(TEMPO.check(value, "Live's tempo"))
        except RequestError as exc:
            self._report("tempo", address, f"{exc}; the session keeps its tempo")
            return
        self._clear("tempo")
        self.grid.tempo = bpm
        self._follow(address, bpm=round(bpm, 4))

    def _signature(self, part: str, value: Any) -> None:
        address = f"/live/song/get/signature_{part}"
        if isinstance(value, bool) or not isinstance(value, int):
            self._report("signature", address, f"Live's time signature {part} {value!r} is not a whole number; "
                                               "the session keeps its time signature")
            return
        if part == "numerator":
            self.grid.numerator = value
        else:
            self.grid.denominator = value
        if self.grid.numerator is None or self.grid.denominator is None:
            return
        self._clear("signature")
        self._follow(address, timesig=(self.grid.numerator, self.grid.denominator))

    def _cues(self, address: str, params: list) -> None:
        if len(params) % 2 or not all(isinstance(n, str) and isinstance(t, (int, float)) and not isinstance(t, bool)
                                      and math.isfinite(t) and t >= 0 for n, t in zip(params[::2], params[1::2])):
            self._report("cues", address, f"AbletonOSC's cue points are not name/time pairs: {params[:6]!r}")
            return
        cues = list(zip(params[::2], params[1::2]))
        self.grid.cues = cues
        if not cues:  # no locators: the sections the clients defined stay
            self._clear("cues")
            return
        session = self.bridge.session
        beats_per_bar = session.beats_per_bar if session is not None else 4.0
        try:
            sections = sections_from_cues(cues, self.grid.song_length, beats_per_bar)
        except BridgeError as exc:
            self._report("cues", address, str(exc))
            return
        self._clear("cues")
        self._follow(address, sections=sections)

    def _follow(self, address: str, **grid: Any) -> None:
        session = self.bridge.session
        if session is None or session.daw != "ableton":
            return  # nothing to follow into: the next poll tries again
        try:
            changed = self.bridge.follow_daw(**grid)
        except BridgeError as exc:
            self._report(address, address, f"{exc}; the session was not changed")
            return
        self._clear(address)
        if changed:
            state = self.bridge.session
            summary = {"changed": changed, "bpm": state.bpm if state else None,
                       "timesig": list(state.timesig) if state else None,
                       "sections": [s.sec_id for s in state.ordered_sections()] if state else []}
            self.bridge.emit("/dr2/daw/synced", "ableton", json.dumps(summary))


# -------------------------------------------------------------------------------------- placement

class PlaceTimeout(BridgeError):
    """The Remote Script did not answer (not installed, not selected as a Control Surface, Live closed)."""


class PlaceRefused(BridgeError):
    """The Remote Script answered with an error; it placed nothing of the take."""


class LivePlacer:
    """Client of the DR2Studio Remote Script's placement door (``/dr2/place``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = SCRIPT_PORT,
                 timeout: float = DEFAULT_PLACE_TIMEOUT_S) -> None:
        self.target = (host, int(port))
        self.timeout = float(PLACE_TIMEOUT.check(timeout))

    def _ask(self, address: str, args: list, request_id: str, answers: tuple[str, ...]) -> tuple[str, list]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            data = build_msg(address, args).dgram
            if len(data) > 60000:
                raise PlaceRefused(f"the placement request is {len(data)} bytes, more than one datagram holds")
            deadline = time.monotonic() + self.timeout
            try:
                sock.sendto(data, self.target)
            except OSError as exc:
                raise PlaceTimeout(f"cannot reach the DR2Studio Remote Script at {self.target[0]}:{self.target[1]}: {exc}") from exc
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PlaceTimeout(f"the DR2Studio Remote Script at {self.target[0]}:{self.target[1]} did not answer "
                                       f"within {self.timeout:g} s (is it selected as a Control Surface in Live?)")
                sock.settimeout(left)
                try:
                    reply = OscMessage(sock.recv(_MAX_DATAGRAM))
                except socket.timeout:
                    continue
                except OSError:  # ICMP port unreachable: nothing listens there
                    time.sleep(min(0.05, max(left, 0)))
                    continue
                except Exception:  # not OSC: not the script
                    continue
                params = list(reply.params)
                if reply.address in answers and (not request_id or (params and params[0] == request_id)):
                    return reply.address, params
                if reply.address == "/dr2/place/error" and params and params[0] == "":
                    return reply.address, params  # the script could not even read the request
        finally:
            sock.close()

    def ping(self) -> str:
        """The script's protocol version; :class:`PlaceTimeout` when it does not answer."""
        _, params = self._ask("/dr2/place/ping", [], "", ("/dr2/place/pong",))
        return str(params[0]) if params else ""

    def place(self, request: dict) -> dict:
        """Place one take (``{"take", "position_beats", "stems": [{stem, path, kind}]}``); returns the
        script's report. :class:`PlaceRefused` when it placed nothing, :class:`PlaceTimeout` when it is silent."""
        request_id = uuid.uuid4().hex[:12]
        address, params = self._ask("/dr2/place", [request_id, json.dumps(request)], request_id,
                                    ("/dr2/placed", "/dr2/place/error"))
        if address == "/dr2/place/error":
            raise PlaceRefused(str(params[1]) if len(params) > 1 else "the Remote Script refused the take", 502)
        try:
            return json.loads(params[2])
        except (IndexError, TypeError, ValueError) as exc:
            raise PlaceRefused(f"the Remote Script's answer is not readable: {exc}", 502) from exc


def take_request(take: TakeWritten) -> dict:
    """The placement request of a written take: its WAV stems, and the ``.mid`` files its manifest
    entry lists under ``midi`` (``{stem: path relative to the project}``), each checked to be inside
    the project."""
    stems = [{"stem": f.stem, "path": str(Path(f.path).resolve()), "kind": "audio"} for f in take.files]
    for stem, rel in sorted((take.midi or {}).items()):
        try:
            path = resolve_inside(take.project, rel, "MIDI stem")
        except PathError as exc:
            raise PlaceRefused(f"take {take.job_id}: {exc}") from exc
        stems.append({"stem": re.sub(r"[^A-Za-z0-9_.-]", "-", str(stem))[:64] or "midi", "path": str(path),
                      "kind": "midi"})
    return {"take": take.job_id, "position_beats": float(take.position_beats), "stems": stems}


class AbletonLink:
    """Wires a follower and a placer to one :class:`Bridge` (either may be None)."""

    def __init__(self, bridge: Bridge, follower: AbletonFollower | None = None, placer: LivePlacer | None = None) -> None:
        self.bridge, self.follower, self.placer = bridge, follower, placer
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dr2-ableton-place")
        self._futures: list[concurrent.futures.Future] = []
        self._lock = threading.Lock()

    def start(self) -> "AbletonLink":
        if self.follower is not None:
            self.follower.start()
        if self.placer is not None:
            self.bridge.add_take_listener(self._on_take)
        return self

    def _on_take(self, take: TakeWritten) -> None:
        if take.daw != "ableton" or self.placer is None:
            return
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(self._pool.submit(self.place, take))

    def wait(self, timeout: float | None = None) -> None:
        """Until the placements asked for so far have ended (tests, shutdown)."""
        with self._lock:
            pending = list(self._futures)
        concurrent.futures.wait(pending, timeout=timeout)

    def place(self, take: TakeWritten) -> bool:
        """Place ``take`` in Live; True when the script placed it. Every outcome is reported as an event."""
        assert self.placer is not None
        folder = str(take.folder)
        try:
            result = self.placer.place(take_request(take))
        except PlaceTimeout as exc:
            self.bridge.emit("/dr2/daw/fallback", take.job_id, folder, f"{exc}; the take is in {folder}")
            return False
        except PlaceRefused as exc:
            self.bridge.emit("/dr2/error", "/dr2/daw/place", f"take {take.job_id}: {exc}")
            self.bridge.emit("/dr2/daw/fallback", take.job_id, folder, f"Live placed nothing: {exc}; the take is in {folder}")
            return False
        self.bridge.emit("/dr2/daw/placed", take.job_id, len(result.get("clips", [])), json.dumps(result))
        return True

    def close(self) -> None:
        if self.placer is not None:
            self.bridge.remove_take_listener(self._on_take)
        self._pool.shutdown(wait=True, cancel_futures=False)
        if self.follower is not None:
            self.follower.close()
