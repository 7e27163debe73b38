"""Text (vegeta-like, for a terminal or a log) and markdown (for a CI step summary) reports."""

from __future__ import annotations

from typing import Any

from replay.hostcpu import BUSY_SHARE, STEAL_SHARE, THROTTLED_S, WAIT_SHARE, shares
from replay.measure.metrics import METRICS

METRIC_TITLES = {
    "latency": "latency",
    "service": "service",
    "ttfb": "ttfb",
    "ttft": "ttft",
    "ttft_text": "ttft_text",
    "itl": "itl",
    "tpot": "tpot",
    "lag": "lag",
}
STATS = ("p50", "p90", "p95", "p99", "p99.9", "max", "mean")


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


SUMMARY_HEADER = (
    "group",
    "n",
    "ok",
    "exp",
    "fail",
    "err",
    "sched/s",
    "req/s",
    "goodput",
    "lat p50",
    "lat p95",
    "lat p99",
    "lat max",
    "ttft p50",
    "ttft p99",
    "itl p50",
    "tok/s",
)


def summary_row(g: dict[str, Any]) -> list[str]:
    """A group's row of the summary table (markdown and html), in SUMMARY_HEADER's order."""
    lat, ttft, itl = (g["metrics"][m] for m in ("latency", "ttft", "itl"))
    return [
        g["label"],
        str(g["count"]),
        str(g["ok"]),
        str(g["expected"]),
        str(g["failed"]),
        fmt_pct(g["error_rate"]),
        fmt_rate(g["scheduled_rate"]),
        fmt_rate(g["throughput"]),
        fmt_rate(g["goodput"]),
        fmt_ms(lat["p50"]),
        fmt_ms(lat["p95"]),
        fmt_ms(lat["p99"]),
        fmt_ms(lat["max"]),
        fmt_ms(ttft["p50"]),
        fmt_ms(ttft["p99"]),
        fmt_ms(itl["p50"]),
        fmt_rate(g["tokens_per_s"]),
    ]


def shown_metrics(g: dict[str, Any]) -> list[str]:
    """The timing metrics a group has values of; ttft_text only where it says something ttft
    does not (reasoning or tool calls came before the text)."""
    ms = g["metrics"]
    same = ms["ttft_text"] == ms["ttft"]
    return [m for m in METRICS if ms[m]["count"] and not (m == "ttft_text" and same)]


def percentile_rows(g: dict[str, Any]) -> list[list[str]]:
    """metric, n and STATS for each timing metric shown."""
    return [
        [m, str(g["metrics"][m]["count"]), *(fmt_ms(g["metrics"][m][s]) for s in STATS)]
        for m in shown_metrics(g)
    ]


def token_line(g: dict[str, Any]) -> str | None:
    """Tokens by kind, where any were reported."""
    kinds = (
        ("prompt", g["prompt_tokens"]),
        ("completion", g["completion_tokens"]),
        ("reasoning", g.get("reasoning_tokens") or 0),
        ("cached", g.get("cached_tokens") or 0),
    )
    shown = [f"{k} {v}" for k, v in kinds if v]
    return "  ".join(shown) if shown else None


