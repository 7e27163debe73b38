"""loadtape capture addon for mitmproxy: real gateway traffic into the capture format.

    mitmdump -s proxy_addons/capture.py --set capture_dir=DIR --set flow_detail=0 \\
        --mode reverse:http://127.0.0.1:8000

or `loadtape capture --upstream http://127.0.0.1:8000 --out DIR`.

Streamed responses (SSE, bodies of unknown length, bodies above `capture_stream_above`) go through
a callable set as `flow.response.stream` that notes each chunk's arrival time and size and keeps
the body up to the body limit, so the proxy adds no buffering delay to token streams (their head
waits for the first body bytes, 1 ms at most, to go out with them: coalesce.py). Small bodies
of known length are buffered as bare mitmdump does (streaming costs mitmproxy per-chunk events;
measured, it was most of the addon's cost) and recorded as one chunk at the response end;
`capture_stream=all` streams everything. Chunk times are when mitmproxy handled each chunk;
`proxy_inflight` records how many flows were in flight when the request started, so a reader can
tell when the proxy itself was busy. The hooks only build a small snapshot; redaction, encoding
and disk I/O happen in the capture worker process (proxy_addons/worker.py, fed from the event
loop by feed.py), or with capture_writer=thread on a writer thread in the proxy (sink.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import gc
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, exceptions, http

try:  # loaded by mitmdump -s as a file: make sure the package import works either way
    from proxy_addons import coalesce
    from proxy_addons.feed import WorkerClient
    from proxy_addons.options import declare
    from proxy_addons.settings import SinkConfig
except ImportError:  # pragma: no cover - loadtape not installed in mitmdump's environment
    raise ImportError(
        "the loadtape capture addon needs loadtape installed in mitmdump's Python environment"
    ) from None

from captures import store
from captures.errors import UserError
from captures.keys import key_path, load_or_create_key
from captures.snapshot import Snapshot, parse_session_sources
from captures.units import parse_duration, parse_size

if TYPE_CHECKING:
    from proxy_addons.sink import CaptureSink

log = logging.getLogger("loadtape.capture")

META_KEY = "loadtape.capture"


class _Chunks:
    """The response stream callable: passes every chunk on unchanged, notes time and size."""

    __slots__ = ("kept", "limit", "parts", "sizes", "times", "total")

    def __init__(self, limit: int) -> None:
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.parts: list[bytes] = []
        self.kept = 0
        self.total = 0
        self.limit = limit

    def __call__(self, data: bytes) -> bytes:
        if data:
            self.times.append(time.time())
            n = len(data)
            self.sizes.append(n)
            self.total += n
            if self.kept < self.limit:
                piece = data if self.kept + n <= self.limit else data[: self.limit - self.kept]
                self.parts.append(piece)
                self.kept += len(piece)
        return data


class _HeldChunks(_Chunks):
    """_Chunks for a response whose head is held back (coalesce.py) until its first chunk."""

    __slots__ = ("held",)

    def __init__(self, limit: int, held: coalesce.Held) -> None:
        super().__init__(limit)
        self.held: coalesce.Held | None = held

    def __call__(self, data: bytes) -> bytes:
        held = self.held
        if held is not None:  # the first chunk, or the end of a stream that had none
            self.held = None
            held.first_chunk()
        return _Chunks.__call__(self, data)


class _Body:
    """The request stream callable: passes every chunk on unchanged and keeps them all (the
    worker redacts the whole body before cutting it to the limit, as with a buffered one)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def __call__(self, data: bytes) -> bytes:
        if data:
            self.parts.append(data)
        return data

    def body(self) -> bytes:
        return b"".join(self.parts)


def _bad(message: str) -> exceptions.OptionsError:
    return exceptions.OptionsError(message)  # type: ignore[no-untyped-call]


def _mark_fatal(status_file: str | None, reason: str) -> None:
    """Put the reason the capture stopped into its status file (what `loadtape capture` shows)."""
    if not status_file:
        return
    path = Path(status_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data = {**(data if isinstance(data, dict) else {}), "fatal": reason, "done": False}
    tmp = path.with_name(path.name + ".fatal.tmp")
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)


def _globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    pats = [p for p in patterns if p]
    if not pats:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in pats), re.I)


