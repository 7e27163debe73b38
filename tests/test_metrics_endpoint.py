"""`--metrics-listen`: Prometheus exposition of a real run against the mock gateway, scraped
mid-run and after it with prometheus_client's own parser, and checked against the results."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from scrape import Samples, free_port, scrape, total

from captures.testing import T0_NS, chat_record, write_capture
from replay.mock.config import Faults
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_counters_and_histograms_match_the_results(tmp_path: Path, workers: int) -> None:
    """With --workers, the driver's one endpoint shows the whole run: each worker ships its
    observer's state with its progress, and the driver adds them up."""
    recs = [
        chat_record(start_ns=T0_NS + i * 25_000_000, stream=bool(i % 2), completion_tokens=8,
                    model=("small", "large")[i % 2])
        for i in range(160)
    ]  # fmt: skip
    cap = write_capture(tmp_path / "cap", recs)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    out = tmp_path / "o"
    with running_gateway(faults=Faults(error_rate=0.2, error_status=500)) as gw:
        proc = subprocess.Popen(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(out),
             "--metrics-listen", f"127.0.0.1:{port}", "--metrics-linger", "20s",
             *(["--workers", str(workers)] if workers > 1 else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        mid: Samples = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # mid-run: something counted, not everything
            try:
                mid = scrape(url)
            except OSError:
                time.sleep(0.1)
                continue
            if 0 < total(mid, "loadtape_requests_total") < 160:
                break
            time.sleep(0.1)
        assert 0 < total(mid, "loadtape_requests_total") < 160, mid.get("loadtape_sent_total")
        assert total(mid, "loadtape_run_finished") == 0
        final: Samples = {}
        while time.monotonic() < deadline + 30:
            final = scrape(url)
            if total(final, "loadtape_run_finished") == 1:
                break
            time.sleep(0.2)
        proc.terminate()  # the linger is cut short; the run itself is over
        _, err = proc.communicate(timeout=60)
    assert total(final, "loadtape_run_finished") == 1, err
    assert "loadtape_behind_seconds" in final  # on schedule at the end: 0
    assert total(final, "loadtape_behind_seconds") == 0
    rows = pq.read_table(
        sorted(out.glob("results*.parquet")),
        columns=[
            "model",
            "outcome",
            "status",
            "completion_tokens",
            "first_token_ns",
            "token_offsets_us",
            "req_bytes",
            "bytes_in",
        ],
    ).to_pylist()
    run = json.loads((out / "run.json").read_text())
    assert total(final, "loadtape_sent_total") == run["counts"]["sent"] == 160
    machine = run["machine"] or {}
    if machine.get("sender_wait_s") is not None:  # Linux: the sending threads' wait, together
        assert "loadtape_sender_cpu_wait_seconds_total" in final
        wait = total(final, "loadtape_sender_cpu_wait_seconds_total")
        assert machine["sender_wait_s"] - 0.001 <= wait <= machine["sender_wait_s"] + 0.05
    if machine.get("throttled_s") is not None:
        assert "loadtape_cgroup_throttled_seconds_total" in final
        throttled = total(final, "loadtape_cgroup_throttled_seconds_total")
        assert machine["throttled_s"] - 0.001 <= throttled <= machine["throttled_s"] + 0.05
    assert total(final, "loadtape_scheduled_total") == 160  # all due by the plan, at the end
    by = Counter((r["model"], r["outcome"]) for r in rows)
    for (model, outcome), n in by.items():
        assert total(final, "loadtape_requests_total", model=model, outcome=outcome) == n
    assert (
        total(final, "loadtape_requests_total", outcome="failed") == by_outcome(rows, "failed") > 0
    )
    assert total(final, "loadtape_errors_total", kind="http_500") == sum(
        r["status"] == 500 for r in rows
    )
    assert total(final, "loadtape_tokens_total", kind="completion") == sum(
        r["completion_tokens"] or 0 for r in rows
    )
    assert total(final, "loadtape_request_bytes_total") == sum(r["req_bytes"] for r in rows) > 0
    assert total(final, "loadtape_response_bytes_total") == sum(r["bytes_in"] for r in rows) > 0
    # histogram counts: every row has a latency; TTFT where a first token came; ITL per gap
    assert total(final, "loadtape_latency_seconds_count") == 160
    assert total(final, "loadtape_latency_seconds_bucket", le="+Inf") == 160
    assert total(final, "loadtape_ttft_seconds_count") == sum(
        r["first_token_ns"] is not None for r in rows
    )
    gaps = sum(max(len(r["token_offsets_us"] or []) - 1, 0) for r in rows)
    assert total(final, "loadtape_itl_seconds_count") == gaps > 0
    # buckets are cumulative and the quantiles exact ones are there per stream
    les = [(float(lab["le"]), v) for lab, v in final["loadtape_latency_seconds_bucket"]
           if lab["model"] == "small" and lab["stream"] == "replay"]  # fmt: skip
    assert [v for _, v in sorted(les)] == sorted(v for _, v in les)
    assert {lab["quantile"] for lab, _ in final.get("loadtape_recent_seconds", [])} <= {
        "0.5",
        "0.9",
        "0.99",
    }
    # every series the Grafana dashboard queries is one the endpoint serves
    import re

    board = (Path(__file__).parent.parent / "docs" / "grafana" / "loadtape-run.json").read_text()
    used = set(re.findall(r"loadtape_[a-z0-9_]+", board)) - {"loadtape_run"}
    assert used and used <= set(final), used - set(final)


def by_outcome(rows: list[dict[str, object]], outcome: str) -> int:
    return sum(r["outcome"] == outcome for r in rows)


@pytest.mark.parametrize(
    ("text", "remote", "want"),
    [
        ("127.0.0.1:9464", False, ("127.0.0.1", 9464)),
        ("9464", False, ("127.0.0.1", 9464)),  # loopback by default
        (":0", False, ("127.0.0.1", 0)),
        ("localhost:9464", False, ("localhost", 9464)),
        ("[::1]:9464", False, ("::1", 9464)),
        ("0.0.0.0:9464", False, "--metrics-allow-remote"),
        ("[::]:9464", False, "--metrics-allow-remote"),
        ("10.0.0.5:9464", True, ("10.0.0.5", 9464)),
        ("127.0.0.1:", False, "want HOST:PORT"),
        ("127.0.0.1:70000", False, "want HOST:PORT"),
        ("host", False, "want HOST:PORT"),
        ("[::1]", False, "want HOST:PORT"),
    ],
)
def test_listen_addresses(text: str, remote: bool, want: object) -> None:
    from captures.errors import UserError
    from captures.listen import parse_listen

    if isinstance(want, tuple):
        assert parse_listen(text, "--metrics-listen", allow_remote=remote) == want
    else:
        with pytest.raises(UserError, match=str(want)):
            parse_listen(text, "--metrics-listen", allow_remote=remote)


def test_a_non_loopback_bind_or_a_busy_port_is_refused(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "cap", [chat_record(start_ns=T0_NS)])
    base = [
        *CLI,
        "replay",
        str(cap),
        "--target",
        "http://127.0.0.1:1",
        "--out",
        str(tmp_path / "o"),
    ]
    p = subprocess.run([*base, "--metrics-listen", "0.0.0.0:9464"], capture_output=True, text=True)
    assert p.returncode == 2 and "--metrics-allow-remote" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        p = subprocess.run(
            [*base, "--metrics-listen", f"127.0.0.1:{busy}"], capture_output=True, text=True
        )
    assert p.returncode == 2 and "cannot listen" in p.stderr, p.stderr
    assert not (tmp_path / "o" / "results.parquet").exists()  # refused before any traffic


SAMPLE = """JSON.stringify({
  points: Number(document.getElementById('svg-latency').getAttribute('data-points')),
  state: document.getElementById('state').textContent,
  report: !!document.getElementById('report'),
  sent: (document.querySelector('.kpi b') || {}).textContent || '',
})"""


def test_the_live_page_grows_during_the_run_and_links_the_report(tmp_path: Path) -> None:
    import json as _json

    import pytest
    from browser import CHROMIUM, open_page

    if CHROMIUM is None:
        pytest.skip("no chromium on this machine")
    recs = [
        chat_record(start_ns=T0_NS + i * 50_000_000, stream=True, completion_tokens=6)
        for i in range(120)
    ]  # fmt: skip  (a 6 s run)
    cap = write_capture(tmp_path / "cap", recs)
    port = free_port()
    out = tmp_path / "o"
    with running_gateway() as gw:
        proc = subprocess.Popen(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(out),
             "--live", f"127.0.0.1:{port}", "--metrics-linger", "30s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/live.json", timeout=2)
                    break
                except OSError:
                    time.sleep(0.1)
            page = open_page(
                f"http://127.0.0.1:{port}/",
                samples=(1.5, 2.0, 6.0, 6.0, 6.0, 6.0),  # the end: within ~27 s, however busy
                sample_js=SAMPLE,
                timeout=90,
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=5) as r:
                report_page = r.read()
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=60)
    assert page.console_errors == [] and page.exceptions == [], page.console_errors
    assert page.requests == []  # nothing off its own origin
    seen = [_json.loads(s) for s in page.samples]
    first, second = seen[0], seen[1]
    assert 0 < first["points"] < second["points"], page.samples  # it grows while the run goes
    last = next((s for s in seen[2:] if "finished" in s["state"]), seen[-1])
    assert last["report"] and "finished" in last["state"], (last, err)
    run = _json.loads((out / "run.json").read_text())
    assert last["sent"].startswith(str(run["counts"]["sent"]))  # the final state is the report's
    assert (out / "report.html").exists() and b"loadtape report" in report_page


def test_capture_serves_its_figures(tmp_path: Path) -> None:
    import os
    import re
    import signal

    from captures.reader import Capture

    port = free_port()
    out = tmp_path / "cap"
    with running_gateway() as gw:
        proc = subprocess.Popen(
            [*CLI, "capture", "--upstream", gw.url, "--listen", "127.0.0.1:0", "--out", str(out),
             "--metrics-listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HOME": str(tmp_path / "home")},
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            url = re.search(r"http://127\.0\.0\.1:\d+", first)
            assert url is not None, first
            for i in range(8):
                req = urllib.request.Request(f"{url.group(0)}/echo/x?size=40&i={i}")
                if i < 3:  # three with a credential: redacted, and counted by kind
                    req.add_header("Authorization", f"Bearer sk-proj-{i}abcdefghijklmnopqrstuv")
                with urllib.request.urlopen(req, timeout=10):
                    pass
            m: Samples = {}
            for _ in range(50):  # the addon writes its status at each flush
                m = scrape(f"http://127.0.0.1:{port}/metrics")
                if total(m, "loadtape_capture_records_total") == 8:
                    break
                time.sleep(0.1)
            assert total(m, "loadtape_capture_records_total") == 8, m
            assert total(m, "loadtape_capture_bytes_total") > 0
            assert total(m, "loadtape_capture_lost_total") == 0
            assert total(m, "loadtape_capture_fatal") == 0
            assert total(m, "loadtape_capture_status_age_seconds") < 5
            kinds = {lab["kind"]: v for lab, v in m.get("loadtape_capture_redactions_total", [])}
            assert sum(kinds.values()) == 3, kinds
            assert 0 <= total(m, "loadtape_capture_journal_lag_seconds") < 120
            assert total(m, "loadtape_capture_rejected_total") == 0
            for gauge in ("segments_queued", "segments_compacting", "compactor_up"):
                assert f"loadtape_capture_{gauge}" in m, sorted(m)
            board = Path(__file__).parent.parent / "docs" / "grafana" / "loadtape-capture.json"
            used = set(re.findall(r"loadtape_capture_[a-z0-9_]+", board.read_text()))
            assert used and used <= set(m), used - set(m)
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(Capture(out).records()) == 8
