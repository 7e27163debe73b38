"""The HTML report: one self-contained file (inline SVG plots from plots.py, inline CSS, no
script, no network), laid out to fit a 1280 px window: the summary and SLO tables, the
percentile spectrum of each timing metric, latency / TTFT / inter-token latency, throughput,
sent against scheduled, in flight and errors over the run, TTFT and inter-token distributions,
percentiles per group and the run's metadata. `page()` and the tables are shared with
`compare` and `sweep`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from replay.measure.metrics import METRICS, Metrics

from .model import RUN_KEYS, groups
from .plots import distribution_plot, over_time_plots, plots_div, spectrum_plot
from .text import (
    STATS,
    SUMMARY_HEADER,
    headline,
    notes,
    percentile_rows,
    shown_metrics,
    summary_row,
    with_total,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;
max-width:1400px;overflow-wrap:anywhere}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0;max-width:100%}
td,th{padding:3px 7px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left;white-space:normal;min-width:9em}
table.summary{font-size:12px} table.summary td,table.summary th{padding:3px 5px}
table.summary th{white-space:normal;vertical-align:bottom}
th{background:#f5f6f8}
.pass{color:#116329;font-weight:600} .fail{color:#b3261e;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plot{flex:0 0 auto}
.meta td{text-align:left;white-space:normal} .note{color:#555;font-size:13px}
code{background:#f5f6f8;padding:1px 4px;border-radius:3px}
.meta code{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-all}
.plot svg{max-width:100%;height:auto}
"""


def esc(x: object) -> str:
    return html.escape(str(x))


# -- tables --------------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def slo_table(slo: list[dict[str, Any]]) -> str:
    rows = [
        [
            f"<code>{esc(r['expr'])}</code>",
            '<span class="pass">pass</span>' if r["pass"] else '<span class="fail">FAIL</span>',
            esc(r["measured_text"]),
        ]
        for r in slo
    ]
    return table(["gate", "result", "measured"], rows)


def summary_table(groups_: list[dict[str, Any]]) -> str:
    rows = [[esc(c) for c in summary_row(g)] for g in groups_]
    return table(SUMMARY_HEADER, rows, "summary")


def percentile_table(g: dict[str, Any]) -> str:
    return table(["ms", "n", *STATS], percentile_rows(g))


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def meta_table(run: dict[str, Any]) -> str:
    keep = (*(k for k in RUN_KEYS if k not in ("loadtape_version", "start_ns")), "loadtape_version")
    rows = []
    for k in keep:
        v = run.get(k)
        if v in (None, {}, []):
            continue
        text = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
        rows.append([esc(k), f"<code>{esc(text)}</code>"])
    return table(["run", ""], rows, "meta")


# -- the report ----------------------------------------------------------------------------------
def render_html(
    report: dict[str, Any], metrics: Metrics, slo: list[dict[str, Any]] | None = None
) -> str:
    by = tuple(report["by"])
    grouped = groups(metrics, by)
    labels = short_labels(report["groups"])
    hists = {
        lab: metrics.merged(keys)[0] for lab, keys in zip(labels, grouped.values(), strict=True)
    }
    parts = [f"<h1>loadtape report</h1><p>{esc(headline(report))}</p>"]
    parts += [f'<p class="note">{esc(n)}</p>' for n in notes(report)]
    if slo:
        failed = sum(1 for r in slo if not r["pass"])
        parts.append(f"<h2>SLO: {len(slo) - failed} passed, {failed} failed</h2>")
        parts.append(slo_table(slo))
    all_groups = with_total(report)
    parts.append("<h2>Summary</h2>")
    parts.append(summary_table(all_groups))
    parts.append(
        '<p class="note">ms; latency from the intended send time (no coordinated omission), '
        "service from the actual send, lag = actual - intended send time.</p>"
    )
    parts.append("<h2>Percentile spectrum</h2>")
    parts.append(
        plots_div(
            spectrum_plot([(lab, hs[m]) for lab, hs in hists.items()], f"{m} (ms)")
            for m in METRICS
            if m in shown_metrics(report["total"])
        )
    )
    parts.append("<h2>Over time</h2>")
    parts.append(plots_div(over_time_plots(report["over_time"])))
    parts.append("<h2>Token timing distributions</h2>")
    parts.append(
        plots_div(
            [
                distribution_plot([(lab, hs["ttft"]) for lab, hs in hists.items()], "TTFT"),
                distribution_plot([(lab, hs["itl"]) for lab, hs in hists.items()], "inter-token"),
            ]
        )
    )
    parts.append("<h2>Percentiles per group</h2>")
    for g in all_groups:
        parts.append(f"<h3>{esc(g['label'])}</h3>{percentile_table(g)}")
        if g["errors"]:
            errs = ", ".join(f"{k} {v}" for k, v in g["errors"].items())
            parts.append(f'<p class="note">failures: {esc(errs)}</p>')
    parts.append("<h2>Run</h2>")
    parts.append(meta_table(report["run"]))
    return page("loadtape report", "\n".join(parts))


def short_labels(groups_: list[dict[str, Any]]) -> list[str]:
    """Plot legends name only the dimensions that differ between groups."""
    keys = [g["key"] for g in groups_]
    vary = [d for d in (keys[0] if keys else {}) if len({k[d] for k in keys}) > 1]
    out = [
        " ".join(f"{d}={k[d]}" for d in vary if k[d]) or g["label"]
        for k, g in zip(keys, groups_, strict=True)
    ]
    return out if len(set(out)) == len(out) else [g["label"] for g in groups_]
