"""Reports from results directories: golden text/json/markdown, figures checked against the
per-request samples, HdrHistogram files read back by hdrh, the CLI, and the HTML in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, open_page
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from replay.decide.report import build
from replay.decide.report.hdrfiles import write_hgrm, write_hlog
from replay.decide.reporting import make
from replay.measure.resultsdir import Results
from replay.mock.testing import Shape, make_results

CLI = [sys.executable, "-c", "import cli; cli.main()"]
SHAPES = (
    Shape(error_share=0.04, shed_share=0.02),
    Shape(stream="stress", rate=30.0, models=(("small", 40.0),), stream_share=1.0),
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("r") / "run", n=300, shapes=SHAPES, seed=7)


def _portable(text: str, run_dir: Path) -> str:
    return text.replace(str(run_dir), "<results>")


@pytest.mark.parametrize(
    ("fmt", "name"), [("text", "report.txt"), ("json", "report.json"), ("markdown", "report.md")]
)
def test_golden(run_dir: Path, fmt: str, name: str, golden: Callable[[str, str], None]) -> None:
    gates = ["latency.p95<400ms", "stream=stress:error_rate<1%", "ttft.p99<100ms", "goodput>=30/s"]
    from replay.decide.slo import parse_gates

    text, rows = make(Results.open(run_dir), fmt, None, parse_gates(gates))
    assert rows is not None and [r["pass"] for r in rows] == [True, True, False, True]
    golden(name, _portable(text, run_dir))


def _rank(values: np.ndarray, p: float) -> float:
    """The sample at HdrHistogram's rank for percentile p: round(p/100 * n), at least 1."""
    s = np.sort(values)
    return float(s[max(int(p / 100 * len(s) + 0.5), 1) - 1])


