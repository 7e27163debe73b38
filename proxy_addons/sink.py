"""The capture addon's writer side: a bounded queue and a writer thread.

The proxy's event loop only builds a `Snapshot` (references to immutable bytes and numbers) and
offers it to the queue; if the queue is full (by count or by bytes) the snapshot is dropped and
counted, never waited for. Everything else happens on the writer thread: decoding headers,
redaction, LLM field parsing, msgpack encoding, journal writes, fsync; compaction runs in a child
process (see captures.compactor).

Failure policy when the disk refuses records: "continue" keeps traffic flowing, says so once,
loudly, with the count of lost records, and keeps retrying (it says so again when writing
resumes); "stop" asks the proxy to shut down instead.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captures.conversations import Tracker
from captures.exchange import build_record, error_kind
from captures.redact import RedactionPolicy, Redactor, key_fingerprint, load_or_create_key
from captures.schema import Record
from captures.snapshot import Snapshot, parse_session_sources
from captures.writer import CaptureWriter

from .settings import SinkConfig, SnapshotQueue, Stats

__all__ = [
    "CaptureSink",
    "Snapshot",
    "Stats",
    "build_record",
    "error_kind",
    "parse_session_sources",
]

log = logging.getLogger("loadtape.capture")


class CaptureSink:
    def __init__(
        self,
        directory: Path,
        redactor: Redactor,
        redaction_meta: dict[str, Any],
        *,
        session_sources: list[tuple[str, str]],
        body_limit: int,
        queue_records: int = 10_000,
        queue_bytes: int = 256 << 20,
        flush_interval: float = 0.1,
        on_error: str = "continue",
        status_file: Path | None = None,
        compaction: str = "process",
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.redactor = redactor
        self.session_sources = session_sources
        self.body_limit = body_limit
        self.flush_interval = flush_interval
        self.on_error = on_error
        self.status_file = status_file
        self.on_fatal = on_fatal
        self.stats = Stats()
        # conversations found from content: snapshots come in completion order, so a turn's
        # predecessor has been seen before it
        self.tracker = Tracker()
        self.inflight = 0
        self.listen: list[list[Any]] = []  # the proxy's bound addresses, once known
        self.proxy_dropped = 0  # dropped before reaching this sink (worker mode: in the proxy)
        self.poll_interval = min(flush_interval / 2, 0.02)
        self._q = SnapshotQueue(queue_records, queue_bytes)
        self._stop = threading.Event()
        self.writer = CaptureWriter(
            directory, redaction=redaction_meta, sync_interval=flush_interval, compaction=compaction
        )
        for note in self.writer.notes:
            log.warning("capture: recovery: %s", note)
        self._failing_since: float | None = None
        self.fatal: str | None = None  # why recording stopped, when it had to
        self._last_loud = 0.0
        self._last_status = 0.0
        self._thread = threading.Thread(
            target=self._run, name="loadtape-capture-writer", daemon=True
        )
        self._stopped = False

    # -- event-loop side -----------------------------------------------------------------------
    def offer(self, snap: Snapshot) -> bool:
        """Queue a snapshot without blocking or waking anyone; False (and counted) if full.

        The writer thread polls the deque: waking it for every flow would make the event loop
        hand over the GIL once per flow, which measured as a larger cost than the work itself."""
        if not self._q.push(snap):
            self.stats.dropped += 1
            return False
        return True

    def put(self, snap: Snapshot) -> bool:
        """Queue a snapshot, waiting for room: the capture worker's way, which has no schedule
        to keep. Its pipe fills behind it and the proxy drops and counts, in one place."""
        n = snap.nbytes()
        while self._q and not self._q.room(n) and self._thread.is_alive():
            time.sleep(0.002)
        return self.offer(snap)

    # -- writer thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.poll_interval)
            while True:
                batch = self._q.take(1024)
                if not batch:
                    break
                self._write(self._build_all(batch))
            self._write([])  # tick: fsync when due, seal old segments, retry after failures
            self.stats.writer_cpu_s = time.thread_time()
            self._maybe_status()
            if stopping and not self._q:
                break
        self._close_writer()

    def _build_all(self, batch: list[Snapshot]) -> list[Record]:
        records = []
        yielded = time.perf_counter()
        for snap in batch:
            try:
                records.append(self.build(snap))
            except Exception as exc:  # a record we cannot build must not stop capture
                self.stats.lost += 1
                log.warning("capture: could not record a flow: %s: %s", type(exc).__name__, exc)
            now = time.perf_counter()
            if now - yielded > 0.0005:
                time.sleep(0)  # let the proxy's event loop have the GIL: it comes first
                yielded = now
        return records

    def _write(self, records: list[Record]) -> None:
        lost_before = self.writer.lost
        rejected_before = self.writer.rejected
        try:
            if records:
                self.writer.append_many(records)
            self.writer.tick()
        except OSError as exc:
            self._failed(exc)
        else:
            if self._failing_since is not None:
                log.warning(
                    "capture: writing to %s again after %.1f s; %d record(s) lost while it failed",
                    self.directory,
                    time.monotonic() - self._failing_since,
                    self.stats.lost,
                )
                self._failing_since = None
                self.stats.write_error = None
        finally:
            self.stats.lost += self.writer.lost - lost_before
            rejected = self.writer.rejected - rejected_before
            if rejected:
                self.stats.lost += rejected
                log.error(
                    "capture: %d record(s) did not fit the capture schema and were lost: %s",
                    rejected,
                    self.writer.notes[-1] if self.writer.notes else "",
                )
            self.stats.records = self.writer.written
            self.stats.writer_notes = self.writer.notes[-20:]

    def _failed(self, exc: OSError) -> None:
        msg = f"{exc.strerror or exc}"
        self.stats.write_error = msg
        now = time.monotonic()
        if self.on_error == "stop":
            self.fatal = (
                f"cannot write to {self.directory} ({msg}); stopped (capture_on_error=stop)"
            )
            log.error(
                "capture: cannot write to %s (%s); stopping the proxy (capture_on_error=stop)",
                self.directory,
                msg,
            )
            if self.on_fatal is not None:
                self.on_fatal(msg)
            return
        if self._failing_since is None:
            self._failing_since = now
            self._last_loud = now
            log.error(
                "capture: CANNOT WRITE to %s (%s): traffic keeps flowing but is NOT being "
                "recorded; %d record(s) lost so far, %d held in memory; retrying",
                self.directory,
                msg,
                self.stats.lost,
                self.writer.pending_records,
            )
        elif now - self._last_loud >= 10.0:
            self._last_loud = now
            log.error(
                "capture: still cannot write to %s (%s); %d record(s) lost, %d held in memory",
                self.directory,
                msg,
                self.stats.lost,
                self.writer.pending_records,
            )

    def _maybe_status(self, force: bool = False) -> None:
        if self.status_file is None:
            return
        now = time.monotonic()
        if not force and now - self._last_status < 0.5:
            return
        self._last_status = now
        s = self.stats
        data = {
            "pid": os.getpid(),
            "capture_dir": str(self.directory),
            "listen": self.listen,
            "capture_id": self.writer.capture_id,
            "writer_id": self.writer.writer_id,
            "records": s.records,
            "streamed": s.streamed,
            "errors": s.errors,
            "dropped": s.dropped + self.proxy_dropped,
            "lost": s.lost,
            "filtered": s.filtered,
            "not_replayable": s.not_replayable,
            "bytes": s.bytes,
            "inflight": self.inflight,
            "pending": self.writer.pending_records,
            "journal_lag_s": round(self.writer.journal_lag_s, 3),
            "parts": self.writer.parts_written,
            **self.writer.compaction_state,
            "writer_cpu_s": round(s.writer_cpu_s, 3),
            "redactions": dict(self.redactor.counts),
            "write_error": s.write_error,
            "notes": s.writer_notes,
            "done": self._stopped,
            "fatal": self.fatal,
            "updated": time.time(),
        }
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.status_file)
        except OSError:
            pass

    def _close_writer(self) -> None:
        try:
            self.writer.close()
        except OSError as exc:
            self._failed(exc)
            self.stats.lost += self.writer.pending_records
            log.error(
                "capture: closing with the disk still refusing writes: %d record(s) lost; "
                "journal segments left on disk are recovered on the next start",
                self.stats.lost,
            )
        self.stats.records = self.writer.written
        self._stopped = True
        self._maybe_status(force=True)

    def close(self, timeout: float = 120.0) -> None:
        """Drain the queue, flush, compact and stop the thread."""
        if not self._thread.is_alive():
            if not self._stopped:
                self._close_writer()
            return
        self._stop.set()
        self._thread.join(timeout)

    # -- building records (writer thread) ------------------------------------------------------
    def build(self, s: Snapshot) -> Record:
        rec = build_record(s, self.redactor, self.session_sources, self.body_limit, self.tracker)
        self._count(rec, size_in=rec["req_body_size"])
        return rec

    def _count(self, rec: Record, size_in: int) -> None:
        s = self.stats
        if rec.get("stream"):
            s.streamed += 1
        if rec.get("error_kind"):
            s.errors += 1
        if not rec["replayable"]:
            s.not_replayable += 1
        s.bytes += size_in + (rec.get("resp_body_size") or 0)


def build_sink(
    config: SinkConfig, *, compaction: str, on_fatal: Callable[[str], None] | None = None
) -> CaptureSink:
    """The in-process sink a config describes (the worker's, or the proxy's own)."""
    policy = RedactionPolicy.build(
        enabled=config.redact,
        extra_headers=config.extra_headers,
        extra_query=config.extra_query,
        extra_json_keys=config.extra_json_keys,
    )
    key = load_or_create_key(config.key_file)
    return CaptureSink(
        Path(config.directory),
        Redactor(policy, key),
        policy.describe(key_fingerprint(key)),
        session_sources=[(k, a) for k, a in config.session_sources],
        body_limit=config.body_limit,
        queue_records=config.queue_records,
        queue_bytes=config.queue_bytes,
        flush_interval=config.flush_interval,
        on_error=config.on_error,
        status_file=Path(config.status_file) if config.status_file else None,
        compaction=compaction,
        on_fatal=on_fatal,
    )
