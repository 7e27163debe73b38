"""`loadtape demo`: the whole loop on an embedded default, on loopback only.

1. start the mock gateway (its own process) on a free port;
2. put the capture proxy (mitmdump + the capture addon) in front of it;
3. drive a built-in workload through the proxy for about 10 s: several sessions holding
   multi-turn conversations on three API surfaces (chat completions, Responses chained by
   `previous_response_id`, Anthropic Messages), half of them with no session header, streamed
   and plain, two models of different speed, varied message lengths,
   embeddings and a little non-LLM traffic, and an API key in every request (which the capture
   redacts);
4. stop the proxy (flush, compact), summarize the capture;
5. replay it at 1x and 5x against the mock gateway and print both summaries.

Files go under ./loadtape-demo/ (recreated on each run, and only if it is a demo directory).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from captures import inspect as insp
from captures.errors import UserError
from captures.protocols import CHAT, MESSAGES, RESPONSES, read_response
from captures.reader import Capture
from captures.testing import words
from proxy_addons.launch import CaptureConfig, CaptureProcess, describe_status
from replay.api import run_replay
from replay.decide.reporting import make
from replay.measure.resultsdir import Results
from replay.settings import RunSummary
from replay.workload.replaying import ReplayOptions

MARKER = ".loadtape-demo"


@dataclass
class DemoPaths:
    root: Path

    @property
    def capture(self) -> Path:
        return self.root / "capture"

    def run(self, speed: float) -> Path:
        return self.root / f"replay-{speed:g}x"


def prepare_dir(root: Path) -> DemoPaths:
    if root.exists():
        if not (root / MARKER).exists():
            raise UserError(
                f"{root} exists and is not a loadtape demo directory; move it or use --dir"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("created by loadtape demo; removed and recreated by the next one\n")
    return DemoPaths(root)


def start_gateway(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    fh = open(log, "wb")  # noqa: SIM115 - the gateway's log for as long as it runs
    proc = subprocess.Popen(
        [sys.executable, "-c", "import cli; cli.main()", "mock-gateway", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=fh,
    )
    fh.close()
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("mock gateway listening on "):
        proc.kill()
        raise UserError(f"the mock gateway did not start: {line or log.read_text()[-300:]}")
    return proc, line.split()[-1]


def _turn(
    api: str,
    model: str,
    history: list[dict[str, str]],
    stream: bool,
    n: int,
    previous: str | None,
) -> tuple[str, dict[str, Any]]:
    """A conversation's next request on its API surface: the full history each turn, as the
    SDKs' users send it, except Responses, where the server holds it."""
    if api == "responses":
        body: dict[str, Any] = {
            "model": model,
            "input": history[-1:] if previous else history,
            "stream": stream,
            "max_output_tokens": n,
        }
        if previous:
            body["previous_response_id"] = previous
        return "/v1/responses", body
    if api == "messages":
        msgs = [m for m in history[-9:] if m["role"] != "system"]
        return "/v1/messages", {
            "model": model,
            "system": history[0]["content"],
            "messages": msgs,
            "stream": stream,
            "max_tokens": n,
        }
    body = {"model": model, "messages": history[-9:], "stream": stream, "max_tokens": n}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return "/v1/chat/completions", body


def _answer(api: str, data: bytes, stream: bool) -> tuple[str, str | None]:
    """The answer's text and the response's id, from a body or a stream."""
    surface = {"chat": CHAT, "responses": RESPONSES, "messages": MESSAGES}[api]
    ctype = "text/event-stream" if stream else "application/json"
    fields = read_response(surface, [data], ctype, None).fields
    return (fields.answer[1] if fields.answer else ""), fields.response_id


