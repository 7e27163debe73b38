"""What a finished run prints and `loadtape report` writes: the report of a results directory
in a format, with the SLO gates' rows when gates were given."""

from __future__ import annotations

from typing import Any

from .report import build, render
from .slo import evaluate


def make(
    results: Any, fmt: str = "text", by: str | None = None, gates: list[Any] | None = None
) -> tuple[str, list[dict[str, Any]] | None]:
    """A results directory (read back, or a finished run's) -> the report text and SLO rows."""
    report = build(results, by)
    rows = evaluate(gates, results.metrics) if gates else None
    return render(report, fmt, results.metrics, rows), rows
