"""OSC front end of the bridge: UDP and TCP servers speaking the address space of ``osc-midi.md``.

- UDP datagrams are handled one at a time on the server thread, so a client's messages take effect
  in the order it sent them (``lyrics/set`` before ``gen/song``); requests are quick because jobs run
  in the bridge's queue. Datagrams up to 64 KiB are read, so an oversize one gets an error reply
  instead of python-osc's silent drop.
- TCP connections each get a reader thread, up to :data:`MAX_TCP_CONNECTIONS`; framing is detected
  from the first byte (SLIP, OSC 1.1, when it is ``0xC0``; otherwise the 4-byte length prefix of
  OSC 1.0) and replies use the same framing. A connection that neither sends nor receives anything
  for :data:`TCP_IDLE_TIMEOUT_S` is closed (a quiet subscriber keeps it with ``/dr2/ping``).
- Nothing here ever blocks on a client: UDP replies are sent with ``MSG_DONTWAIT`` and each TCP
  connection has its own bounded :class:`~dr2studio.bridge.outbox.Outbox`; a client that stops
  reading loses events and, after :data:`SEND_STALL_S`, its connection. A reply too large for a
  datagram is replaced by an error that points to TCP.
- OSC argument types python-osc does not read (``c``, ``S``, ``I``, ...) are refused by name before
  the packet is parsed (python-osc would skip them and misread the rest).
- Packets are parsed by python-osc; each message (bundles in order, their time tags never make the
  server sleep) goes to the route of its exact address. OSC address patterns (``*?[]{}``) are refused:
  python-osc's dispatcher turns them into regular expressions compiled from client text, a
  backtracking and cache-growth hazard, and a pattern could fire many commands at once.
  Unparseable packets, wrong argument types and handler failures are answered with
  ``/dr2/error s:address s:message`` and never stop the server.

Replies to a request (``/dr2/pong``, ``/dr2/ack``, ``/dr2/error``) go to the sender and to the
subscribers; job events go to the subscribers (``/dr2/subscribe``).
"""
from __future__ import annotations

import errno
import json
import logging
import select
import socket
import socketserver
import struct
import threading
import time
from typing import Any, Callable

from pythonosc import osc_packet
from pythonosc.osc_message_builder import build_msg

from dr2studio.bridge.core import Bridge, BridgeJob
from dr2studio.bridge.outbox import Outbox
from dr2studio.bridge.paths import PathError
from dr2studio.bridge.rating import rate_take
from dr2studio.bridge.session import BridgeError

log = logging.getLogger(__name__)

__all__ = ["OscServer", "DEFAULT_PORT", "encode_message"]

DEFAULT_PORT = 7100
MAX_UDP_BYTES = 32 * 1024
MAX_TCP_BYTES = 1024 * 1024
MAX_SUBSCRIBERS = 32
#: Open OSC TCP connections at once; one more is answered with an error and closed.
MAX_TCP_CONNECTIONS = 16
#: A TCP connection with no traffic either way for this long is closed.
TCP_IDLE_TIMEOUT_S = 600.0
#: Events waiting for one TCP client (frames / bytes); beyond, new ones are dropped for that client.
OUTBOX_FRAMES = 512
OUTBOX_BYTES = 4 * 1024 * 1024
#: A TCP client that takes no bytes for this long while events wait is disconnected.
SEND_STALL_S = 10.0
#: Nested bundles deeper than this are refused.
MAX_BUNDLE_DEPTH = 8
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_PATTERN_CHARS = "*?[]{}"
_SLIP_END, _SLIP_ESC, _SLIP_ESC_END, _SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD


def encode_message(address: str, args: list) -> bytes:
    """One OSC message as bytes (floats are sent as 32-bit ``f``, ints as ``i``)."""
    return build_msg(address, args).dgram


def _slip(data: bytes) -> bytes:
    return b"\xc0" + data.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def _unslip(frame: bytes) -> bytes:
    out = bytearray()
    it = iter(frame)
    for byte in it:
        if byte == _SLIP_ESC:
            nxt = next(it, None)
            if nxt == _SLIP_ESC_END:
                out.append(_SLIP_END)
            elif nxt == _SLIP_ESC_ESC:
                out.append(_SLIP_ESC)
            else:
                raise ValueError("invalid SLIP escape sequence")
        else:
            out.append(byte)
    return bytes(out)


