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

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captures import llm
from captures.redact import Redactor, decode_and_parse
from captures.schema import Headers, Record, headers_get
from captures.writer import CaptureWriter

log = logging.getLogger("loadtape.capture")

HeaderFields = tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)
class Snapshot:
    """What the event loop hands over: no decoding, no copying."""

    conn_id: str
    inflight: int
    req_start: float
    req_end: float | None
    method: bytes
    scheme: bytes
    host: str
    port: int
    path: bytes
    http_version: bytes
    req_headers: HeaderFields
    req_body: bytes | None
    status: int | None = None
    reason: bytes | None = None
    resp_headers: HeaderFields | None = None
    resp_start: float | None = None
    resp_end: float | None = None
    chunk_times: list[float] | None = None
    chunk_sizes: list[int] | None = None
    resp_parts: list[bytes] | None = None
    resp_total: int = 0
    resp_body: bytes | None = None  # not streamed (rare: no body, or set by another addon)
    error: str | None = None
    websocket: bool = False

    def nbytes(self) -> int:
        return (
            (len(self.req_body) if self.req_body else 0)
            + sum(len(p) for p in self.resp_parts or ())
            + (len(self.resp_body) if self.resp_body else 0)
        )


@dataclass
class Stats:
    records: int = 0
    streamed: int = 0
    errors: int = 0
    dropped: int = 0  # queue full: never reached the writer
    lost: int = 0  # reached the writer, refused by the disk
    filtered: int = 0
    bytes: int = 0
    not_replayable: int = 0
    write_error: str | None = None
    writer_notes: list[str] = field(default_factory=list)
    writer_cpu_s: float = 0.0  # CPU time the writer thread used (what recording costs the proxy)


def _h(s: bytes) -> str:
    try:
        return s.decode("utf-8")
    except UnicodeDecodeError:
        return s.decode("latin-1")


def _first_values(headers: Headers) -> dict[str, str]:
    """Lower-cased header name -> its first value."""
    out: dict[str, str] = {}
    for name, value in headers:
        out.setdefault(name.lower(), value)
    return out


def _us(seconds: float) -> int:
    """Seconds -> microseconds, clamped to the int32 column (0 to ~35 minutes)."""
    return min(max(0, int(seconds * 1e6)), 2**31 - 1)


def error_kind(msg: str) -> str:
    """mitmproxy's error message -> the capture format's error kind."""
    m = msg.lower()
    if "killed" in m and "client" not in m:
        return "killed"
    if "client disconnected" in m or "client closed" in m or "stream reset by client" in m:
        return "client_abort"
    if "refused" in m or "connect call failed" in m or "errno 111" in m or "unreachable" in m:
        return "upstream_refused"
    if "timeout" in m or "timed out" in m:
        return "upstream_timeout"
    if "tls" in m or "ssl" in m or "certificate" in m or "handshake" in m:
        return "tls"
    if "peer closed" in m or "server disconnected" in m or "reset" in m or "eof" in m:
        return "upstream_reset"
    if "invalid" in m or "malformed" in m or "protocol" in m or "smuggling" in m:
        return "protocol"
    return "other"


