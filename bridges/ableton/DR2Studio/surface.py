"""The Control Surface Live loads: it owns the placement door and polls it from Live's timer.

Only importable inside Live (``_Framework`` is Live's own package). Live's Python must not start
threads of its own, so the UDP socket is read from ``schedule_message`` ticks (about every 100 ms),
the way other OSC Remote Scripts do.
"""
from __future__ import annotations

import logging
import os

try:  # Live's framework: the classic one, which Live 12 still ships
    from _Framework.ControlSurface import ControlSurface
except ImportError:  # a Live without it: the v2 framework AbletonOSC uses
    from ableton.v2.control_surface import ControlSurface

from .placement import DEFAULT_PORT, PlacementServer, Placer

log = logging.getLogger("dr2studio")

#: Environment variable that moves the placement door off its default port (11010).
PORT_VARIABLE = "DR2STUDIO_LIVE_PORT"


def configured_port() -> int:
    """The UDP port to listen on: ``DR2STUDIO_LIVE_PORT`` when it is a port number, else 11010."""
    text = os.environ.get(PORT_VARIABLE, "")
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else DEFAULT_PORT


class DR2Studio(ControlSurface):
    """Listens for ``/dr2/place`` requests from ``dr2studio bridge`` and places takes on the arrangement."""

    def __init__(self, c_instance) -> None:
        ControlSurface.__init__(self, c_instance)
        self._server = None
        try:
            song = self.song() if callable(self.song) else self.song  # a method in _Framework, a property in v2
            self._server = PlacementServer(Placer(song), port=configured_port())
        except OSError as exc:
            self.show_message("DR2Studio: cannot listen on port %d (%s)" % (configured_port(), exc))
            return
        self.show_message("DR2Studio: placing dr2studio takes, listening on port %d" % self._server.port)
        self.schedule_message(1, self._tick)

    def _tick(self) -> None:
        if self._server is None:  # disconnected: let the timer stop
            return
        try:
            self._server.process()
        except Exception as exc:  # never let the timer die: the next take must still be answered
            log.exception("DR2Studio: placement failed: %s", exc)
        self.schedule_message(1, self._tick)

    def disconnect(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        ControlSurface.disconnect(self)
