"""Numbers that misled a reader: each as it was found, with the figure it must show now."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from replay.decide.compare import DEFAULT_RULES, MIN_RATE_N, compare, parse_rule
from replay.decide.report import build
from replay.decide.report.sweepview import verdicts
from replay.decide.report.text import render_text
from replay.decide.sweep import ceiling
from replay.measure.resultsdir import Results
from replay.mock.testing import Shape, make_results

RULES = [parse_rule(r) for r in DEFAULT_RULES]


def _text(run: Path, by: str | None = None) -> str:
    return render_text(build(Results.open(run), by))


def test_a_group_of_one_request_has_no_rate(tmp_path: Path) -> None:
    """It showed "1417.7 req/s": one request over its own latency."""
    run = make_results(
        tmp_path / "r",
        n=50,
        shapes=(Shape(), Shape(stream="once", endpoint="/v1/models", rate=1.0)),
    )
    rep = build(Results.open(run), "stream")
    many = next(g for g in rep["groups"] if g["key"]["stream"] == "replay")
    assert many["throughput"] is not None and many["throughput"] > 0
    # one request of the second stream: cut the shape down to one row
    run1 = make_results(tmp_path / "r1", n=1, shapes=(Shape(stream="once"),))
    g = build(Results.open(run1), "stream")["groups"][0]
    assert g["count"] == 1
    assert g["throughput"] is None and g["goodput"] is None and g["tokens_per_s"] is None
    block = _text(run1).split("== stream=once")[1]
    assert re.search(r"throughput -\s+goodput -", block), block


def test_a_report_with_one_group_still_has_its_all_block(tmp_path: Path) -> None:
    run = make_results(tmp_path / "r", n=40, shapes=(Shape(models=(("small", 40.0),)),))
    text = _text(run)
    assert text.count("\n== ") == 2 and "\n== all\n" in text, text
    # and `--by all` is the one block, not two
    assert _text(run, "all").count("\n== all\n") == 1


def test_the_headline_scheduled_rate_is_the_all_groups(tmp_path: Path) -> None:
    """With --sessions ordered the headline said 95.2 req/s scheduled, the all group 91.2."""
    run = make_results(tmp_path / "r", n=200, shapes=(Shape(), Shape(stream="b", rate=7.0)))
    doc = json.loads((run / "run.json").read_text())
    doc["scheduled_rate"] = 95.2  # the dispatcher's figure from due times, not intended ones
    (run / "run.json").write_text(json.dumps(doc))
    text = _text(run)
    head = re.search(r"scheduled ([\d.]+) req/s", text.splitlines()[0])
    assert head is not None
    all_block = text.split("\n== all\n")[1]
    table = re.search(r"scheduled ([\d.]+)", all_block)
    assert table is not None and head.group(1) == table.group(1), text[:600]
    assert head.group(1) != "95.2"


def test_ordered_sessions_say_how_much_latency_is_the_conversations_order(
    tmp_path: Path,
) -> None:
    run = make_results(tmp_path / "r", n=100)
    assert "sessions ordered" not in _text(run)
    doc = json.loads((run / "run.json").read_text())
    doc.setdefault("settings", {})["sessions"] = "ordered"
    (run / "run.json").write_text(json.dumps(doc))
    line = next(ln for ln in _text(run).splitlines() if "sessions ordered" in ln)
    total = build(Results.open(run))["total"]["metrics"]
    assert f"lag p50 {total['lag']['p50']:.2f}" in line, line
    assert "service p50" in line and "not the target" in line, line


def test_error_rate_of_a_tiny_group_is_not_judged_and_its_interval_is_a_proportion(
    tmp_path: Path,
) -> None:
    """It printed an error-rate interval of [-196.00, +196.00] pp for n = 1."""
    a = make_results(tmp_path / "a", n=1, shapes=(Shape(stream="one"),), seed=1)
    b = make_results(tmp_path / "b", n=1, shapes=(Shape(stream="one", error_share=1.0),))
    doc = compare(Results.open(a), Results.open(b), RULES, "stream")
    (g,) = doc["groups"]
    er = next(r for r in g["metrics"] if r["metric"] == "error_rate")
    assert er["regression"] is False and f"{MIN_RATE_N} requests" in er["note"], er
    assert "ci" not in er
    big_a = make_results(tmp_path / "A", n=400, seed=2)
    big_b = make_results(tmp_path / "B", n=400, shapes=(Shape(error_share=0.5),), seed=3)
    doc = compare(Results.open(big_a), Results.open(big_b), RULES, "stream")
    er = next(r for r in doc["groups"][0]["metrics"] if r["metric"] == "error_rate")
    assert er["regression"] is True and -1.0 <= er["ci"][0] <= er["ci"][1] <= 1.0, er


@pytest.mark.parametrize(("floor_ms", "regression"), [(1.0, False), (0.0, True)])
def test_a_change_too_small_to_matter_is_not_a_regression(
    tmp_path: Path, floor_ms: float, regression: bool
) -> None:
    """/v1/models p50 0.47 -> 0.55 ms was called a REGRESSION: real, +17 %, and 0.08 ms."""
    fast = Shape(
        endpoint="/v1/models",
        models=(("m", 0.4),),
        stream_share=0.0,
        rate=50.0,
        tokens=1,
        itl_ms=0.01,
    )
    a = make_results(tmp_path / "a", n=3000, shapes=(fast,), seed=4)
    b = make_results(tmp_path / "b", n=3000, shapes=(fast,), seed=5, slowdown=1.3)
    doc = compare(Results.open(a), Results.open(b), RULES, "stream", min_change_ms=floor_ms)
    rows = {r["metric"]: r for r in doc["groups"][0]["metrics"]}
    p50 = rows["latency.p50"]
    assert 0 < p50["current"] - p50["baseline"] < 1.0, p50  # a sub-millisecond change
    assert p50["regression"] is regression, p50
    assert bool(doc["regressions"]) is regression


def test_the_sweep_ceiling_names_where_each_figure_was_measured() -> None:
    """It said "reached at concurrency 10" with the throughput measured at 100."""
    points = [(1.0, 40.0), (10.0, 300.0), (50.0, 305.0), (100.0, 310.0)]
    c = ceiling(points, 0.05)
    assert c == {"level": 10.0, "throughput": 300.0, "peak": 310.0, "peak_level": 100.0}
    doc = {
        "kind": "concurrency",
        "ceiling": c,
        "tolerance": 0.05,
        "max_throughput": 310.0,
        "p99_limit_ms": None,
        "knee": None,
        "stopped": None,
    }
    line = verdicts(doc)[0]
    assert "300.0 ok req/s (goodput) at concurrency 10" in line, line
    assert "highest 310.0 ok req/s, at concurrency 100" in line, line
