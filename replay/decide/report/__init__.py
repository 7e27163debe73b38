"""Reports from a results directory: the data model (model.py), text and markdown (text.py),
CSV (tables.py), HdrHistogram files (hdrfiles.py), self-contained HTML with plots (html.py)."""

from __future__ import annotations

import json
from typing import Any

from replay.measure.metrics import Metrics

from .model import build, parse_by

FORMATS = ("text", "json", "markdown", "html", "csv")

__all__ = ["FORMATS", "build", "parse_by", "render"]


def render(
    report: dict[str, Any],
    fmt: str,
    metrics: Metrics,
    slo: list[dict[str, Any]] | None = None,
) -> str:
    if fmt == "text":
        from .text import render_text

        return render_text(report, slo)
    if fmt == "markdown":
        from .text import render_markdown

        return render_markdown(report, slo)
    if fmt == "json":
        doc = dict(report)
        if slo is not None:
            doc["slo"] = slo
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        from .tables import render_csv

        return render_csv(report)
    if fmt == "html":
        from .html import render_html

        return render_html(report, metrics, slo)
    raise ValueError(f"unknown report format {fmt!r}")
