"""MIDI front end of the bridge: the control mapping of ``osc-midi.md`` over live ports.

Control channel 16 (mido channel 15):

- notes: 36 continue from the song position, 37 regenerate the current section, 38 cancel the MIDI
  jobs, 39 commit the newest take (velocity 0 counts as note-off and does nothing);
- program change: section kind (0 intro, 1 verse, 2 pre-chorus, 3 chorus, 4 bridge, 5 outro,
  6 instrumental) for sections created from MIDI, and for the section selected with CC 20;
- CC 20 section index (timeline order, 0-based), CC 21 length in bars (0 means 8), CC 22 guidance
  (cfg = value / 127 * 10), CC 23 / 24 seed MSB / LSB (14 bits);
- notes 48..52 rate the newest take 1..5 stars, on the dimension CC 25 selects (0 overall, 1 musicality,
  2 lyric accuracy, 3 style similarity, 4 audio quality; see :mod:`dr2studio.bridge.rating`);
- CC 26 tempo conform of later takes (0 off, which also drops a stated source tempo and a fixed target
  set over OSC; 1..63 the default by model; 64..127 on), CC 27 a ``.mid`` per pitched stem (64..127 on);
- Song Position Pointer (16th notes: beats = value / 4) and clock / start / continue / stop;
- SysEx ``F0 7D <cmd> <base64 UTF-8 text> F7``: cmd 1 lyrics of the current section, 2 lyrics of a
  named section (first line = section id), 3 style, 4 tempo, 5 open a session (``path`` then
  optionally a line with the DAW), 6 define a section (``sec_id kind start_beats length_beats``),
  7 the source tempo of later takes, for conform where their beat reads in half or double time (a
  number; empty or 0 clears it).

Events travel back as SysEx ``F0 7D 10 <base64 JSON [address, args]> F7`` on the same port, so a
MIDI-only controller (or a test) sees accepted / progress / stem / done / error.

Transports: :class:`MidiTcpServer` (raw MIDI bytes over TCP, the wire format of mido's socket ports,
so ``mido.sockets.connect`` works; everywhere) and :func:`open_virtual_port` (rtmidi; virtual ports do
not exist on Windows). The TCP server never waits for a client: each has a bounded
:class:`~dr2studio.bridge.outbox.Outbox` (a client that stops reading loses events, then its
connection), at most :data:`MAX_MIDI_CLIENTS` are connected, and a SysEx is collected here, never
beyond :data:`MAX_SYSEX` bytes, even when its ``F7`` never comes.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import selectors
import socket
import threading
import uuid
from typing import Any, Callable

from dr2studio.bridge.core import Bridge, BridgeJob
from dr2studio.bridge.outbox import Outbox
from dr2studio.bridge.paths import PathError
from dr2studio.bridge.rating import rate_newest_take
from dr2studio.bridge.session import BridgeError
from dr2studio.ratings import DIMENSIONS, OVERALL

log = logging.getLogger(__name__)

__all__ = ["MidiController", "MidiTcpServer", "MidiStream", "open_virtual_port", "encode_sysex", "decode_event",
           "CONTROL_CHANNEL", "PROGRAM_KINDS", "CC_CONFORM", "CC_TAKE_MIDI", "CMD_SOURCE_TEMPO", "NOTE_CONTINUE", "NOTE_REGENERATE", "NOTE_CANCEL", "NOTE_COMMIT"]

CONTROL_CHANNEL = 15  # "channel 16" in the 1-based numbering DAWs show
SYSEX_ID = 0x7D
NOTE_CONTINUE, NOTE_REGENERATE, NOTE_CANCEL, NOTE_COMMIT = 36, 37, 38, 39
#: Notes NOTE_RATE_FIRST .. +4 rate the newest take 1..5 stars; CC_RATE_DIMENSION picks what they rate.
NOTE_RATE_FIRST, CC_RATE_DIMENSION = 48, 25
RATE_DIMENSIONS = (OVERALL, *DIMENSIONS)  # CC 25 value -> dimension
PROGRAM_KINDS = ("intro", "verse", "pre-chorus", "chorus", "bridge", "outro", "instrumental")
CMD_LYRICS, CMD_LYRICS_FOR, CMD_STYLE, CMD_TEMPO, CMD_OPEN, CMD_SECTION, CMD_SOURCE_TEMPO, CMD_EVENT = 1, 2, 3, 4, 5, 6, 7, 0x10
#: CC 26: tempo conform of later takes (0 off, 1..63 default by model, 64..127 on); CC 27: MIDI of later takes.
CC_CONFORM, CC_TAKE_MIDI = 26, 27
#: Data bytes of one SysEx (between F0 and F7); longer ones are dropped with an error, unbuffered.
MAX_SYSEX = 64 * 1024
#: MIDI-over-TCP clients connected at once; one more gets an error event and is closed.
MAX_MIDI_CLIENTS = 16
#: Events waiting for one MIDI-over-TCP client (frames / bytes); beyond, new ones are dropped for it.
MIDI_OUTBOX_FRAMES = 1024
MIDI_OUTBOX_BYTES = 2 * 1024 * 1024
#: A MIDI-over-TCP client that takes no bytes for this long while events wait is disconnected.
MIDI_SEND_STALL_S = 10.0
DEFAULT_BARS = 8


def encode_sysex(command: int, text: str) -> Any:
    """A dr2 SysEx message (``mido.Message``) carrying ``text`` as base64 UTF-8 (7-bit safe)."""
    import mido

    payload = base64.b64encode(text.encode("utf-8"))
    return mido.Message("sysex", data=[SYSEX_ID, command, *payload])


def decode_event(msg: Any) -> tuple[str, list] | None:
    """``(address, args)`` of an event SysEx sent by the bridge, or ``None`` for other messages."""
    if msg.type != "sysex" or len(msg.data) < 2 or msg.data[0] != SYSEX_ID or msg.data[1] != CMD_EVENT:
        return None
    address, args = json.loads(base64.b64decode(bytes(msg.data[2:])).decode("utf-8"))
    return address, args


class MidiController:
    """Turns MIDI messages into bridge commands; keeps the controller state (position, section, CCs).

    Thread-safe: a port's reader thread calls :meth:`handle` for every message.
    """

    def __init__(self, bridge: Bridge, *, channel: int = CONTROL_CHANNEL) -> None:
        self.bridge = bridge
        self.channel = channel
        self.position_beats = 0.0
        self.running = False
        self.section_index: int | None = None
        self.kind = "verse"
        self.length_bars = DEFAULT_BARS
        self.cfg_strength: float | None = None
        self.rate_dimension = RATE_DIMENSIONS[0]
        self._seed_msb: int | None = None
        self._seed_lsb: int | None = None
        self.jobs: list[str] = []
        self._outputs: list[Callable[[Any], None]] = []
        self._lock = threading.RLock()
        self._out_lock = threading.Lock()  # separate: events arrive from threads holding the bridge lock
        bridge.add_sink(self._on_event)

    @property
    def seed(self) -> int | None:
        if self._seed_msb is None and self._seed_lsb is None:
            return None
        return (self._seed_msb or 0) * 128 + (self._seed_lsb or 0)

    def add_output(self, send: Callable[[Any], None]) -> None:
        with self._out_lock:
            self._outputs.append(send)

    def remove_output(self, send: Callable[[Any], None]) -> None:
        with self._out_lock:
            if send in self._outputs:
                self._outputs.remove(send)

    def close(self) -> None:
        self.bridge.remove_sink(self._on_event)

    def _on_event(self, address: str, args: list) -> None:
        if address in ("/dr2/pong", "/dr2/ack"):
            return
        msg = encode_sysex(CMD_EVENT, json.dumps([address, args], ensure_ascii=False))
        with self._out_lock:
            outputs = list(self._outputs)
        for send in outputs:
            try:
                send(msg)
            except Exception as exc:  # a closed port must not break the bridge
                log.debug("MIDI event output failed: %s", exc)

    # ----------------------------------------------------------------- input
    def handle(self, msg: Any) -> None:
        """Apply one message; errors become ``/dr2/error midi:<type> ...`` events, never exceptions."""
        try:
            with self._lock:
                self._handle(msg)
        except (BridgeError, PathError) as exc:
            self.bridge.emit("/dr2/error", f"midi:{msg.type}", str(exc))
        except Exception as exc:
            log.exception("MIDI message %s failed", msg)
            self.bridge.emit("/dr2/error", f"midi:{msg.type}", f"internal error: {type(exc).__name__}: {exc}")

    def _handle(self, msg: Any) -> None:
        kind = msg.type
        if kind == "songpos":
            self.position_beats = msg.pos / 4.0
        elif kind == "clock":
            if self.running:
                self.position_beats += 1.0 / 24.0
        elif kind == "start":
            self.position_beats, self.running = 0.0, True
        elif kind == "continue":
            self.running = True
        elif kind == "stop":
            self.running = False
        elif kind == "sysex":
            self._sysex(msg.data)
        elif getattr(msg, "channel", None) != self.channel:
            return
        elif kind == "note_on" and msg.velocity > 0:
            self._note(msg.note)
        elif kind == "program_change":
            if msg.program >= len(PROGRAM_KINDS):
                raise BridgeError(f"program {msg.program} is not a section kind (0..{len(PROGRAM_KINDS) - 1}: {', '.join(PROGRAM_KINDS)})")
            self.kind = PROGRAM_KINDS[msg.program]
            sec = self._selected()
            if sec is not None:
                self.bridge.define_section(sec.sec_id, self.kind, sec.start_beats, sec.length_beats)
        elif kind == "control_change":
            self._cc(msg.control, msg.value)

    def _cc(self, control: int, value: int) -> None:
        if control == 20:
            self.section_index = value
        elif control == 21:
            self.length_bars = value or DEFAULT_BARS
        elif control == 22:
            self.cfg_strength = value / 127.0 * 10.0
        elif control == 23:
            self._seed_msb = value
        elif control == 24:
            self._seed_lsb = value
        elif control == CC_RATE_DIMENSION:
            if value >= len(RATE_DIMENSIONS):
                raise BridgeError(f"CC {CC_RATE_DIMENSION} value {value} is not a rating dimension "
                                  f"(0..{len(RATE_DIMENSIONS) - 1}: {', '.join(RATE_DIMENSIONS)})")
            self.rate_dimension = RATE_DIMENSIONS[value]
        elif control == CC_CONFORM:
            if value == 0:  # off: a stated source tempo or fixed target would be refused with it, so they go too
                self.bridge.update_take_options(conform=False, conform_bpm=None, source_bpm=None)
            else:
                self.bridge.update_take_options(conform=True if value >= 64 else None)
        elif control == CC_TAKE_MIDI:
            self.bridge.update_take_options(midi=value >= 64)

    def _selected(self):
        session = self.bridge.require_session()
        if self.section_index is None:
            return None
        ordered = session.ordered_sections()
        if self.section_index >= len(ordered):
            raise BridgeError(f"section index {self.section_index} (CC 20) but only {len(ordered)} sections are defined")
        return ordered[self.section_index]

    def _current(self, create: bool):
        """The selected section, else the one under the song position, else (``create``) a new one there."""
        session = self.bridge.require_session()
        sec = self._selected() or session.section_at(self.position_beats)
        if sec is None and create:
            length = self.length_bars * session.beats_per_bar
            sec_id = f"midi-{len(session.sections) + 1}"
            while sec_id in session.sections:
                sec_id += "x"
            self.bridge.define_section(sec_id, self.kind, self.position_beats, length)
            sec = session.section(sec_id)
        if sec is None:
            raise BridgeError(f"no section at beat {self.position_beats:g}; select one with CC 20 or define one")
        return sec

    def _note(self, note: int) -> None:
        if note == NOTE_CONTINUE:
            session = self.bridge.require_session()
            sec = self._current(create=True)
            length = self.length_bars * session.beats_per_bar
            self._submit(BridgeJob("continue", from_beats=self.position_beats, length_beats=length,
                                   sec_id=sec.sec_id, seed=self.seed, cfg_strength=self.cfg_strength))
        elif note == NOTE_REGENERATE:
            sec = self._current(create=False)
            self._submit(BridgeJob("regenerate", sec_id=sec.sec_id, seed=self.seed, cfg_strength=self.cfg_strength))
        elif note == NOTE_CANCEL:
            for job in self.bridge.running_jobs():
                if job.id in self.jobs:
                    self.bridge.cancel(job.id)
        elif note == NOTE_COMMIT:
            self.bridge.commit()
        elif NOTE_RATE_FIRST <= note < NOTE_RATE_FIRST + 5:
            rate_newest_take(self.bridge, note - NOTE_RATE_FIRST + 1, self.rate_dimension, source="midi")

    def _submit(self, spec: BridgeJob) -> None:
        job_id = f"midi-{uuid.uuid4().hex[:10]}"
        self.jobs = (self.jobs + [job_id])[-64:]
        self.bridge.submit(job_id, spec)

    def _sysex(self, data: tuple) -> None:
        if len(data) < 2 or data[0] != SYSEX_ID:
            return  # someone else's SysEx
        if len(data) > MAX_SYSEX:
            raise BridgeError(f"SysEx of {len(data)} bytes exceeds {MAX_SYSEX}")
        command = data[1]
        try:
            text = base64.b64decode(bytes(data[2:]), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise BridgeError(f"SysEx command {command}: payload is not base64 UTF-8 ({exc})") from None
        if command == CMD_LYRICS:
            self.bridge.set_lyrics(self._current(create=True).sec_id, text)
        elif command == CMD_LYRICS_FOR:
            sec_id, _, lyrics = text.partition("\n")
            self.bridge.set_lyrics(sec_id.strip(), lyrics)
        elif command == CMD_STYLE:
            self.bridge.set_style(text)
        elif command == CMD_TEMPO:
            try:
                bpm = float(text)
            except ValueError:
                raise BridgeError(f"SysEx tempo {text!r:.40} is not a number") from None
            self.bridge.set_tempo(bpm)
        elif command == CMD_SOURCE_TEMPO:
            try:
                source = float(text) if text.strip() else 0.0
            except ValueError:
                raise BridgeError(f"SysEx source tempo {text!r:.40} is not a number") from None
            self.bridge.update_take_options(source_bpm=source or None)
        elif command == CMD_OPEN:
            path, _, daw = text.partition("\n")
            self.bridge.open_session(path.strip(), daw.strip() or "generic")
        elif command == CMD_SECTION:
            parts = text.split()
            if len(parts) != 4:
                raise BridgeError(f"SysEx section needs 'sec_id kind start_beats length_beats', got {text!r:.80}")
            try:
                start, length = float(parts[2]), float(parts[3])
            except ValueError:
                raise BridgeError(f"SysEx section {text!r:.80}: start and length must be numbers") from None
            self.bridge.define_section(parts[0], parts[1], start, length)
        else:
            raise BridgeError(f"unknown dr2 SysEx command {command}")


_STATUS = re.compile(rb"[\x80-\xf7]")  # a status byte that ends a SysEx (F8..FF are real-time, allowed inside)
_REALTIME = re.compile(rb"[\xf8-\xff]")


class MidiStream:
    """Raw MIDI bytes from one client -> mido messages, with SysEx bounded.

    Why: mido's parser keeps every byte of a SysEx until its ``F7``, so an unterminated one grows
    without end. Here SysEx data is collected up to ``limit`` bytes; past that it is counted, not
    kept, and reported once. :meth:`feed` returns the messages and error texts in arrival order.
    """

    def __init__(self, limit: int = MAX_SYSEX) -> None:
        import mido

        self.limit = limit
        self._parser = mido.Parser()
        self._sysex: bytearray | None = None
        self._sysex_size = 0
        self._reported = False

    def feed(self, data: bytes) -> list[Any]:
        out: list[Any] = []
        i, n = 0, len(data)
        while i < n:
            if self._sysex is None:
                j = data.find(b"\xf0", i)
                self._parser.feed(data[i:j if j >= 0 else n])
                out.extend(self._parser)
                if j < 0:
                    break
                self._sysex, self._sysex_size, self._reported, i = bytearray(), 0, False, j + 1
                continue
            m = _STATUS.search(data, i)
            end = m.start() if m else n
            self._collect(data[i:end], out)
            if m is None:
                break
            i = end
            if data[end] == 0xF7:
                i += 1
                if self._sysex_size <= self.limit:
                    self._parser.feed(b"\xf0" + bytes(self._sysex) + b"\xf7")
                    out.extend(self._parser)
            elif not self._reported:  # another status byte aborts the SysEx (as in mido); it is parsed next
                out.append(f"SysEx of {self._sysex_size} bytes ended by status byte 0x{data[end]:02X} "
                           "without its F7; dropped")
            self._sysex = None
        return out

    def _collect(self, chunk: bytes, out: list[Any]) -> None:
        if _REALTIME.search(chunk):  # real-time bytes inside a SysEx are messages of their own
            self._parser.feed(bytes(b for b in chunk if b >= 0xF8))
            out.extend(self._parser)
            chunk = bytes(b for b in chunk if b < 0xF8)
        self._sysex_size += len(chunk)
        if self._sysex_size <= self.limit:
            self._sysex.extend(chunk)  # type: ignore[union-attr]
        elif not self._reported:
            self._reported = True
            self._sysex = bytearray()  # free what was kept; the rest is counted only
            out.append(f"SysEx longer than the {self.limit}-byte limit; dropped (its bytes are skipped until F7)")


class _MidiClient:
    def __init__(self, sock: socket.socket, peer: str, server: "MidiTcpServer") -> None:
        self.sock, self.peer = sock, peer
        self.stream = MidiStream(server.max_sysex)
        self.outbox = Outbox(sock, f"MIDI TCP client {peer}", max_frames=server.outbox_frames,
                             max_bytes=server.outbox_bytes, stall_timeout=server.send_stall_s)


class MidiTcpServer:
    """MIDI over TCP: raw MIDI bytes both ways, the wire format of mido's socket ports, so clients connect
    with ``mido.sockets.connect(host, port)``; their messages drive the controller and events go back to
    all. One thread reads every client (a selector); each client has its own bounded outbox and writer."""

    def __init__(self, controller: MidiController, host: str = "127.0.0.1", port: int = 7101, *, poll: float = 0.1,
                 max_clients: int = MAX_MIDI_CLIENTS, send_stall_s: float = MIDI_SEND_STALL_S,
                 outbox_frames: int = MIDI_OUTBOX_FRAMES, outbox_bytes: int = MIDI_OUTBOX_BYTES,
                 max_sysex: int = MAX_SYSEX) -> None:
        if max_clients < 1 or send_stall_s <= 0 or outbox_frames < 1 or outbox_bytes < 1 or max_sysex < 1:
            raise ValueError("MIDI TCP limits must be positive: max_clients, send_stall_s, outbox_frames, outbox_bytes, "
                             f"max_sysex = {max_clients}, {send_stall_s}, {outbox_frames}, {outbox_bytes}, {max_sysex}")
        self.controller = controller
        self.max_clients, self.send_stall_s = max_clients, send_stall_s
        self.outbox_frames, self.outbox_bytes, self.max_sysex = outbox_frames, outbox_bytes, max_sysex
        self._listen = socket.create_server((host, port))
        self._listen.setblocking(False)
        self.host, self.port = self._listen.getsockname()[:2]
        self._poll = poll
        self._clients: dict[socket.socket, _MidiClient] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listen, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, name="dr2-midi-tcp", daemon=True)
        controller.add_output(self._send)

    def start(self) -> "MidiTcpServer":
        self._thread.start()
        log.info("MIDI socket port on %s:%d", self.host, self.port)
        return self

    def stats(self) -> dict[str, int]:
        """Connected clients and events dropped for slow ones (for tests and health)."""
        with self._lock:
            clients = list(self._clients.values())
        return {"clients": len(clients), "queued_bytes": sum(c.outbox.queued_bytes for c in clients),
                "dropped": sum(c.outbox.dropped for c in clients)}

    def _send(self, msg: Any) -> None:
        data = bytes(msg.bin())
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.outbox.put(data)  # never blocks; a full outbox drops for that client only

    def _accept(self) -> None:
        try:
            sock, addr = self._listen.accept()
        except (BlockingIOError, InterruptedError):
            return
        peer = "%s:%s" % tuple(addr[:2])
        with self._lock:
            full = len(self._clients) >= self.max_clients
        if full:
            log.warning("refusing MIDI TCP client %s: %d connected", peer, self.max_clients)
            note = encode_sysex(CMD_EVENT, json.dumps(["/dr2/error", [
                "midi:connection", f"too many MIDI TCP clients (limit {self.max_clients})"]]))
            try:
                sock.setblocking(False)
                sock.send(bytes(note.bin()))
            except OSError:
                pass
            sock.close()
            return
        client = _MidiClient(sock, peer, self)
        with self._lock:
            self._clients[sock] = client
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _drop(self, client: _MidiClient) -> None:
        with self._lock:
            self._clients.pop(client.sock, None)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.outbox.close("eof")
        client.sock.close()

    def _read(self, client: _MidiClient) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        for item in client.stream.feed(data):
            if isinstance(item, str):
                self.controller.bridge.emit("/dr2/error", f"midi:sysex from {client.peer}", item)
            else:
                self.controller.handle(item)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._selector.select(self._poll)
            except (OSError, ValueError):  # a socket closed under us
                continue
            for key, _ in events:
                if key.fileobj is self._listen:
                    self._accept()
                else:
                    self._read(key.data)

    def close(self) -> None:
        self._stop.set()
        self.controller.remove_output(self._send)
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            self._drop(client)
        self._selector.close()
        self._listen.close()

    def __enter__(self) -> "MidiTcpServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_virtual_port(controller: MidiController, name: str) -> Any:
    """Open an rtmidi virtual in/out port called ``name`` (macOS, Linux with ALSA); returns the port.

    Raises :class:`BridgeError` where the platform has no virtual ports or no MIDI system.
    """
    import mido

    try:
        port = mido.open_ioport(name, virtual=True, callback=controller.handle)
    except Exception as exc:  # OSError, NotImplementedError, ImportError, rtmidi's own SystemError subclasses
        raise BridgeError(f"cannot open a virtual MIDI port {name!r} here ({exc}); use --midi-tcp PORT instead") from exc
    controller.add_output(port.send)
    return port
