"""The capture worker: recording work in its own process, off the proxy's GIL.

Measured inside mitmdump, building records (decoding, redaction, LLM parsing) and journaling cost
the proxy about 150 us of CPU per flow on its writer thread, and slowed its event loop about as much
again through GIL contention. So by default the proxy only packs snapshots (msgpack, a few us each)
and writes them to a pipe; this worker process runs the same CaptureSink as the in-process mode
(proxy_addons/sink.py) on the other end.

Proxy side (`WorkerClient`, same interface as CaptureSink): the event loop appends snapshots to a
deque, and a timer on the same loop packs them and writes them to the pipe without blocking, at
most 20 ms after the first one queued, with the proxy's own counters (dropped, filtered, in
flight, listen addresses; every 0.5 s when there is no traffic). There is no feeding thread to
wake for the GIL, and the switch to an in-process sink when the worker dies happens on the same
thread that offers, so no snapshot can slip between the two. If the pipe is full, the rest waits for it to be writable, the deque reaches its bound and further snapshots
are dropped and counted: the proxy never waits. A reader thread takes the worker's status lines
back (records, lost, write errors, the stop policy); it wakes twice a second. If the worker dies,
the client starts an in-process CaptureSink (which recovers the dead worker's journal) and says
so.

Worker side (`python -m proxy_addons.worker CONFIG_JSON`): reads frames until end of input, then
drains, closes the capture (compaction) and exits. It ignores SIGINT, so a Ctrl-C meant for the
proxy does not cut it short; if the proxy is killed, the worker still writes everything that had
reached the pipe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

import msgpack

from captures import journal
from captures.redact import RedactionPolicy, Redactor, key_fingerprint, load_or_create_key

from .sink import CaptureSink, Snapshot, Stats

log = logging.getLogger("loadtape.capture")

_SNAP_FIELDS = tuple(f.name for f in fields(Snapshot))
_pack_snapshot = attrgetter(*_SNAP_FIELDS)
F_SETPIPE_SZ = 1031
FEED_S = 0.02  # a snapshot reaches the worker this long after its flow ends, at most
HEARTBEAT_S = 0.5  # the proxy's counters reach the worker at least this often
FRAME_SNAPSHOTS = 2048


@dataclass
class SinkConfig:
    """Everything needed to build a CaptureSink, in a form that crosses a process boundary."""

    directory: str
    key_file: str
    redact: bool
    extra_headers: list[str]
    extra_query: list[str]
    extra_json_keys: list[str]
    session_sources: list[list[str]]
    body_limit: int
    queue_records: int
    queue_bytes: int
    flush_interval: float
    on_error: str
    status_file: str | None

    def build(
        self, *, compaction: str, on_fatal: Callable[[str], None] | None = None
    ) -> CaptureSink:
        policy = RedactionPolicy.build(
            enabled=self.redact,
            extra_headers=self.extra_headers,
            extra_query=self.extra_query,
            extra_json_keys=self.extra_json_keys,
        )
        key = load_or_create_key(self.key_file)
        return CaptureSink(
            Path(self.directory),
            Redactor(policy, key),
            policy.describe(key_fingerprint(key)),
            session_sources=[(k, a) for k, a in self.session_sources],
            body_limit=self.body_limit,
            queue_records=self.queue_records,
            queue_bytes=self.queue_bytes,
            flush_interval=self.flush_interval,
            on_error=self.on_error,
            status_file=Path(self.status_file) if self.status_file else None,
            compaction=compaction,
            on_fatal=on_fatal,
        )


class WorkerClient:
    """The proxy's end: a deque fed to the worker's pipe from the event loop, a status reader."""

    def __init__(self, config: SinkConfig, on_fatal: Callable[[str], None]) -> None:
        self.config = config
        self.on_fatal = on_fatal
        self.stats = Stats()
        self.inflight = 0
        self.listen: list[list[Any]] = []
        self.queue_records = config.queue_records
        self.queue_bytes = config.queue_bytes
        self._dq: collections.deque[Snapshot] = collections.deque()
        self._bytes_in = 0
        self._bytes_out = 0
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
        n = snap.nbytes()
        if (
            len(self._dq) >= self.queue_records
            or self._bytes_in - self._bytes_out + n > self.queue_bytes
        ):
            self.stats.dropped += 1
            return False
        self._dq.append(snap)
        self._bytes_in += n
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
            batch = [self._dq.popleft() for _ in range(min(len(self._dq), FRAME_SNAPSHOTS))]
            self._bytes_out += sum(s.nbytes() for s in batch)
            self._unsent += self._frame(batch)
            self._unsent_snaps += batch
            if not self._dq:
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
        if not self._unsent and self._dq and not self._soon:
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
            sink = self.config.build(compaction="process", on_fatal=self.on_fatal)
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
        while self._dq:
            sink.offer(self._dq.popleft())
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


# -- worker process ------------------------------------------------------------------------------
def _read_frames(fd: int) -> Any:
    """Yield decoded frames from a pipe until end of input."""
    buf = bytearray()
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= journal.HEAD_SIZE:
            length = int.from_bytes(buf[:4], "little")
            end = journal.HEAD_SIZE + length
            if len(buf) < end:
                break
            payload = bytes(buf[journal.HEAD_SIZE : end])
            del buf[:end]
            yield msgpack.unpackb(payload, raw=False, use_list=False)


def serve(config: SinkConfig, fd: int, status_out: IO[str]) -> int:
    def fatal(reason: str) -> None:
        status_out.write(json.dumps({"fatal": reason}) + "\n")
        status_out.flush()

    sink = config.build(compaction="inline", on_fatal=fatal)

    def report() -> None:
        s = sink.stats
        status_out.write(
            json.dumps(
                {
                    "records": s.records,
                    "streamed": s.streamed,
                    "errors": s.errors,
                    "lost": s.lost,
                    "not_replayable": s.not_replayable,
                    "bytes": s.bytes,
                    "write_error": s.write_error,
                    "writer_cpu_s": s.writer_cpu_s,
                }
            )
            + "\n"
        )
        status_out.flush()

    sink.start()
    last = 0.0
    proxy_dropped = 0
    try:
        for head, snaps in _read_frames(fd):
            proxy_dropped, sink.stats.filtered, sink.inflight, listen = head
            sink.listen = [list(a) for a in listen]
            for fields_ in snaps:
                sink.put(Snapshot(*fields_))  # waits for room: drops are the proxy's to count
            sink.proxy_dropped = proxy_dropped
            now = time.monotonic()
            if now - last >= 0.5:
                report()
                last = now
    finally:
        sink.close()
        report()
    return 0


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the proxy; we stop at EOF
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = SinkConfig(**json.loads(sys.argv[1]))
    try:
        sys.exit(serve(config, sys.stdin.fileno(), sys.stdout))
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
