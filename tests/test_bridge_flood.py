"""Soak test: a bridge (tiny model in-process) under a bounded flood of mixed valid and hostile OSC and
MIDI traffic from several clients (UDP, TCP, MIDI over TCP, a stalled subscriber on each stream door)
keeps answering /dr2/ping within 1 s, keeps its memory and thread count flat, and every valid job's
stems land in its own project.

``DR2STUDIO_SOAK_SECONDS`` sets how long the flood runs (default 20 s; the lead runs it for minutes).
"""
from __future__ import annotations

import logging
import os
import random
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import mido
import pytest
import torch
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

from dr2studio.bridge import BridgeApp, BridgeOptions
from dr2studio.bridge.midi import CMD_OPEN, CMD_TEMPO, CONTROL_CHANNEL, encode_sysex
from dr2studio.engine import LocalEngine

log = logging.getLogger(__name__)
SOAK_SECONDS = float(os.environ.get("DR2STUDIO_SOAK_SECONDS", "20"))
PING_LIMIT_S = 1.0
#: RSS growth allowed between the end of the warm-up and the end of the flood (whole test process). Measured
#: flat (60 s: 1225 -> 1221 MiB over 45 takes; 180 s: see docs/security.md) since finished jobs drop their
#: request, listeners and songs and each job ends with malloc_trim; before, +63 MiB a minute.
KEPT_RESULTS = 2  # songs of finished jobs each job queue keeps (the engine's and the bridge's)
RSS_GROWTH_LIMIT = 24 * 1024 * 1024
#: Each flooding client sends at most this many packets per second (a bounded flood).
RATE = 150.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _frame(address: str, *args) -> bytes:
    data = build_msg(address, list(args)).dgram
    return struct.pack("!I", len(data)) + data


def _raw(address: str, tags: str, payload: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\x00" * (4 - len(b) % 4)

    return pad(address.encode()) + pad(("," + tags).encode()) + payload


def _hostile_osc(rng: random.Random, n: int) -> bytes:
    """One hostile or careless OSC packet (never one that changes a session)."""
    choice = n % 10
    if choice == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))  # garbage
    if choice == 1:
        return build_msg(rng.choice([f"/dr2/nope/{n}/" + "x" * 4000, "/dr2/*", "/dr2/{a,b}/*a*a*a*a*a*a*a*a*a*b"]),
                         [n, "x"]).dgram  # unknown addresses, address patterns
    if choice == 2:
        return build_msg("/dr2/song/tempo", ["fast"]).dgram  # wrong type
    if choice == 3:
        return build_msg("/dr2/lyrics/set", ["v", "x" * 40_000]).dgram  # over the datagram limit
    if choice == 4:
        return _raw("/dr2/song/style", rng.choice("cSI"), b"abc\x00")  # types python-osc does not read
    if choice == 5:
        return build_msg("/dr2/session/open", [f"/no/such/folder/{n}", "ableton"]).dgram
    if choice == 6:
        return build_msg("/dr2/lyrics/chunk", [f"s{n}", 0, 200, "la " * 30]).dgram  # never finished
    if choice == 7:
        return build_msg("/dr2/gen/cancel", [f"ghost-{n}"]).dgram
    if choice == 8:
        return b"/dr2/ping\x00\x00\x00,s\x00\x00\xff\xff\xff\xff"  # truncated
    return build_msg("/dr2/ping", []).dgram


def _hostile_midi(rng: random.Random, n: int) -> bytes:
    choice = n % 8
    if choice == 0:
        return b"\xf0\x7d\x01" + b"A" * 80_000  # unterminated, over the SysEx limit
    if choice == 1:
        return b"\xf7" + bytes(encode_sysex(CMD_TEMPO, "not a tempo " * 1500).bin())  # a ~24 KB error event to all
    if choice == 2:
        return bytes(encode_sysex(0x55, "x").bin())  # unknown command
    if choice == 3:
        return bytes(mido.Message("program_change", channel=CONTROL_CHANNEL, program=99).bin())
    if choice == 4:
        return bytes(mido.Message("clock").bin()) * 24 + bytes(mido.Message("songpos", pos=n % 1000).bin())
    if choice == 5:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))  # noise
    if choice == 6:
        return bytes(encode_sysex(CMD_OPEN, "relative/path").bin())
    return bytes(mido.Message("note_on", channel=3, note=36, velocity=90).bin())  # other channel: ignored


