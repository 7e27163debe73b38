"""`loadtape capture --metrics-listen HOST:PORT`: the capture's figures in Prometheus
exposition, read at each scrape from the status file the addon keeps (so a scrape never
touches the proxy's event loop or the writer): records written, bytes, dropped, lost, in
flight, waiting to be written, Parquet parts, the writer's CPU, secrets redacted by kind, and
whether it is failing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from captures.errors import UserError

COUNTERS = (  # status key -> (metric, help)
    ("records", "loadtape_capture_records", "Exchanges recorded."),
    ("streamed", "loadtape_capture_streamed_records", "Streamed exchanges recorded."),
    ("errors", "loadtape_capture_error_records", "Exchanges recorded with an error kind."),
    ("bytes", "loadtape_capture_bytes", "Body bytes recorded."),
    ("dropped", "loadtape_capture_dropped", "Exchanges dropped (the queue was full)."),
    ("lost", "loadtape_capture_lost", "Exchanges that could not be written (disk full, ...)."),
    ("filtered", "loadtape_capture_filtered", "Exchanges left out by the capture's filters."),
    ("not_replayable", "loadtape_capture_not_replayable", "Websockets and tunnels seen."),
    (
        "rejected",
        "loadtape_capture_rejected",
        "Records that did not fit the schema at compaction (lost; the notes say why).",
    ),
)
GAUGES = (
    ("inflight", "loadtape_capture_in_flight", "Exchanges in flight through the proxy."),
    ("pending", "loadtape_capture_pending", "Records waiting for the writer."),
    ("parts", "loadtape_capture_parts", "Parquet parts written (compactions done)."),
    (
        "segments_queued",
        "loadtape_capture_segments_queued",
        "Sealed journal segments waiting for compaction.",
    ),
    (
        "segments_compacting",
        "loadtape_capture_segments_compacting",
        "Journal segments the compactor process is turning into parts now.",
    ),
    (
        "compactor_up",
        "loadtape_capture_compactor_up",
        "1 while the compactor process is up, 0 once it is gone (compacting inline), "
        "-1 when none was started.",
    ),
    ("writer_cpu_s", "loadtape_capture_writer_cpu_seconds", "CPU the writer used."),
    (
        "journal_lag_s",
        "loadtape_capture_journal_lag_seconds",
        "How long the oldest record not yet in a Parquet part has waited (at most).",
    ),
)


class CaptureCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status() or {}
        out: list[Metric] = []
        for key, name, doc in COUNTERS:
            out.append(CounterMetricFamily(name, doc, value=float(s.get(key) or 0)))
        for key, name, doc in GAUGES:
            out.append(GaugeMetricFamily(name, doc, value=float(s.get(key) or 0)))
        redactions = CounterMetricFamily(
            "loadtape_capture_redactions",
            "Secrets redacted from recorded exchanges, by kind (echoes not counted).",
            labels=["kind"],
        )
        for kind, n in sorted((s.get("redactions") or {}).items()):
            redactions.add_metric([kind], float(n))
        out.append(redactions)
        updated = s.get("updated")
        out.append(
            GaugeMetricFamily(
                "loadtape_capture_status_age_seconds",
                "Seconds since the addon last wrote its status (it writes every flush).",
                value=time.time() - float(updated) if updated else float("nan"),
            )
        )
        out.append(
            GaugeMetricFamily(
                "loadtape_capture_write_failing",
                "1 while writes fail (the disk is full, the directory went away).",
                value=1.0 if s.get("write_error") else 0.0,
            )
        )
        out.append(
            GaugeMetricFamily(
                "loadtape_capture_fatal",
                "1 once recording stopped.",
                value=float(bool(s.get("fatal"))),
            )
        )
        return iter(out)


class CaptureMetrics:
    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any] | None]) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CaptureCollector(status))
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise UserError(
                f"--metrics-listen {host}:{port}: cannot listen there ({exc.strerror or exc})"
            ) from None
        self.url = f"http://{host}:{self._server.server_port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
