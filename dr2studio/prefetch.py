"""Run a producer a few items ahead of its consumer, in a worker thread.

Why: a render samples latent blocks and decodes audio from them. For a small model on CPU both run
one intra-op thread (:func:`dr2studio.flow.sampler.small_model_threads`), so on a machine with two
cores the second one idles. Sampling block ``i + 1`` while block ``i`` is decoded puts it to work:
torch releases the GIL inside its kernels, so the two threads overlap. The items and their order
are exactly those of the plain loop; only the timing changes.

The workers are a few long-lived threads shared by every call, not a thread per render: a fresh thread
per take let the process grow by about 1.5 MiB a take under the bridge's soak test (new threads get new
malloc arenas and thread-local buffers), while reused ones keep it flat. When every worker is busy the
call simply runs its producer inline, without overlap.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["prefetch"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"
_POLL_S = 0.05  # how often a blocked producer looks whether the consumer has gone
WORKERS = 4  # producers that may run at once in this process; more calls run inline

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_slots = threading.BoundedSemaphore(WORKERS)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dr2-prefetch")
        return _pool


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of ``items``, produced in a worker thread at most ``depth`` items ahead.

    An exception in the producer is raised here, in the consumer, at the position it happened. When the
    consumer stops early (an exception, ``close()``, garbage collection) the producer is told to stop,
    its iterator is closed in its own thread, and this call waits for it: no producer outlives the loop,
    and nothing keeps running on the caller's model after the render returned (the worker thread itself
    goes back to the shared pool).
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if not _slots.acquire(blocking=False):  # every worker busy: no overlap, same items
        log.debug("all %d prefetch workers busy; producing inline", WORKERS)
        yield from items
        return
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                box.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((_ITEM, item)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_ERROR, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # the consumer's error (if any) is the one that matters
                    log.debug("closing the prefetched iterator failed", exc_info=True)

    try:
        done = _executor().submit(work)
    except BaseException:
        _slots.release()
        raise
    try:
        while True:
            kind, value = box.get()
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        stop.set()
        done.result()  # the producer has stopped and closed its iterator
        _slots.release()
