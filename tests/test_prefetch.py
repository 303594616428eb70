"""The sampler runs ahead of the decoder in a worker thread: same items, errors where they happened, no stray thread."""
from __future__ import annotations

import threading
import time

import pytest

from dr2studio.prefetch import prefetch


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_items_arrive_in_order_and_the_producer_runs_in_another_thread() -> None:
    where: list[int] = []

    def produce():
        for i in range(50):
            where.append(threading.get_ident())
            yield i

    assert list(prefetch(produce(), depth=3)) == list(range(50))
    assert set(where) == {where[0]} and where[0] != threading.get_ident()
    assert "dr2-prefetch" not in _threads()


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
    assert "dr2-prefetch" not in _threads()


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
    assert len(made) < 20
    assert "dr2-prefetch" not in _threads()


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(iter([1]), depth=0))
