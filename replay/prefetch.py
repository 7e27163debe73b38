"""Plan prefetch: the plan (capture reading, Parquet decoding, building shots) runs on a thread
ahead of the dispatcher, into a bounded buffer.

Reading the capture on the event loop stalled it for milliseconds at every row group (decoding)
and every batch (building Python rows), and those stalls were schedule lag. On a thread, Parquet
decoding runs without the GIL, and the run shortens the interpreter's switch interval so the
loop waits at most about half a millisecond for the GIL when it needs it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetch(Generic[T]):
    """`high` items or `max_bytes` (as `size` counts them) are buffered at most."""

    def __init__(
        self,
        source: Iterable[T],
        *,
        high: int = 32_768,
        low: int | None = None,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> None:
        self._it = iter(source)
        # A narrow band: the producer tops the buffer up steadily at the rate it is consumed.
        # A wide one (refill 8k shots at once) was a burst of CPU that starved the event loop
        # mid-run at 5k req/s and sent latency into a spiral.
        self.high = high
        self.low = low if low is not None else max(high - 512, high // 2)
        self.max_bytes = max_bytes
        self._size = size
        # bytes in and out, as `size` counts (only with max_bytes); each written by one thread
        self._bytes_in = self._bytes_out = 0
        self._buf: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None
        self._stop = False
        self._consumer_waiting = False
        self._producer_waiting = False
        self.produced = 0
        self._thread = threading.Thread(target=self._fill, name="loadtape-plan", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        background_priority()
        try:
            sized = self.max_bytes is not None and self._size is not None
            for item in self._it:
                if sized:
                    self._bytes_in += self._size(item)  # type: ignore[misc]
                self._buf.append(item)
                self.produced += 1
                if not self.produced % 64:
                    time.sleep(0)  # hand the GIL to the event loop now and then
                if self._full():
                    with self._cond:  # full: sleep until the consumer drains it to `low`
                        self._cond.notify_all()
                        while self._above_low() and not self._stop:
                            self._producer_waiting = True
                            self._cond.wait(0.1)
                        self._producer_waiting = False
                elif self._consumer_waiting:
                    with self._cond:
                        self._cond.notify_all()
                if self._stop:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    @property
    def buffered_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    def _full(self) -> bool:
        return len(self._buf) >= self.high or (
            self.max_bytes is not None and self.buffered_bytes >= self.max_bytes
        )

    def _above_low(self) -> bool:
        mb = self.max_bytes
        if mb is not None and self.buffered_bytes >= mb - mb // 64:
            return True
        return len(self._buf) >= self.low

    def _taken(self, item: T) -> T:
        if self.max_bytes is not None and self._size is not None:
            self._bytes_out += self._size(item)
        return item

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            item = self._taken(self._buf.popleft())
        except IndexError:
            with self._cond:
                while not self._buf and not self._done:
                    self._consumer_waiting = True
                    self._cond.wait(0.1)
                self._consumer_waiting = False
                if not self._buf:
                    if self._error is not None:
                        raise self._error from None
                    raise StopIteration from None
                item = self._taken(self._buf.popleft())
        if self._producer_waiting and not self._above_low():
            with self._cond:
                self._cond.notify_all()
        return item

    def prefill(self, timeout: float = 30.0, n: int | None = None) -> int:
        """Wait until the buffer is full, or holds n items, or the plan ends; returns how many
        items it holds."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._full() or self._done or (n is not None and len(self._buf) >= n),
                timeout,
            )
        return len(self._buf)

    @property
    def full(self) -> bool:
        """The buffer holds all it may (by count or bytes)."""
        return self._full()

    @property
    def done(self) -> bool:
        """The whole plan is in the buffer (or consumed): the thread has no more to do."""
        return self._done

    def close(self) -> None:
        self._stop = True
        with self._cond:
            self._cond.notify_all()
        self._thread.join(5)


def background_priority(niceness: int = 10) -> None:
    """Lower this thread's CPU priority (Linux threads have their own nice value), so on a busy
    machine the event loop thread, which keeps the schedule, gets the CPU first, and give it its
    Python name in the OS. (The plan thread here and the results writer's Parquet thread use
    it.)"""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    name_in_os()


PR_SET_NAME = 15


def name_in_os() -> None:
    """This thread's Python name as its name in the OS (its first 15 bytes), where top -H, perf
    and /proc/PID/task/*/comm show it (bench/replay_threads.py tells a run's threads apart by
    it; the compiled sender names its thread `loadtape-wire`). Linux only, best effort."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        name = threading.current_thread().name.encode()[:15]
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
