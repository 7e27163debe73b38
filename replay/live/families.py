"""The Prometheus side of `--metrics-listen`: a collector that turns a copy of the run's
counters (exporter.RunObserver) into metric families at each scrape."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from replay.settings import Progress

from .exporter import HISTOGRAMS, LABELS, QUANTILES, WINDOW_S, RunObserver, _Series


class RunCollector(Collector):
    def __init__(self, observer: RunObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterator[Metric]:
        series, progress, quantiles = self.observer.snapshot()
        return iter(list(_families(series, progress, quantiles, self.observer)))


def _families(
    series: dict[tuple[str, ...], _Series],
    progress: Progress | None,
    quantiles: dict[str, Any],
    observer: RunObserver,
) -> Iterable[Metric]:
    req = CounterMetricFamily(
        "loadtape_requests",
        "Requests completed, by outcome (ok, expected shedding, failed) and status class.",
        labels=[*LABELS, "outcome", "status_class"],
    )
    err = CounterMetricFamily(
        "loadtape_errors", "Failed requests by error kind.", labels=[*LABELS, "kind"]
    )
    tok = CounterMetricFamily("loadtape_tokens", "Tokens by kind.", labels=[*LABELS, "kind"])
    byt = CounterMetricFamily("loadtape_response_bytes", "Response bytes.", labels=list(LABELS))
    sent_bytes = CounterMetricFamily(
        "loadtape_request_bytes", "Request bytes (body as sent).", labels=list(LABELS)
    )
    hists = {
        m: HistogramMetricFamily(
            f"loadtape_{m}_seconds", f"{m} of completed requests.", labels=list(LABELS)
        )
        for m in HISTOGRAMS
    }
    for key, s in sorted(series.items()):
        lv = list(key)
        for (outcome, cls), v in sorted(s.outcomes.items()):
            req.add_metric([*lv, outcome, cls], v)
        for kind, v in sorted(s.errors.items()):
            err.add_metric([*lv, kind], v)
        for kind, v in s.tokens.items():
            tok.add_metric([*lv, kind], v)
        byt.add_metric(lv, s.bytes_in)
        sent_bytes.add_metric(lv, s.bytes_out)
        for m, bounds in HISTOGRAMS.items():
            counts = s.buckets.get(m)
            if counts is None:
                continue
            cum = np.cumsum(counts).tolist()
            edges = [*(f"{b:g}" for b in bounds), "+Inf"]
            hists[m].add_metric(lv, list(zip(edges, cum, strict=True)), s.sums.get(m, 0.0))
    yield from (req, err, tok, byt, sent_bytes, *hists.values())
    q = GaugeMetricFamily(
        "loadtape_recent_seconds",
        f"Exact quantiles over the last {WINDOW_S} s (HdrHistogram), by stream.",
        labels=["stream", "metric", "quantile"],
    )
    for name, ps in sorted(quantiles.items()):
        stream, metric = name.split("\0")
        for qv in QUANTILES:
            q.add_metric([stream, metric, f"{qv:g}"], ps[qv * 100] / 1e6)
    yield q
    if progress is not None:
        yield from _progress_families(progress)
    stage = GaugeMetricFamily("loadtape_stage", "The run's stage.", labels=["key", "value"])
    for name, value in sorted(observer.stage.items()):
        stage.add_metric([name, value], 1)
    yield stage
    yield GaugeMetricFamily(
        "loadtape_run_finished", "1 once the run has ended.", value=int(observer.finished)
    )


def _progress_families(p: Progress) -> Iterable[Metric]:
    def gauge(name: str, doc: str, value: float | None) -> Metric:
        return GaugeMetricFamily(name, doc, value=float("nan") if value is None else value)

    yield CounterMetricFamily("loadtape_sent", "Requests sent so far.", value=p.sent)
    if p.scheduled is not None:  # (a closed loop has no schedule)
        yield CounterMetricFamily(
            "loadtape_scheduled", "Requests due so far by the plan (open loop).", value=p.scheduled
        )
    yield gauge("loadtape_in_flight", "Requests in flight.", p.in_flight)
    yield gauge("loadtape_send_rate", "Requests sent per second, last half second.", p.rate)
    yield gauge("loadtape_planned_requests", "Requests the plan holds (or an estimate).",
                p.planned)  # fmt: skip
    yield gauge("loadtape_elapsed_seconds", "Seconds since the run started.", p.elapsed_s)
    yield gauge("loadtape_schedule_seconds", "How far into its schedule the run is.",
                p.scheduled_s)  # fmt: skip
    yield gauge("loadtape_behind_seconds",
                "How late the oldest request due and not yet sent is (0: on schedule).",
                p.behind_s)  # fmt: skip
    yield gauge("loadtape_lag_p99_seconds", "Schedule lag p99 so far.",
                None if p.lag_p99_ms is None else p.lag_p99_ms / 1000)  # fmt: skip
    if p.sender_wait_s is not None:  # Linux (replay/hostcpu.py)
        yield CounterMetricFamily(
            "loadtape_sender_cpu_wait_seconds",
            "How long the sending thread was ready to send and waited for a CPU (its schedstat).",
            value=p.sender_wait_s,
        )
    if p.throttled_s is not None:
        yield CounterMetricFamily(
            "loadtape_cgroup_throttled_seconds",
            "How long the CPU limit of the replay's cgroup (a container's) held it back.",
            value=p.throttled_s,
        )
