"""The end-of-run summary: one table, groups and a total, from the metrics."""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from captures import hdr

from .metrics import GroupStats, Metrics


def _ms(h: HdrHistogram, pct: float) -> str:
    if not h.total_count:
        return "-"
    v = hdr.value_at_percentile(h, pct) / 1000
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _row(label: str, hs: dict[str, HdrHistogram], st: GroupStats) -> list[str]:
    span_s = ((st.last_end_ns or 0) - (st.first_intended_ns or 0)) / 1e9
    tok_s = st.completion_tokens / span_s if span_s > 0 and st.completion_tokens else 0.0
    return [
        label,
        str(st.count),
        str(st.ok),
        str(st.expected),
        str(st.failed),
        _ms(hs["latency"], 50),
        _ms(hs["latency"], 99),
        _ms(hs["latency"], 100),
        _ms(hs["service"], 99),
        _ms(hs["ttft"], 50),
        _ms(hs["ttft"], 99),
        _ms(hs["itl"], 50),
        _ms(hs["lag"], 99),
        f"{tok_s:.0f}" if tok_s else "-",
    ]


def render(metrics: Metrics, run: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)
    c = run.get("counts", {})
    sent = c.get("sent", 0)
    console.print(
        f"[bold]{sent}[/] requests in {run.get('duration_s', 0):.2f} s "
        f"({run.get('mode', 'open')} loop): achieved "
        f"{(run.get('achieved_rate') or 0):.1f} req/s"
        + (f", scheduled {run['scheduled_rate']:.1f} req/s" if run.get("scheduled_rate") else "")
        + f"; ok {c.get('ok', 0)}, expected {c.get('expected', 0)}, failed {c.get('failed', 0)}"
    )
    notes = []
    if c.get("unsent"):
        notes.append("unsent: " + ", ".join(f"{k} {v}" for k, v in c["unsent"].items()))
    if c.get("skipped"):
        notes.append("skipped: " + ", ".join(f"{k} {v}" for k, v in c["skipped"].items()))
    if c.get("redacted_values_dropped"):
        notes.append(f"redacted values not sent: {c['redacted_values_dropped']}")
    if metrics.out_of_range:
        notes.append(
            "out of histogram range: "
            + ", ".join(f"{k} {v}" for k, v in metrics.out_of_range.items())
        )
    for n in notes:
        console.print(f"  {n}")
    table = Table(title=None, show_lines=False, pad_edge=False)
    cols = (
        "stream [target] endpoint model class",
        "n",
        "ok",
        "exp",
        "fail",
        "lat p50",
        "lat p99",
        "lat max",
        "svc p99",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "lag p99",
        "tok/s",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == cols[0] else "right")
    for key in sorted(metrics.hists):
        hs, st = metrics.merged([key])
        label = [key[0], *([key[1]] if key[1] else []), *(x or "-" for x in key[2:])]
        table.add_row(*_row(" ".join(label), hs, st))
    if len(metrics.hists) > 1:
        hs, st = metrics.total()
        table.add_row(*_row("all", hs, st), style="bold")
    console.print(table)
    console.print(
        "  (times in ms; latency from the intended send time, service from the actual send)"
    )
    errors: dict[str, int] = {}
    for st in metrics.stats.values():
        for k, v in st.errors.items():
            errors[k] = errors.get(k, 0) + v
    if errors:
        console.print("  failures: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
