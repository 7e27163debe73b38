"""Baseline comparison: the pure verdict by tables, and whole runs against the mock gateway
(the same profile measured twice passes, a gateway slowed by 20 % fails)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, open_page

from captures.errors import UserError
from captures.testing import T0_NS, chat_record, write_capture
from replay.decide.compare import bootstrap_diff, judge, parse_rule, proportion_diff, samples_needed
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]


@pytest.mark.parametrize(
    ("text", "metric", "stat", "allow", "kind"),
    [
        ("latency.p99=+10%", "latency", "p99", 0.10, "rel"),
        ("ttft.p99=+50ms", "ttft", "p99", 50.0, "abs"),
        ("itl.p50=+0.5s", "itl", "p50", 500.0, "abs"),
        ("tpot.mean=+5%", "tpot", "mean", 0.05, "rel"),
        ("error_rate=+1pp", "error_rate", None, 0.01, "pp"),
        ("latency.p99.9=20%", "latency", "p99.9", 0.20, "rel"),
    ],
)
def test_parse_rule(text: str, metric: str, stat: str | None, allow: float, kind: str) -> None:
    r = parse_rule(text)
    assert (r.metric, r.stat, r.kind) == (metric, stat, kind)
    assert r.allow == pytest.approx(allow)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("latency.p99", "want METRIC.STAT"),
        ("latency=+10%", "needs a statistic"),
        ("latncy.p99=+10%", "unknown metric 'latncy'"),
        ("error_rate=+1ms", "error_rate takes +Npp"),
        ("latency.p99=+1pp", "pp is for error_rate"),
        ("latency.p99=-10%", "want METRIC.STAT"),
    ],
)
def test_bad_rules(text: str, needle: str) -> None:
    with pytest.raises(UserError, match=None) as e:
        parse_rule(text)
    assert needle in str(e.value) and str(e.value).startswith(f"--max-regression {text!r}")


@pytest.mark.parametrize(
    ("rule", "base", "diff", "regression"),
    [
        ("latency.p99=+10%", 100.0, (15.0, 5.0, 25.0), True),  # over the allowance, real
        ("latency.p99=+10%", 100.0, (15.0, -2.0, 30.0), False),  # over it, but could be noise
        ("latency.p99=+10%", 100.0, (8.0, 3.0, 12.0), False),  # real, but within the allowance
        ("latency.p99=+10%", 100.0, (-20.0, -30.0, -10.0), False),  # faster
        ("ttft.p99=+50ms", 1000.0, (60.0, 10.0, 90.0), True),
        ("ttft.p99=+50ms", 1000.0, (40.0, 10.0, 90.0), False),
        ("error_rate=+1pp", 0.001, (0.02, 0.01, 0.03), True),
        ("error_rate=+1pp", 0.001, (0.005, 0.001, 0.01), False),
    ],
)
def test_judge(rule: str, base: float, diff: tuple[float, float, float], regression: bool) -> None:
    assert judge(parse_rule(rule), base, diff)[0] is regression


def test_bootstrap_interval_covers_the_truth_and_finds_a_shift() -> None:
    rng = np.random.default_rng(5)
    a = rng.lognormal(4, 0.4, 3000)
    b = rng.lognormal(4, 0.4, 3000)
    point, lo, hi = bootstrap_diff(a, b, "p50", seed=1)
    assert lo < 0 < hi and lo < point < hi
    point, lo, hi = bootstrap_diff(a, b * 1.2, "p50", seed=1)
    assert lo > 0 and point == pytest.approx(
        np.percentile(b * 1.2, 50) - np.percentile(a, 50), rel=0.05
    )
    d, lo, hi = proportion_diff(10, 1000, 40, 1000)
    assert d == pytest.approx(0.03) and 0 < lo < 0.03 < hi
    assert (
        samples_needed("p99") == 1000
        and samples_needed("p50") == 20
        and samples_needed("max") is None
    )


def _runs(tmp_path: Path) -> dict[str, Path]:
    """Three runs of one capture (streamed chats, varied output lengths): baseline and
    'same' against two gateways of one profile (different seeds: different output lengths,
    the noise a second run brings), 'slowed' against the baseline's gateway made 20 % slower."""
    recs = [
        chat_record(start_ns=T0_NS + i * 8_000_000, model="small", stream=True, session_key=None)
        for i in range(500)
    ]
    cap = write_capture(tmp_path / "cap", recs)
    out = {}
    for name, seed, slowdown in (("base", 1, 1.0), ("same", 2, 1.0), ("slowed", 1, 1.2)):
        with running_gateway(seed=seed, slowdown=slowdown) as gw:
            p = subprocess.run(
                [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(tmp_path / name), "-q"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert p.returncode == 0, p.stderr
        out[name] = tmp_path / name
    return out


def test_same_gateway_twice_passes_and_a_slowed_one_fails(tmp_path: Path) -> None:
    runs = _runs(tmp_path)

    def compare(cur: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "compare", str(runs["base"]), str(runs[cur]), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )

    same = compare("same", "--format", "json")
    doc = json.loads(same.stdout)
    assert same.returncode == 0 and doc["regressions"] == [], same.stdout
    slowed = compare("slowed", "--format", "json")
    doc = json.loads(slowed.stdout)
    assert slowed.returncode == 1, slowed.stdout
    assert any(r.endswith("latency.p50") for r in doc["regressions"])
    lat = next(r for r in doc["groups"][0]["metrics"] if r["metric"] == "latency.p50")
    assert 0.12 < lat["change"] < 0.28  # about +20 %
    text = compare("slowed")
    assert text.returncode == 1 and "REGRESSION" in text.stdout
    md = compare("slowed", "--format", "markdown")
    assert md.stdout.startswith("## loadtape compare") and "**REGRESSION**" in md.stdout
    # a looser rule lets the slowed gateway pass
    loose = compare(
        "slowed", "--max-regression", "latency.p50=+40%", "--max-regression", "error_rate=+1pp"
    )
    assert loose.returncode == 0, loose.stdout
    if CHROMIUM is None and not os.environ.get("LOADTAPE_REQUIRE_CHROMIUM"):
        return
    html = tmp_path / "compare.html"
    assert compare("slowed", "--format", "html", "--out", str(html)).returncode == 1
    page = open_page(html, tmp_path / "compare.png")
    assert page.console_errors == [] and page.exceptions == [] and page.requests == []
    assert len(page.facts["svgs"]) == 4 and "REGRESSION" in page.facts["text"]


def test_results_written_before_newer_columns_still_compare(tmp_path: Path) -> None:
    """A results file without the columns added later (target, body_hash) reads them as nulls."""
    import pyarrow.parquet as pq

    from replay.decide.compare import DEFAULT_RULES, compare
    from replay.measure.resultsdir import Results
    from replay.mock.testing import make_results

    for name, seed in (("a", 1), ("b", 2)):
        make_results(tmp_path / name, n=100, seed=seed)
        f = tmp_path / name / "results.parquet"
        pq.write_table(pq.read_table(f).drop(["target", "body_hash"]), f)
    t = Results.open(tmp_path / "a").table(["seq", "target", "body_hash"])
    assert t.num_rows == 100 and t.column("target").null_count == 100
    doc = compare(
        Results.open(tmp_path / "a"),
        Results.open(tmp_path / "b"),
        [parse_rule(r) for r in DEFAULT_RULES],
    )
    assert len(doc["groups"]) == 2 and doc["regressions"] == []


def test_a_run_on_a_busy_machine_is_said_beside_the_verdict(tmp_path: Path) -> None:
    """The current run's machine was busy and its sends late: the comparison says so in every
    format, as its own report does; the baseline's quiet machine says nothing."""
    from replay.decide.compare import DEFAULT_RULES, compare
    from replay.decide.report.comparison import render_markdown, render_text
    from replay.measure.resultsdir import Results
    from replay.mock.testing import make_results

    for name, seed in (("a", 1), ("b", 2)):
        make_results(tmp_path / name, n=200, seed=seed)
    busy = {"cpus": 2, "span_s": 10.0, "busy_s": 11.0, "loadtape_s": 1.0, "steal_s": 0.0}
    busy |= {"sender_wait_s": 0.2, "throttled_s": 0.0}
    f = tmp_path / "b" / "run.json"
    f.write_text(json.dumps(json.loads(f.read_text()) | {"machine": busy, "mode": "open"}))
    rules = [parse_rule(r) for r in DEFAULT_RULES]
    doc = compare(Results.open(tmp_path / "a"), Results.open(tmp_path / "b"), rules)
    assert doc["machine_notes"]["baseline"] is None
    note = doc["machine_notes"]["current"]
    assert note is not None and "other work used 50% of this machine's 2 CPUs" in note
    assert f"current run: {note}" in render_text(doc)
    assert f"> current run: {note}" in render_markdown(doc)
    assert "baseline run:" not in render_text(doc)
