"""The HTML pages in real headless Chromium at a laptop's 1280 px: nothing reaches past the
window, no legend covers a curve, fourteen groups keep fourteen looks, log axes read as
numbers, the over-time plots users of guidellm and k6 expect are there, and the compare page
opens with its verdict."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import CHROMIUM, open_page

from replay.decide.compare import DEFAULT_RULES, parse_rule
from replay.decide.compare import compare as run_compare
from replay.decide.report.comparison import render as render_compare
from replay.decide.reporting import make
from replay.decide.slo import parse_gates
from replay.measure.resultsdir import Results
from replay.mock.testing import Shape, make_results

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
WIDTH = 1280

# fourteen models, long names, on a long endpoint: the widest summary a run makes
MODELS = tuple((f"provider-{i:02d}/a-rather-long-model-name-{i}", 20.0 + 9 * i) for i in range(14))
SHAPES = (
    Shape(
        endpoint="/v1/organizations/acme/projects/gateway/chat/completions",
        models=MODELS,
        error_share=0.03,
        rate=40.0,
    ),
)


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("h") / "run", n=700, shapes=SHAPES, seed=3)


def _numeric(tick: str) -> bool:
    return bool(re.fullmatch(r"[−-]?\d+(\.\d+)?%?", tick.strip())) or not tick.strip()


@needs_chromium
def test_the_report_fits_1280px_and_its_plots_read(wide_run: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    gates = parse_gates(["latency.p99<1s", "error_rate<5%"])
    html.write_text(make(Results.open(wide_run), "html", "model", gates)[0])
    page = open_page(html, tmp_path / "report.png", width=WIDTH)
    assert page.console_errors == [] and page.exceptions == [] and page.requests == []
    f = page.facts
    assert f["viewport"] == WIDTH
    assert f["scrollWidth"] <= WIDTH and f["overflowing"] == [], f["overflowing"]
    plots = f["plots"]
    titles = {p["title"] for p in plots}
    for want in (
        "latency over time",
        "TTFT over time",
        "inter-token latency over time",
        "sent vs scheduled",
        "in flight",
        "throughput over time",
    ):
        assert want in titles, titles
    for p in plots:
        if p["legend"]:
            assert p["inside"] == 0, (p["title"], p["inside"])  # no curve under a legend
            assert p["shown"], p["title"]  # and the legend is within the drawing, not cut off
        assert all(_numeric(t) for t in p["ticks"]), (p["title"], p["ticks"])
    spectrum = next(p for p in plots if p["title"] == "latency (ms)")
    assert spectrum["lines"] == 14 and len(set(spectrum["styles"])) == 14, spectrum["styles"]


@needs_chromium
def test_the_compare_page_opens_with_its_verdict(tmp_path: Path) -> None:
    base = make_results(tmp_path / "a", n=1500, seed=1)
    slow = make_results(
        tmp_path / "b", n=1500, shapes=(Shape(), Shape(stream="new")), seed=2, slowdown=1.5
    )
    a, b = Results.open(base), Results.open(slow)
    doc = run_compare(a, b, [parse_rule(r) for r in DEFAULT_RULES], "stream,model")
    assert doc["regressions"]
    html = tmp_path / "compare.html"
    html.write_text(render_compare(doc, "html", a, b))
    page = open_page(html, width=WIDTH)
    assert page.console_errors == [] and page.requests == []
    f = page.facts
    assert f["headings"][1].startswith("Verdict: ") and "regression" in f["headings"][1]
    text = f["text"]
    assert text.index(doc["regressions"][0]) < text.index("95% bootstrap")
    assert f["scrollWidth"] <= WIDTH and f["overflowing"] == [], f["overflowing"]
    # groups with a regression first, a group in one run only (nothing to judge) last
    regressed = [any(r.get("regression") for r in g.get("metrics", [])) for g in doc["groups"]]
    assert regressed[0] and regressed == sorted(regressed, reverse=True), regressed
    assert doc["groups"][-1].get("only_in") == "current", [g["label"] for g in doc["groups"]]