def with_total(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The groups, then the "all" group (always: a reader looks for it, and with one group it
    is where the whole run's figures are whatever the grouping)."""
    groups = report["groups"]
    if any(g["label"] == "all" for g in groups):  # --by all: the one group is the total
        return list(groups)
    return [*groups, {**report["total"], "label": "all"}]


def headline(report: dict[str, Any]) -> str:
    run, t = report["run"], report["total"]
    c = run.get("counts") or {}
    sent = c.get("sent", t["count"])
    line = (
        f"{sent} requests in {run.get('duration_s') or 0:.2f} s "
        f"({run.get('mode') or 'open'} loop): "
        f"achieved {fmt_rate(run.get('achieved_rate'))} req/s"
    )
    # the "all" group's scheduled rate (from the plan's intended times), so the headline and
    # the table agree; the dispatcher's own figure, from due times that waiting on an earlier
    # turn of a conversation moves, is in run.json
    scheduled = t.get("scheduled_rate") or run.get("scheduled_rate")
    if scheduled:
        line += f", scheduled {fmt_rate(scheduled)} req/s"
    return line + f"; ok {t['ok']}, expected {t['expected']}, failed {t['failed']}"


def notes(report: dict[str, Any]) -> list[str]:
    run = report["run"]
    c = run.get("counts") or {}
    out = []
    if run.get("interrupted"):
        out.append("interrupted: the run was stopped early; figures cover what was measured")
    if c.get("unsent"):
        out.append("unsent: " + ", ".join(f"{k} {v}" for k, v in sorted(c["unsent"].items())))
    if c.get("skipped"):
        out.append("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(c["skipped"].items())))
    if c.get("redacted_values_dropped"):
        out.append(f"redacted values not sent: {c['redacted_values_dropped']}")
    if report["out_of_range"]:
        out.append(
            "out of histogram range (not in percentiles): "
            + ", ".join(f"{k} {v}" for k, v in report["out_of_range"].items())
        )
    wait = session_wait(report)
    if wait:
        out.append(wait)
    slack = run.get("send_slack_s") or 0.0
    if slack > 0:
        out.append(
            f"send slack {slack * 1e6:.0f} us: a shot could go up to this late to share a "
            "wakeup with the shots due just after it; lag and latency count it"
        )
    if run.get("rt_priority"):
        out.append(
            f"sent from a real-time thread (SCHED_FIFO priority {run['rt_priority']}): other "
            "work on the machine could not take its CPU while it sent"
        )
    machine = machine_note(report)
    if machine:
        out.append(machine)
    targets = run.get("targets") or {}
    if targets:
        out.append("targets: " + ", ".join(f"{k}={v}" for k, v in sorted(targets.items())))
    elif run.get("target"):
        out.append(f"target: {run['target']}")
    return out


# The open loop's lag p99 above this, with other work busy, is put down to the machine.
LATE_MS = 1.0


def machine_note(report: dict[str, Any]) -> str | None:
    """The replay held back by its cgroup's CPU limit, other work busy on its machine (the
    target, when it runs there) or a VM's host taking its CPU time; how long the sending thread
    waited for a CPU meanwhile, and, where the open loop's sends went late, the cure."""
    run = report["run"]
    use = run.get("machine") or {}
    said = []
    throttled = use.get("throttled_s")
    limited = throttled is not None and throttled >= THROTTLED_S
    if limited:
        said.append(
            f"the CPU limit of this replay's cgroup (a container's) held it back for "
            f"{throttled:.2f} s of the run's {use['span_s']:.1f} s"
        )
    got = shares(use)
    if got is not None:
        others, steal = got
        if others >= BUSY_SHARE:
            said.append(
                f"other work used {others:.0%} of this machine's {use['cpus']} CPUs during the "
                "run (the target's work too, where it runs here)"
            )
        if steal >= STEAL_SHARE:
            said.append(f"the VM's host took {steal:.0%} of its CPU time (steal)")
    lag = report["total"]["metrics"]["lag"]["p99"]
    wait = use.get("sender_wait_s")
    # Late sends put down to the machine: an open loop's lag p99 over LATE_MS that waiting for
    # a CPU can account for (no send waited longer than the thread did in all); with ordered
    # sessions a turn's lag is its wait for the turn before, not the machine's.
    late = (
        run.get("mode") == "open"
        and run.get("sessions") != "ordered"
        and lag is not None
        and lag > LATE_MS
        and (wait is None or lag <= wait * 1e3)
    )
    # the sending thread's wait is exact, whoever kept it waiting (other work, the replay's
    # own threads): a late run where it waited long says so alone
    waited = bool(wait) and wait >= WAIT_SHARE * use.get("span_s", 0)
    if not said and not (late and waited):
        return None
    if wait:
        said.append(f"the sending thread waited {wait * 1e3:.1f} ms in all for a CPU")
    if late:
        late_at = f"sends went late at times (lag p99 {fmt_ms(lag)} ms)"
        if limited:
            said.append(f"{late_at}: a higher CPU limit, or a lower --speed, keeps them on time")
        elif not run.get("rt_priority"):
            said.append(
                f"{late_at}: --rt-priority 10 keeps the sending thread on a CPU (Linux, root or "
                "CAP_SYS_NICE)"
            )
    return "; ".join(said)


def session_wait(report: dict[str, Any]) -> str | None:
    """With --sessions ordered, how much of the latency is the conversation's order (a turn
    waits for the one before it; that wait is lag) and how much is the target (service)."""
    if report["run"].get("sessions") != "ordered":
        return None
    ms = report["total"]["metrics"]
    lat, lag, svc = ms["latency"]["p50"], ms["lag"]["p50"], ms["service"]["p50"]
    if lat is None or lag is None or svc is None:
        return None
    return (
        f"sessions ordered: latency p50 {fmt_ms(lat)} ms is made of waiting for earlier turns "
        f"of the same conversation (lag p50 {fmt_ms(lag)} ms) and the target's own time "
        f"(service p50 {fmt_ms(svc)} ms); a large lag is the conversations' order at this "
        "speed, not the target"
    )


def _group_text(g: dict[str, Any]) -> list[str]:
    lines = [f"== {g['label']}"]
    lines.append(
        f"  requests  {g['count']}  ok {g['ok']}  expected {g['expected']}  failed {g['failed']}"
        f"  error rate {fmt_pct(g['error_rate'])}"
    )
    lines.append(
        f"  rate/s    scheduled {fmt_rate(g['scheduled_rate'])}  throughput "
        f"{fmt_rate(g['throughput'])}  goodput {fmt_rate(g['goodput'])}  tokens "
        f"{fmt_rate(g['tokens_per_s'])}"
    )
    if g["statuses"]:
        lines.append("  statuses  " + ", ".join(f"{k} {v}" for k, v in g["statuses"].items()))
    if g["errors"]:
        lines.append("  failures  " + ", ".join(f"{k} {v}" for k, v in g["errors"].items()))
    tokens = token_line(g)
    if tokens:
        lines.append(f"  tokens    {tokens}")
    if g.get("finish_reasons"):
        finishes = ", ".join(f"{k} {v}" for k, v in g["finish_reasons"].items())
        lines.append(f"  finish    {finishes}")
    head = f"  {'ms':<10}{'n':>7}" + "".join(f"{s:>10}" for s in STATS)
    lines.append(head)
    for m in shown_metrics(g):
        st = g["metrics"][m]
        lines.append(
            f"  {METRIC_TITLES[m]:<10}{st['count']:>7}"
            + "".join(f"{fmt_ms(st[s]):>10}" for s in STATS)
        )
    return lines


def render_text(report: dict[str, Any], slo: list[dict[str, Any]] | None = None) -> str:
    lines = [headline(report)]
    lines += [f"  {n}" for n in notes(report)]
    lines.append(
        "  (ms; latency from the intended send time, service from the actual send, "
        "lag = actual - intended)"
    )
    for g in with_total(report):
        lines.append("")
        lines += _group_text(g)
    if slo:
        lines.append("")
        lines += slo_text(slo)
    return "\n".join(lines) + "\n"


def slo_text(slo: list[dict[str, Any]]) -> list[str]:
    width = max(len(r["expr"]) for r in slo)
    out = ["SLO"]
    for r in slo:
        verdict = "PASS" if r["pass"] else "FAIL"
        out.append(f"  {verdict}  {r['expr']:<{width}}  measured {r['measured_text']}")
    failed = sum(1 for r in slo if not r["pass"])
    out.append(f"  {len(slo) - failed} passed, {failed} failed")
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(report: dict[str, Any], slo: list[dict[str, Any]] | None = None) -> str:
    lines = ["## loadtape report", "", headline(report), ""]
    lines += [f"- {n}" for n in notes(report)]
    if slo:
        failed = sum(1 for r in slo if not r["pass"])
        lines += ["", f"### SLO: {len(slo) - failed} passed, {failed} failed", ""]
        lines += _md_table(
            ["gate", "result", "measured"],
            [
                [f"`{r['expr']}`", "✅ pass" if r["pass"] else "❌ FAIL", r["measured_text"]]
                for r in slo
            ],
        )
    groups = with_total(report)
    lines += ["", "### Summary (ms, rates per second)", ""]
    sched = SUMMARY_HEADER.index("sched/s")  # left out here: the table is wide enough
    lines += _md_table(
        [h for k, h in enumerate(SUMMARY_HEADER) if k != sched],
        [[c for k, c in enumerate(summary_row(g)) if k != sched] for g in groups],
    )
    for g in groups:
        lines += ["", f"<details><summary>{g['label']}: percentiles</summary>", ""]
        lines += _md_table(["metric", "n", *STATS], percentile_rows(g))
        if g["errors"]:
            lines += ["", "failures: " + ", ".join(f"{k} {v}" for k, v in g["errors"].items())]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