def test_figures_match_the_per_request_samples(run_dir: Path) -> None:
    """Percentiles from the histograms equal the ranked percentiles of the samples in
    results.parquet within histogram precision (3 significant digits); counts exactly."""
    res = Results.open(run_dir)
    rep = build(res, "stream")
    t = res.table(
        ["stream", "intended_ns", "sent_ns", "first_token_ns", "end_ns", "outcome"]
    ).to_pydict()
    for g in rep["groups"]:
        sel = [i for i, s in enumerate(t["stream"]) if s == g["key"]["stream"]]
        assert g["count"] == len(sel)
        assert g["failed"] == sum(t["outcome"][i] == "failed" for i in sel)
        lat_us = np.array([(t["end_ns"][i] - t["intended_ns"][i]) // 1000 for i in sel])
        ttft_us = np.array(
            [
                (t["first_token_ns"][i] - t["sent_ns"][i]) // 1000
                for i in sel
                if t["first_token_ns"][i]
            ]
        )
        for metric, samples in (("latency", lat_us), ("ttft", ttft_us)):
            st = g["metrics"][metric]
            assert st["count"] == len(samples)
            for p, key in ((50, "p50"), (90, "p90"), (99, "p99"), (100, "max")):
                want_ms = _rank(samples, p) / 1000
                assert st[key] == pytest.approx(want_ms, rel=1e-3, abs=0.002), (metric, key)
            assert st["mean"] == pytest.approx(samples.mean() / 1000, rel=2e-3)
    total = rep["total"]
    assert total["count"] == 600 and total["error_rate"] == pytest.approx(
        total["failed"] / 600, abs=1e-6
    )
    span = (max(t["end_ns"]) - min(t["intended_ns"])) / 1e9
    assert total["throughput"] == pytest.approx(600 / span, rel=1e-3)


def test_by_dimensions_fold_groups(run_dir: Path) -> None:
    res = Results.open(run_dir)
    assert [g["label"] for g in build(res, "stream")["groups"]] == [
        "stream=replay",
        "stream=stress",
    ]
    by_status = build(res, "status")["groups"]
    assert {g["key"]["status"] for g in by_status} == {"2xx", "5xx", "error"}
    assert sum(g["count"] for g in by_status) == 600


def test_hgrm_and_hlog_read_back_with_hdrh(run_dir: Path, tmp_path: Path) -> None:
    res = Results.open(run_dir)
    files = write_hgrm(res.metrics, ("stream",), tmp_path / "hgrm")
    lat = tmp_path / "hgrm" / "latency.stream-replay.hgrm"
    assert lat in files
    footer = re.search(r"Max\s*=\s*([\d.]+),?\s+TotalCount\s*=\s*([\d.]+)", lat.read_text())
    assert footer is not None and float(footer.group(2)) == 300
    replay = build(res, "stream")["groups"][0]
    assert float(footer.group(1)) == pytest.approx(replay["metrics"]["latency"]["max"], abs=0.002)
    log = write_hlog(res.metrics, tmp_path / "run.hlog")
    reader = HistogramLogReader(str(log), HdrHistogram(1, 3_600_000_000, 3))
    latency_total = 0
    try:
        while (h := reader.get_next_interval_histogram()) is not None:
            # the reader drops tags; latency, ttft and itl lines alternate per second
            latency_total += h.total_count
        assert reader.get_start_time_sec() == pytest.approx(res.metrics.run_start_ns / 1e9)
    finally:
        reader.close()
    groups = build(res)["groups"]
    ttft_total = sum(g["metrics"]["ttft"]["count"] for g in groups)
    itl_total = sum(g["metrics"]["itl"]["count"] for g in groups)
    assert latency_total == 600 + ttft_total + itl_total


def test_report_command_and_exit_codes(run_dir: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "report", str(run_dir), *args], capture_output=True, text=True, timeout=120
        )

    p = run()
    assert p.returncode == 0 and "600 requests" in p.stdout, p.stderr
    p = run("--slo", "latency.p99<10s", "--slo", "error_rate<50%")
    assert p.returncode == 0 and "2 passed, 0 failed" in p.stdout
    p = run("--slo", "latency.p99<1ms", "--format", "json")
    assert p.returncode == 1 and json.loads(p.stdout)["slo"][0]["pass"] is False
    p = run("--slo", "stream=nosuch:latency.p99<10s")
    assert p.returncode == 1 and "no requests" in p.stdout
    p = run(
        "--format",
        "markdown",
        "--out",
        str(tmp_path / "r.md"),
        "--hgrm",
        str(tmp_path / "h"),
        "--hlog",
        str(tmp_path / "x.hlog"),
    )
    assert p.returncode == 0 and (tmp_path / "r.md").read_text().startswith("## loadtape report")
    assert list((tmp_path / "h").glob("latency.*.hgrm")) and (tmp_path / "x.hlog").exists()
    for args, needle in [
        (["--slo", "latency.p99<1xs"], "unknown time unit 'xs'"),
        (["--by", "colour"], "--by 'colour'"),
        (["--format", "pdf"], "pdf"),
    ]:
        p = run(*args)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run(
        [*CLI, "report", str(tmp_path / "none")], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "no such results directory" in p.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    p = subprocess.run(
        [*CLI, "report", str(tmp_path / "bad")], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "unreadable" in p.stderr and "Traceback" not in p.stderr


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("LOADTAPE_REQUIRE_CHROMIUM"),
    reason="chromium not installed (apt-get install chromium; .ci/run installs it)",
)


@needs_chromium
def test_html_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    from replay.decide.slo import parse_gates

    html = tmp_path / "report.html"
    html.write_text(make(Results.open(run_dir), "html", None, parse_gates(["latency.p99<1s"]))[0])
    page = open_page(html, tmp_path / "report.png")
    assert page.console_errors == [] and page.exceptions == []
    assert page.requests == []  # self-contained: nothing fetched
    f = page.facts
    assert f["title"] == "loadtape report" and f["scripts"] == 0
    assert {"Summary", "Percentile spectrum", "Over time", "Token timing distributions"} <= set(
        f["headings"]
    )
    # 7 spectra + 7 over time (latency, TTFT, ITL, throughput, sent vs scheduled, in flight,
    # errors) + 2 distributions, each drawn (non-empty box, many paths)
    assert len(f["svgs"]) == 16
    assert all(s["w"] > 200 and s["h"] > 150 and s["paths"] > 10 for s in f["svgs"])
    assert "600 requests" in f["text"] and "SLO: 1 passed, 0 failed" in f["text"]
    assert (tmp_path / "report.png").stat().st_size > 50_000


@needs_chromium
def test_the_browser_check_sees_errors_and_requests(tmp_path: Path) -> None:
    """The harness itself can fail: a page with a console error, an exception and a fetch."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body>"
        "<img src='http://127.0.0.1:9/nothing.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    page = open_page(bad)
    assert any("boom" in e for e in page.console_errors)
    assert page.exceptions
    assert page.requests == ["http://127.0.0.1:9/nothing.png"]
