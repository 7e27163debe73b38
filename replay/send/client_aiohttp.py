"""The aiohttp sender (`--client aiohttp`): a fixed pool of worker tasks on one shared keep-alive
connector, fed through a queue (never a task per request). Slower than the fast sender; it is the
reference implementation and the one to use for HTTP features the fast sender does not speak."""

from __future__ import annotations

import asyncio
import ssl
import time

import aiohttp

from replay.rewrite import Prepared
from replay.targets import Target

from .client import Done
from .outcome import INTERRUPTED_MSG, Outcome, StreamScanner, classify

_now = time.monotonic_ns
_SKIP = frozenset({"host", "content-length"})


class AiohttpClient:
    def __init__(
        self, target: Target, *, workers: int, timeout: float = 60.0, insecure: bool = False
    ) -> None:
        self.target = target
        ctx: ssl.SSLContext | bool = True
        if target.scheme == "https" and insecure:
            ctx = False
        self._connector = aiohttp.TCPConnector(limit=workers, ssl=ctx, force_close=False)
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=aiohttp.ClientTimeout(total=timeout or None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        )
        self._queue: asyncio.Queue[tuple[Prepared, Done] | None] = asyncio.Queue()
        self._workers = [
            asyncio.get_running_loop().create_task(self._work()) for _ in range(workers)
        ]

    def submit(self, req: Prepared, done: Done) -> bool | None:
        self._queue.put_nowait((req, done))
        return None  # aiohttp's pool decides

    def stage(self, req: Prepared, done: Done) -> None:
        return None  # aiohttp's pool picks the connection at the send: nothing to ready

    async def warm(self, n: int, timeout: float) -> int:
        return 0  # aiohttp's pool opens its connections as its workers need them

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            req, done = item
            out = Outcome(sent_ns=_now())
            try:
                await self._send(req, out)
            except asyncio.CancelledError:  # closed with the request in flight: abandoned
                out.end_ns = _now()
                out.error, out.error_msg = "interrupted", INTERRUPTED_MSG
                done(out)
                raise
            done(out)

    async def _send(self, req: Prepared, out: Outcome) -> Outcome:
        scan: StreamScanner | None = None
        headers = [(n, v) for n, v in req.headers if n.lower() not in _SKIP]
        headers.append(("Host", next(v for n, v in req.headers if n.lower() == "host")))
        try:
            async with self._session.request(
                req.method,
                req.url,
                headers=headers,
                data=req.body or None,
                allow_redirects=False,
            ) as resp:
                out.headers_ns = _now()
                out.status = resp.status
                out.retry_after = resp.headers.get("Retry-After")
                scan = StreamScanner(
                    out,
                    resp.headers.get("Content-Type", "").lower().encode(),
                    resp.headers.get("Content-Encoding", "").encode(),
                    req.surface,
                )
                async for chunk in resp.content.iter_any():
                    out.bytes_in += len(chunk)
                    scan.feed(chunk, _now())
                out.end_ns = _now()
                scan.finish()
        except Exception as exc:  # failures are results: classified at the one seam
            out.end_ns = _now()
            if scan is not None and scan.complete:  # closed after the terminal event: whole
                scan.finish()
                return out
            out.error, out.error_msg = classify(exc)
        return out

    async def close(self) -> None:
        for _ in self._workers:
            self._queue.put_nowait(None)
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self._session.close()
