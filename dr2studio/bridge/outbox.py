"""Bounded, non-blocking outgoing queues for the bridge's stream clients (OSC over TCP, MIDI over TCP).

Why: events fan out from whatever thread emits them (the UDP OSC thread, the job worker, the MIDI
reader). A blocking ``sendall`` to a client that stopped reading would freeze that thread and with it
every other client. Here a send only appends to the client's own queue, bounded in frames and bytes;
a writer thread per client drains it with non-blocking writes. When the queue is full, new frames
for that client are dropped (and counted), and the client is disconnected when its queue has not
been empty for ``stall_timeout`` seconds (it is behind, not just slow for a burst) or when it takes
no bytes at all for that long while frames wait. Other clients never wait for it.
"""
from __future__ import annotations

import collections
import logging
import select
import socket
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["Outbox"]

_BATCH_BYTES = 64 * 1024


class Outbox:
    """The outgoing side of one stream socket.

    The socket is switched to non-blocking mode: its reader must wait with ``select`` (or a
    selector) before ``recv``. ``on_close(reason)`` is called once, from whichever thread closes it.
    """

    def __init__(self, sock: socket.socket, name: str, *, max_frames: int, max_bytes: int, stall_timeout: float,
                 on_close: Callable[[str], None] | None = None) -> None:
        self.sock, self.name = sock, name
        self.max_frames, self.max_bytes, self.stall_timeout = max_frames, max_bytes, stall_timeout
        self.on_close = on_close
        self.dropped = 0
        self.sent_frames = 0
        self.closed = False
        self.close_reason: str | None = None
        self.last_progress = time.monotonic()
        self._behind_since: float | None = None  # when the queue last went from empty to non-empty
        self._frames: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        sock.setblocking(False)
        self._thread = threading.Thread(target=self._drain, name=f"dr2-out-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, frame: bytes) -> bool:
        """Queue one frame; ``False`` when it was dropped (queue full or client gone). Never blocks."""
        with self._cond:
            if self.closed:
                return False
            now = time.monotonic()
            if len(self._frames) < self.max_frames and self._bytes + len(frame) <= self.max_bytes:
                if not self._frames:
                    self.last_progress = self._behind_since = now  # the stall clocks start when something waits
                self._frames.append(frame)
                self._bytes += len(frame)
                self._cond.notify()
                return True
            self.dropped += 1
            behind = now - (self._behind_since or now)
            if behind < self.stall_timeout:
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("%s is not keeping up: %d event(s) dropped", self.name, self.dropped)
                return False
            reason = (f"behind for {behind:.1f} s with a full queue ({len(self._frames)} events, {self._bytes} bytes; "
                      f"{self.dropped} dropped; stall limit {self.stall_timeout:g} s)")
        self.close(reason)
        return False

    def close(self, reason: str = "closed") -> None:
        """Stop sending and shut the socket down (its owner still closes the descriptor)."""
        with self._cond:
            if self.closed:
                return
            self.closed, self.close_reason = True, reason
            self._frames.clear()
            self._bytes = 0
            self._cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's select
        except OSError:
            pass
        if reason.startswith(("behind", "took nothing")):
            log.warning("disconnecting %s: %s", self.name, reason)
        elif reason not in ("closed", "eof", "idle"):
            log.info("closing %s: %s", self.name, reason)
        if self.on_close is not None:
            try:
                self.on_close(reason)
            except Exception:
                log.exception("on_close of %s failed", self.name)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._frames and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                batch, size = [], 0  # many small events go out in one write
                for frame in self._frames:
                    if batch and size + len(frame) > _BATCH_BYTES:
                        break
                    batch.append(frame)
                    size += len(frame)
            if not self._write(b"".join(batch) if len(batch) > 1 else batch[0]):
                return
            with self._cond:
                if self.closed:
                    return
                for _ in batch:
                    self._bytes -= len(self._frames.popleft())
                if not self._frames:
                    self._behind_since = None
                self.sent_frames += len(batch)

    def _write(self, frame: bytes) -> bool:
        view = memoryview(frame)
        while view:
            if self.closed:
                return False
            try:
                n = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self.close(f"send failed: {exc}")
                return False
            if n:
                view = view[n:]
                self.last_progress = time.monotonic()
                continue
            waited = time.monotonic() - self.last_progress
            if waited >= self.stall_timeout:
                self.close(f"took nothing for {waited:.1f} s with {len(self._frames)} event(s) waiting "
                           f"(stall limit {self.stall_timeout:g} s)")
                return False
            try:
                select.select([], [self.sock], [], min(0.5, self.stall_timeout - waited))
            except (OSError, ValueError):
                self.close("socket closed")
                return False
        return True
