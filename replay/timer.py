"""Precise wakeups for the dispatcher without spinning: a Linux timerfd armed at an absolute
CLOCK_MONOTONIC instant, watched by the event loop.

Event-loop timers sleep in epoll, whose timeout has millisecond granularity and rounds up: alone,
that costs up to 1 ms of schedule lag per shot. Spinning through the loop until the instant costs
a core at 1k req/s. A timerfd fires at the requested nanosecond (within the kernel's timer slack,
which we lower to 1 us for the process), and wakes epoll like any other file descriptor.

Python 3.13 has os.timerfd_create; 3.11 does not, so this calls libc through ctypes. Where timerfd
is missing (not Linux), `PreciseTimer.create()` returns None and the dispatcher spins instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1
PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class PreciseTimer:
    def __init__(
        self,
        libc: ctypes.CDLL,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[], None],
    ) -> None:
        self._libc = libc
        self.fd = fd
        self._loop = loop
        self._callback = callback
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        settime = libc.timerfd_settime
        settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        settime.restype = ctypes.c_int
        self._settime = settime
        loop.add_reader(fd, self._fired)

    @classmethod
    def create(
        cls, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]
    ) -> PreciseTimer | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        with contextlib.suppress(OSError, AttributeError):
            libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)  # 1 ns slack instead of 50 us (best effort)
        return cls(libc, fd, loop, callback)

    def arm(self, monotonic_ns: int) -> None:
        """Fire at this CLOCK_MONOTONIC instant (time.monotonic_ns() is that clock)."""
        v = self._spec.it_value
        v.tv_sec, v.tv_nsec = divmod(max(monotonic_ns, 1), 1_000_000_000)
        if self._settime(self.fd, TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def disarm(self) -> None:
        self._spec.it_value.tv_sec = self._spec.it_value.tv_nsec = 0
        self._settime(self.fd, 0, self._spec_ref, None)

    def _fired(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return  # disarmed or re-armed before we read it
        self._callback()

    def close(self) -> None:
        if self.fd >= 0:
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
