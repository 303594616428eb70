"""Wire a bridge together: engine -> :class:`Bridge` -> OSC server, MIDI ports, watch folder.

Used by ``dr2studio bridge``, the tests and ``benchmarks/bridge.py``, so all three run the same
assembly. :meth:`BridgeApp.close` stops everything in reverse order.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from dr2studio.bridge.core import Bridge
from dr2studio.bridge.midi import MidiController, MidiTcpServer, open_virtual_port
from dr2studio.bridge.midifile import import_midi_file, import_midi_path, imported_message
from dr2studio.bridge.osc import (
    DEFAULT_PORT,
    MAX_TCP_CONNECTIONS,
    OUTBOX_BYTES,
    SEND_STALL_S,
    TCP_IDLE_TIMEOUT_S,
    OscServer,
)
from dr2studio.bridge.watch import WatchFolder
from dr2studio.requests import DEFAULT_CFG_STRENGTH, DEFAULT_STEPS

log = logging.getLogger(__name__)

__all__ = ["BridgeOptions", "BridgeApp"]


@dataclasses.dataclass
class BridgeOptions:
    """Everything ``dr2studio bridge`` can set besides the engine."""

    host: str = "127.0.0.1"
    osc_port: int = DEFAULT_PORT
    osc_tcp: bool = True
    midi_port: str | None = None
    midi_tcp: int | None = None
    watch: Path | None = None
    project: Path | None = None
    daw: str = "generic"
    project_roots: list[Path] | None = None
    steps: int = DEFAULT_STEPS
    cfg_strength: float = DEFAULT_CFG_STRENGTH
    max_pending: int = 8
    stem_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Stream doors (OSC TCP, MIDI TCP): clients at once on each, idle close, slow-client disconnect,
    #: bytes queued per OSC TCP client.
    max_connections: int = MAX_TCP_CONNECTIONS
    idle_timeout: float = TCP_IDLE_TIMEOUT_S
    send_stall_s: float = SEND_STALL_S
    outbox_bytes: int = OUTBOX_BYTES


class BridgeApp:
    """A running bridge. ``engine`` is any :class:`~dr2studio.engine.Engine`; the app closes it too
    unless ``own_engine`` is false (an engine shared with other users)."""

    def __init__(self, engine: Any, options: BridgeOptions, *, style_embedding: Any = None, own_engine: bool = True) -> None:
        self.engine = engine
        self.own_engine = own_engine
        self.options = options
        self.bridge = Bridge(engine, style_embedding=style_embedding, project_roots=options.project_roots,
                             steps=options.steps, cfg_strength=options.cfg_strength, max_pending=options.max_pending,
                             stem_options=options.stem_options)
        self.osc: OscServer | None = None
        self.midi: MidiController | None = None
        self.midi_tcp: MidiTcpServer | None = None
        self.midi_port: Any = None
        self.watch: WatchFolder | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        o = self.options
        if o.project is not None:
            self.bridge.open_session(str(Path(o.project).expanduser().resolve()), o.daw)
        self.osc = OscServer(self.bridge, o.host, o.osc_port, tcp=o.osc_tcp, max_tcp_connections=o.max_connections,
                             idle_timeout=o.idle_timeout, send_stall_s=o.send_stall_s, outbox_bytes=o.outbox_bytes)
        self.osc.midi_import = lambda path, merge=False: import_midi_file(self.bridge, path, merge)
        self.osc.start()
        if o.midi_tcp is not None or o.midi_port:
            self.midi = MidiController(self.bridge)
        if o.midi_tcp is not None:
            self.midi_tcp = MidiTcpServer(self.midi, o.host, o.midi_tcp, max_clients=o.max_connections,  # type: ignore[arg-type]
                                          send_stall_s=o.send_stall_s).start()
        if o.midi_port:
            self.midi_port = open_virtual_port(self.midi, o.midi_port)  # type: ignore[arg-type]
        if o.watch is not None:
            self.watch = WatchFolder(o.watch, self._import_dropped, on_error=self._watch_error).start()

    def _import_dropped(self, path: Path) -> None:
        address, args = imported_message(import_midi_path(self.bridge, path, job_prefix="watch"))
        self.bridge.emit(address, *args)  # the same event a /dr2/midi/file import replies with

    def _watch_error(self, path: Path, exc: Exception) -> None:
        self.bridge.emit("/dr2/error", f"watch:{path.name}", str(exc))

    def addresses(self) -> dict[str, Any]:
        """Where the bridge listens (for the CLI's startup line and for clients)."""
        out: dict[str, Any] = {"engine": self.engine.describe()}
        if self.osc is not None:
            out.update(host=self.osc.host, osc_udp=self.osc.udp_port, osc_tcp=self.osc.tcp_port)
        if self.midi_tcp is not None:
            out["midi_tcp"] = self.midi_tcp.port
        if self.midi_port is not None:
            out["midi_port"] = self.options.midi_port
        if self.watch is not None:
            out["watch"] = str(self.watch.folder)
        return out

    def close(self) -> None:
        for part in (self.watch, self.midi_port, self.midi_tcp, self.midi, self.osc):
            if part is not None:
                try:
                    part.close()
                except Exception:
                    log.exception("closing %s failed", type(part).__name__)
        self.bridge.close()
        if self.own_engine:
            self.engine.close()

    def __enter__(self) -> "BridgeApp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
