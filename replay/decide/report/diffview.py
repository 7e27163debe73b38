"""Rendering of `loadtape diff` (text, markdown, json)."""

from __future__ import annotations

import json
from typing import Any


def _pct(d: dict[str, float] | None, fmt: str = "{:.2f}") -> str:
    if not d:
        return "-"
    return f"p50 {fmt.format(d['p50'])} (p10 {fmt.format(d['p10'])}, p90 {fmt.format(d['p90'])})"


def _lines(c: dict[str, Any]) -> list[tuple[str, str]]:
    st, fr, tk, bd, sm = c["status"], c["finish_reason"], c["tokens"], c["body"], c["stream"]
    trans = ", ".join(f"{k} {v}" for k, v in list(st["transitions"].items())[:6])
    v, an = c["verdicts"], c["answer"]
    how = ", ".join(f"{k} {n}" for k, n in c["differences"].items())
    out = [
        ("pairs", str(c["pairs"])),
        (
            "verdict",
            f"{v['identical']} identical, {v['equivalent']} equivalent, "
            f"{v['different']} different" + (f" ({how})" if how else ""),
        ),
        ("API surfaces", ", ".join(f"{k} {n}" for k, n in c["apis"].items())),
        ("answers", f"{an['compared']} compared, {an['equal']} equal (text, tool calls)"),
        (
            "status",
            f"{st['same']} same, {st['different']} different" + (f" ({trans})" if trans else ""),
        ),
        (
            "finish_reason",
            f"{fr['compared']} compared, {fr['different']} different"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in fr['transitions'].items())})"
                if fr["different"]
                else ""
            ),
        ),
        (
            "completion tokens",
            f"{tk['compared']} compared, {tk['equal']} equal"
            + (
                f"; mean delta {tk['mean_delta']:+.2f}, |delta| {_pct(tk['abs_delta'], '{:.0f}')}"
                if tk["compared"]
                else ""
            ),
        ),
        (
            "body bytes (plain responses)",
            f"{bd['equal']} equal, {bd['different']} different, "
            f"{bd['not_comparable']} not comparable",
        ),
        ("stream: TTFT ratio", f"{_pct(sm['ttft_ratio'])} over {sm['compared']} streams"),
        ("stream: output events delta", _pct(sm["event_delta"], "{:+.0f}")),
        ("stream: event gap ratio", _pct(sm["gap_ratio"])),
    ]
    return out


def render_text(doc: dict[str, Any]) -> str:
    lines = [
        f"diff of {doc['results']}" + (f" (capture {doc['capture']})" if doc["capture"] else "")
    ]
    if doc["note"]:
        lines.append(f"  note: {doc['note']}")
    lines.append("  (ratios: right side / left side; deltas: right - left)")
    for c in doc["comparisons"]:
        lines += ["", f"== {c['name']}"]
        lines += [f"  {k:<29}{v}" for k, v in _lines(c)]
        for ex in c["examples"]:
            lines.append(f"  e.g. seq {ex['seq']}: " + "; ".join(ex["differences"]))
    return "\n".join(lines) + "\n"


def render_markdown(doc: dict[str, Any]) -> str:
    lines = ["## loadtape diff", ""]
    if doc["note"]:
        lines += [f"_{doc['note']}_", ""]
    for c in doc["comparisons"]:
        lines += [f"### {c['name']}", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _lines(c)]
        lines.append("")
    return "\n".join(lines) + "\n"


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt == "markdown":
        return render_markdown(doc)
    return render_text(doc)
