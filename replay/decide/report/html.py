"""The HTML report: one self-contained file (inline SVG plots, inline CSS, no script, no network).

Plots are drawn with matplotlib (the Agg-free SVG backend, text kept as text so pages stay
small and searchable): the percentile spectrum of each timing metric on HdrHistogram's log axis
(x = 1/(1-p), labelled 90% 99% 99.9% ...), latency / throughput / error rate over the run, TTFT
and inter-token latency distributions, plus the tables of the text report and the run's metadata.
`page()` and the plot helpers are shared with `compare` and `sweep`.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from captures import hdr
from replay.measure.metrics import METRICS, Metrics

from .model import RUN_KEYS, groups
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
max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
th{background:#f5f6f8}
.pass{color:#116329;font-weight:600} .fail{color:#b3261e;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plot{flex:0 0 auto}
.meta td{text-align:left} .note{color:#555;font-size:13px}
code{background:#f5f6f8;padding:1px 4px;border-radius:3px}
"""

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
SPECTRUM_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def esc(x: object) -> str:
    return html.escape(str(x))


# -- figures -------------------------------------------------------------------------------------
def _figure(w: float = 6.4, h: float = 3.4) -> Any:
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text
    matplotlib.rcParams["svg.hashsalt"] = "loadtape"  # stable ids: same input, same file
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    return fig


def svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "loadtape"})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline SVG


def spectrum_points(h: HdrHistogram) -> tuple[list[float], list[float]]:
    """(x = 1/(1-p), value ms) along HdrHistogram's percentile iterator."""
    xs, ys = [], []
    for it in h.get_percentile_iterator(5):
        p = it.percentile_level_iterated_to / 100
        if p >= 1.0:
            p = 1 - 1 / (10 * max(h.total_count, 1))  # the max: one step past the last quantile
        xs.append(1 / (1 - p))
        ys.append(it.value_iterated_to / 1000)
    return xs, ys


def spectrum_plot(series: Sequence[tuple[str, HdrHistogram]], title: str) -> str | None:
    series = [(label, h) for label, h in series if h.total_count]
    if not series:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    top = 1.0
    for i, (label, h) in enumerate(series):
        xs, ys = spectrum_points(h)
        ax.plot(xs, ys, label=label, color=PALETTE[i % len(PALETTE)], lw=1.4)
        top = max(top, max(xs))
    ax.set_xscale("log")
    ticks = [t for t in SPECTRUM_TICKS if 1 / (1 - t / 100) <= top * 1.01]
    ax.set_xticks([1 / (1 - t / 100) for t in ticks])
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(1, max(top, 10))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("percentile")
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="lower right")
    return svg(fig)


def distribution_plot(series: Sequence[tuple[str, HdrHistogram]], title: str) -> str | None:
    """Share of values per log-spaced bucket (ms), one step line per series."""
    series = [(label, h) for label, h in series if h.total_count]
    if not series:
        return None
    lo = min(max(hdr.value_at_percentile(h, 0), 1) for _, h in series)
    hi = max(hdr.value_at_percentile(h, 100) for _, h in series)
    edges_n = 40
    a, b = math.log10(lo), math.log10(max(hi, lo * 1.01))
    edges = [10 ** (a + (b - a) * i / edges_n) for i in range(edges_n + 1)]
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, h) in enumerate(series):
        counts = [0] * edges_n
        for it in h.get_recorded_iterator():
            v = it.value_iterated_to
            j = min(max(int((math.log10(max(v, lo)) - a) / (b - a or 1) * edges_n), 0), edges_n - 1)
            counts[j] += it.count_at_value_iterated_to
        total = sum(counts) or 1
        ax.stairs(
            [c / total for c in counts],
            [e / 1000 for e in edges],
            label=label,
            color=PALETTE[i % len(PALETTE)],
            lw=1.4,
        )
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("share of values")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return svg(fig)


def line_plot(
    lines: Sequence[tuple[str, Sequence[float], Sequence[float | None]]],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    logx: bool = False,
    hline: float | None = None,
    marker: str | None = None,
    styles: Sequence[tuple[int, str]] | None = None,
) -> str | None:
    """styles: per line (palette index, line style), e.g. p50 solid and p99 dashed alike."""
    if not any(len(x) for _, x, _ in lines):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, xs, ys) in enumerate(lines):
        color, ls = styles[i] if styles else (i, "-")
        ax.plot(
            list(xs),
            [math.nan if y is None else y for y in ys],
            label=label,
            color=PALETTE[color % len(PALETTE)],
            ls=ls,
            lw=1.4,
            marker=marker,
            ms=4,
        )
    if hline is not None:
        ax.axhline(hline, color="#b3261e", ls="--", lw=1, label="limit")
    if logx:
        ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if len(lines) > 1 or hline is not None:
        ax.legend(fontsize=7)
    return svg(fig)


def plots_div(svgs: Iterable[str | None]) -> str:
    items = [f'<div class="plot">{s}</div>' for s in svgs if s]
    return f'<div class="plots">{"".join(items)}</div>' if items else ""


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
    return table(SUMMARY_HEADER, rows)


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


def over_time_plots(over: dict[str, list[dict[str, Any]]]) -> list[str | None]:
    lat, thr, err = [], [], []
    styles: list[tuple[int, str]] = []
    for i, (series, rows) in enumerate(over.items()):
        styles += [(i, "-"), (i, "--")]
        ts = [r["t"] for r in rows]
        lat.append((f"{series} p50", ts, [r["latency_p50"] for r in rows]))
        lat.append((f"{series} p99", ts, [r["latency_p99"] for r in rows]))
        thr.append((series, ts, [float(r["ok"] + r["expected"] + r["failed"]) for r in rows]))
        err.append(
            (
                series,
                ts,
                [
                    100 * r["failed"] / n if (n := r["ok"] + r["expected"] + r["failed"]) else None
                    for r in rows
                ],
            )
        )
    return [
        line_plot(lat, "latency over time", "s (by completion)", "ms", styles=styles),
        line_plot(thr, "throughput over time", "s (by completion)", "responses/s"),
        line_plot(err, "error rate over time", "s (by completion)", "% failed"),
    ]
