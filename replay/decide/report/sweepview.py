"""Rendering of a sweep: a table per level, the ceiling and the knee; HTML with throughput and
latency percentiles plotted against load."""

from __future__ import annotations

import json
from typing import Any

from . import html as h
from . import plots
from .text import fmt_ms, fmt_pct, fmt_rate

UNITS = {"concurrency": "concurrency", "speeds": "speed (x)", "rates": "rate (req/s)"}
COLUMNS = ("level", "n", "req/s", "goodput", "err", "p50", "p95", "p99", "ttft p99", "lag p99")


def level_row(f: dict[str, Any]) -> list[str]:
    return [
        f"{f['level']:g}",
        str(f["count"]),
        fmt_rate(f["throughput"]),
        fmt_rate(f["goodput"]),
        fmt_pct(f["error_rate"]),
        fmt_ms(f["latency_p50"]),
        fmt_ms(f["latency_p95"]),
        fmt_ms(f["latency_p99"]),
        fmt_ms(f["ttft_p99"]),
        fmt_ms(f["lag_p99"]),
    ]


def verdicts(doc: dict[str, Any]) -> list[str]:
    unit = UNITS[doc["kind"]]
    out = []
    c = doc["ceiling"]
    if c:
        line = (
            f"throughput ceiling: {c['throughput']:.1f} ok req/s (goodput) at {unit} {c['level']:g}"
        )
        if c.get("peak_level", c["level"]) != c["level"]:
            line += f" (highest {c['peak']:.1f} ok req/s, at {unit} {c['peak_level']:g})"
        out.append(line + f"; no higher level gained more than {doc['tolerance'] * 100:g}%")
    else:
        mx = doc["max_throughput"]
        out.append(
            "throughput ceiling: not reached (still rising at the last level"
            + (f"; highest {mx:.1f} req/s)" if mx else ")")
        )
    if doc["p99_limit_ms"] is not None:
        k = doc["knee"]
        out.append(
            f"knee: p99 crosses {fmt_ms(doc['p99_limit_ms'])} ms at {unit} {k:g}"
            if k is not None
            else f"knee: p99 stays under {fmt_ms(doc['p99_limit_ms'])} ms at every level"
        )
    if doc.get("slo"):
        k = doc.get("slo_knee")
        out.append(
            f"SLO: first fails at {unit} {k['level']:g}: " + "; ".join(k["failed"])
            if k
            else f"SLO: {', '.join(doc['slo'])} pass at every level"
        )
    if doc["stopped"]:
        out.append(f"stopped early: {doc['stopped']}")
    out += [
        f"at {unit} {f['level']:g}: {f['machine']}"
        for f in doc.get("levels", ())
        if f.get("machine")
    ]
    return out


def render_text(doc: dict[str, Any]) -> str:
    lines = [f"sweep over {UNITS[doc['kind']]}: {len(doc['levels'])} levels (ms, per second)"]
    widths = [8, 7, 9, 9, 8, 9, 9, 9, 10, 9]
    lines.append("  " + "".join(f"{c:>{w}}" for c, w in zip(COLUMNS, widths, strict=True)))
    for f in doc["levels"]:
        cells = level_row(f)
        lines.append("  " + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    lines += ["", *verdicts(doc)]
    return "\n".join(lines) + "\n"


def render_markdown(doc: dict[str, Any]) -> str:
    lines = ["## loadtape sweep", "", f"Over {UNITS[doc['kind']]} (ms, per second).", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---:|" * len(COLUMNS))
    lines += ["| " + " | ".join(level_row(f)) + " |" for f in doc["levels"]]
    lines += [""] + [f"- {v}" for v in verdicts(doc)]
    return "\n".join(lines) + "\n"


def render_html(doc: dict[str, Any]) -> str:
    xs = [f["level"] for f in doc["levels"]]
    unit = UNITS[doc["kind"]]
    logx = len(xs) > 2 and xs[-1] / max(xs[0], 1e-9) >= 20
    thr = plots.line_plot(
        [
            ("throughput", xs, [f["throughput"] for f in doc["levels"]]),
            ("goodput", xs, [f["goodput"] for f in doc["levels"]]),
        ],
        "throughput against load",
        unit,
        "req/s",
        logx=logx,
        marker="o",
    )
    lat = plots.line_plot(
        [(p, xs, [f[f"latency_{p}"] for f in doc["levels"]]) for p in ("p50", "p95", "p99")],
        "latency against load",
        unit,
        "ms",
        logx=logx,
        marker="o",
        hline=doc["p99_limit_ms"],
    )
    err = plots.line_plot(
        [("error rate", xs, [100 * (f["error_rate"] or 0) for f in doc["levels"]])],
        "error rate against load",
        unit,
        "% failed",
        logx=logx,
        marker="o",
    )
    parts = ["<h1>loadtape sweep</h1>"]
    parts += [f"<p><b>{h.esc(v)}</b></p>" for v in verdicts(doc)]
    parts.append(plots.plots_div([thr, lat, err]))
    parts.append("<h2>Levels</h2>")
    parts.append(h.table(list(COLUMNS), [[h.esc(c) for c in level_row(f)] for f in doc["levels"]]))
    parts.append(
        '<p class="note">Each level has its own results directory: '
        + ", ".join(f"<code>{h.esc(f['dir'])}</code>" for f in doc["levels"])
        + " (loadtape report DIR).</p>"
    )
    return h.page("loadtape sweep", "\n".join(parts))


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt == "markdown":
        return render_markdown(doc)
    if fmt == "html":
        return render_html(doc)
    return render_text(doc)
