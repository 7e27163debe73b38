"""Open a page in real headless Chromium over the DevTools protocol (aiohttp's websocket client)
and report what a user would see: console errors, uncaught exceptions, network requests (a
self-contained report makes none), facts from the DOM, and a full-page screenshot.

Chromium listens on 127.0.0.1 only (`--remote-debugging-port=0`), and the flags keep it from
reaching for Google's services (this machine has no network, and a report must not need one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
)
PAGE_FACTS = """JSON.stringify({
  title: document.title,
  svgs: [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect();
    return {w: r.width, h: r.height, paths: s.querySelectorAll('path').length};
  }),
  headings: [...document.querySelectorAll('h1,h2')].map(h => h.textContent),
  tables: document.querySelectorAll('table').length,
  scripts: document.querySelectorAll('script').length,
  text: document.body.innerText.slice(0, 20000),
  viewport: window.innerWidth,
  scrollWidth: document.documentElement.scrollWidth,
  // elements reaching past the window's right edge (outermost only)
  overflowing: [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
    .filter(e => !e.parentElement || e.parentElement.getBoundingClientRect().right
      <= window.innerWidth + 0.5)
    .map(e => e.tagName.toLowerCase() + (e.className && e.className.baseVal === undefined
      ? '.' + e.className : '')).slice(0, 20),
  plots: [...document.querySelectorAll('svg')].map(s => {
    const legend = s.querySelector('g[id^="legend"]');
    const box = legend ? legend.getBoundingClientRect() : null;
    // the data lines: clipped paths of line2d groups outside the legend
    const lines = [...s.querySelectorAll('g[id^="axes"] > g[id^="line2d"] path')];
    let inside = 0;
    const styles = [];
    for (const p of lines) {
      const st = getComputedStyle(p);
      styles.push(st.stroke + ' ' + st.strokeDasharray);
      if (!box) continue;
      const n = p.getTotalLength ? p.getTotalLength() : 0;
      const m = p.getScreenCTM();
      for (let i = 0; i <= 200 && n > 0; i++) {
        const q = p.getPointAtLength(n * i / 200).matrixTransform(m);
        if (q.x >= box.left && q.x <= box.right && q.y >= box.top && q.y <= box.bottom) inside++;
      }
    }
    const ticks = [...s.querySelectorAll('g[id^="xtick"] text, g[id^="ytick"] text')]
      .map(t => t.textContent);
    const title = s.querySelector('g[id^="axes"] > g[id^="text"] text');
    const sb = s.getBoundingClientRect();
    const shown = !box || (box.width > 0 && box.left >= sb.left - 1 && box.right <= sb.right + 1
      && box.top >= sb.top - 1 && box.bottom <= sb.bottom + 1);
    return {title: title ? title.textContent : '',
            legend: !!legend, shown, lines: lines.length, inside, styles, ticks};
  }),
})"""


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # URLs off the page's own origin
    facts: dict[str, Any] = field(default_factory=dict)
    samples: list[Any] = field(default_factory=list)  # `sample_js` at each of `samples` s


async def _open(
    html: Path | str,
    png: Path | None,
    timeout: float,
    width: int | None = None,
    samples: tuple[float, ...] = (),
    sample_js: str = "",
) -> PageReport:
    assert CHROMIUM is not None
    out = PageReport()
    with tempfile.TemporaryDirectory(prefix="loadtape-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            ws_url = None
            async with asyncio.timeout(timeout):
                while ws_url is None:
                    line = (await proc.stderr.readline()).decode(errors="replace")
                    if not line:
                        raise RuntimeError("chromium exited before DevTools started")
                    m = re.search(r"DevTools listening on (ws://\S+)", line)
                    ws_url = m.group(1) if m else None
            drain = asyncio.ensure_future(proc.stderr.read())  # keep the pipe from filling
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(ws_url, max_msg_size=0) as ws,
            ):
                ids = itertools.count(1)
                pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
                loaded = asyncio.Event()
                page_url = html if isinstance(html, str) else html.resolve().as_uri()
                origin = re.match(r"^(\w+://[^/]+)", page_url)
                same_origin = origin.group(1) if origin and page_url.startswith("http") else None

                async def reader() -> None:
                    async for msg in ws:
                        doc = json.loads(msg.data)
                        if "id" in doc and doc["id"] in pending:
                            pending.pop(doc["id"]).set_result(doc)
                            continue
                        method, params = doc.get("method"), doc.get("params", {})
                        if method == "Runtime.consoleAPICalled" and params["type"] in (
                            "error",
                            "assert",
                        ):
                            out.console_errors.append(
                                " ".join(
                                    str(a.get("value", a.get("description")))
                                    for a in params["args"]
                                )
                            )
                        elif method == "Runtime.exceptionThrown":
                            out.exceptions.append(params["exceptionDetails"].get("text", "?"))
                        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                            out.console_errors.append(params["entry"].get("text", "?"))
                        elif method == "Network.requestWillBeSent":
                            url = params["request"]["url"]
                            if url != page_url and not (
                                same_origin and url.startswith(same_origin + "/")
                            ):
                                out.requests.append(url)
                        elif method == "Page.loadEventFired":
                            loaded.set()

                async def call(
                    method: str, session: str | None = None, **params: Any
                ) -> dict[str, Any]:
                    i = next(ids)
                    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                    pending[i] = fut
                    msg: dict[str, Any] = {"id": i, "method": method, "params": params}
                    if session:
                        msg["sessionId"] = session
                    await ws.send_str(json.dumps(msg))
                    doc = await fut
                    if "error" in doc:
                        raise RuntimeError(f"{method}: {doc['error']}")
                    result: dict[str, Any] = doc.get("result", {})
                    return result

                task = asyncio.ensure_future(reader())
                try:
                    async with asyncio.timeout(timeout):
                        target = await call("Target.createTarget", url="about:blank")
                        att = await call(
                            "Target.attachToTarget", targetId=target["targetId"], flatten=True
                        )
                        s = att["sessionId"]
                        for domain in ("Runtime", "Log", "Network", "Page"):
                            await call(f"{domain}.enable", s)
                        if width is not None:  # a window this wide, as a user's laptop
                            await call(
                                "Emulation.setDeviceMetricsOverride",
                                s,
                                width=width,
                                height=900,
                                deviceScaleFactor=1,
                                mobile=False,
                            )
                        await call("Page.navigate", s, url=page_url)
                        await loaded.wait()
                        for at in samples:  # a page that changes: look at it over time
                            await asyncio.sleep(at)
                            res = await call(
                                "Runtime.evaluate", s, expression=sample_js, returnByValue=True
                            )
                            out.samples.append(res["result"].get("value"))
                        await asyncio.sleep(0.3)  # late console messages
                        res = await call(
                            "Runtime.evaluate", s, expression=PAGE_FACTS, returnByValue=True
                        )
                        out.facts = json.loads(res["result"]["value"])
                        if png is not None:
                            shot = await call(
                                "Page.captureScreenshot",
                                s,
                                format="png",
                                captureBeyondViewport=True,
                            )
                            png.write_bytes(base64.b64decode(shot["data"]))
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            drain.cancel()
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    return out


def open_page(
    html: Path | str,
    png: Path | None = None,
    timeout: float = 60.0,
    width: int | None = None,
    samples: tuple[float, ...] = (),
    sample_js: str = "",
) -> PageReport:
    """Open a file (or an http URL: then requests to its own origin are the page's own)."""
    return asyncio.run(_open(html, png, timeout, width, samples, sample_js))
