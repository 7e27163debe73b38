"""run.json: what a run was (versions, host, settings, its streams and targets, with credentials
masked out of every URL) and what it did (counts, rates, lag, connections). The runner writes it
beside the results; the scale-out backends merge their shards' documents into one."""

from __future__ import annotations

import platform
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from captures.schema import LOADTAPE_VERSION
from replay.measure.groups import add_counts, series_name

from .dispatchstats import DispatchStats
from .settings import RunSettings, StreamPlan
from .state import SessionState
from .targets import mask_url


def run_document(
    streams: Sequence[StreamPlan],
    settings: RunSettings,
    stats: DispatchStats,
    outcomes: tuple[int, int, int],
    *,
    start_ns: int,
    duration_ns: int,
    rates: tuple[float | None, float | None],
    interrupted: bool,
    connections: dict[str, int | None],
    uvloop: bool,
    run_info: dict[str, Any] | None = None,
    state: SessionState | None = None,
    client: str | None = None,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The document of one process's run. outcomes: (ok, expected, failed); rates: (scheduled,
    achieved) per second; run_info: what the caller adds (the capture, the options); client:
    the sender that ran (`--client auto` picks one); machine: the machine's CPUs over the run
    (hostcpu.machine_use)."""
    targets = list(dict.fromkeys(s.rewriter.target for s in streams))
    skipped: dict[str, int] = {}
    for s in streams:
        add_counts(skipped, s.stats.skipped if s.stats else {})
    ok, expected, failed = outcomes
    return {
        "loadtape_version": LOADTAPE_VERSION,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "start_ns": start_ns,
        "start": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start_ns / 1e9)),
        "duration_s": duration_ns / 1e9,
        "mode": "closed" if settings.closed else "open",
        "streams": {
            series_name(s.name, s.rewriter.target.name): {
                **s.describe,
                "target": mask_url(s.rewriter.target.url),
            }
            for s in streams
        },
        "target": mask_url(targets[0].url) if len(targets) == 1 else None,
        "targets": {t.name: mask_url(t.url) for t in targets if t.name},
        "settings": asdict(settings),
        "counts": {
            "planned": stats.sent + sum(stats.unsent.values()),
            "sent": stats.sent,
            "staged": stats.staged,
            "ok": ok,
            "expected": expected,
            "failed": failed,
            "unsent": stats.unsent,
            "unsent_counted": stats.unsent_counted,
            "skipped": skipped,
            "redacted_values_dropped": sum(s.rewriter.dropped_redacted for s in streams),
            "ids_mapped": state.mapped if state is not None else 0,
            "live_answers": state.replaced if state is not None else 0,
        },
        "scheduled_rate": rates[0],
        "achieved_rate": rates[1],
        "scheduled_s": stats.last_due_ns / 1e9,
        "max_lag_ms": stats.max_lag_ns / 1e6,
        "interrupted": interrupted,
        "client": client or settings.client,
        "connections": connections,
        "uvloop": uvloop,
        "machine": machine,
        **(run_info or {}),
    }