def parse_session_sources(spec: str) -> list[tuple[str, str]]:
    """'header:X-Session-Id,user,connection' -> [('header', 'X-Session-Id'), ('user', ''), ...]"""
    out = []
    for item in (p.strip() for p in spec.split(",")):
        if not item:
            continue
        kind, _, arg = item.partition(":")
        kind = kind.lower()
        if kind == "header" and arg:
            out.append(("header", arg))
        elif kind in ("user", "connection", "none") and not arg:
            out.append((kind, ""))
        else:
            raise ValueError(
                f"bad session key source {item!r} (want header:NAME, user, connection)"
            )
    return out


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
        self.queue_bytes = queue_bytes
        self.flush_interval = flush_interval
        self.on_error = on_error
        self.status_file = status_file
        self.on_fatal = on_fatal
        self.stats = Stats()
        self.inflight = 0
        self.listen: list[list[Any]] = []  # the proxy's bound addresses, once known
        self.proxy_dropped = 0  # dropped before reaching this sink (worker mode: in the proxy)
        self.queue_records = queue_records
        self.poll_interval = min(flush_interval / 2, 0.02)
        self._dq: collections.deque[Snapshot] = collections.deque()
        self._bytes_in = 0  # updated by the event loop only
        self._bytes_out = 0  # updated by the writer thread only
        self._stop = threading.Event()
        self.writer = CaptureWriter(
            directory, redaction=redaction_meta, sync_interval=flush_interval, compaction=compaction
        )
        for note in self.writer.notes:
            log.warning("capture: recovery: %s", note)
        self._failing_since: float | None = None
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
        n = snap.nbytes()
        if (
            len(self._dq) >= self.queue_records
            or self._bytes_in - self._bytes_out + n > self.queue_bytes
        ):
            self.stats.dropped += 1
            return False
        self._dq.append(snap)  # deque.append is atomic
        self._bytes_in += n  # written by this thread only
        return True

    # -- writer thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.poll_interval)
            while True:
                batch = [self._dq.popleft() for _ in range(min(len(self._dq), 1024))]
                if not batch:
                    break
                self._bytes_out += sum(s.nbytes() for s in batch)
                self._write(self._build_all(batch))
            self._write([])  # tick: fsync when due, seal old segments, retry after failures
            self.stats.writer_cpu_s = time.thread_time()
            self._maybe_status()
            if stopping and not self._dq:
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
                    self.directory, time.monotonic() - self._failing_since, self.stats.lost,
                )  # fmt: skip
                self._failing_since = None
                self.stats.write_error = None
        finally:
            self.stats.lost += self.writer.lost - lost_before
            rejected = self.writer.rejected - rejected_before
            if rejected:
                self.stats.lost += rejected
                log.error(
                    "capture: %d record(s) did not fit the capture schema and were lost: %s",
                    rejected, self.writer.notes[-1] if self.writer.notes else "",
                )  # fmt: skip
            self.stats.records = self.writer.written
            self.stats.writer_notes = self.writer.notes[-20:]

    def _failed(self, exc: OSError) -> None:
        msg = f"{exc.strerror or exc}"
        self.stats.write_error = msg
        now = time.monotonic()
        if self.on_error == "stop":
            log.error(
                "capture: cannot write to %s (%s); stopping the proxy (capture_on_error=stop)",
                self.directory, msg,
            )  # fmt: skip
            if self.on_fatal is not None:
                self.on_fatal(msg)
            return
        if self._failing_since is None:
            self._failing_since = now
            self._last_loud = now
            log.error(
                "capture: CANNOT WRITE to %s (%s): traffic keeps flowing but is NOT being "
                "recorded; %d record(s) lost so far, %d held in memory; retrying",
                self.directory, msg, self.stats.lost, self.writer.pending_records,
            )  # fmt: skip
        elif now - self._last_loud >= 10.0:
            self._last_loud = now
            log.error(
                "capture: still cannot write to %s (%s); %d record(s) lost, %d held in memory",
                self.directory, msg, self.stats.lost, self.writer.pending_records,
            )  # fmt: skip

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
            "parts": self.writer.parts_written,
            "writer_cpu_s": round(s.writer_cpu_s, 3),
            "write_error": s.write_error,
            "notes": s.writer_notes,
            "done": self._stopped,
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
        red = self.redactor
        notes: list[str] = []
        req_headers: Headers = [(_h(n), _h(v)) for n, v in s.req_headers]
        path_q = _h(s.path)
        path, _, query = path_q.partition("?")
        req_map = _first_values(req_headers)
        req_ct = req_map.get("content-type")
        req_ce = req_map.get("content-encoding")
        raw_req = s.req_body
        req_size = len(raw_req) if raw_req is not None else 0
        # Decode and parse the whole request body once (LLM fields and redaction share it),
        # redact it, then cut it to the body limit.
        if raw_req:
            decoded = decode_and_parse(raw_req, req_ce, req_ct)
            fields = llm.request_fields(decoded.obj)
            req_body = red.body(raw_req, req_ce, req_ct, "req_body", notes, decoded=decoded)
        else:
            fields, req_body = llm.RequestFields(), raw_req
        req_trunc = False
        if req_body is not None and len(req_body) > self.body_limit:
            req_body, req_trunc = req_body[: self.body_limit], True
        rec: Record = {
            "conn_id": s.conn_id,
            "req_start_ns": int(s.req_start * 1e9),
            "req_end_ns": int(s.req_end * 1e9) if s.req_end else None,
            "proxy_inflight": s.inflight,
            "method": _h(s.method),
            "scheme": _h(s.scheme),
            "host": s.host,
            "port": s.port,
            "path": red.text(path, "path", notes) or path,
            "query": red.query(query, notes) if query else None,
            "http_version": _h(s.http_version),
            "req_headers": red.headers(req_headers, "req_headers", notes),
            "req_body": req_body,
            "req_body_size": req_size,
            "req_body_truncated": req_trunc,
            "req_content_encoding": req_ce,
            "model": fields.model,
            "stream": fields.stream,
            "max_tokens": fields.max_tokens,
            "message_count": fields.message_count,
            "prompt_chars": fields.prompt_chars,
            "user": red.text(fields.user, "user", notes),
            "replayable": not s.websocket,
        }
        if s.status is not None and s.resp_headers is not None:
            resp_headers: Headers = [(_h(n), _h(v)) for n, v in s.resp_headers]
            resp_map = _first_values(resp_headers)
            ct = resp_map.get("content-type")
            ce = resp_map.get("content-encoding")
            if s.resp_parts is not None:
                body: bytes | None = b"".join(s.resp_parts)
                size = s.resp_total
            else:
                body = s.resp_body
                size = len(body) if body else 0
            truncated = body is not None and size > len(body)
            if not truncated:
                resp = llm.parse_response(body, ct, ce)
            else:
                resp = llm.ResponseFields()
                # A cut SSE stream still tells us most things from the part we kept.
                if ce in (None, "", "identity"):
                    resp = llm.parse_response(body, ct, None)
            red_body = (
                red.body(body, ce, ct, "resp_body", notes) if not truncated or not ce else None
            )
            if truncated and ce:
                notes.append("resp_body:cut-encoded-dropped")
            t0 = s.resp_start or s.req_start
            rec.update(
                {
                    "status": s.status,
                    "reason": _h(s.reason or b""),
                    "resp_headers": red.headers(resp_headers, "resp_headers", notes),
                    "resp_body": red_body,
                    "resp_body_size": size,
                    "resp_body_truncated": truncated,
                    "resp_content_encoding": ce,
                    "resp_start_ns": int(s.resp_start * 1e9) if s.resp_start else None,
                    "resp_end_ns": int(s.resp_end * 1e9) if s.resp_end else None,
                    "finish_reason": resp.finish_reason,
                    "prompt_tokens": resp.prompt_tokens,
                    "completion_tokens": resp.completion_tokens,
                }
            )
            if s.chunk_times is not None:
                rec["chunk_offsets_us"] = [_us(t - t0) for t in s.chunk_times]
                rec["chunk_sizes"] = list(s.chunk_sizes or ())
            elif body:
                rec["chunk_offsets_us"] = [_us((s.resp_end or t0) - t0)]
                rec["chunk_sizes"] = [size]
        if s.error:
            rec["error_kind"] = error_kind(s.error)
            rec["error_message"] = red.text(s.error[:500], "error_message", notes)
        rec["session_key"] = red.text(self._session_key(rec, fields.user), "session_key", notes)
        rec["redacted"] = sorted(set(notes)) or None
        self._count(rec, size_in=req_size)
        return rec

    def _session_key(self, rec: Record, user: str | None) -> str | None:
        for kind, arg in self.session_sources:
            if kind == "header":
                v = headers_get(rec["req_headers"], arg)
                if v:
                    return v
            elif kind == "user" and user:
                return user
            elif kind == "connection":
                return str(rec["conn_id"])
            elif kind == "none":
                return None
        return None

    def _count(self, rec: Record, size_in: int) -> None:
        s = self.stats
        if rec.get("stream"):
            s.streamed += 1
        if rec.get("error_kind"):
            s.errors += 1
        if not rec["replayable"]:
            s.not_replayable += 1
        s.bytes += size_in + (rec.get("resp_body_size") or 0)
