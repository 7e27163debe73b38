"""The report as CSV: one row per group and one for the whole run, every figure a column
(percentiles as `<metric>_<stat>_ms`), for a spreadsheet or a dashboard's import."""

from __future__ import annotations

import csv
import io
from typing import Any

from replay.measure.metrics import METRICS

from .model import STAT_NAMES

COUNTS = (
    "count",
    "ok",
    "expected",
    "failed",
    "error_rate",
    "scheduled_rate",
    "throughput",
    "goodput",
    "tokens_per_s",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "bytes_in",
    "duration_s",
)


def _stat_column(metric: str, stat: str) -> str:
    return f"{metric}_{stat.replace('.', '')}_ms"


def render_csv(report: dict[str, Any]) -> str:
    dims = list(report["by"])
    stats = [*STAT_NAMES]
    header = ["group", *dims, *COUNTS]
    header += [_stat_column(m, s) for m in METRICS for s in stats]
    header += [f"{m}_count" for m in METRICS]
    rows = [*report["groups"], {**report["total"], "label": "all", "key": {}}]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for g in rows:
        ms = g["metrics"]
        w.writerow(
            [
                g["label"],
                *(g["key"].get(d, "") for d in dims),
                *("" if g.get(c) is None else g[c] for c in COUNTS),
                *("" if ms[m][s] is None else ms[m][s] for m in METRICS for s in stats),
                *(ms[m]["count"] for m in METRICS),
            ]
        )
    return buf.getvalue()
