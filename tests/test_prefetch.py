"""The plan buffer: planned ahead on a thread, bounded by count and by bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from replay.prefetch import Prefetch


def test_prefill_plans_the_whole_plan_when_it_fits() -> None:
    buf = Prefetch(range(1000), high=10_000)
    assert buf.prefill(5.0) == 1000
    assert buf.done
    assert list(buf) == list(range(1000))


def test_the_buffer_stops_at_its_byte_budget_and_refills_as_it_drains() -> None:
    sizes = [100] * 50
    buf = Prefetch(iter(sizes), high=1_000, max_bytes=1_000, size=lambda n: n)
    assert buf.prefill(5.0) == 10  # 10 x 100 bytes: full
    assert not buf.done
    assert buf.buffered_bytes == 1_000
    got = list(buf)  # the producer refills while the consumer drains
    assert got == sizes
    assert buf.buffered_bytes == 0
    buf.close()


def test_the_buffer_stops_at_its_count() -> None:
    buf = Prefetch(range(100), high=7)
    assert buf.prefill(5.0) == 7
    assert list(buf) == list(range(100))


def test_a_plan_error_reaches_the_consumer_after_the_items_before_it() -> None:
    def plan() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad row")

    buf = Prefetch(plan())
    buf.prefill(5.0)
    it = iter(buf)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(ValueError, match="bad row"):
        next(it)


def test_close_stops_an_endless_plan() -> None:
    def endless() -> Iterator[int]:
        n = 0
        while True:
            n += 1
            yield n

    buf = Prefetch(endless(), high=64)
    buf.prefill(5.0)
    buf.close()
    assert not any(t.name == "loadtape-plan" and t.is_alive() for t in threading.enumerate())


def test_the_plan_thread_is_named_in_the_os() -> None:
    """`loadtape-plan` in top -H, perf and /proc/PID/task/*/comm while it plans."""
    seen: list[str] = []

    def plan() -> Iterator[int]:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            seen.append(f.read().strip())
        yield 1

    buf = Prefetch(plan(), high=10)
    assert list(buf) == [1]
    assert seen == ["loadtape-plan"]
