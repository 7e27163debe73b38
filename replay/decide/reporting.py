"""What a finished run prints and `loadtape report` writes: the report of a results directory
in a format, with the SLO gates' rows when gates were given."""

from __future__ import annotations

from typing import Any

from replay.measure.groups import add_counts

from .report import build, render
from .slo import evaluate

CLIENT_HINT = (
    "this machine ran out of file descriptors or local ports (the rows' error_message says "
    "which): raise ulimit -n or lower --max-in-flight"
)
HINTS = (  # an error kind's prefix -> what to check
    ("client", CLIENT_HINT),
    ("connect", "is the target up, and is --target right?"),
    ("interrupted", "the run was stopped before any answer came back"),
    ("dns", "is the target's host name right?"),
    ("tls", "does the target speak TLS as --target says (--insecure for a self-signed one)?"),
    ("timeout", "the target is too slow for --timeout"),
    (
        "http_401",
        "the target wants credentials: recorded ones are redacted and not sent; "
        "set one with --header 'Authorization: Bearer ${KEY}'",
    ),
    ("http_403", "the target refused the credentials (--header sets them)"),
    ("http_404", "the target has no such path: does --target need a base path?"),
    ("http_429", "the target is rate-limiting: a lower --speed or --rate"),
    ("http_5", "the target is failing"),
)


def no_success(run: dict[str, Any], metrics: Any) -> str | None:
    """A one-line cause when a run sent requests and none succeeded (None otherwise): the
    error kinds by count and what to check for the commonest."""
    counts = run.get("counts") or {}
    planned, sent = counts.get("planned", 0), counts.get("sent", 0)
    if planned == 0 or counts.get("ok", 0) or counts.get("expected", 0):
        return None
    if sent == 0:
        unsent = ", ".join(f"{k} x{v}" for k, v in sorted((counts.get("unsent") or {}).items()))
        return f"no request was sent ({unsent or 'the run ended first'})"
    top = sorted(_errors(metrics).items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ", ".join(f"{k} x{n}" for k, n in top[:4]) or f"{sent} failed"
    hint = next((h for p, h in HINTS if top and top[0][0].startswith(p)), "")
    return f"every request failed: {listed}" + (f" - {hint}" if hint else "")


def _errors(metrics: Any) -> dict[str, int]:
    errors: dict[str, int] = {}
    for st in metrics.stats.values():
        add_counts(errors, st.errors)
    return errors


def client_failed(metrics: Any) -> str | None:
    """A one-line cause when requests failed on this machine rather than at the target (error
    kind `client`): then the run measured the load generator, whatever else it shows."""
    n = _errors(metrics).get("client", 0)
    return f"{n} requests failed on this machine, not at the target - {CLIENT_HINT}" if n else None


def make(
    results: Any, fmt: str = "text", by: str | None = None, gates: list[Any] | None = None
) -> tuple[str, list[dict[str, Any]] | None]:
    """A results directory (read back, or a finished run's) -> the report text and SLO rows."""
    report = build(results, by)
    rows = evaluate(gates, results.metrics) if gates else None
    return render(report, fmt, results.metrics, rows), rows
