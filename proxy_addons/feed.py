"""The proxy's end of the capture worker (proxy_addons/worker.py): snapshots to its pipe, its
status back.

`WorkerClient` has the interface of CaptureSink. The event loop appends snapshots to a deque,
and a timer on the same loop packs them and writes them to the pipe without blocking, at most
20 ms after the first one queued, with the proxy's own counters (dropped, filtered, in flight,
listen addresses; every 0.5 s when there is no traffic). There is no feeding thread to wake for
the GIL, and the switch to an in-process sink when the worker dies happens on the same thread
that offers, so no snapshot can slip between the two. If the pipe is full, the rest waits for it
to be writable, the deque reaches its bound and further snapshots are dropped and counted: the
proxy never waits. A reader thread takes the worker's status lines back (records, lost, write
errors, the stop policy); it wakes twice a second. If the worker dies, the client starts an
in-process CaptureSink (which recovers the dead worker's journal) and says so.

The proxy imports only this side: the modules that build records (redaction, the API surfaces,
pyarrow) are loaded in the worker, and in the proxy only if it records in-process (the thread
writer, or the fallback when the worker died).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import IO, TYPE_CHECKING, Any

from captures import journal
from captures.snapshot import Snapshot

from .settings import SinkConfig, SnapshotQueue, Stats

if TYPE_CHECKING:
    from .sink import CaptureSink

log = logging.getLogger("loadtape.capture")

_SNAP_FIELDS = tuple(f.name for f in fields(Snapshot))
_pack_snapshot = attrgetter(*_SNAP_FIELDS)
F_SETPIPE_SZ = 1031
FEED_S = 0.02  # a snapshot reaches the worker this long after its flow ends, at most
HEARTBEAT_S = 0.5  # the proxy's counters reach the worker at least this often
FRAME_SNAPSHOTS = 2048


class WorkerClient:
    """The proxy's end: a deque fed to the worker's pipe from the event loop, a status reader."""

    def __init__(self, config: SinkConfig, on_fatal: Callable[[str], None]) -> None:
        self.config = config
        self.on_fatal = on_fatal
        self.stats = Stats()
        self.inflight = 0
        self.listen: list[list[Any]] = []
        self._q = SnapshotQueue(config.queue_records, config.queue_bytes)
        self._fallback: CaptureSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # a feed is due within FEED_S
        self._unsent = bytearray()  # frames the pipe did not take yet
        self._unsent_snaps: list[Snapshot] = []  # what they hold, for a fallback
        self._closed = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy_addons.worker", json.dumps(config.__dict__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the worker's log lines go where the proxy's go
            start_new_session=False,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._fd = self.proc.stdin.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, F_SETPIPE_SZ, 1 << 20)
        self._reader = threading.Thread(
            target=self._read_loop,
            args=(self.proc.stdout,),
            name="loadtape-capture-status",
            daemon=True,
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Feed the worker from `loop` (the proxy's), which is the thread that offers."""
        self._loop = loop
        os.set_blocking(self._fd, False)
        self._reader.start()
        self._timer = loop.call_later(HEARTBEAT_S, self._feed)

    def offer(self, snap: Snapshot) -> bool:
        if self._fallback is not None:
            return self._fallback.offer(snap)
        if not self._q.push(snap):
            self.stats.dropped += 1
            return False
        if not self._soon and self._loop is not None and not self._closed:
            self._soon = True
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(FEED_S, self._feed)
        return True

    # -- feeding, on the event loop ------------------------------------------------------------
    def _frame(self, snaps: list[Snapshot]) -> bytes:
        head = [self.stats.dropped, self.stats.filtered, self.inflight, self.listen]
        return journal.encode_frame([head, [_pack_snapshot(s) for s in snaps]])

    def _take(self) -> None:
        """Move the queue into frames to send (one frame even when empty: the counters)."""
        while True:
            batch = self._q.take(FRAME_SNAPSHOTS)
            self._unsent += self._frame(batch)
            self._unsent_snaps += batch
            if not self._q:
                return

    def _feed(self) -> None:
        """Timer: send what is queued (or only the counters, as a heartbeat) and re-arm."""
        self._soon = False
        assert self._loop is not None
        if self._closed or self._fallback is not None:
            return
        self._timer = self._loop.call_later(HEARTBEAT_S, self._feed)
        if self._unsent:  # the pipe is full: the queue waits (and drops past its bounds)
            return
        self._take()
        self._write()

    def _write(self) -> None:
        """Write what the pipe takes without blocking; the rest when it is writable again."""
        assert self._loop is not None
        try:
            n = os.write(self._fd, self._unsent)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, OSError):
            self._worker_died()
            return
        del self._unsent[:n]
        if self._unsent:
            self._loop.add_writer(self._fd, self._drain)
        else:
            self._unsent_snaps.clear()

    def _drain(self) -> None:
        assert self._loop is not None
        self._loop.remove_writer(self._fd)
        if self._closed or self._fallback is not None:
            return
        self._write()
        if not self._unsent and self._q and not self._soon:
            self._soon = True
            self._loop.call_soon(self._feed)

    def _worker_died(self) -> None:
        """Carry on in-process: a new CaptureSink recovers the dead worker's journal."""
        unsent, self._unsent_snaps = self._unsent_snaps, []
        self._unsent.clear()
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        log.error(
            "capture: the capture worker exited (code %s); recording continues inside the proxy",
            code,
        )
        try:
            from .sink import build_sink  # the record-building modules, only now: see above

            sink = build_sink(self.config, compaction="process", on_fatal=self.on_fatal)
        except Exception as exc:
            reason = (
                f"the capture worker exited (code {code}) and recording inside the proxy could "
                f"not start: {exc}"
            )
            log.error("capture: %s; stopping the proxy", reason)
            self.on_fatal(reason)
            return
        sink.stats.dropped = self.stats.dropped
        sink.stats.filtered = self.stats.filtered
        sink.stats.lost = self.stats.lost
        sink.inflight = self.inflight
        sink.listen = self.listen
        sink.start()
        for snap in unsent:
            sink.offer(snap)
        for snap in self._q.take(len(self._q)):
            sink.offer(snap)
        self.stats = sink.stats
        self._fallback = sink

    # -- status reader -------------------------------------------------------------------------
    def _read_loop(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("fatal"):
                self.on_fatal(str(msg["fatal"]))
                continue
            if self._fallback is not None:
                continue
            s = self.stats
            for key in ("records", "streamed", "errors", "lost", "not_replayable", "bytes"):
                setattr(s, key, int(msg.get(key, getattr(s, key))))
            s.write_error = msg.get("write_error")
            s.writer_cpu_s = float(msg.get("writer_cpu_s", 0.0))

    def close(self, timeout: float = 120.0) -> None:
        """Send what is queued, let the worker finish (compaction), wait for it."""
        if self._timer is not None:
            self._timer.cancel()
        if self._fallback is None:
            if self._loop is not None:
                self._loop.remove_writer(self._fd)
            self._take()  # the last counters go too
            try:
                os.set_blocking(self._fd, True)
                while self._unsent:
                    del self._unsent[: os.write(self._fd, self._unsent)]
                self._unsent_snaps.clear()
            except (BrokenPipeError, OSError):
                self._worker_died()
        self._closed = True
        if self._fallback is not None:
            self._fallback.close(timeout)
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("capture: the capture worker did not finish in %.0f s; killing it", timeout)
            self.proc.kill()
            self.proc.wait()
        if self._reader.is_alive():
            self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
