"""The run's HTTP endpoint (`--metrics-listen`, `--live`): `/metrics` in Prometheus exposition
(prometheus_client's WSGI app on a registry of its own), `/` the live page, `/live.json` its
data, `/report` the final HTML report once the run has written it. Loopback unless asked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from captures.errors import UserError
from captures.listen import parse_listen

from .exporter import RunObserver
from .families import RunCollector
from .page import PAGE

__all__ = ["RunServer", "parse_listen"]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class RunServer:
    """One server for a run (or a sweep): metrics, and the live page when asked for."""

    def __init__(
        self, host: str, port: int, observer: RunObserver, *, page: bool, flag: str
    ) -> None:
        self.observer = observer
        self.page = page
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RunCollector(observer))
        self._metrics = make_wsgi_app(registry)
        try:
            self._server = make_server(
                host, port, self._app, ThreadingWSGIServer, handler_class=_SilentHandler
            )
        except OSError as exc:
            raise UserError(
                f"{flag} {host}:{port}: cannot listen there ({exc.strerror or exc})"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="loadtape-metrics", daemon=True
        )
        self._thread.start()
        self.host, self.port = host, int(self._server.server_port)

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def _app(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            out: Iterable[bytes] = self._metrics(environ, start)
            return out
        if self.page and path == "/":
            return _send(start, "200 OK", "text/html; charset=utf-8", PAGE.encode())
        if self.page and path == "/live.json":
            body = json.dumps(self.observer.live()).encode()
            return _send(start, "200 OK", "application/json", body)
        if self.page and path == "/report" and self.observer.report:
            data = Path(self.observer.report).read_bytes()
            return _send(start, "200 OK", "text/html; charset=utf-8", data)
        if path == "/favicon.ico":  # what every browser asks for: nothing, and no error
            start("204 No Content", [("Cache-Control", "max-age=86400")])
            return [b""]
        return _send(start, "404 Not Found", "text/plain", b"not here\n")

    def close(self, linger_s: float = 0.0) -> None:
        """Mark the run finished; serve `linger_s` more (a last scrape, a last look at the
        page), then stop."""
        self.observer.finished = True
        if linger_s > 0:
            time.sleep(linger_s)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _send(start: StartResponse, status: str, ctype: str, body: bytes) -> list[bytes]:
    start(
        status,
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            # the page is its own world: nothing loads from anywhere else
            ("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; "
             "style-src 'unsafe-inline'"),
        ],
    )  # fmt: skip
    return [body]
