"""The sampler runs ahead of the decoder in a worker thread: same items, errors where they happened, no
producer left running, and the same few worker threads reused rather than one per render."""
from __future__ import annotations

import threading
import time

import pytest

from dr2studio import prefetch as prefetch_module
from dr2studio.prefetch import prefetch


def _workers() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.name.startswith("dr2-prefetch")}


def test_items_arrive_in_order_and_the_producer_runs_in_another_thread() -> None:
    where: list[int] = []

    def produce():
        for i in range(50):
            where.append(threading.get_ident())
            yield i

    assert list(prefetch(produce(), depth=3)) == list(range(50))
    assert set(where) == {where[0]} and where[0] != threading.get_ident()


def test_the_producer_stays_at_most_depth_items_ahead() -> None:
    made: list[int] = []

    def produce():
        for i in range(100):
            made.append(i)
            yield i

    it = prefetch(produce(), depth=2)
    assert next(it) == 0
    time.sleep(0.3)  # plenty of time to run far ahead if it could
    # item 0 consumed, two queued, one more made and waiting for room
    assert len(made) <= 4
    it.close()


def test_a_producer_error_is_raised_in_the_consumer_after_the_items_before_it() -> None:
    def produce():
        yield 1
        yield 2
        raise RuntimeError("block 3 failed")

    got = []
    with pytest.raises(RuntimeError, match="block 3 failed"):
        for item in prefetch(produce()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()
    made: list[int] = []

    def produce():
        try:
            for i in range(10_000):
                made.append(i)
                yield i
        finally:
            closed.set()

    with pytest.raises(KeyError):
        for item in prefetch(produce(), depth=2):
            if item == 5:
                raise KeyError("the user cancelled")
    assert closed.is_set()  # the generator's cleanup ran before prefetch returned
    n = len(made)
    time.sleep(0.2)
    assert len(made) == n < 20  # and nothing runs on afterwards


def test_many_calls_reuse_a_few_threads_instead_of_one_each() -> None:
    """A thread per render grew the bridge's memory under the soak; the pool keeps the same threads."""
    for _ in range(3):
        list(prefetch(iter(range(5))))
    before = _workers()
    for _ in range(30):
        assert list(prefetch(iter(range(5)))) == list(range(5))
    after = _workers()
    assert after == before and 1 <= len(after) <= prefetch_module.WORKERS


def test_when_every_worker_is_busy_the_items_come_inline() -> None:
    release = threading.Event()

    def slow():
        release.wait(10)
        yield "late"

    busy = [prefetch(slow()) for _ in range(prefetch_module.WORKERS)]
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda it=it: results.append(list(it))) for it in busy]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while prefetch_module._slots._value > 0 and time.monotonic() < deadline:  # all slots taken
        time.sleep(0.01)
    here: list[int] = []

    def produce():
        here.append(threading.get_ident())
        yield 1

    assert list(prefetch(produce())) == [1] and here == [threading.get_ident()]
    release.set()
    for t in threads:
        t.join(10)
    assert results == [["late"]] * prefetch_module.WORKERS


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(iter([1]), depth=0))
