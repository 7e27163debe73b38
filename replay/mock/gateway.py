"""A mock OpenAI-compatible gateway: the embedded default target of the demo, tests and benchmarks.

Latency model per model profile: TTFT = base + per-prompt-token cost; then one token every
`itl_ms`; output length = `max_tokens` when the request gives one (finish_reason "length"), else a
seeded lognormal draw (finish_reason "stop"). Capacity: at most `max_in_service` requests in
service and `max_queue` waiting; past that a 503 (or 429) with Retry-After. Faults are seeded and
deterministic per request index: a periodic stall of every response (the coordinated-omission
case), an error rate, a reset mid-stream, a malformed SSE event, a slow byte-by-byte drip.

It binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import signal
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from captures import llm
from captures.errors import UserError

from .config import GatewayConfig, GatewayStats


@dataclass
class _Plan:
    """What one request will get: decided up front from the seeded draw."""

    error: bool
    reset: bool
    malformed: bool
    drip: bool
    rng: random.Random


class MockGateway:
    def __init__(
        self, config: GatewayConfig | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.config = config or GatewayConfig()
        self.config.validate()
        self.ssl_context = ssl_context
        self.stats = GatewayStats()
        self._t0 = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._slots: asyncio.Semaphore | None = None
        self._n = 0
        self.port = 0
        self.cookies_issued: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/echo{tail:.*}", self._echo)
        app.router.add_get("/ws", self._ws)
        return app

    async def start(self) -> None:
        if self.config.max_in_service > 0:
            self._slots = asyncio.Semaphore(self.config.max_in_service)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            backlog=1024,
            ssl_context=self.ssl_context,
        )
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        self._t0 = time.monotonic()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MockGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    # -- timing helpers ------------------------------------------------------------------------
    def _stall_wait(self) -> float:
        """Seconds until the current stall window ends (0 outside a window)."""
        f = self.config.faults
        if f.stall_every_s <= 0 or f.stall_ms <= 0:
            return 0.0
        phase = (time.monotonic() - self._t0) % f.stall_every_s
        stall = f.stall_ms / 1000.0
        return stall - phase if phase < stall else 0.0

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until a monotonic deadline, also waiting out any stall window."""
        while True:
            now = time.monotonic()
            wait = max(deadline - now, self._stall_wait())
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _plan(self, streamed: bool) -> _Plan:
        n = self._n
        self._n += 1
        rng = random.Random(self.config.seed * 1_000_003 + n)
        f = self.config.faults
        return _Plan(
            error=rng.random() < f.error_rate,
            reset=streamed and rng.random() < f.reset_rate,
            malformed=streamed and rng.random() < f.malformed_rate,
            drip=rng.random() < f.drip_rate,
            rng=rng,
        )

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[bool]:
        """Yield True once admitted into service; False when the queue is full (reject)."""
        st, slots = self.stats, self._slots
        if slots is not None:
            if slots.locked() and st.queued >= self.config.max_queue:
                st.rejected += 1
                yield False
                return
            st.queued += 1
            try:
                await slots.acquire()
            finally:
                st.queued -= 1
        st.in_service += 1
        st.max_in_service_seen = max(st.max_in_service_seen, st.in_service)
        try:
            yield True
        finally:
            st.in_service -= 1
            if slots is not None:
                slots.release()

    def _overloaded(self) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": "gateway overloaded",
                    "type": "overloaded",
                    "code": "overloaded",
                }
            },
            status=self.config.overload_status,
            headers={"Retry-After": str(self.config.retry_after_s)},
        )

    # -- handlers ------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": p} for m, p in self.config.models.items()]
        return web.json_response({"object": "list", "data": data})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        """A websocket echo (captures record upgrades as not replayable)."""
        self.stats.requests += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT:
                await ws.send_str(msg.data)
        self.stats.completed += 1
        return ws

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        """Echo for non-LLM traffic. Query knobs: status=, delay_ms=, size= (response bytes),
        gzip=1 (with size=), header=Name:Value (added to the response, repeatable), set_cookie=1
        (a random session cookie, kept in `cookies_issued`)."""
        self.stats.requests += 1
        body = await request.read()
        q = request.query
        try:
            status = int(q.get("status", "200"))
            delay = float(q.get("delay_ms", "0")) / 1000.0 * self.config.slowdown
            size = int(q.get("size", "-1"))
        except ValueError:
            return web.json_response({"error": "bad echo parameter"}, status=400)
        async with self._admit() as ok:
            if not ok:
                return self._overloaded()
            await self._sleep_until(time.monotonic() + delay)
            if size >= 0:
                resp = web.Response(body=b"x" * size, status=status, content_type="text/plain")
                if q.get("gzip") == "1":
                    resp.enable_compression(web.ContentCoding.gzip)
            else:
                resp = web.json_response(
                    {
                        "method": request.method,
                        "path": request.path,
                        "query": request.query_string,
                        "headers": list(request.headers.items()),
                        "body_size": len(body),
                    },
                    status=status,
                )
            if q.get("set_cookie") == "1":
                self.cookies_issued.append(f"sid={uuid.uuid4().hex}")
                resp.headers.add("Set-Cookie", f"{self.cookies_issued[-1]}; HttpOnly")
            for item in q.getall("header", []):
                name, sep, value = item.partition(":")
                if sep and name:
                    resp.headers.add(name.strip(), value.strip())
        self.stats.completed += 1
        return resp

    async def _read_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            obj = json.loads(await request.read())
        except ValueError:
            return web.json_response(
                {"error": {"message": "body is not JSON", "type": "invalid_request_error"}},
                status=400,
            )
        if not isinstance(obj, dict):
            return web.json_response(
                {"error": {"message": "body must be an object", "type": "invalid_request_error"}},
                status=400,
            )
        return obj

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.stats.requests += 1
        obj = await self._read_json(request)
        if isinstance(obj, web.Response):
            return obj
        fields = llm.parse_request(json.dumps(obj).encode())
        model = fields.model or "unknown"
        streamed = bool(fields.stream)
        plan = self._plan(streamed)
        prof = self.config.profile_for(fields.model)
        prompt_tokens = llm.approx_tokens(fields.prompt_chars or 0)
        if fields.max_tokens is not None and fields.max_tokens > 0:
            n_out, finish = fields.max_tokens, "length"
        else:
            mu = math.log(max(prof.output_tokens_median, 1))
            n_out = max(1, int(plan.rng.lognormvariate(mu, prof.output_tokens_sigma)))
            finish = "stop"
        k = self.config.slowdown / 1000.0
        ttft = (prof.ttft_base_ms + prof.ttft_per_prompt_token_ms * prompt_tokens) * k
        itl = prof.itl_ms * k
        include_usage = bool((obj.get("stream_options") or {}).get("include_usage"))
        async with self._admit() as ok:
            if not ok:
                return self._overloaded()
            start = time.monotonic()
            if plan.error:
                await self._sleep_until(start + ttft)
                self.stats.errors += 1
                return web.json_response(
                    {"error": {"message": "injected failure", "type": "server_error"}},
                    status=self.config.faults.error_status,
                )
            rid = f"chatcmpl-mock{self._n:08d}"
            created = int(time.time())
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n_out,
                "total_tokens": prompt_tokens + n_out,
            }
            texts = [f" tok{i}" for i in range(n_out)]
            if streamed:
                resp = await self._stream(
                    request,
                    plan,
                    rid,
                    model,
                    created,
                    texts,
                    finish,
                    usage,
                    include_usage,
                    chat=chat,
                    t_first=start + ttft,
                    itl=itl,
                )
            else:
                await self._sleep_until(start + ttft + itl * max(n_out - 1, 0))
                text = "".join(texts)
                if chat:
                    body = llm.chat_completion(
                        rid,
                        model,
                        created,
                        text,
                        finish_reason=finish,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=n_out,
                    )
                else:
                    body = json.dumps(
                        {
                            "id": rid,
                            "object": "text_completion",
                            "created": created,
                            "model": model,
                            "choices": [{"index": 0, "text": text, "finish_reason": finish}],
                            "usage": usage,
                        }
                    ).encode()
                if plan.drip:
                    resp = await self._drip(request, body, "application/json")
                else:
                    resp = web.Response(body=body, content_type="application/json")
                    if self.config.gzip:
                        resp.enable_compression(web.ContentCoding.gzip)
        self.stats.completed += 1
        return resp

    async def _stream(
        self,
        request: web.Request,
        plan: _Plan,
        rid: str,
        model: str,
        created: int,
        texts: list[str],
        finish: str,
        usage: dict[str, int],
        include_usage: bool,
        *,
        chat: bool,
        t_first: float,
        itl: float,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await self._sleep_until(time.monotonic())  # a stall holds the headers too
        await resp.prepare(request)

        def event(content: str | None, fin: str | None = None, role: str | None = None) -> bytes:
            if chat:
                return llm.chat_chunk(
                    rid, model, created, content=content, finish_reason=fin, role=role
                )
            obj = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": content or "", "finish_reason": fin}],
            }
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        if chat:
            await resp.write(event("", role="assistant"))
        reset_at = len(texts) // 2 if plan.reset else -1
        bad_at = len(texts) // 2 if plan.malformed else -1
        for i, text in enumerate(texts):
            await self._sleep_until(t_first + i * itl)
            if i == reset_at:
                self.stats.resets += 1
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if i == bad_at:
                await resp.write(b'data: {"id": "' + rid.encode() + b'", "choices": [\n\n')
            await resp.write(event(text))
        await resp.write(event(None, fin=finish))
        if include_usage:
            if chat:
                await resp.write(
                    llm.chat_chunk(rid, model, created, empty_choices=True, usage=usage)
                )
            else:
                obj = {
                    "id": rid,
                    "object": "text_completion",
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        await resp.write(llm.SSE_DONE)
        await resp.write_eof()
        return resp

    async def _drip(self, request: web.Request, body: bytes, ctype: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        resp.content_length = len(body)
        await resp.prepare(request)
        delay = self.config.faults.drip_delay_ms / 1000.0 * self.config.slowdown
        for i in range(len(body)):
            await resp.write(body[i : i + 1])
            await asyncio.sleep(delay)
        await resp.write_eof()
        return resp


def serve_until_signal(config: GatewayConfig, announce: Callable[[str], None]) -> None:
    """`loadtape mock-gateway`: serve until SIGINT or SIGTERM; `announce` gets the URL once it
    listens."""
    try:
        gw = MockGateway(config)
    except ValueError as exc:
        raise UserError(str(exc)) from None

    async def serve() -> None:
        try:
            await gw.start()
        except OSError as exc:
            raise UserError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from None
        announce(gw.url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gw.stop()

    asyncio.run(serve())