class _Flood:
    """Runs client loops in threads until stopped; records failures of the clients themselves."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def spawn(self, fn, *args) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # a client crash is a test failure, reported at the end
                self.errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")

        t = threading.Thread(target=run, name=f"flood-{fn.__name__}", daemon=True)
        t.start()
        self.threads.append(t)

    def pace(self) -> bool:
        return not self.stop.wait(1.0 / RATE)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


class _JobClient:
    """A DAW over OSC TCP (length-prefixed): its reader thread keeps only its own jobs' events."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.events: dict[str, list[tuple[str, list]]] = {}
        self.done: dict[str, threading.Event] = {}
        self.acks: dict[str, int] = {}
        self.last_error: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, address: str, *args) -> None:
        self.sock.sendall(_frame(address, *args))

    def _read(self) -> None:
        buf = bytearray()
        try:
            while more := self.sock.recv(1 << 20):
                buf += more
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
                    n = struct.unpack("!I", buf[:4])[0]
                    frame = bytes(buf[4:4 + n])
                    del buf[:4 + n]
                    if not frame.startswith((b"/dr2/ack", b"/dr2/job/", b"/dr2/error")):
                        continue  # pongs, states of the flood's polls
                    msg = OscMessage(frame)
                    args = list(msg.params)
                    if msg.address == "/dr2/ack":
                        self.acks[args[0]] = self.acks.get(args[0], 0) + 1
                    elif msg.address.startswith("/dr2/job/") and args and args[0] in self.done:
                        self.events[args[0]].append((msg.address, args))
                        if msg.address in ("/dr2/job/done", "/dr2/job/error"):
                            self.done[args[0]].set()
                    elif msg.address == "/dr2/error" and args and not str(args[0]).startswith(("<", "/dr2/nope", "midi:")):
                        self.last_error = args
        except OSError:
            pass

    def run(self, job_id: str, seconds: float) -> list[tuple[str, list]]:
        self.events[job_id], self.done[job_id] = [], threading.Event()
        self.send("/dr2/gen/song", job_id, seconds, 7)
        assert self.done[job_id].wait(120), f"{job_id} did not finish; last error {self.last_error}"
        return self.events[job_id]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dr2studio.lab.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_bridge_survives_a_flood(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr("dr2studio.engine.jobs.KEEP_RESULTS", KEPT_RESULTS)  # the steady state comes sooner
    # pytest's log capture keeps every record of the test, and a record whose arguments hold an exception
    # holds its frames; the soak measures the bridge, not the test harness
    monkeypatch.setattr(logging.getLogger("dr2studio"), "propagate", False)
    style = torch.randn(512, generator=torch.Generator().manual_seed(3))
    engine = LocalEngine(str(tiny_model), style_embedding=style)
    options = BridgeOptions(osc_port=0, midi_tcp=0, steps=2, max_pending=4, send_stall_s=2.0, outbox_bytes=256 * 1024)
    app = BridgeApp(engine, options, style_embedding=style)
    host, udp_port, tcp_port, midi_port = "127.0.0.1", app.osc.udp_port, app.osc.tcp_port, app.midi_tcp.port
    flood = _Flood()
    pings: list[float] = []
    project = tmp_path / "project A"
    project.mkdir()
    stalled: list[socket.socket] = []
    try:
        # the DAW: a session and a first take before the flood
        daw = _JobClient(tcp_port)
        daw.send("/dr2/subscribe")
        daw.send("/dr2/session/open", str(project), "generic")
        daw.send("/dr2/section/define", "v1", "verse", 0.0, 4.0)
        daw.send("/dr2/lyrics/set", "v1", "hold the line\nall night long")
        for k in range(2, 5):  # lyrics of sections still to come make the state ~25 KB
            daw.send("/dr2/lyrics/set", f"v{k}", ("la " * 30 + "\n") * 80)
        stems: list[str] = []

        def take(n: int) -> None:
            events = daw.run(f"take{n}", 2.0)
            assert events[-1][0] == "/dr2/job/done", events[-1]
            stems.extend(args[2] for address, args in events if address == "/dr2/job/stem")

        take(0)

        # stalled clients: one on each stream door, subscribed, never reading
        for port, hello in ((tcp_port, _frame("/dr2/subscribe")), (midi_port, b"")):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, port))
            if hello:
                s.sendall(hello)
            stalled.append(s)

        def udp_hostile(seed: int) -> None:
            rng = random.Random(seed)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(build_msg("/dr2/subscribe", []).dgram, (host, udp_port))  # and never reads
                n = 0
                while flood.pace():
                    s.sendto(_hostile_osc(rng, n), (host, udp_port))
                    n += 1

        def tcp_hostile(seed: int) -> None:
            rng = random.Random(seed)
            n = 0
            while not flood.stop.is_set():  # connection churn: a few frames, sometimes a broken one, hang up
                with socket.create_connection((host, tcp_port), timeout=5) as s:
                    s.settimeout(0.05)
                    for _ in range(20):
                        if not flood.pace():
                            break
                        # a state poll is answered to every subscriber too (~25 KB each here)
                        s.sendall(_frame(*[("/dr2/ping",), ("/dr2/bogus", 1), ("/dr2/song/tempo", "x"),
                                           ("/dr2/session/state",)][n % 4]))
                        n += 1
                        try:
                            s.recv(1 << 16)
                        except OSError:
                            pass
                    if rng.random() < 0.3:
                        s.sendall(struct.pack("!I", 50_000_000))  # oversize frame: error, then closed
                    elif rng.random() < 0.3:
                        s.sendall(b"\xc0/dr2\xdb\x01\xc0")  # bad SLIP escape on a length-prefixed stream

        def midi_hostile(seed: int) -> None:
            rng = random.Random(seed)
            with socket.create_connection((host, midi_port), timeout=5) as s:
                s.setblocking(False)
                n = 0
                while flood.pace():
                    data = _hostile_midi(rng, n)
                    n += 1
                    sent = 0
                    while sent < len(data) and not flood.stop.is_set():
                        try:
                            sent += s.send(data[sent:])
                        except BlockingIOError:
                            flood.stop.wait(0.01)
                    try:
                        while s.recv(1 << 16):  # keeps reading its events
                            pass
                    except BlockingIOError:
                        pass
                s.sendall(b"\xf7")

        def midi_valid() -> None:
            port = mido.sockets.connect(host, midi_port)
            try:
                n = 0
                while flood.pace():
                    port.send(encode_sysex(CMD_TEMPO, "120") if n % 2 else mido.Message("clock"))
                    n += 1
                    for _ in port.iter_pending():
                        pass
            finally:
                port.close()

        def pinger() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(PING_LIMIT_S * 3)
                while not flood.stop.wait(0.1):
                    t0 = time.monotonic()
                    s.sendto(build_msg("/dr2/ping", []).dgram, (host, udp_port))
                    while b"/dr2/pong" not in s.recv(65535):
                        pass
                    pings.append(time.monotonic() - t0)

        for seed in range(2):
            flood.spawn(udp_hostile, seed)
        flood.spawn(tcp_hostile, 10)
        flood.spawn(midi_hostile, 20)
        flood.spawn(midi_valid)
        flood.spawn(pinger)

        # warm-up: a quarter of the run at the DAW's pace, so the kept results (KEEP_RESULTS, patched
        # small above) are full and memory has reached its steady state; then the baseline
        warm_until = time.monotonic() + SOAK_SECONDS / 4
        n = 1
        while time.monotonic() < warm_until or n <= 2 * KEPT_RESULTS + 1:
            take(n)
            n += 1
            time.sleep(0.5)
        rss0, threads0 = _rss(), threading.active_count()
        end = time.monotonic() + SOAK_SECONDS * 3 / 4
        while time.monotonic() < end:
            take(n)  # a DAW's pace: a take a second
            n += 1
            time.sleep(1.0)
        rss1, threads1 = _rss(), threading.active_count()
        osc_stats, midi_stats = app.osc.stats(), app.midi_tcp.stats()
        flood.join()
        log.info("soak %.0f s: %d pings, slowest %.3f s, median %.4f s; RSS %.1f -> %.1f MiB; threads %d -> %d; "
                 "%d takes; osc %s; midi %s", SOAK_SECONDS, len(pings), max(pings, default=0),
                 sorted(pings)[len(pings) // 2] if pings else 0, rss0 / 2**20, rss1 / 2**20, threads0, threads1,
                 n, osc_stats, midi_stats)

        assert not flood.errors, flood.errors
        assert pings and max(pings) < PING_LIMIT_S, f"slowest ping {max(pings):.3f} s of {len(pings)}"
        assert rss1 - rss0 < RSS_GROWTH_LIMIT, f"RSS grew {(rss1 - rss0) / 2**20:.1f} MiB ({rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f})"
        assert threads1 <= threads0 + 4, (threads0, threads1)
        assert osc_stats["queued_bytes"] <= app.osc.outbox_bytes * app.osc.max_tcp_connections
        # the stalled OSC subscriber was disconnected, not waited for: left are the DAW and the two UDP
        # flooders (subscribed, never reading: UDP just drops). MIDI events are small, so the stalled
        # MIDI client may not have filled its kernel buffers yet (tests/test_bridge_midi.py stalls one);
        # what waits for it is bounded either way.
        assert osc_stats["subscribers"] == 3, osc_stats
        assert midi_stats["clients"] <= 3 and midi_stats["queued_bytes"] <= 3 * app.midi_tcp.outbox_bytes, midi_stats
        assert len(stems) == n and all(Path(p).resolve().is_relative_to(project.resolve()) for p in stems), stems
        assert all(Path(p).is_file() for p in stems)
        daw.close()
    finally:
        flood.join()
        for s in stalled:
            s.close()
        app.close()