class CaptureAddon:
    def __init__(self) -> None:
        self.sink: CaptureSink | WorkerClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._include_hosts: re.Pattern[str] | None = None
        self._exclude_hosts: re.Pattern[str] | None = None
        self._include_paths: re.Pattern[str] | None = None
        self._exclude_paths: re.Pattern[str] | None = None
        self._methods: frozenset[bytes] = frozenset()
        self._body_limit = 4 << 20
        self._stream_above = 256 << 10
        self._stream_requests = True
        self._hold_s = 0.001
        self._dir: Path | None = None
        self._listen_task: asyncio.Task[None] | None = None

    # -- options -------------------------------------------------------------------------------
    def load(self, loader: Any) -> None:
        declare(loader)

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        try:
            self._body_limit = parse_size(o.capture_body_limit)
            self._stream_above = (
                -1 if o.capture_stream == "all" else parse_size(o.capture_stream_above)
            )
            self._stream_requests = bool(o.capture_stream_requests)
            self._hold_s = parse_duration(o.capture_hold_headers)
            flush = parse_duration(o.capture_flush_interval)
            queue_bytes = parse_size(o.capture_queue_bytes)
            sources = parse_session_sources(o.capture_session_key)
        except ValueError as exc:
            raise _bad(f"capture: {exc}") from None
        if o.capture_redact == "off" and not o.capture_allow_secrets:
            raise _bad(
                "capture: capture_redact=off stores API keys and cookies in clear text; "
                "set capture_allow_secrets=true as well if that is really wanted"
            )
        if o.capture_queue_size < 1:
            raise _bad("capture: capture_queue_size must be >= 1")
        if not 0 <= o.capture_worker_nice <= 19:
            raise _bad("capture: capture_worker_nice must be 0 to 19")
        self._include_hosts = _globs(o.capture_include_hosts)
        self._exclude_hosts = _globs(o.capture_exclude_hosts)
        self._include_paths = _globs(o.capture_include_paths)
        self._exclude_paths = _globs(o.capture_exclude_paths)
        self._methods = frozenset(m.upper().encode() for m in o.capture_methods)
        if "capture_dir" not in updated or not o.capture_dir:
            return
        if self.sink is not None:
            raise _bad("capture: capture_dir cannot change while capturing")
        directory = Path(o.capture_dir).expanduser().resolve()
        kpath = key_path(o.capture_redaction_key_file)
        if kpath.is_relative_to(directory):
            raise _bad("capture: the redaction key must not live in the capture")
        config = SinkConfig(
            directory=str(directory),
            key_file=str(kpath),
            redact=o.capture_redact == "on",
            extra_headers=list(o.capture_redact_headers),
            extra_query=list(o.capture_redact_query),
            extra_json_keys=list(o.capture_redact_json_keys),
            session_sources=[list(x) for x in sources],
            body_limit=self._body_limit,
            queue_records=o.capture_queue_size,
            queue_bytes=queue_bytes,
            flush_interval=flush,
            on_error=o.capture_on_error,
            status_file=o.capture_status_file,
            worker_nice=o.capture_worker_nice,
        )
        try:
            load_or_create_key(kpath)  # fail here, with a clear message, not in the worker
            store.ensure_capture(directory)
            if o.capture_writer == "process":
                self.sink = WorkerClient(config, on_fatal=self._fatal)
            else:
                # recording in the proxy: only now load the record-building modules
                from proxy_addons.sink import build_sink

                self.sink = build_sink(
                    config, compaction=o.capture_compaction, on_fatal=self._fatal
                )
        except UserError as exc:
            raise _bad(f"capture: {exc}") from None
        except OSError as exc:
            raise _bad(f"capture: cannot write to {directory}: {exc.strerror or exc}") from None
        self._dir = directory
        if isinstance(self.sink, WorkerClient):  # fed from the proxy's loop: no thread to wake
            self.sink.start(asyncio.get_running_loop())
        else:
            self.sink.start()
        if getattr(o, "flow_detail", 0) > 0:
            log.warning(
                "capture: mitmdump prints every URL (flow_detail=%d), query secrets included; "
                "use --set flow_detail=0 (loadtape capture does)",
                o.flow_detail,
            )
        log.info("capture: recording into %s (redaction %s)", directory, o.capture_redact)

    def running(self) -> None:
        # The proxy's start-up objects (mitmproxy's modules, classes, options) live as long as
        # it does, and a full collection walked all of them: 20-35 ms here, with the event loop
        # and every stream through it stopped. Frozen, they are left out of collections.
        gc.collect()
        gc.freeze()
        self._loop = asyncio.get_running_loop()
        self._listen_task = self._loop.create_task(self._report_listen_addrs())

    async def _report_listen_addrs(self) -> None:
        """Put the bound addresses in the status file (how `--listen HOST:0` learns its port)."""
        server = ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
        for _ in range(200):
            addrs = server.listen_addrs() if server is not None else []
            if addrs and self.sink is not None:
                self.sink.listen = [[str(a[0]), int(a[1])] for a in addrs]
                return
            await asyncio.sleep(0.05)

    def _fatal(self, reason: str) -> None:
        """Recording cannot go on (capture_on_error=stop, or the worker and its in-process
        replacement both failed): say why in the status file, and stop the proxy."""
        _mark_fatal(ctx.options.capture_status_file, reason)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(ctx.master.shutdown)

    # -- traffic -------------------------------------------------------------------------------
    def _wanted(self, req: http.Request) -> bool:
        if self._methods and req.data.method.upper() not in self._methods:
            return False
        host = req.host
        if self._include_hosts is not None and not self._include_hosts.fullmatch(host):
            return False
        if self._exclude_hosts is not None and self._exclude_hosts.fullmatch(host):
            return False
        if self._include_paths is not None or self._exclude_paths is not None:
            path = req.path.partition("?")[0]
            if self._include_paths is not None and not self._include_paths.fullmatch(path):
                return False
            if self._exclude_paths is not None and self._exclude_paths.fullmatch(path):
                return False
        return True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        sink = self.sink
        if sink is None:
            return
        if not self._wanted(flow.request):
            sink.stats.filtered += 1
            return
        sink.inflight += 1
        flow.metadata[META_KEY] = sink.inflight
        # Streamed, the request goes upstream as it arrives; buffered, it waited for mitmproxy's
        # request hook first (about 0.5 ms of a streamed chat's round trip here). Not when an
        # addon before this one has answered the request itself (mitmproxy refuses to stream
        # those) or streams it through a callable of its own. A plain `stream = True` (from
        # stream_large_bodies, say) streams as before, and is recorded now.
        stream = flow.request.stream
        if stream is True or (self._stream_requests and not stream and flow.response is None):
            flow.request.stream = _Body()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if META_KEY not in flow.metadata or resp is None:
            return
        stream = resp.stream
        if callable(stream):
            return  # another addon's callable: its transform stands (the body is not recorded)
        if self._stream_above >= 0 and stream is not True:  # True: streamed anyway, so record it
            headers = resp.headers
            length = headers.get("content-length", "")
            if (
                "event-stream" not in headers.get("content-type", "")
                and length.isdigit()
                and int(length) <= self._stream_above
            ):
                return  # small, known length: let mitmproxy buffer it, as bare mitmdump does
        chunks = _Chunks(self._body_limit)
        if self._hold_s > 0 and coalesce.holdable(flow):
            sock = coalesce.client_socket(flow)
            if sock is not None and coalesce.hold(sock):
                loop = asyncio.get_running_loop()
                chunks = _HeldChunks(self._body_limit, coalesce.Held(sock, self._hold_s, loop))
        resp.stream = chunks

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        sink = self.sink
        inflight = flow.metadata.pop(META_KEY, None)
        if sink is None or inflight is None:
            return
        sink.inflight -= 1
        req = flow.request.data
        req_body = req.content
        if req_body is None and isinstance(flow.request.stream, _Body):
            req_body = flow.request.stream.body()  # streamed through: what passed, whole
        snap = Snapshot(
            conn_id=flow.client_conn.id,
            inflight=inflight,
            req_start=req.timestamp_start,
            req_end=req.timestamp_end,
            method=req.method,
            scheme=req.scheme,
            host=req.host,
            port=req.port,
            path=req.path,
            http_version=req.http_version,
            req_headers=req.headers.fields,
            req_body=req_body,
        )
        resp = flow.response
        if resp is not None:
            rd = resp.data
            snap.status = rd.status_code
            snap.reason = rd.reason
            snap.resp_headers = rd.headers.fields
            snap.resp_start = rd.timestamp_start
            snap.resp_end = rd.timestamp_end
            chunks = resp.stream
            if isinstance(chunks, _Chunks):
                snap.chunk_times = chunks.times
                snap.chunk_sizes = chunks.sizes
                snap.resp_parts = chunks.parts
                snap.resp_total = chunks.total
            else:
                snap.resp_body = rd.content
            snap.websocket = rd.status_code == 101
        if flow.error is not None:
            snap.error = flow.error.msg
        sink.offer(snap)

    def done(self) -> None:
        if self.sink is not None:
            self.sink.close()
            s = self.sink.stats
            log.info(
                "capture: %d records (%d streamed, %d errors), %d dropped, %d lost, into %s",
                s.records,
                s.streamed,
                s.errors,
                s.dropped,
                s.lost,
                self._dir,
            )
            self.sink = None


addons = [CaptureAddon()]
