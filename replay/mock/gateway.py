"""A mock LLM gateway: the embedded default target of the demo, tests and benchmarks. It speaks
every API surface loadtape measures (OpenAI chat completions, legacy completions, Responses,
Anthropic Messages, embeddings), each in its own shape (captures/protocols renders them), with
the same knobs for all.

Latency model per model profile: TTFT = base + per-prompt-token cost; then one output token
(text, reasoning or tool-call argument piece) every `itl_ms`; what the answer holds is decided
in answers.py (length, reasoning, tool calls, the Responses store). Capacity: at most
`max_in_service` requests in service and `max_queue` waiting; past that a 503 (or 429) with
Retry-After, in the surface's error shape. Faults are seeded and deterministic per request
index: a periodic stall of every response (the coordinated-omission case), an error rate, a
reset mid-stream, a malformed SSE event, an error event mid-stream, a slow byte-by-byte drip.

It binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from captures import codec
from captures.protocols import EMBEDDINGS, MESSAGES, PLAIN, RESPONSES, SURFACES, Surface
from captures.protocols.base import Answer

from .answers import Refusal, ResponseStore, content_rng, error_body, plan_answer
from .config import GatewayConfig, GatewayStats
from .echo import echo_response


@dataclass
class _Plan:
    """What one request will get: decided up front from the seeded draw."""

    error: bool
    reset: bool
    malformed: bool
    error_event: bool
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
        self.issued: dict[str, list[str]] = {"cookies": [], "keys": []}  # by the echo endpoint
        self.cookies_issued = self.issued["cookies"]
        self.responses = ResponseStore()
        # ids this instance mints are its own, as a real server's are: a recording made
        # against one mock names ids another mock never issued
        self.instance = uuid.uuid4().hex[:6]

    # -- lifecycle -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        for surface in SURFACES:
            for suffix in surface.path_suffixes:
                path = suffix if suffix.startswith("/v1/") else "/v1" + suffix
                app.router.add_post(path, self._handler(surface))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/echo{tail:.*}", self._echo)
        app.router.add_get("/ws", self._ws)
        return app

    async def start(self) -> None:
        if self.config.max_in_service > 0:
            self._slots = asyncio.Semaphore(self.config.max_in_service)
        # A client that goes away cancels its handler, as real model servers stop generating
        # on a disconnect; stopping waits at most a second for the rest.
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
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
            error_event=streamed and rng.random() < f.error_event_rate,
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

    def _overloaded(self, surface: Surface = PLAIN) -> web.Response:
        status = self.config.overload_status
        return self._refuse(
            surface,
            Refusal(status, "overloaded" if surface is not MESSAGES else "", "gateway overloaded"),
            {"Retry-After": str(self.config.retry_after_s)},
        )

    def _refuse(
        self, surface: Surface, r: Refusal, headers: dict[str, str] | None = None
    ) -> web.Response:
        """An error response in the surface's shape."""
        return web.Response(
            body=error_body(surface, r),
            status=r.status,
            content_type="application/json",
            headers=headers,
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
        """Echo for non-LLM traffic (the knobs: replay/mock/echo.py)."""
        self.stats.requests += 1
        q = request.query
        try:
            delay = float(q.get("delay_ms", "0")) / 1000.0 * self.config.slowdown
            int(q.get("status", "200")), int(q.get("size", "-1"))
            if q.get("enc") and not codec.known(q["enc"]):
                raise ValueError(q["enc"])
        except ValueError:
            return web.json_response({"error": "bad echo parameter"}, status=400)
        async with self._admit() as ok:
            if not ok:
                return self._overloaded()
            await self._sleep_until(time.monotonic() + delay)
            resp = await echo_response(request, self.issued)
        self.stats.completed += 1
        return resp

    async def _read_json(
        self, request: web.Request, surface: Surface
    ) -> dict[str, Any] | web.Response:
        try:
            obj = json.loads(await request.read())
        except ValueError:
            return self._refuse(surface, Refusal(400, "invalid_request_error", "body is not JSON"))
        if not isinstance(obj, dict):
            return self._refuse(
                surface, Refusal(400, "invalid_request_error", "body must be an object")
            )
        return obj

    def _handler(self, surface: Surface) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._generate(request, surface)

        return handle

    async def _generate(self, request: web.Request, surface: Surface) -> web.StreamResponse:
        self.stats.requests += 1
        obj = await self._read_json(request, surface)
        if isinstance(obj, web.Response):
            return obj
        if surface is RESPONSES and (refusal := self.responses.check(obj)) is not None:
            self.stats.refused += 1
            return self._refuse(surface, refusal)
        streamed = surface.streams and obj.get("stream") is True
        plan = self._plan(streamed)
        prof = self.config.profile_for(
            obj.get("model") if isinstance(obj.get("model"), str) else None
        )
        rng = content_rng(surface, obj, self.config.seed)
        answer, prompt_tokens = plan_answer(
            surface, obj, prof, rng, self._n, int(time.time()), self.instance
        )
        answer.extra_nulls = self.config.extra_nulls
        if surface is EMBEDDINGS:
            inp = obj.get("input")
            answer.text = [""] * (len(inp) if isinstance(inp, list) else 1)
        k = self.config.slowdown / 1000.0
        ttft = (prof.ttft_base_ms + prof.ttft_per_prompt_token_ms * prompt_tokens) * k
        itl = prof.itl_ms * k
        async with self._admit() as ok:
            if not ok:
                return self._overloaded(surface)
            start = time.monotonic()
            if plan.error:
                await self._sleep_until(start + ttft)
                self.stats.errors += 1
                return self._refuse(
                    surface,
                    Refusal(self.config.faults.error_status, "server_error", "injected failure"),
                )
            if surface is RESPONSES:
                self.responses.add(answer)
            if streamed:
                resp = await self._stream(request, surface, answer, plan, start + ttft, itl)
            else:
                pieces = answer.pieces if surface is not EMBEDDINGS else 1
                await self._sleep_until(start + ttft + itl * max(pieces - 1, 0))
                body = surface.render_body(answer)
                if plan.drip:
                    resp = await self._drip(request, body, "application/json")
                else:
                    coding = self._coding(request)
                    resp = web.Response(
                        body=codec.encode(body, coding) if coding else body,
                        content_type="application/json",
                        headers={"Content-Encoding": coding} if coding else None,
                    )
        self.stats.completed += 1
        return resp

    async def _stream(
        self,
        request: web.Request,
        surface: Surface,
        answer: Answer,
        plan: _Plan,
        t_first: float,
        itl: float,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        coding = self._coding(request)
        code, end = codec.encoder(coding)
        if coding:
            resp.headers["Content-Encoding"] = coding
        await self._sleep_until(time.monotonic())  # a stall holds the headers too
        await resp.prepare(request)
        half = answer.pieces // 2
        i = 0  # output events so far
        for timed, event in surface.render_stream(answer):
            if timed:
                await self._sleep_until(t_first + i * itl)
                if i == half and plan.reset:
                    self.stats.resets += 1
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                if i == half and plan.error_event:
                    self.stats.error_events += 1
                    await resp.write(
                        code(surface.error_event("overloaded_error", "injected failure"))
                    )
                    await resp.write_eof(end())
                    return resp
                if i == half and plan.malformed:
                    await resp.write(
                        code(b'data: {"id": "' + answer.rid.encode() + b'", "choices": [\n\n')
                    )
                i += 1
            await resp.write(code(event))
        try:
            if self.config.eof_delay_ms > 0:
                await asyncio.sleep(self.config.eof_delay_ms / 1000)
            await resp.write_eof(end())
        except ConnectionResetError:  # the client left after the terminal event, as SDKs do
            self.stats.closed_early += 1
        except asyncio.CancelledError:  # ... noticed while holding the body open
            self.stats.closed_early += 1
            raise
        return resp

    def _coding(self, request: web.Request) -> str:
        """config.coding where the request accepts it (a dripped answer is never coded)."""
        c = self.config.coding
        return c if c and codec.accepts(request.headers.get("Accept-Encoding"), c) else ""

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
