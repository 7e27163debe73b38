"""Shards of one run, whichever backend runs them: every shard builds the same plan (the same
capture, options and seeds give the same timeline) and keeps its part (`timeline.sharded`: whole
sessions by a stable hash of the session key, sessionless shots in turn, cut after
`--requests`), so the shards together send exactly what one process would. Each writes its own
result parts (`results-w<k>.parquet`, `histograms-w<k>.msgpack`); `merge` adds the histograms up
exactly (`Metrics.add`) and writes the one run.json."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from captures.store import mkdir_private, seal_private
from replay.dispatchstats import DispatchStats
from replay.hostcpu import merged_use, most, summed
from replay.measure.groups import add_counts
from replay.measure.metrics import Metrics
from replay.measure.resultsdir import write_run_json
from replay.settings import Progress, RunSettings, RunSummary, StreamPlan, default_out_dir
from replay.workload.replaying import build_replay
from replay.workload.scenario import load

SUM_COUNTS = (
    "planned",
    "sent",
    "staged",
    "ok",
    "expected",
    "failed",
    "redacted_values_dropped",
    "ids_mapped",
    "live_answers",
)


@dataclass(frozen=True)
class Job:
    """What every worker builds its streams from (picklable): a replay's options, or a
    scenario file and its default target."""

    kind: str  # "replay" | "scenario"
    spec: Any

    def build(self) -> tuple[list[StreamPlan], dict[str, Any]]:
        if self.kind == "replay":
            return build_replay(self.spec)
        path, target = self.spec
        return load(path, target=target), {"scenario": str(Path(path).resolve())}


def split(total: int, n: int, k: int) -> int:
    """Worker k's share of a total split n ways (the first ones take the remainder)."""
    return total // n + (1 if k < total % n else 0)


def shard_settings(settings: RunSettings, index: int, count: int, **more: Any) -> RunSettings:
    """One shard's settings: its part of the plan, of the concurrency and the in-flight bound."""
    conc = settings.concurrency
    return replace(
        settings,
        workers=1,
        shard=(index, count),
        part=f"w{index}",
        concurrency=None if conc is None else split(conc, count, index),
        max_in_flight=max(1, split(settings.max_in_flight, count, index)),
        **more,
    )


def clean_out_dir(settings: RunSettings) -> Path:
    """The results directory, without the parts of an earlier run (they would be merged in)."""
    out_dir = Path(settings.out) if settings.out else default_out_dir()
    mkdir_private(out_dir)
    for old in [*out_dir.glob("results*.parquet"), *out_dir.glob("histograms*.msgpack")]:
        old.unlink()
    return out_dir


def sum_progress(latest: dict[int, Progress], start: float) -> Progress:
    ps = list(latest.values())
    return Progress(
        elapsed_s=time.monotonic() - start,
        scheduled_s=max(p.scheduled_s for p in ps),
        planned=None if any(p.planned is None for p in ps) else sum(p.planned or 0 for p in ps),
        planned_approx=any(p.planned_approx for p in ps),
        planned_end_s=max((p.planned_end_s or 0.0 for p in ps), default=None)
        if all(p.planned_end_s is not None for p in ps)
        else None,
        sent=sum(p.sent for p in ps),
        ok=sum(p.ok for p in ps),
        expected=sum(p.expected for p in ps),
        failed=sum(p.failed for p in ps),
        in_flight=sum(p.in_flight for p in ps),
        rate=sum(p.rate for p in ps),
        p99_ms=max((p.p99_ms for p in ps if p.p99_ms is not None), default=None),
        lag_p99_ms=max((p.lag_p99_ms for p in ps if p.lag_p99_ms is not None), default=None),
        behind_s=max(p.behind_s for p in ps),
        scheduled=None
        if any(p.scheduled is None for p in ps)
        else sum(p.scheduled or 0 for p in ps),
        sender_wait_s=summed(p.sender_wait_s for p in ps),
        throttled_s=most(p.throttled_s for p in ps),
    )


