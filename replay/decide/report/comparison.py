"""Rendering of `loadtape compare` (text, markdown, json, html with both runs overlaid)."""

from __future__ import annotations

import json
from typing import Any

from replay.measure.metrics import METRICS
from replay.measure.resultsdir import Results

from . import html as h
from . import plots
from .model import groups
from .text import fmt_ms

OVERLAY_METRICS = ("latency", "service", "ttft", "itl")


def _value(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.2f}%" if metric == "error_rate" else fmt_ms(v)


def _change(r: dict[str, Any]) -> str:
    if r["metric"] == "error_rate":
        return f"{r['change'] * 100:+.2f}pp"
    return "-" if r["change"] is None else f"{r['change'] * 100:+.1f}%"


def _interval(r: dict[str, Any]) -> str:
    if "note" in r:
        return "-"
    if "ci_ms" in r:
        lo, hi = r["ci_ms"]
        return f"[{lo:+.3g}, {hi:+.3g}] ms"
    if "ci" in r:
        lo, hi = r["ci"]
        return f"[{lo * 100:+.2f}, {hi * 100:+.2f}] pp"
    return ""


def _verdict(r: dict[str, Any]) -> str:
    if "regression" not in r:
        return ""
    if "note" in r:
        return str(r["note"])
    return "REGRESSION" if r["regression"] else "ok"


def rows(doc: dict[str, Any]) -> list[tuple[str, list[list[str]]]]:
    out: list[tuple[str, list[list[str]]]] = []
    for g in doc["groups"]:
        if "only_in" in g:
            out.append((f"{g['label']} (only in the {g['only_in']} run)", []))
            continue
        table = [
            [
                r["metric"],
                _value(r["metric"], r["baseline"]),
                _value(r["metric"], r["current"]),
                _change(r),
                r.get("rule", ""),
                _interval(r),
                _verdict(r),
            ]
            for r in g["metrics"]
        ]
        n = g["count"]
        out.append((f"{g['label']} (n {n['baseline']} -> {n['current']})", table))
    return out


HEADER = ["metric", "baseline", "current", "change", "rule", "95% CI of the difference", "verdict"]


def headline(doc: dict[str, Any]) -> str:
    n = len(doc["regressions"])
    return f"compare {doc['baseline']} (baseline) -> {doc['current']} (current): " + (
        f"{n} regression{'s' if n != 1 else ''}" if n else "no regression"
    )


def machine_lines(doc: dict[str, Any]) -> list[str]:
    """Each run's machine, where its report has a word on it: a change may be the machine's."""
    notes = doc.get("machine_notes") or {}
    return [f"{which} run: {notes[which]}" for which in ("baseline", "current") if notes.get(which)]


def render_text(doc: dict[str, Any]) -> str:
    lines = [headline(doc), "  (ms; a regression exceeds its rule and its interval is above 0)"]
    lines += [f"  {line}" for line in machine_lines(doc)]
    widths = [14, 10, 10, 9, 18, 26, 10]
    for title, table in rows(doc):
        lines += ["", f"== {title}"]
        if table:
            lines.append(
                "  " + "".join(f"{c:<{w}}" for c, w in zip(HEADER, widths, strict=True)).rstrip()
            )
            for r in table:
                lines.append(
                    "  " + "".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip()
                )
    if doc["regressions"]:
        lines += ["", "regressions: " + "; ".join(doc["regressions"])]
    return "\n".join(lines) + "\n"


def render_markdown(doc: dict[str, Any]) -> str:
    lines = ["## loadtape compare", "", headline(doc), ""]
    lines += [f"> {line}\n" for line in machine_lines(doc)]
    for title, table in rows(doc):
        lines += [f"### {title}", ""]
        if table:
            lines.append("| " + " | ".join(HEADER) + " |")
            lines.append("|---|" + "---:|" * 5 + "---|")
            for r in table:
                if r[-1] == "REGRESSION":
                    r = [*r[:-1], "❌ **REGRESSION**"]
                lines.append("| " + " | ".join(r) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def render_html(doc: dict[str, Any], base: Results, cur: Results) -> str:
    dims = tuple(doc["by"])
    base_keys, cur_keys = groups(base.metrics, dims), groups(cur.metrics, dims)

    parts = [f"<h1>loadtape compare</h1><p>{h.esc(headline(doc))}</p>"]
    n = len(doc["regressions"])
    verdict = f"{n} regression{'s' if n != 1 else ''}" if n else "no regression"
    parts.append(f'<h2 class="{"fail" if n else "pass"}">Verdict: {verdict}</h2>')
    if n:
        parts.append("<ul>" + "".join(f"<li>{h.esc(r)}</li>" for r in doc["regressions"]) + "</ul>")
    parts += [f'<p class="note">{h.esc(line)}</p>' for line in machine_lines(doc)]
    parts.append(
        '<p class="note">A regression exceeds its rule and the 95% bootstrap interval of the '
        "difference is above zero (noise does not fail a build); changes under "
        f"{doc.get('min_change_ms', 0):g} ms never are. Groups with a regression come first, "
        "groups nothing could be judged on last.</p>"
    )
    for (title, table), g in zip(rows(doc), doc["groups"], strict=True):
        parts.append(f"<h2>{h.esc(title)}</h2>")
        if not table:
            continue
        cells = [
            [h.esc(c) if c != "REGRESSION" else '<span class="fail">REGRESSION</span>' for c in r]
            for r in table
        ]
        parts.append(h.table(HEADER, cells))
        key = tuple(g["key"][d] for d in dims)
        if key not in base_keys or key not in cur_keys:
            continue
        hb = base.metrics.merged(base_keys[key])[0]
        hc = cur.metrics.merged(cur_keys[key])[0]
        parts.append(
            plots.plots_div(
                plots.spectrum_plot([("baseline", hb[m]), ("current", hc[m])], f"{m} (ms)")
                for m in OVERLAY_METRICS
                if m in METRICS
            )
        )
    parts.append("<h2>Runs</h2>")
    parts.append(
        h.table(
            ["", "baseline", "current"],
            [
                [
                    k,
                    h.esc(json.dumps(base.run.get(k), sort_keys=True)),
                    h.esc(json.dumps(cur.run.get(k), sort_keys=True)),
                ]
                for k in (
                    "start",
                    "duration_s",
                    "mode",
                    "target",
                    "targets",
                    "counts",
                    "achieved_rate",
                )
            ],
            "meta",
        )
    )
    return h.page("loadtape compare", "\n".join(parts))


def render(doc: dict[str, Any], fmt: str, base: Results, cur: Results) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt == "markdown":
        return render_markdown(doc)
    if fmt == "html":
        return render_html(doc, base, cur)
    return render_text(doc)
