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
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetch(Generic[T]):
    def __init__(self, source: Iterable[T], *, high: int = 32_768, low: int | None = None) -> None:
        self._it = iter(source)
        # A narrow band: the producer tops the buffer up steadily at the rate it is consumed.
        # A wide one (refill 8k shots at once) was a burst of CPU that starved the event loop
        # mid-run at 5k req/s and sent latency into a spiral.
        self.high = high
        self.low = low if low is not None else max(high - 512, high // 2)
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
            for item in self._it:
                self._buf.append(item)
                self.produced += 1
                if not self.produced % 64:
                    time.sleep(0)  # hand the GIL to the event loop now and then
                if len(self._buf) >= self.high:
                    with self._cond:  # full: sleep until the consumer drains it to `low`
                        self._cond.notify_all()
                        while len(self._buf) >= self.low and not self._stop:
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

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            item = self._buf.popleft()
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
                item = self._buf.popleft()
        if self._producer_waiting and len(self._buf) < self.low:
            with self._cond:
                self._cond.notify_all()
        return item

    def prefill(self, n: int, timeout: float = 30.0) -> int:
        """Wait until n items are buffered (or the plan ends); returns how many are."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._buf) >= min(n, self.high) or self._done, timeout)
        return len(self._buf)

    def close(self) -> None:
        self._stop = True
        with self._cond:
            self._cond.notify_all()
        self._thread.join(5)


def background_priority(niceness: int = 10) -> None:
    """Lower this thread's CPU priority (Linux threads have their own nice value), so on a busy
    machine the event loop thread, which keeps the schedule, gets the CPU first. (The plan thread
    here and the results thread use it.)"""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