def _achieved(runs: Any, sent: int) -> float | None:
    """All workers' sends over the longest worker's sending span (they share a start)."""
    spans = [
        r["counts"]["sent"] / r["achieved_rate"]
        for r in runs
        if r.get("achieved_rate") and r["counts"].get("sent")
    ]
    return sent / max(spans) if spans else None


def merged_machine(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The workers' records of their machine as one, where they ran on one machine (the local
    backend; Ray's may not): on several, each worker's is in its run only."""
    if len({r.get("host") for r in runs}) != 1:
        return None
    return merged_use([r["machine"] for r in runs if r.get("machine")])


def merge(
    out_dir: Path,
    settings: RunSettings,
    exits: list[int | None],
    results: dict[int, tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]],
    latest: dict[int, Progress],
    interrupted: bool,
    backend: str,
    extra: dict[str, Any] | None = None,
) -> RunSummary:
    """Merge the workers' parts into the run: histograms, counts, one run.json."""
    metrics = Metrics(run_start_ns=settings.start_wall_ns or 0)
    for f in sorted(out_dir.glob("histograms-w*.msgpack")):
        metrics.add(Metrics.decode(f.read_bytes()))
    runs = {k: r[0] for k, r in results.items() if r[0] is not None}
    per_worker = []
    failures = []
    for k, code in enumerate(exits):
        run = runs.get(k)
        err = results.get(k, (None, None, None))[2]
        sent = run["counts"]["sent"] if run else (latest[k].sent if k in latest else 0)
        per_worker.append(
            {
                "index": k,
                "exitcode": code,
                "sent": sent,
                "error": err,
                "host": run.get("host") if run else None,
                "machine": run.get("machine") if run else None,
            }
        )
        if run is None:
            failures.append(
                f"worker {k} died (exit code {code}) after sending about {sent} requests"
                + (f": {err}" if err else "")
            )
    base = dict(runs[min(runs)]) if runs else {"streams": {}, "mode": None}
    counts: dict[str, Any] = dict(base.get("counts", {}))
    for key in SUM_COUNTS:
        counts[key] = sum(r["counts"].get(key, 0) or 0 for r in runs.values())
    unsent: dict[str, int] = {}
    for r in runs.values():
        add_counts(unsent, r["counts"].get("unsent") or {})
    counts["unsent"] = unsent
    counts["unsent_counted"] = all(r["counts"].get("unsent_counted", True) for r in runs.values())

    def total(key: str) -> float | None:
        vals = [float(r[key]) for r in runs.values() if r.get(key) is not None]
        return sum(vals) if vals else None

    def most(key: str) -> float | None:
        vals = [float(r[key]) for r in runs.values() if r.get(key) is not None]
        return max(vals) if vals else None

    run_doc = {
        **base,
        "start_ns": settings.start_wall_ns,
        "duration_s": most("duration_s"),
        "scheduled_s": most("scheduled_s"),
        "max_lag_ms": most("max_lag_ms"),
        "scheduled_rate": total("scheduled_rate"),
        "achieved_rate": _achieved(runs.values(), counts["sent"]),
        "counts": counts,
        "settings": asdict(replace(settings, start_wall_ns=None)),
        "interrupted": interrupted or any(r.get("interrupted") for r in runs.values()),
        "connections": {
            k: sum((r.get("connections") or {}).get(k) or 0 for r in runs.values())
            for k in ("connects", "resends", "warmed")
        },
        "machine": merged_machine(list(runs.values())),
        "workers": {"count": len(exits), "backend": backend, "per_worker": per_worker},
        **(extra or {}),
    }
    if failures:
        run_doc["worker_failures"] = failures
    write_run_json(out_dir, run_doc)
    seal_private(out_dir)
    stats = DispatchStats(sent=counts["sent"], unsent=unsent)
    return RunSummary(out_dir, metrics, run_doc, stats, bool(run_doc["interrupted"]))