async def workload(base: str, seconds: float, sessions: int, seed: int = 7) -> dict[str, int]:
    """Virtual users through the proxy: conversations with think time between turns, each on
    one API surface (chat completions, Responses, Anthropic Messages), now and then a model
    list or an embedding."""
    rng = random.Random(seed)
    counts = {"requests": 0, "streamed": 0, "errors": 0}
    deadline = time.monotonic() + seconds

    async def user(u: int, s: aiohttp.ClientSession) -> None:
        r = random.Random(rng.random())
        model = "small" if r.random() < 0.7 else "large"
        api = r.choices(["chat", "responses", "messages"], [6, 2, 2])[0]
        history: list[dict[str, str]] = [{"role": "system", "content": "You are a test assistant."}]
        previous: str | None = None
        # half the users send a session header; the others, like most applications, none: the
        # capture finds their conversations from content
        headers = {"X-Session-Id": f"demo-session-{u}"} if u % 2 else {}
        if api == "messages":
            headers.update(
                {
                    "x-api-key": f"sk-ant-demo-{u:04d}-not-a-real-secret",
                    "anthropic-version": "2023-06-01",
                }
            )
        else:
            headers["Authorization"] = f"Bearer sk-demo-key-{u:04d}-not-a-real-secret"
        while time.monotonic() < deadline:
            extra = r.random()
            try:
                if extra < 0.08:
                    async with s.get("/v1/models", headers=headers) as resp:
                        await resp.read()
                    counts["requests"] += 1
                elif extra < 0.14:
                    body = {"model": "embed-small", "input": [words(r, 20), words(r, 20)]}
                    async with s.post("/v1/embeddings", json=body, headers=headers) as resp:
                        await resp.read()
                    counts["requests"] += 1
            except aiohttp.ClientError:
                counts["errors"] += 1
            history.append({"role": "user", "content": words(r, r.randint(5, 120))})
            stream = r.random() < 0.6
            path, body = _turn(api, model, history, stream, r.choice([8, 16, 32, 48]), previous)
            try:
                async with s.post(path, json=body, headers=headers) as resp:
                    data = await resp.read()
                counts["requests"] += 1
                counts["streamed"] += stream
                text, rid = _answer(api, data, stream)
                previous = rid if api == "responses" else None
                history.append({"role": "assistant", "content": text})
            except (aiohttp.ClientError, ValueError, KeyError):
                counts["errors"] += 1
            await asyncio.sleep(min(r.expovariate(1 / 0.6), 2.0))

    async with aiohttp.ClientSession(base) as s:
        await asyncio.gather(*(user(u, s) for u in range(sessions)))
    return counts


def run_demo(
    root: Path,
    *,
    seconds: float = 10.0,
    sessions: int = 12,
    speeds: tuple[float, ...] = (1.0, 5.0),
    say: Callable[[str], None] = print,
    show: Callable[[RunSummary], None] | None = None,
) -> list[RunSummary]:
    paths = prepare_dir(root)
    say(f"loadtape demo: files under {root}/")
    gw, gw_url = start_gateway(root / "mock-gateway.log")
    runs: list[RunSummary] = []
    try:
        say(f"1/4 mock gateway on {gw_url} (models: small = fast local, large = slow cloud)")
        cfg = CaptureConfig(
            out=paths.capture.resolve(),
            upstream=gw_url,
            listen_port=0,
            options={"capture_redaction_key_file": str((root / "redaction.key").resolve())},
        )
        proxy = CaptureProcess(cfg).start()
        say(f"2/4 capture proxy on {proxy.url} -> {gw_url}")
        say(f"    driving {sessions} sessions (conversations) through it for {seconds:g} s")
        t0 = time.monotonic()
        counts = asyncio.run(workload(proxy.url, seconds, sessions))
        final = proxy.stop()
        say(
            f"    sent {counts['requests']} requests ({counts['streamed']} streamed) in "
            f"{time.monotonic() - t0:.1f} s; proxy: {describe_status(final)}"
        )
        summary = insp.summarize(Capture(paths.capture))
        say("3/4 the capture:")
        for line in insp.render_text(summary).splitlines():
            say("    " + line)
        for i, speed in enumerate(speeds):
            say(f"{4 + i}/{3 + len(speeds)} replay at {speed:g}x against the mock gateway")
            r = run_replay(
                ReplayOptions(
                    capture=str(paths.capture),
                    target=gw_url,
                    out=str(paths.run(speed)),
                    speed=speed,
                    sessions="ordered",
                ),
                install_signals=False,
            )
            runs.append(r)
            if show is not None:
                show(r)
            html_path = paths.run(speed) / "report.html"
            html_path.write_text(
                make(Results(r.out_dir, r.run, r.metrics), "html")[0], encoding="utf-8"
            )
            say(f"    report: {html_path} (open it in a browser; no network needed)")
            if speed > 1:
                say(
                    f"    at {speed:g}x the think time between turns shrinks but answers do not: "
                    "with --sessions ordered a conversation's next turn waits for the previous "
                    "answer, so slow models show schedule lag (lag p99) instead of hiding it."
                )
    finally:
        gw.terminate()
        try:
            gw.wait(10)
        except subprocess.TimeoutExpired:
            gw.kill()
        if gw.stdout is not None:
            gw.stdout.close()
    say(
        f"done: capture in {paths.capture}, results in "
        + ", ".join(str(paths.run(s)) for s in speeds)
    )
    return runs