#: OSC type tags python-osc decodes; any other tag is refused by name (python-osc would skip it
#: without consuming its bytes and misread the arguments after it).
_READ_TYPES = frozenset("ihfdsbrmtTFN[]")
_TYPE_NAMES = {"c": "char", "S": "symbol", "I": "Infinitum (impulse)"}
_TYPE_HINT = {"c": "send it as 's' (a one-character string) or 'i'", "S": "send it as 's'",
              "I": "send 'i' 1, or no argument"}


def _odd_type(data: bytes, depth: int = 0) -> tuple[str, str] | None:
    """``(address, message)`` for the first argument of a type the bridge cannot read, in a message or
    any bundle inside; ``None`` when all types are readable (malformed packets are left to the parser)."""
    if data.startswith(b"#bundle\x00"):
        if depth >= MAX_BUNDLE_DEPTH:
            return "<packet>", f"bundles nested more than {MAX_BUNDLE_DEPTH} deep"
        i = 16
        while i + 4 <= len(data):
            (size,) = struct.unpack(">i", data[i:i + 4])
            i += 4
            if size <= 0 or i + size > len(data):
                return None
            found = _odd_type(data[i:i + size], depth + 1)
            if found is not None:
                return found
            i += size
        return None
    end = data.find(b"\x00")
    if end <= 0:
        return None
    address = data[:end].decode("utf-8", "replace")
    start = (end // 4 + 1) * 4
    if data[start:start + 1] != b",":
        return None
    tag_end = data.find(b"\x00", start)
    tags = data[start + 1:tag_end if tag_end >= 0 else len(data)].decode("latin-1")
    position = 0
    for tag in tags:
        if tag not in "[]":
            position += 1
        if tag not in _READ_TYPES:
            name = _TYPE_NAMES.get(tag, "not an OSC 1.0/1.1 type")
            hint = _TYPE_HINT.get(tag, "use i, f, s, b, h, d, T, F or N")
            return address, (f"{address}: argument {position} has OSC type '{tag}' ({name}), which the bridge "
                             f"does not read; {hint}")
    return None


# ------------------------------------------------------------------------------------------- routes

def _type_name(value: Any) -> str:
    if value is None:
        return "N"
    if isinstance(value, list):
        return "[array]"
    return {bool: "T/F", int: "i", float: "f", str: "s", bytes: "b", tuple: "m/t"}.get(type(value), type(value).__name__)


def _coerce(value: Any, code: str) -> Any:
    if code == "s" and isinstance(value, str):
        return value
    if code == "i" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if code == "f" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError


class _Route:
    """An address with its required and optional OSC argument types and the bridge call behind it."""

    def __init__(self, required: str, optional: str, call: Callable[..., Any], doc: str) -> None:
        self.required, self.optional, self.call, self.doc = required, optional, call, doc

    @property
    def signature(self) -> str:
        return self.required + (f"[{self.optional}]" if self.optional else "") or "no arguments"

    def parse(self, address: str, args: tuple) -> list[Any]:
        codes = self.required + self.optional
        if not len(self.required) <= len(args) <= len(codes):
            raise BridgeError(f"{address} takes {self.signature}, got {len(args)} argument(s) "
                              f"({''.join(_type_name(a) for a in args) or 'none'})")
        out = []
        for i, (value, code) in enumerate(zip(args, codes)):
            try:
                out.append(_coerce(value, code))
            except TypeError:
                raise BridgeError(f"{address}: argument {i + 1} must be '{code}', got '{_type_name(value)}' "
                                  f"{value!r:.40} (signature {self.signature})") from None
        return out


def _seed(value: int | None) -> int | None:
    return None if value is None or value < 0 else int(value)


def _routes(server: "OscServer") -> dict[str, _Route]:
    b = server.bridge
    return {
        "/dr2/ping": _Route("", "", lambda: ("/dr2/pong", [b.ping()]), "reply /dr2/pong s:version"),
        "/dr2/subscribe": _Route("", "si", server._subscribe, "events go to host:port (UDP), or to this sender / TCP connection"),
        "/dr2/unsubscribe": _Route("", "si", server._unsubscribe, "stop sending events there"),
        "/dr2/session/open": _Route("s", "s", lambda p, daw="generic": b.open_session(p, daw) and None, "open a project folder"),
        "/dr2/session/close": _Route("", "", b.close_session, "forget the session"),
        "/dr2/session/state": _Route("", "", lambda: ("/dr2/session/state", [json.dumps(b.require_session().describe())]),
                                     "reply /dr2/session/state s:json"),
        "/dr2/session/autocommit": _Route("i", "", lambda on: b.set_autocommit(bool(on)), "1: every take becomes the song (default)"),
        "/dr2/song/clear": _Route("", "", b.clear_song, "forget the committed song (sections and lyrics stay)"),
        "/dr2/song/tempo": _Route("f", "", b.set_tempo, "bpm"),
        "/dr2/song/timesig": _Route("ii", "", b.set_timesig, "numerator, denominator"),
        "/dr2/song/style": _Route("s", "", b.set_style, "style prompt"),
        "/dr2/section/define": _Route("ssff", "", b.define_section, "sec_id, kind, start_beats, length_beats"),
        "/dr2/lyrics/set": _Route("ss", "", b.set_lyrics, "sec_id, text"),
        "/dr2/lyrics/chunk": _Route("siis", "", b.lyrics_chunk, "sec_id, seq, total, text"),
        "/dr2/lyrics/file": _Route("ss", "", b.lyrics_file, "sec_id, path inside the project"),
        "/dr2/gen/song": _Route("s", "fi", lambda j, sec=0.0, seed=-1: b.submit(j, BridgeJob("song", seconds=sec, seed=_seed(seed))) and None,
                                "job_id [, seconds (0: end of the last section), seed]"),
        "/dr2/gen/continue": _Route("sffs", "i", lambda j, f, n, s, seed=-1: b.submit(
            j, BridgeJob("continue", from_beats=f, length_beats=n, sec_id=s, seed=_seed(seed))) and None,
                                    "job_id, from_beats, length_beats, sec_id [, seed]"),
        "/dr2/gen/regenerate": _Route("ssi", "", lambda j, s, seed: b.submit(
            j, BridgeJob("regenerate", sec_id=s, seed=_seed(seed))) and None, "job_id, sec_id, seed (-1: random)"),
        "/dr2/gen/cancel": _Route("s", "", lambda j: b.cancel(j) and None, "job_id"),
        "/dr2/gen/options": _Route("if", "", b.set_options, "steps, cfg_strength"),
        "/dr2/take/commit": _Route("", "s", lambda j=None: b.commit(j) and None, "make a take the song (autocommit off)"),
        "/dr2/take/rate": _Route("si", "s", lambda t, n, d="overall": rate_take(b, t, n, d, source="osc") and None,
                                 "take (name or job id), stars 1..5 [, dimension: overall (default), musicality, "
                                 "lyric_accuracy, style_similarity, audio_quality]; event /dr2/take/rated s:take s:dimension i:stars s:source"),
        "/dr2/fx/preset": _Route("ss", "", b.set_fx, "stem, preset"),
        "/dr2/take/conform": _Route("i", "ff", b.set_conform, "tempo conform of later takes: 1 on, 0 off, -1 default "
                                    "by model; optional fixed target bpm (default or 0: the session tempo); optional "
                                    "source bpm, the takes' own tempo where their beat reads in half or double time"),
        "/dr2/take/midi": _Route("i", "", lambda on: b.set_midi(on), "1: write a .mid per pitched stem with later takes"),
        "/dr2/midi/file": _Route("s", "i", lambda p, merge=0: server.import_midi(p, bool(merge)),
                                 "import sections, lyrics and tempo map from a .mid/.kar in the project; "
                                 "merge 1 keeps the sections there are (default: replace them); "
                                 "reply /dr2/midi/imported s:file i:sections i:syllables s:encoding s:json"),
    }


class _Sender:
    """Where one request came from: a UDP address or a TCP connection."""

    def __init__(self, udp: tuple[str, int] | None = None, tcp: "_TcpConnection | None" = None) -> None:
        self.udp, self.tcp = udp, tcp


# --------------------------------------------------------------------------------------------- server

class OscServer:
    """UDP + TCP OSC servers in front of one :class:`~dr2studio.bridge.core.Bridge`.

    ``port`` 0 picks free ports (read :attr:`udp_port` / :attr:`tcp_port`). ``midi_import`` (set by
    the CLI) handles ``/dr2/midi/file``: ``midi_import(path, merge)`` returns a
    :class:`~dr2studio.bridge.midifile.MidiImport`.
    """

    def __init__(self, bridge: Bridge, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, tcp: bool = True,
                 max_udp_bytes: int = MAX_UDP_BYTES, max_tcp_bytes: int = MAX_TCP_BYTES,
                 max_tcp_connections: int = MAX_TCP_CONNECTIONS, idle_timeout: float = TCP_IDLE_TIMEOUT_S,
                 send_stall_s: float = SEND_STALL_S, outbox_frames: int = OUTBOX_FRAMES,
                 outbox_bytes: int = OUTBOX_BYTES) -> None:
        if max_tcp_connections < 1 or idle_timeout <= 0 or send_stall_s <= 0 or outbox_frames < 1 or outbox_bytes < 1:
            raise ValueError("OSC limits must be positive: max_tcp_connections, idle_timeout, send_stall_s, "
                             f"outbox_frames, outbox_bytes = {max_tcp_connections}, {idle_timeout}, {send_stall_s}, "
                             f"{outbox_frames}, {outbox_bytes}")
        self.bridge = bridge
        self.max_udp_bytes, self.max_tcp_bytes = max_udp_bytes, max_tcp_bytes
        self.max_tcp_connections, self.idle_timeout, self.send_stall_s = max_tcp_connections, idle_timeout, send_stall_s
        self.outbox_frames, self.outbox_bytes = outbox_frames, outbox_bytes
        self._conns: set[_TcpConnection] = set()
        self._conns_lock = threading.Lock()
        self.midi_import: Callable[[str, bool], Any] | None = None
        #: DAW surfaces heard on this port with their own addresses (REAPER's OSC surface:
        #: :class:`~dr2studio.bridge.reaper_surface.ReaperSurface`): ``handles(address)`` claims an
        #: address, ``handle(address, args)`` returns a reply or ``None`` (no reply).
        self.surfaces: list[Any] = []
        self._routes = _routes(self)
        self._subs_lock = threading.Lock()
        self._udp_subs: list[tuple[str, int]] = []
        self._tcp_subs: list[_TcpConnection] = []
        self._local = threading.local()
        self._udp, self._tcp = _bind_pair(host, port, tcp, self)
        self._threads: list[threading.Thread] = []
        bridge.add_sink(self._broadcast)

    def address_table(self) -> dict[str, tuple[str, str, str]]:
        """Every request address: ``(required OSC types, optional types, meaning)``."""
        return {a: (r.required, r.optional, r.doc) for a, r in sorted(self._routes.items())}

    @property
    def host(self) -> str:
        return self._udp.server_address[0]

    @property
    def udp_port(self) -> int:
        return self._udp.server_address[1]

    @property
    def tcp_port(self) -> int | None:
        return self._tcp.server_address[1] if self._tcp is not None else None

    def start(self) -> "OscServer":
        for srv, name in ((self._udp, "udp"), (self._tcp, "tcp")):
            if srv is not None:
                t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, name=f"dr2-osc-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        log.info("OSC bridge listening on %s udp:%d tcp:%s", self.host, self.udp_port, self.tcp_port)
        return self

    def serve_forever(self) -> None:
        """Block until :meth:`close` is called from another thread (or Ctrl-C)."""
        self.start()
        for t in self._threads:
            while t.is_alive():
                t.join(0.5)

    def close(self) -> None:
        self.bridge.remove_sink(self._broadcast)
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        with self._subs_lock:
            self._tcp_subs.clear()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> "OscServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- packets
    def handle_packet(self, data: bytes, sender: _Sender) -> None:
        """Parse one packet and run its messages; every failure becomes an error reply."""
        limit = self.max_udp_bytes if sender.tcp is None else self.max_tcp_bytes
        if len(data) > limit:
            self._reply(sender, "/dr2/error", ["<packet>", f"packet of {len(data)} bytes exceeds the {limit}-byte limit; "
                                               "send long lyrics with /dr2/lyrics/chunk, /dr2/lyrics/file or over TCP"])
            return
        odd = _odd_type(data)
        if odd is not None:
            self._reply(sender, "/dr2/error", list(odd))
            return
        try:
            messages = [timed.message for timed in osc_packet.OscPacket(data).messages]
        except Exception as exc:  # ParseError, but also odd failures inside the parser on garbage
            self._reply(sender, "/dr2/error", ["<packet>", f"not an OSC message or bundle ({len(data)} bytes): {exc}"])
            return
        self._local.sender = sender
        try:
            for message in messages:
                reply = self._dispatch(message.address, tuple(message.params))
                if reply is None:  # a DAW surface's feedback: nothing to answer
                    continue
                address, args = reply
                self._reply(sender, address, list(args))
        finally:
            self._local.sender = None

    def _dispatch(self, address: str, args: tuple) -> tuple[str, list] | None:
        route = self._routes.get(address)
        if route is None:
            for surface in self.surfaces:
                if surface.handles(address):
                    return surface.handle(address, args)
            if any(c in address for c in _PATTERN_CHARS):
                return ("/dr2/error", [address, f"OSC address patterns ({' '.join(_PATTERN_CHARS)}) are not "
                                                "supported; send the exact address"])
            return self._unknown(address)
        return self._invoke(route, address, args)

    def _invoke(self, route: _Route, address: str, args: tuple) -> tuple[str, list]:
        try:
            result = route.call(*route.parse(address, args))
        except (BridgeError, PathError) as exc:
            return ("/dr2/error", [address, str(exc)])
        except Exception as exc:  # a bug must not take the server down; the client learns what failed
            log.exception("OSC handler for %s failed", address)
            return ("/dr2/error", [address, f"internal error: {type(exc).__name__}: {exc}"])
        if isinstance(result, tuple):
            return result
        return ("/dr2/ack", [address])

    def _unknown(self, address: str) -> tuple[str, list]:
        shown = address if len(address) <= 200 else address[:200] + f"... ({len(address)} characters)"
        return ("/dr2/error", [shown, f"unknown address {shown!r}; known: {', '.join(sorted(self._routes))}"])

    # --------------------------------------------------------- subscribers
    def _subscribe(self, host: str | None = None, port: int | None = None) -> None:
        sender: _Sender = self._local.sender
        with self._subs_lock:
            if host is None and sender.tcp is not None:
                if sender.tcp not in self._tcp_subs:
                    self._tcp_subs.append(sender.tcp)
                return
            if host is None:
                target = sender.udp
            else:
                if port is None or not 1 <= port <= 65535:
                    raise BridgeError(f"/dr2/subscribe needs a port in 1..65535, got {port}")
                target = (host, int(port))
            if target not in self._udp_subs:
                if len(self._udp_subs) + len(self._tcp_subs) >= MAX_SUBSCRIBERS:
                    raise BridgeError(f"at most {MAX_SUBSCRIBERS} subscribers")
                try:
                    socket.getaddrinfo(target[0], target[1], type=socket.SOCK_DGRAM)
                except socket.gaierror as exc:
                    raise BridgeError(f"cannot resolve subscriber host {target[0]!r}: {exc}") from None
                self._udp_subs.append(target)

    def _unsubscribe(self, host: str | None = None, port: int | None = None) -> None:
        sender: _Sender = self._local.sender
        with self._subs_lock:
            if host is None and sender.tcp is not None:
                if sender.tcp in self._tcp_subs:
                    self._tcp_subs.remove(sender.tcp)
                return
            target = sender.udp if host is None else (host, int(port or 0))
            if target in self._udp_subs:
                self._udp_subs.remove(target)

    def _drop_connection(self, conn: "_TcpConnection") -> None:
        with self._subs_lock:
            if conn in self._tcp_subs:
                self._tcp_subs.remove(conn)

    def stats(self) -> dict[str, int]:
        """Open TCP connections, subscribers and events dropped for slow TCP clients (for tests, health)."""
        with self._conns_lock:
            conns = list(self._conns)
        with self._subs_lock:
            subs = len(self._udp_subs) + len(self._tcp_subs)
        return {"tcp_connections": len(conns), "subscribers": subs,
                "queued_bytes": sum(c.outbox.queued_bytes for c in conns),
                "dropped": sum(c.outbox.dropped for c in conns)}

    def _targets(self) -> tuple[list[tuple[str, int]], list["_TcpConnection"]]:
        with self._subs_lock:
            return list(self._udp_subs), list(self._tcp_subs)

    def _send_udp(self, target: tuple[str, int], data: bytes, address: str | None = None) -> None:
        """Send without ever waiting; a message too large for a datagram becomes an error naming TCP."""
        try:
            self._udp.socket.sendto(data, _DONTWAIT, target)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE and address is not None:
                where = f"over TCP (port {self.tcp_port})" if self.tcp_port else "over TCP (this bridge has it off)"
                self._send_udp(target, encode_message("/dr2/error", [
                    address, f"the {address} message is {len(data)} bytes, more than one UDP datagram holds "
                             f"here; ask {where}"]))
            else:  # EAGAIN (full socket buffer), unreachable host: UDP is best effort
                log.debug("cannot send to %s: %s", target, exc)

    def _broadcast(self, address: str, args: list) -> None:
        data = encode_message(address, args)
        udp, tcp = self._targets()
        for target in udp:
            self._send_udp(target, data, address)
        for conn in tcp:
            conn.send(data)

    def _reply(self, sender: _Sender, address: str, args: list) -> None:
        data = encode_message(address, args)
        udp, tcp = self._targets()
        if sender.tcp is not None:
            sender.tcp.send(data)
        elif sender.udp is not None:
            self._send_udp(sender.udp, data, address)
        if address == "/dr2/ack":
            return  # acks are for the sender only
        for target in udp:
            if target != sender.udp:
                self._send_udp(target, data, address)
        for conn in tcp:
            if conn is not sender.tcp:
                conn.send(data)

    def import_midi(self, path: str, merge: bool = False) -> tuple[str, list]:
        """``/dr2/midi/file``: the import's summary goes to the sender and the subscribers, the same
        ``/dr2/midi/imported`` event a watch-folder import sends."""
        from dr2studio.bridge.midifile import imported_message

        if self.midi_import is None:
            raise BridgeError("MIDI file import is not available in this bridge")
        return imported_message(self.midi_import(path, merge))


# ---------------------------------------------------------------------------------------- transports

#: Tries at finding a free port number for UDP and TCP both when the caller asks for any port (0).
_PAIR_TRIES = 20


def _bind_pair(host: str, port: int, tcp: bool, osc: OscServer) -> tuple[_UdpServer, _TcpServer | None]:
    """The UDP server and (``tcp``) the TCP server on one port number.

    With ``port`` 0 the UDP socket gets a free port from the system, but the same number may be taken
    for TCP (another process, a socket in TIME_WAIT): then both are let go and another number is tried.
    """
    for attempt in range(_PAIR_TRIES if port == 0 else 1):
        udp = _UdpServer((host, port), osc)
        if not tcp:
            return udp, None
        try:
            return udp, _TcpServer((host, udp.server_address[1]), osc)
        except OSError as exc:
            udp.server_close()
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == _PAIR_TRIES - 1:
                raise
            log.debug("port %d is free for UDP but not for TCP; trying another", udp.server_address[1])
    raise AssertionError("unreachable")


class _UdpServer(socketserver.UDPServer):
    """Single-threaded on purpose: requests from a client keep their order."""

    max_packet_size = 65535
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], osc: OscServer) -> None:
        self.osc = osc
        super().__init__(address, _UdpHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("UDP request from %s failed", client_address)


class _UdpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request[0]
        self.server.osc.handle_packet(data, _Sender(udp=self.client_address))  # type: ignore[attr-defined]


class _TcpConnection:
    """One OSC TCP client: its framing, its bounded outbox and when it was last heard from."""

    def __init__(self, osc: OscServer, sock: socket.socket, slip: bool, peer: str) -> None:
        self.slip, self.peer = slip, peer
        self.last_recv = time.monotonic()
        self.outbox = Outbox(sock, f"OSC TCP client {peer}", max_frames=osc.outbox_frames, max_bytes=osc.outbox_bytes,
                             stall_timeout=osc.send_stall_s, on_close=lambda _reason: osc._drop_connection(self))

    @property
    def closed(self) -> bool:
        return self.outbox.closed

    def send(self, data: bytes) -> None:
        """Queue one message; never blocks (a full outbox drops it for this client only)."""
        self.outbox.put(_slip(data) if self.slip else struct.pack("!I", len(data)) + data)

    def finish(self, timeout: float = 2.0) -> None:
        """Let queued replies out (a client that half-closed still reads them), then close."""
        end = time.monotonic() + timeout
        while self.outbox.queued_bytes and not self.closed and time.monotonic() < end:
            time.sleep(0.01)
        self.close()

    def close(self, reason: str = "closed") -> None:
        self.outbox.close(reason)


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], osc: OscServer) -> None:
        self.osc = osc
        self.active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, _TcpHandler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Past twice the cap, refuse without a thread; up to it, the handler answers "too many" in the
        # client's framing (which it learns from the first byte).
        with self._active_lock:
            self.active += 1  # shutdown_request takes it back, for refused connections too
            if self.active > 2 * self.osc.max_tcp_connections:
                log.warning("refusing OSC TCP connection from %s: %d open", client_address, self.active - 1)
                return False
            return True

    def shutdown_request(self, request: Any) -> None:
        with self._active_lock:
            self.active -= 1
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("TCP connection from %s failed", client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        osc: OscServer = self.server.osc  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        peer = "%s:%s" % tuple(self.client_address[:2])
        try:  # the first byte tells the framing; a client that sends nothing is idle from the start
            readable, _, _ = select.select([sock], [], [], osc.idle_timeout)
            first = sock.recv(1, socket.MSG_PEEK) if readable else b""
        except OSError:
            return
        if not first:
            return
        conn = _TcpConnection(osc, sock, slip=first[0] == _SLIP_END, peer=peer)
        with osc._conns_lock:
            over = len(osc._conns) >= osc.max_tcp_connections
            if not over:
                osc._conns.add(conn)
        try:
            if over:  # to this client only: the others need not hear about it
                conn.send(encode_message("/dr2/error", [
                    "<connection>", f"too many OSC TCP connections (limit {osc.max_tcp_connections}); "
                                    "close one or use UDP"]))
                return
            for frame in (self._slip_frames if conn.slip else self._length_frames)(conn, osc.max_tcp_bytes):
                if isinstance(frame, str):  # framing error: tell the client, then hang up
                    osc._reply(_Sender(tcp=conn), "/dr2/error", ["<packet>", frame])
                    break
                osc.handle_packet(frame, _Sender(tcp=conn))
        finally:
            with osc._conns_lock:
                osc._conns.discard(conn)
            conn.finish()
            osc._drop_connection(conn)

    def _recv(self, conn: _TcpConnection) -> bytes:
        """Next bytes from the client; ``b""`` at its end, when closed, or after the idle timeout."""
        osc: OscServer = self.server.osc  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        waiting_since = time.monotonic()  # time spent handling the last frame is not idle time
        while not conn.closed:
            quiet = time.monotonic() - max(waiting_since, conn.last_recv, conn.outbox.last_progress)
            left = osc.idle_timeout - quiet
            if left <= 0:
                log.info("closing OSC TCP connection %s: idle for %.0f s (limit %g s)", conn.peer, quiet, osc.idle_timeout)
                conn.close("idle")
                return b""
            try:
                readable, _, _ = select.select([sock], [], [], min(left, 5.0))
                if not readable:
                    continue
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError) as exc:
                log.debug("OSC TCP connection %s: read failed: %s", conn.peer, exc)
                return b""
            conn.last_recv = time.monotonic()
            return data
        return b""

    def _length_frames(self, conn: _TcpConnection, limit: int):
        buf = b""
        while True:
            while len(buf) < 4:
                more = self._recv(conn)
                if not more:
                    return
                buf += more
            (length,) = struct.unpack("!I", buf[:4])
            if length > limit:
                yield f"TCP frame of {length} bytes exceeds the {limit}-byte limit; closing the connection"
                return
            while len(buf) < 4 + length:
                more = self._recv(conn)
                if not more:
                    return
                buf += more
            yield buf[4:4 + length]
            buf = buf[4 + length:]

    def _slip_frames(self, conn: _TcpConnection, limit: int):
        buf = bytearray()
        while True:
            more = self._recv(conn)
            if not more:
                return
            buf += more
            while True:
                end = buf.find(b"\xc0")
                if end < 0:
                    break
                frame = bytes(buf[:end])
                del buf[:end + 1]
                if not frame:
                    continue  # the END that opens a frame
                try:
                    yield _unslip(frame)
                except ValueError as exc:
                    yield f"bad SLIP frame: {exc}"
                    return
            if len(buf) > 2 * limit:
                yield f"SLIP frame exceeds the {limit}-byte limit; closing the connection"
                return
